#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Runs a command in a Debian root of another release, made with debootstrap and cached, with its own libvirtd, in private mount and pid namespaces.
#
#   tests/lib/debian-root.sh RELEASE COMMAND [ARG...]     as root; RELEASE is 12 or 13
#
# The root lives in $SNAPFS_DEBIAN_CACHE/debianRELEASE/root (default /var/cache/snapfs-tests),
# made on first use with `debootstrap --variant=minbase` and the packages of
# tests/lib/packages.sh installed inside it by its own apt (again whenever packages.sh
# changes). COMMAND runs chrooted into it, in /src/snapfs, which is this source tree
# bind-mounted. Whatever runs in there sees only the root's own /etc, /var/lib/libvirt,
# /run (a fresh tmpfs), /tmp, /dev (a tmpfs with the few devices qemu, FUSE and the tools need)
# and a /proc of its own pid namespace: a libvirtd it starts is its own, never the host's, and
# `pgrep -x libvirtd` in there finds only it. When COMMAND ends, the domains of the tests it
# left are removed, and the namespaces end with every process and mount in them.
#
#   SNAPFS_DEBIAN_MIRROR   debootstrap's mirror (default: the host's first deb.debian.org-style URI)
#   SNAPFS_DEBIAN_REFRESH=1  apt-get install the packages again even if packages.sh did not change
set -uo pipefail

here=$(dirname "$(readlink -f "$0")")
top=$(dirname "$(dirname "$here")")
cache=${SNAPFS_DEBIAN_CACHE:-/var/cache/snapfs-tests}

say() { printf '\n==== %s ====\n' "$*"; }

# ------------------------------------------------------------ inside the namespaces
# pid 1 of the new pid namespace, still seeing the host's files; the mounts below are private to it.
if [[ ${1:-} == --in-namespace ]]; then
    shift
    root=$1 setup=$2
    shift 2
    # Copies of the host's FUSE mounts (a test's snapfs) would keep them alive after their unmount.
    # shellcheck source=tests/lib/detach-fuse.sh
    . "$here/detach-fuse.sh"
    # The root itself as a mount, so that findmnt / and mount propagation inside see one.
    mount --bind "$root" "$root" || exit 1
    mount -t proc -o nosuid,nodev,noexec proc "$root/proc" || exit 1
    # sysfs without the host's cgroup hierarchies below it (a bind that is not recursive):
    # libvirtd finds no cgroups and leaves the host's alone.
    mount -o bind,ro /sys "$root/sys" || exit 1
    mount -t tmpfs -o mode=0755,nosuid snapfs-dev "$root/dev" || exit 1
    for node in null zero full random urandom tty fuse kvm net/tun; do
        [[ -e /dev/$node ]] || continue
        mkdir -p "$(dirname "$root/dev/$node")"
        touch "$root/dev/$node"
        # Read-only binds: the node is the host's own, and a package's postinst in the root
        # (qemu's chgrp kvm /dev/kvm, with the root's gid) would otherwise change it for the host
        # (its libvirtd then re-probed qemu at every call). I/O to a device works on a read-only mount.
        mount --bind "/dev/$node" "$root/dev/$node" || exit 1
        mount -o remount,bind,ro "$root/dev/$node" || exit 1
    done
    mkdir -p "$root/dev/pts" "$root/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts" || exit 1
    ln -s pts/ptmx "$root/dev/ptmx"
    ln -s /proc/self/fd "$root/dev/fd"
    ln -s /proc/self/fd/0 "$root/dev/stdin"
    ln -s /proc/self/fd/1 "$root/dev/stdout"
    ln -s /proc/self/fd/2 "$root/dev/stderr"
    mount -t tmpfs -o mode=1777,nosuid,nodev snapfs-shm "$root/dev/shm" || exit 1
    mount -t tmpfs -o mode=0755,nosuid,nodev snapfs-run "$root/run" || exit 1
    mount -t tmpfs -o mode=1777,nosuid,nodev snapfs-tmp "$root/tmp" || exit 1
    mkdir -p "$root/src/snapfs"
    mount --bind "$top" "$root/src/snapfs" || exit 1
    # The bootable guest of tests/lib/agent-guest.sh is the same Debian 12 in every suite: the root uses the
    # host's, made once (by the Debian 12 suite that runs first in CI), or makes it there.
    mkdir -p "$cache/agent-guest" "$root/var/cache/snapfs-tests/agent-guest"
    mount --bind "$cache/agent-guest" "$root/var/cache/snapfs-tests/agent-guest" || exit 1
    # Mounts made in here (FUSE, and those libvirt and libguestfs make) propagate among the
    # namespace's own mounts only: the peer group is new, the host's mounts are not in it.
    mount --make-rshared "$root" || exit 1
    cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null
    # This machine's name resolves in there as outside, without DNS (libvirtd looks it up at every connection).
    cp /etc/hosts "$root/etc/hosts"
    grep -qw "$(hostname)" "$root/etc/hosts" || printf '127.0.1.1\t%s\n' "$(hostname)" >>"$root/etc/hosts"

    inroot() {
        chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" "$@"
    }

    if [[ $setup == packages ]]; then
        say "packages inside the root (its own apt)"
        t0=$SECONDS
        # Services are never started by a package's postinst in here.
        printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
        chmod 0755 "$root/usr/sbin/policy-rc.d"
        inroot /bin/bash -c 'cd /src/snapfs && source tests/lib/packages.sh && snapfs_install_packages' || exit 1
        echo "packages: $((SECONDS - t0)) s"
    fi

    # The host's /dev/kvm (bound in above) has the host's kvm gid, which the root's kvm group does not
    # have: libvirtd, probing qemu as root, finds KVM usable, then unusable for its qemu user at every
    # call ("KVM was enabled when probing ..., but it is not available now"), and probes qemu again
    # each time, a second or more per call. The root's qemu user joins the group of the host's gid.
    if [[ -e /dev/kvm ]] && inroot getent passwd libvirt-qemu >/dev/null; then
        gid=$(stat -c %g /dev/kvm)
        group=$(inroot getent group "$gid" | cut -d: -f1)
        if [[ -z $group ]]; then
            group=snapfs-host-kvm
            inroot groupadd -g "$gid" "$group" || exit 1
        fi
        inroot id -nG libvirt-qemu | grep -qw "$group" || inroot usermod -aG "$group" libvirt-qemu || exit 1
    fi

    # A test run killed before its own sweep left domains behind in the root's libvirt, and
    # their images: every test name holds snapfst (DOMAIN and .DOMAIN). The daemon is not
    # running yet, so its files are removed.
    rm -rf "$root"/etc/libvirt/qemu/*snapfst*.xml "$root"/var/lib/libvirt/qemu/snapshot/*snapfst* \
        "$root"/var/lib/libvirt/qemu/checkpoint/*snapfst* "$root"/var/tmp/snapfst*

    # libvirt's qemu driver starts each qemu in a mount namespace of its own with a private /dev,
    # which fails in a chroot (its root is not a mount point of that namespace): off in here.
    conf=$root/etc/libvirt/qemu.conf
    if [[ -e $conf ]] && ! grep -q '^namespaces *=' "$conf"; then
        printf '\n# tests/lib/debian-root.sh: qemu in the chroot, no namespace of its own\nnamespaces = [ ]\n' >>"$conf"
    fi

    say "in the Debian $(cat "$root/etc/debian_version") root: $*"
    # This shell is the namespace's init: it reaps the daemons and the qemu processes that
    # libvirtd daemonizes (wait reaps every child, adopted ones too).
    inroot /bin/bash -c 'cd /src/snapfs && exec "$@"' command "$@" &
    job=$!
    trap 'kill -TERM "$job"' TERM INT
    # (wait returns early when a trapped signal comes: wait again until the command is gone)
    while wait "$job"; rc=$?; kill -0 "$job" 2>/dev/null; do :; done

    # What the tests left in the root's libvirt (a test that crashed before its own cleanup).
    if inroot timeout 10 virsh -c qemu:///system version >/dev/null 2>&1; then
        for name in $(inroot virsh -q -c qemu:///system list --all --name | grep snapfst); do
            inroot timeout 30 virsh -q -c qemu:///system destroy "$name" >/dev/null 2>&1
            inroot timeout 30 virsh -q -c qemu:///system undefine "$name" --snapshots-metadata \
                --checkpoints-metadata >/dev/null 2>&1 \
                || inroot timeout 30 virsh -q -c qemu:///system undefine "$name" >/dev/null 2>&1
        done
    fi
    rm -rf "$root"/var/tmp/snapfst*
    exit "$rc"
fi

# ------------------------------------------------------------ on the host
release=${1:?usage: tests/lib/debian-root.sh RELEASE COMMAND [ARG...]}
shift
(($#)) || { echo "usage: tests/lib/debian-root.sh RELEASE COMMAND [ARG...]" >&2; exit 2; }
case $release in
    12) codename=bookworm ;;
    13) codename=trixie ;;
    *) echo "tests/lib/debian-root.sh: Debian $release is not supported (12 or 13)" >&2; exit 2 ;;
esac
if [[ $(id -u) != 0 ]]; then
    echo "tests/lib/debian-root.sh: run as root (debootstrap, chroot, namespaces)" >&2
    exit 2
fi

dir=$cache/debian$release
root=$dir/root
mkdir -p "$dir" || exit 1
chmod 0755 "$cache" "$dir"

# One run at a time per root (the root's libvirt state and /var/tmp are one).
exec {lock}>"$dir/lock"
if ! flock -w 5 "$lock"; then
    echo "tests/lib/debian-root.sh: another run uses $root" >&2
    exit 1
fi

if [[ ! -x $root/usr/bin/apt-get ]]; then
    say "debootstrap --variant=minbase $codename $root"
    t0=$SECONDS
    if ! command -v debootstrap >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap || exit 1
    fi
    mirror=${SNAPFS_DEBIAN_MIRROR:-$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | head -1 | grep -oE 'https?://[^ ]+')}
    rm -rf "$root.new"
    debootstrap --variant=minbase "$codename" "$root.new" ${mirror:+"$mirror"} || exit 1
    mv "$root.new" "$root" || exit 1
    rm -f "$dir/packages.stamp"
    echo "debootstrap: $((SECONDS - t0)) s"
fi

# The packages again where packages.sh changed since they were installed.
stamp=$(sha256sum "$top/tests/lib/packages.sh" | cut -d' ' -f1)
setup=none
if [[ ${SNAPFS_DEBIAN_REFRESH:-0} == 1 || $(cat "$dir/packages.stamp" 2>/dev/null) != "$stamp" ]]; then
    setup=packages
fi
if [[ $setup == packages ]]; then
    # The stamp is written only after a successful install (by this shell, once the namespace is done).
    unshare --mount --propagation private --pid --fork --kill-child \
        bash "$here/debian-root.sh" --in-namespace "$root" packages true || exit 1
    echo "$stamp" >"$dir/packages.stamp"
fi

# A pid namespace: when the command ends (or this script is killed), the kernel ends every
# process of it, libvirtd, virtlogd, qemu and snapfs included; the mount namespace, and the
# FUSE, proc and bind mounts in it, end with its last process.
exec unshare --mount --propagation private --pid --fork --kill-child \
    bash "$here/debian-root.sh" --in-namespace "$root" none "$@"
