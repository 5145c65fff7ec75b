#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Put one file from a snapshot back into a shut-off domain's live disk (as virt-copy-in does), through a snapfs mount.
#
#   snapfs-restore-file.sh MOUNT/DOMAIN/SNAPSHOT/PATH/IN/GUEST
#
# e.g. snapfs-restore-file.sh /mnt/snapfs/web01/before-upgrade/etc/nginx/nginx.conf
# puts nginx.conf as it was at before-upgrade into /etc/nginx/ of web01's live disk.
# Where libguestfs found no operating system, the snapshot shows one folder per
# filesystem (sda, sdb1...): the path then starts with it, and that filesystem is used.
# Refused while the domain runs: writing under a running guest would corrupt its disk.
# Refused where the file or a folder on its way is a symbolic link in the guest: the host would
# resolve it against its own files.
# The live disks are taken from the mount (layers/*/ highest number), so no libvirt
# connection is needed (the demo's embedded libvirt is held by snapfs).
set -euo pipefail

if (($# != 1)) || [[ $1 == -* ]]; then
    echo "usage: snapfs-restore-file.sh MOUNT/DOMAIN/SNAPSHOT/PATH" >&2
    exit 2
fi
# Lexically absolute, without . and .. (nothing is resolved: guest symlinks must not be followed).
src=$(realpath -s -- "$1")

# The domain directory: the first folder from the top holding a revert file and a layers folder.
# Above it are the host's folders and snapfs's own, never a guest's, so walking them is safe.
IFS=/ read -r -a parts <<<"${src#/}"
dir=""
i=0
while ((i < ${#parts[@]} - 1)); do
    if [[ -n $dir && -f $dir/revert && -d $dir/layers ]]; then
        break
    fi
    dir+=/${parts[i]}
    i=$((i + 1))
done
if ((i >= ${#parts[@]} - 1)) || [[ ! ( -f $dir/revert && -d $dir/layers ) ]]; then
    echo "snapfs-restore-file: $src is not inside a snapshot of a snapfs mount" >&2
    exit 1
fi
domain=$dir
dir+=/${parts[i]}
i=$((i + 1))
# Below the snapshot everything is the guest's: a symlink there would be resolved on the host
# (a link to /etc/shadow would put the host's shadow into the guest), so none is taken.
rel=""
path=$dir
while ((i < ${#parts[@]})); do
    path+=/${parts[i]}
    rel+=${rel:+/}${parts[i]}
    if [[ -L $path ]]; then
        echo "snapfs-restore-file: refused: $path is a symbolic link in the guest (snapfs-restore-file" \
             "never follows one: the host would resolve it)" >&2
        exit 1
    fi
    i=$((i + 1))
done
if [[ ! -f $src ]]; then
    echo "snapfs-restore-file: $src is not a file" >&2
    exit 1
fi
snapshot=$(basename "$dir")
if [[ $(getfattr --only-values -n user.snapfs.kind "$dir" 2>/dev/null) == "" ]]; then
    echo "snapfs-restore-file: $dir is not a snapshot directory" >&2
    exit 1
fi
state=$(getfattr --only-values -n user.snapfs.state "$domain")
if [[ $state != shutoff ]]; then
    echo "snapfs-restore-file: $(basename "$domain") is $state; shut it down first (virsh shutdown)" >&2
    exit 1
fi

# The live disk of each target: the highest-numbered layer.
drives=()
for disk in "$domain"/layers/*/; do
    top=$(find "$disk" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -n | tail -1)
    file=$(getfattr --only-values -n user.snapfs.file "$disk$top")
    format=$(getfattr --only-values -n user.snapfs.format "$disk$top")
    drives+=(--format="$format" -a "$file")
done

# A first folder named like a device (sda, sdb1, vda2) means a filesystem without an operating system.
first=${rel%%/*}
if [[ $rel == */* && $first =~ ^(s|v|h|xv)d[a-z]+[0-9]*$ && ! -e $dir/etc ]]; then
    where=(-m "/dev/${first/#[vhx]*d/sd}")
    rel=${rel#*/}
else
    where=(-i)
fi
target_dir=/$(dirname "$rel")
target_dir=${target_dir%/.}
target_dir=${target_dir:-/}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -p -P -- "$src" "$tmp/"
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
# A /dev/kvm that fails makes libguestfs's launch fail (QEMU 7.2: "failed to set MSR", retried below) or
# stall without a word and without end (QEMU 10, on nested virtualisation): a launch with no disk, bounded,
# tells before anything is written.
if [[ -z ${LIBGUESTFS_BACKEND_SETTINGS:-} && -e /dev/kvm ]] && ! timeout -s KILL 60 guestfish -a /dev/null run \
    >/dev/null 2>&1; then
    export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
fi
# virt-copy-in is `guestfish --rw -i copy-in`; guestfish itself also takes -m for a disk without an OS.
# Where KVM is present but unusable the appliance dies at launch: then once more with TCG.
copy_in() { guestfish --rw "${drives[@]}" "${where[@]}" copy-in "$tmp/$(basename "$src")" "$target_dir"; }
if ! copy_in 2>"$tmp/err"; then
    if [[ -z ${LIBGUESTFS_BACKEND_SETTINGS:-} ]] && grep -q "launch failed\|appliance closed" "$tmp/err"; then
        LIBGUESTFS_BACKEND_SETTINGS=force_tcg copy_in
    else
        cat "$tmp/err" >&2
        exit 1
    fi
fi
echo "restored /$rel of $(basename "$domain") from $snapshot"
