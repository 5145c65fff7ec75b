#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# Detaches, in the calling mount namespace, every FUSE mount it was given a copy of.
#
#   . tests/lib/detach-fuse.sh        (sourced, right after unshare --mount, before anything else)
#
# A new mount namespace starts as a copy of every mount, FUSE mounts included: a copy here
# would keep such a filesystem alive after it is unmounted outside, and its daemon would never
# see the end it waits for (snapfs hung at unmount). Detach them all at once, deepest first.
awk '{ split($0, halves, " - "); split(halves[2], fstype, " ")
       if (fstype[1] ~ /^fuse(blk)?(\.|$)/) {
           p = $5; gsub(/\\040/, " ", p); gsub(/\\011/, "\t", p); gsub(/\\012/, "\n", p); gsub(/\\134/, "\\", p)
           print p } }' /proc/self/mountinfo | sort -r | while IFS= read -r point; do
    umount -l "$point" || true
done
