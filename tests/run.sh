#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# The whole test suite as root: install packages, build with ASan+UBSan, start libvirtd, run everything.
#
#   tests/run.sh                 as root, from a clone, on Debian 12 or 13; exits non-zero when anything fails
#   tests/run.sh --debian 13     the same inside a Debian 13 root made with debootstrap (cached in
#                                /var/cache/snapfs-tests), with its own libvirtd: tests/lib/debian-root.sh
#   SNAPFS_SKIP_APT=1            skip apt-get (the packages are there already)
#   SNAPFS_BUILD=DIR             build directory (default build-asan)
#   SNAPFS_PYTEST_ARGS="-k tree" extra arguments for the integration tests
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
top=$PWD

if [[ ${1:-} == --debian ]]; then
    release=${2:?usage: tests/run.sh [--debian RELEASE]}
    # Its packages are installed when the root is made; its build directory is the root's own.
    exec tests/lib/debian-root.sh "$release" /usr/bin/env SNAPFS_SKIP_APT=1 \
        SNAPFS_BUILD="${SNAPFS_ROOT_BUILD:-/var/cache/snapfs-build/asan}" \
        ${SNAPFS_PYTEST_ARGS:+SNAPFS_PYTEST_ARGS="$SNAPFS_PYTEST_ARGS"} tests/run.sh
fi
if (($#)); then
    echo "usage: tests/run.sh [--debian RELEASE]" >&2
    exit 2
fi

build=${SNAPFS_BUILD:-build-asan}
[[ $build == /* ]] || build=$top/$build
started=$SECONDS
# shellcheck source=tests/lib/packages.sh
source tests/lib/packages.sh

say() { printf '\n==== %s (%d s) ====\n' "$*" $((SECONDS - started)); }

if [[ $(id -u) != 0 ]]; then
    echo "tests/run.sh: run as root (it installs packages, uses qemu:///system and FUSE)" >&2
    exit 2
fi

say "packages"
snapfs_install_packages || { echo "tests/run.sh: apt-get failed" >&2; exit 1; }

say "build ($build: -Db_sanitize=address,undefined -Dwerror=true)"
if [[ ! -f $build/build.ninja ]]; then
    meson setup "$build" -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=true || exit 1
fi
meson compile -C "$build" || exit 1

say "services"
snapfs_need_fuse || exit 1
snapfs_shared_mounts || exit 1
snapfs_start_libvirtd qemu:///system || exit 1

# Any sanitizer report is a failure: halt on the first one, with an exit status nobody else uses.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:exitcode=86:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87"
export LSAN_OPTIONS="suppressions=$top/tests/lsan.supp:print_suppressions=0"
export LIBGUESTFS_BACKEND=direct
export SNAPFS_BIN=$build/snapfs
# The suite owns this machine: the reconnect test may kill and restart the system libvirtd.
export SNAPFS_TEST_RESTART_LIBVIRTD=1

failed=()

# The bootable guest of test_live_agent.py (a debootstrap, minutes on a fresh machine) is made while meson's
# tests run; the test waits for it on the build's lock.
tests/lib/agent-guest.sh build >"$build/agent-guest-build.log" 2>&1 &

say "meson test (unit tests of src/, and the parts' tests against libvirtd)"
meson test -C "$build" --print-errorlogs --num-processes 3 || failed+=("meson test")

say "integration tests through a real mount"
# shellcheck disable=SC2086
/usr/bin/python3 -m pytest -v -rfEs --durations=15 -p no:cacheprovider tests/integration ${SNAPFS_PYTEST_ARGS:-} \
    || failed+=("integration tests")

elapsed=$((SECONDS - started))
if ((${#failed[@]})); then
    say "FAILED: ${failed[*]} in ${elapsed}s"
    exit 1
fi
say "all passed in ${elapsed}s"
