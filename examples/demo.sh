#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# The README's first command: install, build, make demo VMs in a private libvirt root and mount them at /mnt/snapfs.
#
#   examples/demo.sh               (as root; again: unmounts and starts over)
#   examples/demo.sh --clean       unmount and remove everything the demo made
#
# The demo lives in an embedded libvirt driver (qemu:///embed?root=DIR) so that the host's
# own VMs are never touched.  An embedded root can be used by one process at a time: while
# snapfs holds it, virsh cannot open it (unmount first; see the README).
# SNAPFS_SKIP_APT=1 skips apt-get; SNAPFS_BUILD=DIR picks the build directory (default build).
set -euo pipefail

cd "$(dirname "$0")/.."
top=$PWD
demo=${SNAPFS_DEMO_DIR:-/var/lib/snapfs-demo}
mnt=${SNAPFS_DEMO_MOUNT:-/mnt/snapfs}
uri="qemu:///embed?root=$demo/libvirt"
images=$demo/images
build=${SNAPFS_BUILD:-build}
[[ $build == /* ]] || build=$top/$build
# shellcheck source=tests/lib/packages.sh
source tests/lib/packages.sh

if [[ $(id -u) != 0 ]]; then
    echo "examples/demo.sh: run as root (it installs packages and mounts at $mnt)" >&2
    exit 2
fi

# Unmount an earlier demo and wait for its snapfs to let go of the embedded root (it stops its
# libguestfs appliances first, which can take a while). One that does not exit within a minute is
# stopped, and said so: a snapfs that hangs after unmount is a bug.
unmount_demo() {
    local i pids
    if grep -qs " $mnt fuse" /proc/mounts; then
        fusermount3 -u "$mnt" || fusermount3 -u -z "$mnt"
    fi
    for ((i = 0; i < 300; i++)); do
        pids=$(pgrep -f "snapfs -c qemu:///embed\\?root=$demo/libvirt " || true)
        [[ -z $pids ]] && return 0
        sleep 0.2
    done
    echo "examples/demo.sh: warning: snapfs did not exit within 60 s of unmounting; stopping it (pids $(echo $pids))" >&2
    # shellcheck disable=SC2086
    kill $pids 2>/dev/null || true
    sleep 2
    if pgrep -f "snapfs -c qemu:///embed\\?root=$demo/libvirt " >/dev/null; then
        echo "examples/demo.sh: an earlier snapfs on $demo still runs" >&2
        return 1
    fi
}

if [[ ${1:-} == --clean ]]; then
    unmount_demo
    rm -rf "$demo"
    rmdir "$mnt" 2>/dev/null || true
    echo "demo removed ($demo, $mnt)"
    exit 0
fi

echo "== packages"
snapfs_install_packages
echo "== build ($build)"
[[ -f $build/build.ninja ]] || meson setup "$build"
meson compile -C "$build"
snapfs_need_fuse
# A private / (some containers) keeps a FUSE mount alive in the qemu namespaces libvirt makes.
snapfs_shared_mounts

echo "== demo VMs in $demo"
unmount_demo
rm -rf "$demo"
mkdir -p "$images" "$demo/libvirt" "$mnt"
chmod 0755 "$demo" "$images"
virsh() { command virsh -q -c "$uri" "$@"; }

# An ext4 filesystem holding the files given as NAME=CONTENT (NAME@=TARGET a symlink, NAME/= a directory), as raw image $1.
mkfs_files() {
    local raw=$1 tree
    shift
    tree=$(mktemp -d)
    for spec in "$@"; do
        local name=${spec%%=*} value=${spec#*=}
        mkdir -p "$tree/$(dirname "${name%@}")"
        if [[ $name == */ ]]; then
            mkdir -p "$tree/$name"
        elif [[ $name == *@ ]]; then
            ln -s "$value" "$tree/${name%@}"
        else
            printf '%s\n' "$value" >"$tree/$name"
        fi
    done
    rm -f "$raw"
    truncate -s 32M "$raw"
    mkfs.ext4 -q -F -L demo -d "$tree" "$raw"
    rm -rf "$tree"
}

# Image $1 as an overlay on $2 that reads as a filesystem with the remaining files (only what differs is stored).
overlay_files() {
    local dest=$1 backing=$2
    shift 2
    mkfs_files "$demo/tmp.raw" "$@"
    rm -f "$dest"
    qemu-img convert -q -O qcow2 -B "$backing" -F qcow2 "$demo/tmp.raw" "$dest"
    rm -f "$demo/tmp.raw"
}

define() {   # name, disk file
    cat >"$demo/$1.xml" <<XML
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
XML
    virsh define "$demo/$1.xml" >/dev/null
    rm -f "$demo/$1.xml"
}

# Enough of a Debian for libguestfs's inspection to find an OS, so a snapshot directory is the guest's root.
common=("etc/os-release=$(printf 'PRETTY_NAME="Demo Linux 12"\nNAME="Demo Linux"\nID=debian\nVERSION_ID=12')"
        "etc/fstab=LABEL=demo / ext4 defaults 0 1" "bin/=" "usr/bin/=" "sbin/=" "tmp/="
        "etc/motd@=issue" "etc/issue=Demo Linux")

# A template shared by the VMs, as a cloud image would be.
mkfs_files "$demo/tmp.raw" "${common[@]}" "etc/hostname=template"
qemu-img convert -q -O qcow2 "$demo/tmp.raw" "$images/demo-template.qcow2"
rm -f "$demo/tmp.raw"

# web01: its disk an overlay on the template, then three external snapshots, each layer with other files.
# (each state's files separated by '|')
web=(
    "etc/hostname=web01|var/www/index.html=<h1>version 1</h1>"
    "etc/hostname=web01|var/www/index.html=<h1>version 2</h1>|etc/nginx/nginx.conf=worker_processes 2;"
    "etc/hostname=web01|var/www/index.html=<h1>version 3</h1>|home/alice/notes.txt=remember the upgrade"
    "etc/hostname=web01|var/www/index.html=<h1>version 4</h1>|home/alice/notes.txt=upgrade done"
)
IFS='|' read -ra files <<<"${web[0]}"
overlay_files "$images/web01.qcow2" "$images/demo-template.qcow2" "${common[@]}" "${files[@]}"
define web01 "$images/web01.qcow2"
below=$images/web01.qcow2
i=1
for snap in before-upgrade after-upgrade nightly-2026-11-24; do
    virsh snapshot-create-as web01 "$snap" --description "demo snapshot $snap" --disk-only --atomic >/dev/null
    top=$(virsh domblklist web01 | awk '$1 == "vda" { print $2 }')
    # libvirt made an empty overlay; give it the files of the next state.
    IFS='|' read -ra files <<<"${web[i]}"
    overlay_files "$top" "$below" "${common[@]}" "${files[@]}"
    below=$top
    i=$((i + 1))
done

# db01: one qcow2 disk with internal snapshots; the live disk is rewritten in place between them (qemu-io).
mkfs_files "$demo/tmp.raw" "${common[@]}" "etc/hostname=db01" "srv/db/tables.txt=users"
qemu-img convert -q -O qcow2 "$demo/tmp.raw" "$images/db01.qcow2"
define db01 "$images/db01.qcow2"
virsh snapshot-create-as db01 initial-load --description "right after the first load" >/dev/null
mkfs_files "$demo/tmp.raw" "${common[@]}" "etc/hostname=db01" "srv/db/tables.txt=users orders"
qemu-io -f qcow2 -c "write -s $demo/tmp.raw 0 32M" "$images/db01.qcow2" >/dev/null
virsh snapshot-create-as db01 with-orders >/dev/null
rm -f "$demo/tmp.raw"

# scratch: a VM without snapshots, to try mkdir, rmdir and revert on.
qemu-img create -q -f qcow2 -F qcow2 -b "$images/demo-template.qcow2" "$images/scratch.qcow2"
define scratch "$images/scratch.qcow2"

echo "== mount $mnt"
"$build/snapfs" -c "$uri" -o "state_dir=$demo/state" "$mnt"
for ((i = 0; i < 100; i++)); do
    grep -qs " $mnt fuse" /proc/mounts && break
    sleep 0.1
done
grep -qs " $mnt fuse" /proc/mounts || { echo "examples/demo.sh: snapfs did not mount $mnt" >&2; exit 1; }

cat <<EOF

snapfs is mounted at $mnt: three demo VMs in a private libvirt ($uri).

  ls $mnt                                  web01  db01  scratch
  ls $mnt/web01                            its snapshots, layers/, live/ and revert
  ls $mnt/web01/layers/vda                 the backing chain, 0 = the template
  getfattr -d $mnt/web01/after-upgrade     parent, created, description, state, kind, current
  getfattr -d $mnt/web01/layers/vda/*      file, format, virtual_size, backing, snapshot
  cat $mnt/web01/revert                    the current snapshot
  cat $mnt/web01/before-upgrade/etc/hostname
  cat $mnt/web01/live/etc/hostname         the guest's files now
  cp -a $mnt/web01/before-upgrade/etc/motd $mnt/web01/live/etc/
                                           restore a file (a pre-restore snapshot first)
  diff -r $mnt/web01/before-upgrade $mnt/web01/nightly-2026-11-24
  ls $mnt/db01                             internal snapshots
  mkdir $mnt/scratch/first                 take a snapshot
  echo first > $mnt/scratch/revert         revert to it
  rmdir $mnt/scratch/first                 delete it
  fusermount3 -u $mnt                      unmount (then virsh -c '$uri' works again)
  examples/demo.sh --clean                        remove the demo
EOF
