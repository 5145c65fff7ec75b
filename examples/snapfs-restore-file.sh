#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Put one file from a snapshot back where it was in the domain: cp -a into the domain's live/ folder.
#
#   snapfs-restore-file.sh MOUNT/DOMAIN/SNAPSHOT/PATH/IN/GUEST
#
# e.g. snapfs-restore-file.sh /mnt/snapfs/web01/before-upgrade/etc/nginx/nginx.conf
# is   cp -a /mnt/snapfs/web01/before-upgrade/etc/nginx/nginx.conf /mnt/snapfs/web01/live/etc/nginx/nginx.conf
# with the checks a shell user would forget: the path is inside a snapshot, neither the file nor a
# folder on its way (in the snapshot or in live/) is a symbolic link in the guest (the host's kernel
# would resolve it against the host's own files), and the folder it goes into exists in live/.
# snapfs does the rest: live/ is writable while the domain is shut off, and the first change takes
# a snapshot pre-restore-DATE first, so `echo pre-restore-DATE > DOMAIN/revert` undoes it.
set -euo pipefail

die() { echo "snapfs-restore-file: $*" >&2; exit 1; }

if (($# != 1)) || [[ $1 == -* ]]; then
    echo "usage: snapfs-restore-file.sh MOUNT/DOMAIN/SNAPSHOT/PATH" >&2
    exit 2
fi
# Lexically absolute, without . and .. (nothing is resolved: guest symlinks must not be followed).
src=$(realpath -s -- "$1")

# The domain directory: the first folder from the top holding a revert file and a layers folder.
# Above it are the host's folders and snapfs's own, never a guest's, so walking them is safe.
IFS=/ read -r -a parts <<<"${src#/}"
domain=""
i=0
while ((i < ${#parts[@]} - 1)); do
    if [[ -n $domain && -f $domain/revert && -d $domain/layers ]]; then
        break
    fi
    domain+=/${parts[i]}
    i=$((i + 1))
done
if ((i >= ${#parts[@]} - 1)) || [[ ! ( -f $domain/revert && -d $domain/layers && -d $domain/live ) ]]; then
    die "$src is not inside a snapshot of a snapfs mount"
fi
snapshot=${parts[i]}
case $snapshot in
    live | layers) die "$src is not inside a snapshot (it is in $snapshot/)" ;;
esac
i=$((i + 1))
rel=$(IFS=/; echo "${parts[*]:i}")

# Below the snapshot, and below live/, everything is the guest's: a symlink there would be resolved
# on the host (a link to /etc/shadow would put the host's shadow into the guest, or the file over
# the host's), so none is taken on either side.
no_links() {
    local path=$1 part rest
    IFS=/ read -r -a rest <<<"$rel"
    for part in "${rest[@]}"; do
        path+=/$part
        if [[ -L $path ]]; then
            die "refused: $path is a symbolic link in the guest (snapfs-restore-file never follows one: the" \
                "host would resolve it)"
        fi
    done
}
no_links "$domain/$snapshot"
[[ -f $src ]] || die "$src is not a file"
no_links "$domain/live"
dst=$domain/live/$rel
[[ -d $(dirname "$dst") ]] || die "$(dirname "$dst") is not a folder in the domain now: make it first (mkdir -p)"
[[ ! -e $dst || -f $dst ]] || die "$dst is there and is not a file"

if ! cp -a -- "$src" "$dst"; then
    why=$(getfattr --only-values -n user.snapfs.error "$domain/live" 2>/dev/null || true)
    die "cannot write $dst${why:+: $why}"
fi
echo "restored /$rel of $(basename "$domain") from $snapshot"
