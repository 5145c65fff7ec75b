#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# In which snapshot did a guest file last change?  Compares it along the current snapshot's line of ancestors.
#
#   snapfs-file-history.sh MOUNT/DOMAIN PATH/IN/GUEST
#
# e.g. snapfs-file-history.sh /mnt/snapfs/web01 var/www/index.html
# prints one line per snapshot from the root to the current one (created, checksum or
# "absent", name) and then the snapshot where the file took the content it has in the
# current snapshot.  PATH is relative to a snapshot directory (etc/hostname, or sda/etc/hostname
# where libguestfs found no operating system).
set -euo pipefail

if (($# != 2)); then
    echo "usage: snapfs-file-history.sh MOUNT/DOMAIN PATH" >&2
    exit 2
fi
dom=${1%/}
rel=${2#/}
if [[ ! -f $dom/revert ]]; then
    echo "snapfs-file-history: $dom is not a domain directory of a snapfs mount" >&2
    exit 1
fi
current=$(head -n 1 "$dom/revert")
if [[ -z $current ]]; then
    echo "snapfs-file-history: $(basename "$dom") has no current snapshot" >&2
    exit 1
fi

# The line of ancestors, root first, following user.snapfs.parent.
line=()
snap=$current
while [[ -n $snap ]]; do
    line=("$snap" "${line[@]}")
    snap=$(getfattr --only-values -n user.snapfs.parent "$dom/$snap" 2>/dev/null || true)
done

sum_of() {
    if [[ -f $1 ]]; then
        sha256sum <"$1" | cut -c1-16
    elif [[ -L $1 ]]; then
        printf 'link:%s' "$(readlink "$1")"
    elif [[ -e $1 ]]; then
        echo "not-a-file"
    else
        echo "absent"
    fi
}

last=""
previous=""
for snap in "${line[@]}"; do
    sum=$(sum_of "$dom/$snap/$rel")
    created=$(getfattr --only-values -n user.snapfs.created "$dom/$snap")
    printf '%s  %-16s  %s\n' "$(date -u -d "@$created" '+%Y-%m-%d %H:%M:%S')" "$sum" "$snap"
    if [[ $sum != "$previous" ]]; then
        last=$snap
    fi
    previous=$sum
done
if [[ $previous == absent && $last == "${line[0]}" ]]; then
    echo "/$rel is in none of these snapshots"
    exit 1
elif [[ $previous == absent ]]; then
    echo "/$rel is absent in $current; it was removed in $last"
else
    echo "/$rel last changed in $last"
fi
