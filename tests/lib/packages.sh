# SPDX-License-Identifier: GPL-2.0-or-later
# The Debian 12 and 13 packages that building, the demo and the test suite need; sourced by examples/demo.sh and tests/run.sh.
# shellcheck shell=bash

# The Debian release this machine (or root) runs, from /etc/debian_version: 12, 13, or what it says
# (a testing or unstable system says "trixie/sid" and the like; those count as the release they lead to).
snapfs_debian_release() {
    local version
    version=$(cat /etc/debian_version 2>/dev/null) || { echo unknown; return; }
    case $version in
        bookworm*) echo 12 ;;
        trixie*) echo 13 ;;
        [0-9]*) echo "${version%%.*}" ;;
        *) echo "$version" ;;
    esac
}

SNAPFS_PACKAGES=(
    # build
    gcc libc6-dev meson ninja-build pkg-config
    libfuse3-dev libvirt-dev libguestfs-dev libglib2.0-dev libxml2-dev liblzma-dev libzstd-dev libjson-glib-dev
    # run: FUSE, libvirtd with QEMU (TCG is enough), libguestfs's appliance and its kernel
    fuse3 libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-system-common qemu-utils
    libguestfs-tools linux-image-amd64
    # the demo and the tests: mkfs.ext4 -d, sfdisk, getfattr, setfacl, pgrep, pytest,
    # gdb for the threads' stacks of a daemon that does not exit after its unmount
    # debootstrap for the Debian 13 root of tests/run.sh --debian 13 (tests/lib/debian-root.sh)
    e2fsprogs fdisk attr acl procps python3 python3-pytest gdb debootstrap
)
case $(snapfs_debian_release) in
    12) ;;
    *)
        # Debian 13 split libvirt's drivers into packages libvirt-daemon only recommends (12's
        # depends on the qemu driver): named, so that a machine that installs no recommends
        # still gets libvirtd with its qemu driver. (The libraries' t64 renames, libguestfs0t64
        # and the like, come in through the -dev packages, which keep their names.)
        SNAPFS_PACKAGES+=(libvirt-daemon-driver-qemu)
        ;;
esac

# apt-get install everything above (quietly); SNAPFS_SKIP_APT=1 skips it on a machine that has it all.
snapfs_install_packages() {
    if [[ ${SNAPFS_SKIP_APT:-0} == 1 ]]; then
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${SNAPFS_PACKAGES[@]}"
}

# Whether a process of this name runs in this pid namespace: the daemons of a Debian root that
# tests/lib/debian-root.sh runs beside (in a pid namespace below this one) are not this host's.
snapfs_running_here() {
    pgrep --ns $$ --nslist pid -x "$1" >/dev/null
}

# virtlogd and libvirtd as daemons where nothing (systemd or an earlier run) started them; wait until virsh answers.
snapfs_start_libvirtd() {
    local uri=${1:-qemu:///system} i
    # systemd's socket activation (a fresh install under systemd) answers without a daemon running yet.
    if ! snapfs_running_here libvirtd && timeout 5 virsh -c "$uri" version >/dev/null 2>&1; then
        return 0
    fi
    snapfs_running_here virtlogd || virtlogd -d
    snapfs_running_here libvirtd || libvirtd -d
    for ((i = 0; i < 100; i++)); do
        if virsh -c "$uri" version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.3
    done
    echo "libvirtd does not answer at $uri" >&2
    return 1
}

# /dev/fuse, loading the module where it is missing.
snapfs_need_fuse() {
    [[ -e /dev/fuse ]] || modprobe fuse 2>/dev/null || true
    if [[ ! -e /dev/fuse ]]; then
        echo "/dev/fuse is missing: load the fuse module (modprobe fuse), or in a container pass --device /dev/fuse" >&2
        return 1
    fi
}

# Mount propagation as on a systemd host.  libvirt starts each qemu in a mount namespace of
# its own, copied from ours: where / is private (some containers), a FUSE mount copied into it
# outlives fusermount3 -u, and the daemon never sees its unmount.  With / shared, libvirt makes
# its copies slaves and unmounts reach them.
snapfs_shared_mounts() {
    if [[ $(findmnt -no PROPAGATION / 2>/dev/null) == private ]]; then
        mount --make-rshared / || return 1
    fi
}
