#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# Builds the guest reader's test images in $1 without an appliance: source trees, ext4 by mkfs -d, qcow2 chains, an internal snapshot.
set -eu
D=$1
mkdir -p "$D"
chmod 0755 "$D"
cd "$D"

# The base tree: every kind of file the reader must show exactly.
mkdir -p src0/deep/a/b/c/d/e/f/g/h/i/j src0/dir
printf 'hello base\n' > src0/small.txt
: > src0/empty
head -c 1048576 /dev/urandom > src0/one-mib.bin
head -c 20000000 /dev/urandom > src0/big.bin
truncate -s 50M src0/sparse.bin
printf 'in the middle' | dd of=src0/sparse.bin bs=1 seek=10485760 conv=notrunc status=none
ln -s small.txt src0/link-rel
ln -s /etc/passwd src0/link-abs
ln -s does/not/exist src0/link-dangling
printf 'linked\n' > src0/hard1
ln src0/hard1 src0/hard2
ln src0/hard1 src0/dir/hard3
mkfifo src0/fifo
mknod src0/null c 1 3
mknod src0/blockdev b 7 0
/usr/bin/python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' src0/sock
printf 'space\n' > 'src0/with space'
printf 'unicode\n' > 'src0/ünïcødé ✓'
printf 'newline\n' > "src0/new
line"
printf 'deep\n' > src0/deep/a/b/c/d/e/f/g/h/i/j/file
printf 'owned\n' > src0/owned
chown 1234:5678 src0/owned
chmod 4751 src0/owned
setfattr -n user.snapfs_test -v 'some value' src0/small.txt
touch -d '2001-02-03 04:05:06.123456789' src0/small.txt
for i in $(seq 1 200); do printf '%s\n' "$i" > "src0/dir/f$i"; done
# POSIX ACLs: an access ACL on a file, a default ACL on a directory (mke2fs -d copies them).
setfacl -m u:1234:r,g:5678:rw src0/dir/f7
setfacl -d -m u:1234:rx src0/deep

UUID=0f6c6a1e-5b53-4d7c-9a38-8c1b3b0e7a11
mkfs.ext4 -q -F -U "$UUID" -d src0 base.raw 96M

# Layer 1 and 2: the same filesystem changed, stored as qcow2 overlays over the raw base.
cp -a src0 src1
printf 'changed in layer 1\n' > src1/small.txt
printf 'new in layer 1\n' > src1/new1.txt
rm src1/one-mib.bin
mkfs.ext4 -q -F -U "$UUID" -d src1 l1.raw 96M
qemu-img convert -q -f raw -O qcow2 -B base.raw -F raw l1.raw layer1.qcow2
cp -a src1 src2
printf 'changed in layer 2\n' > src2/small.txt
mkdir src2/newdir
printf 'new in layer 2\n' > src2/newdir/new2.txt
mkfs.ext4 -q -F -U "$UUID" -d src2 l2.raw 96M
qemu-img convert -q -f raw -O qcow2 -B layer1.qcow2 -F qcow2 l2.raw layer2.qcow2
rm -f l1.raw l2.raw

# An internal snapshot holding the tree srcA, while the image itself now holds srcB.
mkdir -p srcA srcB
printf 'at snapshot A\n' > srcA/which
printf 'unlabelled\n' > srcA/plain
# srcA is an SELinux-labelled filesystem (its root is labelled); the other trees are not.
setfattr -n security.selinux -v 'system_u:object_r:root_t:s0' srcA
setfattr -n security.selinux -v 'system_u:object_r:etc_t:s0' srcA/which
printf 'after snapshot A\n' > srcB/which
printf 'only after\n' > srcB/later
mkfs.ext4 -q -F -d srcA a.raw 32M
mkfs.ext4 -q -F -d srcB b.raw 32M
qemu-img convert -q -f raw -O qcow2 a.raw internal.qcow2
qemu-img snapshot -c snapA internal.qcow2
qemu-img convert -q -n -f raw -O qcow2 b.raw internal.qcow2
rm -f a.raw b.raw

# A small Linux "OS" on two disks: root on one, /boot on the other, joined by fstab.
mkdir -p osroot/etc osroot/bin osroot/usr/bin osroot/boot osroot/root osboot
RU=3a7d8a52-3f1e-4a3e-8f44-0d9f6a2e8b01
BU=7c1e9a0b-2d3c-4b5a-9e8f-1a2b3c4d5e6f
cat > osroot/etc/fstab <<FSTAB
UUID=$RU / ext4 defaults 0 1
UUID=$BU /boot ext4 defaults 0 2
FSTAB
printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n' > osroot/etc/os-release
printf '12.0\n' > osroot/etc/debian_version
printf 'testhost\n' > osroot/etc/hostname
cp /bin/true osroot/bin/ls
cp /bin/true osroot/usr/bin/true
printf 'root file\n' > osroot/root/note
printf 'kernel\n' > osboot/vmlinuz-test
mkfs.ext4 -q -F -U "$RU" -d osroot osroot.raw 32M
mkfs.ext4 -q -F -U "$BU" -d osboot osboot.raw 16M
qemu-img convert -q -f raw -O qcow2 osboot.raw osboot.qcow2
rm -f osboot.raw
# The same OS on one disk, whose fstab names its root by PARTUUID (which snapfs does not resolve itself).
mkdir -p osroot2
cp -a osroot/. osroot2/
printf 'PARTUUID=0a1b2c3d-01 / ext4 defaults 0 1\n' > osroot2/etc/fstab
printf 'otherhost\n' > osroot2/etc/hostname
mkfs.ext4 -q -F -d osroot2 osroot2.raw 32M

# A hostile filesystem: the base with its metadata blocks scrambled (the same bytes every run).
head -c 4194304 base.raw > fuzz.raw
/usr/bin/python3 - fuzz.raw <<'PY'
import random, sys
random.seed(1234)
with open(sys.argv[1], 'r+b') as f:
    data = bytearray(f.read())
    # Metadata past the superblock and group descriptors: the filesystem still mounts, its inodes and directories lie.
    for _ in range(3000):
        i = random.randrange(524288, len(data))
        data[i] = random.randrange(256)
    f.seek(0); f.write(data)
PY
truncate -s 96M fuzz.raw
echo ok
