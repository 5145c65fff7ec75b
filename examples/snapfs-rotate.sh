#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Rotating snapshots through a snapfs mount: mkdir a dated snapshot, rmdir the oldest beyond KEEP.
#
#   snapfs-rotate.sh [--prefix nightly] [--keep 7] MOUNT/DOMAIN...
#
# From cron, for every domain of a host mounted at /mnt/vms, each night at 02:30:
#   30 2 * * *  root  /usr/local/bin/snapfs-rotate.sh --keep 7 /mnt/vms/*/
# Only snapshots named PREFIX-YYYYmmdd-HHMMSS are rotated; others are never touched.
set -euo pipefail

prefix=nightly
keep=7
while (($#)); do
    case $1 in
        --prefix) prefix=$2; shift 2 ;;
        --keep) keep=$2; shift 2 ;;
        -h|--help) sed -n '3,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; break ;;
        -*) echo "snapfs-rotate: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
if (($# == 0)) || ! [[ $keep =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: snapfs-rotate.sh [--prefix NAME] [--keep N>=1] MOUNT/DOMAIN..." >&2
    exit 2
fi

status=0
for dom in "$@"; do
    dom=${dom%/}
    if [[ ! -f $dom/revert ]]; then
        echo "snapfs-rotate: $dom is not a domain directory of a snapfs mount" >&2
        status=1
        continue
    fi
    name=$prefix-$(date +%Y%m%d-%H%M%S)
    if ! mkdir "$dom/$name"; then
        status=1
        continue
    fi
    echo "$dom/$name"
    # The names sort by time; delete the oldest beyond KEEP.
    mapfile -t old < <(find "$dom" -mindepth 1 -maxdepth 1 -type d -name "$prefix-[0-9]*-[0-9]*" -printf '%f\n' \
                       | grep -E "^$prefix-[0-9]{8}-[0-9]{6}\$" | sort | head -n -"$keep")
    for snap in "${old[@]}"; do
        if rmdir "$dom/$snap"; then
            echo "removed $dom/$snap"
        else
            status=1
        fi
    done
done
exit $status
