#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# A small bootable Debian 12 guest that runs qemu-guest-agent, made once and cached, for the tests that need a running domain whose agent answers.
#
#   tests/lib/agent-guest.sh build              as root: make the cache, unless it is made already
#   tests/lib/agent-guest.sh xml NAME DISK      print a domain's XML (TCG, direct kernel boot of the cached kernel)
#   tests/lib/agent-guest.sh wait NAME [SECONDS]   wait until NAME's agent answers guest-ping (default 300 s)
#
# The cache, $SNAPFS_AGENT_GUEST_CACHE (default /var/cache/snapfs-tests/agent-guest), holds
# disk.qcow2 (the root filesystem, ext4 on the whole disk, vda), vmlinuz, vmlinux (the same
# kernel uncompressed, which the XML boots) and initrd.img; a test copies disk.qcow2 to a place
# of its own (owned by libvirt-qemu) and defines a domain with `xml` over the copy. The stamp
# file is written last: a cache without it (an interrupted build) is made again.
# The guest has no network, no password, no getty: it is driven through its agent only, which
# answers some 5 s after `virsh start` under TCG, before the rest of the boot is done: then
# `virsh shutdown` (which tries the agent first) works at once, --mode acpi only once logind
# runs, a few seconds later.
# `wait` (and virsh) use libvirt's default connection: LIBVIRT_DEFAULT_URI chooses another.
#
#   SNAPFS_DEBIAN_MIRROR   debootstrap's mirror (default: the host's first deb.debian.org-style URI)
set -uo pipefail

self=$(readlink -f "$0")
cache=${SNAPFS_AGENT_GUEST_CACHE:-/var/cache/snapfs-tests/agent-guest}
# What the stamp holds: change it whenever the build below changes, so that caches made before are made again.
recipe="agent-guest 2"

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

# The agent starts when udev sees its virtio port (60-qemu-guest-agent.rules, which the
# package's unit needs: it has no [Install]). Here it starts sooner, as soon as the D-Bus socket
# is there (a guest-shutdown goes to logind through it), without waiting for udev's coldplug: the
# initramfs loaded virtio_console and made /dev/virtio-ports/org.qemu.guest_agent.0.
# Where that link is missing, the unit is skipped at boot, and udev starts it later.
# The D-Bus socket is made at once too (not after sysinit.target): a shutdown that comes early
# waits in it for dbus-daemon and logind.
mkdir -p /etc/systemd/system/dbus.socket.d
printf '[Unit]\nDefaultDependencies=no\nBefore=sockets.target shutdown.target\nConflicts=shutdown.target\n' \
    >/etc/systemd/system/dbus.socket.d/agent-guest.conf
cat >/etc/systemd/system/qemu-guest-agent.service <<'UNIT'
[Unit]
Description=QEMU Guest Agent
DefaultDependencies=no
After=dbus.socket
Conflicts=shutdown.target
Before=shutdown.target
ConditionPathExists=/dev/virtio-ports/org.qemu.guest_agent.0

[Service]
ExecStart=-/usr/sbin/qemu-ga
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
UNIT
systemctl -q enable qemu-guest-agent.service

# Under TCG each process a boot starts costs: no generator runs, and of the units only those
# the agent, the journal, udev and a shutdown (dbus and logind) need.
mkdir -p /etc/systemd/system-generators
for generator in /lib/systemd/system-generators/*; do
    ln -sf /dev/null "/etc/systemd/system-generators/${generator##*/}"
done
systemctl -q mask \
    getty.target getty@.service serial-getty@.service getty-static.service console-getty.service \
    systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer logrotate.timer \
    systemd-networkd-wait-online.service networking.service remote-fs.target \
    modprobe@.service kmod-static-nodes.service systemd-modules-load.service \
    dev-hugepages.mount dev-mqueue.mount sys-kernel-config.mount sys-kernel-debug.mount \
    sys-kernel-tracing.mount sys-fs-fuse-connections.mount proc-sys-fs-binfmt_misc.automount \
    systemd-binfmt.service systemd-random-seed.service systemd-journal-flush.service \
    systemd-remount-fs.service systemd-sysctl.service systemd-sysusers.service \
    systemd-update-utmp.service systemd-update-utmp-runlevel.service systemd-user-sessions.service \
    systemd-pstore.service systemd-firstboot.service systemd-machine-id-commit.service \
    systemd-pcrphase.service systemd-pcrphase-sysinit.service systemd-repart.service \
    systemd-hwdb-update.service systemd-journal-catalog-update.service ldconfig.service \
    systemd-update-done.service systemd-ask-password-console.path systemd-ask-password-wall.path

# The journal in memory only: nothing to flush to the disk at boot.
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\n' >/etc/systemd/journald.conf.d/agent-guest.conf

# Only the kernel modules this guest loads, with what they depend on: a small image, and
# nothing for udev to load at boot for the floppy, IDE, SMBus and PS/2 devices of the machine.
kver=$(ls /lib/modules)
modprobe -S "$kver" --show-depends -a virtio_pci virtio_blk virtio_scsi sd_mod virtio_console \
    virtio_rng ext4 crc32c_generic crc32c_intel autofs4 button evdev loop \
    | awk '$1 == "insmod" { print $2 }' | sort -u >/tmp/keep
find "/lib/modules/$kver/kernel" -name '*.ko*' | sort | comm -23 - /tmp/keep | xargs rm -f
find "/lib/modules/$kver/kernel" -depth -type d -empty -delete
depmod -a "$kver"
rm -f /tmp/keep

# The initramfs: busybox, the modules of a virtio-blk ext4 root and of the agent's port, and an
# /init that loads them, mounts the root and starts systemd. (Debian's own, made with udev, took
# 2.7 of the 9 seconds to the agent under TCG; this one takes a few tenths.)
rm -rf /tmp/initramfs
mkdir -p /tmp/initramfs/bin /tmp/initramfs/dev /tmp/initramfs/proc /tmp/initramfs/sys \
    /tmp/initramfs/root /tmp/initramfs/modules
cp /bin/busybox /tmp/initramfs/bin/
for applet in sh cat mount umount insmod sleep mkdir ln switch_root poweroff; do
    ln -s busybox "/tmp/initramfs/bin/$applet"
done
mknod -m 0600 /tmp/initramfs/dev/console c 5 1
modprobe -S "$kver" --show-depends -a crc32c_generic virtio_pci virtio_blk ext4 virtio_console \
    | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' >/tmp/initramfs-modules
n=10
while read -r module; do
    cp "$module" "/tmp/initramfs/modules/$n-${module##*/}"
    n=$((n + 1))
done </tmp/initramfs-modules
cat >/tmp/initramfs/init <<'INIT'
#!/bin/sh
# agent-guest's initramfs (tests/lib/agent-guest.sh): the root's modules, the root, systemd.
export PATH=/bin
mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
for module in /modules/*.ko; do
    insmod "$module" 2>/dev/null  # (crc32c-intel refuses a CPU without SSE4.2)
done
root=/dev/vda
for arg in $(cat /proc/cmdline); do
    case $arg in root=*) root=${arg#root=} ;; esac
done
n=0
while [ ! -b "$root" ] && [ $n -lt 50 ]; do
    sleep 0.1
    n=$((n + 1))
done
if ! mount -t ext4 -o rw "$root" /root; then
    echo "agent-guest initramfs: cannot mount $root: powering off" >/dev/console
    sleep 2
    poweroff -f
fi
# The link udev makes later to the agent's port (the host names its ports while the root is
# mounted), so that the agent starts without waiting for udev; where it is not there yet, udev
# starts the agent later.
for port in /sys/class/virtio-ports/*; do
    name=$(cat "$port/name" 2>/dev/null)
    [ -n "$name" ] || continue
    mkdir -p /dev/virtio-ports
    ln -sf "../${port##*/}" "/dev/virtio-ports/$name"
done
umount /proc /sys
mount --move /dev /root/dev
exec switch_root /root /sbin/init
INIT
chmod 0755 /tmp/initramfs/init
# Not compressed: nothing for the kernel to unpack (gzip's 1.7 MiB booted no faster).
(cd /tmp/initramfs && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"/boot/initrd.img-$kver"
rm -rf /tmp/initramfs /tmp/initramfs-modules

# What the guest never reads.
rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/* \
    /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/*.log
EOF
    exit $?
fi

# ------------------------------------------------------------ build
# The ELF vmlinux inside a bzImage compressed with xz (Debian's), where it has the PVH entry
# note qemu needs to start it (an ELF note "Xen" of type 18, XEN_ELFNOTE_PHYS32_ENTRY);
# nothing where not.
extract_vmlinux() {
    local offset
    offset=$(LC_ALL=C grep -obUaP -m1 '\xfd7zXZ\x00' "$1" | head -n 1 | cut -d: -f1)
    if [[ -n $offset ]] && command -v xz >/dev/null; then
        tail -c +$((offset + 1)) "$1" | xz -dc --single-stream >"$2" 2>/dev/null
        if LC_ALL=C grep -qaP '\x04\x00\x00\x00[\x04\x08]\x00\x00\x00\x12\x00\x00\x00Xen\x00' "$2"; then
            return 0
        fi
    fi
    echo "agent-guest: no PVH entry found in $1: the guest boots it compressed (some 3 s slower)" >&2
    rm -f "$2"
}

build() {
    local t_all t work tree kver kernels mirror lock mib files
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
        --include=systemd-sysv,udev,qemu-guest-agent,linux-image-amd64,coreutils,findutils,attr,dbus,busybox-static \
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
    # The kernel uncompressed too, an ELF that qemu starts at its PVH entry point: under TCG,
    # unpacking the xz of vmlinuz and the real-mode setup took 3 of the 15 seconds to the agent.
    extract_vmlinux "$work/vmlinuz" "$work/vmlinux"
    rm -rf "${tree:?}"/boot/*
    mib=$(($(du -s -B1M "$tree" | cut -f1) + 256))
    rm -f "$work/disk.raw"
    truncate -s "${mib}M" "$work/disk.raw" || exit 1
    mkfs.ext4 -q -F -L agent-guest -d "$tree" "$work/disk.raw" || die "build: mkfs.ext4 -d failed"
    qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$work/disk.qcow2" || die "build: qemu-img convert failed"
    echo "agent-guest: kernel $kver, disk ${mib} MiB: $(since "$t") s"

    files=(vmlinuz initrd.img disk.qcow2)
    [[ -e $work/vmlinux ]] && files+=(vmlinux)
    rm -f "$cache/vmlinux"
    (cd "$work" && chmod 0644 "${files[@]}" && mv -f "${files[@]}" "$cache/") || exit 1
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
    local name disk log kernel=$cache/vmlinux
    (($# == 2)) || die "usage: tests/lib/agent-guest.sh xml NAME DISK"
    [[ -e $kernel ]] || kernel=$cache/vmlinuz
    name=$(xml_escape "$1")
    disk=$(readlink -f "$2") || die "xml: no such disk: $2"
    log=$(xml_escape "$(dirname "$disk")/$1.console.log")
    disk=$(xml_escape "$disk")
    cat <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>768</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$(xml_escape "$kernel")</kernel>
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
    local name=${1:?usage: tests/lib/agent-guest.sh wait NAME [SECONDS]} bound=${2:-300} t0 err state
    t0=$(now)
    while :; do
        if err=$(timeout 20 virsh -q qemu-agent-command --timeout 5 "$name" '{"execute":"guest-ping"}' 2>&1); then
            since "$t0"
            echo
            return 0
        fi
        # A domain that is gone or stopped (a guest that could not mount its root powers off) ends the wait.
        state=$(timeout 20 virsh -q domstate "$name" 2>&1)
        case $state in
            running | paused | idle | "in shutdown") ;;
            *)
                echo "tests/lib/agent-guest.sh: $name is not running ($state): $err" >&2
                return 1
                ;;
        esac
        if awk -v a="$t0" -v b="$(now)" -v n="$bound" 'BEGIN { exit !(b - a >= n) }'; then
            echo "tests/lib/agent-guest.sh: the agent of $name did not answer in $bound s: $err" >&2
            return 1
        fi
        sleep 0.2
    done
}

case ${1:-} in
    build) build ;;
    xml) shift; xml "$@" ;;
    wait) shift; wait_agent "$@" ;;
    *) echo "usage: tests/lib/agent-guest.sh build | xml NAME DISK | wait NAME [SECONDS]" >&2; exit 2 ;;
esac
