#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# The benchmarks of the README's performance section, one after the other, each printing its table.
#
#   tests/bench/all.sh [--debian 13] [--snapshots 1,5,30] [--rounds N]    as root, on a quiet machine
#
# Builds snapfs without sanitizers (build/, or /var/cache/snapfs-build/plain inside the Debian
# root of --debian, tests/lib/debian-root.sh), starts libvirtd where none runs, mounts a snapfs of
# qemu:///system for the rows measured through a mount, then runs bench-guest.py,
# bench-snapshots.py and bench-revert.py. guestmount, the reference of bench-guest.py, runs with
# force_tcg: this machine's /dev/kvm is broken (snapfs copes with it by itself, guestmount does not).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

if [[ ${1:-} == --debian ]]; then
    release=${2:?usage: tests/bench/all.sh [--debian RELEASE] [ARG...]}
    shift 2
    exec tests/lib/debian-root.sh "$release" /usr/bin/env SNAPFS_BUILD=/var/cache/snapfs-build/plain \
        tests/bench/all.sh "$@"
fi

snapshots=1,5,30 rounds=3
while (($#)); do
    case $1 in
        --snapshots) snapshots=${2:?}; shift 2 ;;
        --rounds) rounds=${2:?}; shift 2 ;;
        *) echo "usage: tests/bench/all.sh [--debian RELEASE] [--snapshots N,...] [--rounds N]" >&2; exit 2 ;;
    esac
done

# shellcheck source=tests/lib/packages.sh
source tests/lib/packages.sh
build=${SNAPFS_BUILD:-build}
if [[ ! -f $build/build.ninja ]]; then
    meson setup "$build" -Dwerror=true >/dev/null || exit 1
fi
meson compile -C "$build" >/dev/null || exit 1
snapfs_need_fuse && snapfs_start_libvirtd qemu:///system || exit 1
export LIBGUESTFS_BACKEND=direct

echo "# $(. /etc/os-release; echo "$PRETTY_NAME"), libvirt $(virsh -c qemu:///system version | awk '/Running hypervisor|Using library/{print $NF}' | paste -sd/), $(nproc) cores, $(date -u +%F)"
echo
echo "## bench-guest.py --snapshots $snapshots --rounds $rounds"
LIBGUESTFS_BACKEND_SETTINGS=force_tcg /usr/bin/python3 tests/bench/bench-guest.py --snapfs "$build/snapfs" \
    --snapshots "$snapshots" --rounds "$rounds" || exit 1

# Mounted only now: bench-guest.py's snapfs takes the default state directory, one snapfs at a time.
mnt=$(mktemp -d /var/tmp/snapfs-bench-mnt.XXXXXX)
cleanup() {
    mountpoint -q "$mnt" && fusermount3 -u "$mnt"
    rmdir "$mnt" 2>/dev/null
}
trap cleanup EXIT
"$build/snapfs" -c qemu:///system "$mnt" || exit 1
echo
echo "## bench-snapshots.py --rounds 7"
/usr/bin/python3 tests/bench/bench-snapshots.py --engine-cli "$build/tests/engine-cli" --mount "$mnt" --rounds 7 || exit 1
echo
echo "## bench-revert.py --rounds 7"
REVERT_CLI=$build/tests/revert-cli /usr/bin/python3 tests/bench/bench-revert.py --rounds 7 --mount "$mnt" || exit 1
