#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# A small bootable Debian 12 guest that runs qemu-guest-agent, made once and cached, for the tests that need a running domain whose agent answers.
#
#   tests/lib/agent-guest.sh build              as root: make the cache, unless it is made already
#   tests/lib/agent-guest.sh xml NAME DISK      print a domain's XML (TCG, direct kernel boot of the cached kernel)
#   tests/lib/agent-guest.sh wait NAME [SECONDS]   wait until NAME's agent answers guest-ping (default 300 s)
#
# The cache, $SNAPFS_AGENT_GUEST_CACHE (default /var/cache/snapfs-tests/agent-guest), holds
# disk.qcow2 (the root filesystem, ext4 on the whole disk, vda), vmlinuz and initrd.img; a
# test copies disk.qcow2 to a place of its own and defines a domain with `xml` over the copy.
# The stamp file is written last: a cache without it (a build that was interrupted) is made again.
# The guest has no network, no password, no getty: it is driven through its agent only.
# `wait` (and virsh) use libvirt's default connection: LIBVIRT_DEFAULT_URI chooses another.
#
#   SNAPFS_DEBIAN_MIRROR   debootstrap's mirror (default: the host's first deb.debian.org-style URI)
set -uo pipefail

self=$(readlink -f "$0")
cache=${SNAPFS_AGENT_GUEST_CACHE:-/var/cache/snapfs-tests/agent-guest}
# What the stamp holds: change it whenever the build below changes, so that caches made before are made again.
recipe="agent-guest 1"

die() { echo "tests/lib/agent-guest.sh: $*" >&2; exit 1; }
now() { echo "${EPOCHREALTIME/,/.}"; }
# The seconds since $1 (an EPOCHREALTIME), with one decimal.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ------------------------------------------------------------ build: inside the tree
# Run by `build` in a mount namespace of its own (the proc and dev mounts end with it), as root.
if [[ ${1:-} == --in-tree ]]; then
    tree=$2
    mount -t proc proc "$tree/proc" || exit 1
    mount --bind /dev "$tree/dev" || exit 1
    chroot "$tree" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        /bin/bash -euo pipefail -s <<'EOF'
echo agent-guest >/etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tagent-guest\n' >/etc/hosts
# The kernel mounts the root read-write (rw on its command line): no fsck at boot.
printf '/dev/vda\t/\text4\trw,noatime\t0\t0\n' >/etc/fstab
passwd -q -l root

# The agent starts when udev sees its virtio port (60-qemu-guest-agent.rules and the unit's
# WantedBy); enabled again here in case a release of the package stops doing so.
systemctl -q enable qemu-guest-agent.service 2>/dev/null || true

# What a TCG boot would wait for and no test needs.
systemctl -q mask \
    systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer apt-daily.service \
    apt-daily-upgrade.service e2scrub_all.timer e2scrub_all.service e2scrub_reap.service \
    fstrim.timer dpkg-db-backup.timer man-db.timer logrotate.timer \
    systemd-networkd-wait-online.service networking.service \
    getty@.service serial-getty@.service console-getty.service \
    2>/dev/null

# The journal in memory only: nothing to flush to the disk at boot.
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\n' >/etc/systemd/journald.conf.d/agent-guest.conf

# A small initramfs: the root is ext4 on virtio-blk, nothing else.
printf 'MODULES=list\nRESUME=none\n' >/etc/initramfs-tools/conf.d/agent-guest
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >>/etc/initramfs-tools/modules
update-initramfs -u -k all

# What the guest never reads.
rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/* \
    /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/*.log
EOF
    exit $?
fi

# ------------------------------------------------------------ build
build() {
    local t_all t work tree kver kernels mirror lock mib
    [[ $(id -u) == 0 ]] || die "build: run as root (debootstrap, chroot, mkfs)"
    # Everything made world-readable: qemu reads the kernel and the initrd as its own user.
    umask 022
    mkdir -p "$cache" && chmod 0755 "$cache" || exit 1
    exec {lock}>"$cache/lock"
    if ! flock -n "$lock"; then
        echo "agent-guest: another build runs; waiting for it"
        flock -w 3600 "$lock" || die "build: the lock on $cache/lock was not released in an hour"
    fi
    if [[ $(cat "$cache/stamp" 2>/dev/null) == "$recipe" ]]; then
        echo "agent-guest: cached in $cache"
        return 0
    fi
    t_all=$(now)
    rm -f "$cache/stamp"
    work=$cache/build
    tree=$work/tree
    rm -rf "$work" && mkdir -p "$work" || exit 1

    if ! command -v debootstrap >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap || exit 1
    fi
    mirror=${SNAPFS_DEBIAN_MIRROR:-$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | head -1 | grep -oE 'https?://[^ ]+')}
    t=$(now)
    echo "agent-guest: debootstrap bookworm ${mirror:-(its default mirror)}"
    debootstrap --variant=minbase \
        --include=systemd-sysv,udev,qemu-guest-agent,linux-image-amd64,coreutils,findutils,attr \
        bookworm "$tree" ${mirror:+"$mirror"} >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; die "build: debootstrap failed (its log: $work/debootstrap.log)"; }
    echo "agent-guest: debootstrap: $(since "$t") s"

    t=$(now)
    unshare --mount --propagation private bash "$self" --in-tree "$tree" >"$work/configure.log" 2>&1 \
        || { tail -n 20 "$work/configure.log" >&2; die "build: configuring the tree failed (its log: $work/configure.log)"; }
    echo "agent-guest: configure, initramfs: $(since "$t") s"

    t=$(now)
    kernels=("$tree"/boot/vmlinuz-*)
    kver=${kernels[-1]##*/vmlinuz-}
    cp "$tree/boot/vmlinuz-$kver" "$work/vmlinuz" || exit 1
    cp "$tree/boot/initrd.img-$kver" "$work/initrd.img" || exit 1
    rm -rf "${tree:?}"/boot/*
    mib=$(($(du -s -B1M "$tree" | cut -f1) + 256))
    rm -f "$work/disk.raw"
    truncate -s "${mib}M" "$work/disk.raw" || exit 1
    mkfs.ext4 -q -F -L agent-guest -d "$tree" "$work/disk.raw" || die "build: mkfs.ext4 -d failed"
    qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$work/disk.qcow2" || die "build: qemu-img convert failed"
    echo "agent-guest: kernel $kver, disk ${mib} MiB: $(since "$t") s"

    chmod 0644 "$work/vmlinuz" "$work/initrd.img" "$work/disk.qcow2"
    mv -f "$work/vmlinuz" "$work/initrd.img" "$work/disk.qcow2" "$cache/" || exit 1
    rm -rf "$work"
    echo "$recipe" >"$cache/stamp.new" && chmod 0644 "$cache/stamp.new" && mv -f "$cache/stamp.new" "$cache/stamp" || exit 1
    echo "agent-guest: made in $(since "$t_all") s: $(du -h --apparent-size "$cache/disk.qcow2" | cut -f1) disk.qcow2 in $cache"
}

# ------------------------------------------------------------ xml
xml_escape() {
    local s=$1
    s=${s//&/&amp;} s=${s//</&lt;} s=${s//>/&gt;} s=${s//\'/&apos;} s=${s//\"/&quot;}
    printf '%s' "$s"
}

xml() {
    local name disk log
    (($# == 2)) || die "usage: tests/lib/agent-guest.sh xml NAME DISK"
    name=$(xml_escape "$1")
    disk=$(readlink -f "$2") || die "xml: no such disk: $2"
    log=$(xml_escape "$(dirname "$disk")/$1.console.log")
    disk=$(xml_escape "$disk")
    cat <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>768</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$(xml_escape "$cache/vmlinuz")</kernel>
    <initrd>$(xml_escape "$cache/initrd.img")</initrd>
    <cmdline>root=/dev/vda rw console=ttyS0 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <serial type='file'>
      <source path='$log'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

# ------------------------------------------------------------ wait
wait_agent() {
    local name=${1:?usage: tests/lib/agent-guest.sh wait NAME [SECONDS]} bound=${2:-300} t0 err
    t0=$(now)
    while :; do
        if err=$(timeout 20 virsh -q qemu-agent-command --timeout 5 "$name" '{"execute":"guest-ping"}' 2>&1); then
            since "$t0"
            echo
            return 0
        fi
        if awk -v a="$t0" -v b="$(now)" -v n="$bound" 'BEGIN { exit !(b - a >= n) }'; then
            echo "tests/lib/agent-guest.sh: the agent of $name did not answer in $bound s: $err" >&2
            return 1
        fi
        sleep 0.5
    done
}

case ${1:-} in
    build) build ;;
    xml) shift; xml "$@" ;;
    wait) shift; wait_agent "$@" ;;
    *) echo "usage: tests/lib/agent-guest.sh build | xml NAME DISK | wait NAME [SECONDS]" >&2; exit 2 ;;
esac
