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
rel=${rel%/}
if [[ -z $rel || /$rel/ == */../* || /$rel/ == */./* ]]; then
    echo "snapfs-file-history: $2 must be a path inside the guest, without . or .. in it" >&2
    exit 2
fi
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

# A guest's symlink is never followed: the host would resolve it against its own files (a link
# to /etc/shadow would checksum the host's).  A link as the file itself is shown as its target;
# a link among the folders on the way refuses the whole question.
sum_of() {
    local root=$1 path=$1 part
    local -a parts

    IFS=/ read -r -a parts <<<"$rel"
    for part in "${parts[@]:0:${#parts[@]}-1}"; do
        path+=/$part
        if [[ -L $path ]]; then
            echo "snapfs-file-history: refused: ${path#"$root"/} is a symbolic link in $(basename "$root")" \
                 "(never followed: the host would resolve it)" >&2
            return 1
        fi
    done
    path+=/${parts[-1]}
    if [[ -L $path ]]; then
        printf 'link:%s\n' "$(readlink "$path")"
    elif [[ -f $path ]]; then
        sha256sum <"$path" | cut -c1-16
    elif [[ -e $path ]]; then
        echo "not-a-file"
    else
        echo "absent"
    fi
}

last=""
previous=""
for snap in "${line[@]}"; do
    sum=$(sum_of "$dom/$snap") || exit 1
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
