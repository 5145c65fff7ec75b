# SPDX-License-Identifier: GPL-2.0-or-later
# LVM guests through a real mount: a snapshot whose root is a logical volume (mounted as its fstab says), a layer shown
# as one folder per logical volume, each read by an appliance of its own (LVM seen from the host first), and the images
# left as they were.
import os
import re
import shutil
from pathlib import Path

from conftest import IMAGE_ROOT, URI, run, guest_set_fixtures
from test_guest import compare

VG = "vg-snapfs"            # a dash, which /dev/mapper doubles
FOLDER = "vg--snapfs-root"  # the logical volume's folder, named as in /dev/mapper


def write_tree(root, files):
    for rel, content in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content)
    return root


class LvmSet:
    """One disk, a physical volume of volume group VG with a logical volume 'root':
    base.qcow2 holds tree A in it (no OS), top.qcow2 over it tree B (a small Linux whose fstab names
    /dev/mapper/vg--snapfs-root), live.qcow2 is the domain's disk, snapshot 'lv1' freezes top.qcow2 and live.qcow2.
    A second domain's disk, logical.qcow2, holds the same physical volume in a logical partition."""

    def __init__(self, doms):
        d = self.dir = IMAGE_ROOT / "lvm"
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
        d.chmod(0o755)
        # The volume group by guestfish (one appliance, on a scratch disk); the filesystems by mkfs.ext4 -d on the host,
        # written into the logical volume's extents: a linear volume made first starts at the volume's pe_start.
        fish = ["guestfish", "-N", f"{d}/pv.raw=disk:80M", "--", "pvcreate", "/dev/sda", ":",
                "vgcreate", VG, "/dev/sda", ":", "lvcreate", "root", VG, "48", ":", "pvs-full"]
        # Test setup, not snapfs: TCG from the start. A /dev/kvm that qemu cannot use fails (QEMU 7.2) or stalls
        # without end (QEMU 10, and 7.2 on some machines); a timed-out try would leave its qemu holding pv.raw's lock.
        made = run(*fish, timeout=300, env=dict(os.environ, LIBGUESTFS_BACKEND_SETTINGS="force_tcg"))
        pe_start = int(re.search(r"pe_start: (\d+)", made.stdout).group(1))
        self.srcA = write_tree(d / "srcA", {
            "a.txt": b"in tree A\n",
            "dir/random.bin": os.urandom(300000),
            "dir/deeper/b.txt": b"deeper\n",
            **{f"many/f{i}": f"{i}\n".encode() * i for i in range(1, 9)},
        })
        self.srcB = write_tree(d / "srcB", {
            "etc/fstab": f"/dev/mapper/{FOLDER} / ext4 defaults 0 1\n".encode(),
            "etc/os-release": b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
                              b'VERSION_ID="12"\nID=debian\n',
            "etc/debian_version": b"12.0\n",
            "etc/hostname": b"lvmhost\n",
            "bin/ls": Path("/bin/true").read_bytes(),
            "usr/bin/true": Path("/bin/true").read_bytes(),
            "root/note": b"in tree B\n",
        })
        for name, src in (("base", self.srcA), ("top", self.srcB)):
            run("mkfs.ext4", "-q", "-F", "-d", src, d / f"{name}.fs", "48M")
            shutil.copy(d / "pv.raw", d / f"{name}.raw")
            run("dd", f"if={d}/{name}.fs", f"of={d}/{name}.raw", "bs=64K", f"seek={pe_start // 65536}",
                "conv=notrunc", "status=none")
        run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", d / "base.raw", d / "base.qcow2")
        run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-B", d / "base.qcow2", "-F", "qcow2",
            d / "top.raw", d / "top.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", d / "top.qcow2", d / "live.qcow2")
        # The same physical volume (tree A) in a logical partition, which the look from the host does not read.
        run("truncate", "-s", "96M", d / "logical.raw")
        run("sh", "-c", f"printf 'start=2048, type=5\\nstart=4096, type=8e\\n' | sfdisk -q {d}/logical.raw")
        run("dd", f"if={d}/base.raw", f"of={d}/logical.raw", "bs=512", "seek=4096", "conv=notrunc", "status=none")
        run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", d / "logical.raw", d / "logical.qcow2")
        for f in list(d.iterdir()):
            if f.suffix in (".raw", ".fs"):
                f.unlink()
            elif f.is_file():
                f.chmod(0o644)
        self.dom = doms.define([("vda", d / "live.qcow2", "qcow2")], suffix="lvm")
        self.dom.snapshot("lv1")
        self.logical = doms.define([("vda", d / "logical.qcow2", "qcow2")], suffix="lvmlog")


lvm, mnt = guest_set_fixtures("lvm", "lvm", lambda images, doms: LvmSet(doms))


def images_info(lvm):
    return {f.name: run("qemu-img", "info", "-U", f).stdout for f in sorted(lvm.dir.glob("*.qcow2"))}


def test_lvm_snapshot_and_layers(lvm, mnt):
    before = images_info(lvm)
    dom = mnt / lvm.dom.name
    # The snapshot: inspection finds the Linux on the logical volume and mounts it at the root, as its fstab says.
    compare(lvm.srcB, dom / "lv1")
    # Its fstab names /dev/mapper/...: not for snapfs to resolve itself, so libguestfs's full inspection did.
    assert int(os.getxattr(mnt, "user.snapfs.inspections")) >= 1
    # The base layer holds no OS: one folder per filesystem, the logical volume's named as in /dev/mapper.
    layers = sorted(os.listdir(dom / "layers" / "vda"), key=lambda n: int(n.split("-")[0]))
    assert layers[0] == "0-base.qcow2", layers
    assert os.listdir(dom / "layers" / "vda" / layers[0]) == [FOLDER]
    compare(lvm.srcA, dom / "layers" / "vda" / layers[0] / FOLDER)
    assert "user.snapfs.error" not in os.listxattr(dom / "layers" / "vda" / layers[0])
    # A look from the host found the physical volume, so each of the two views started an appliance of its own at once
    # (no shared appliance booted only to find that out); a second look asks none.
    assert int(os.getxattr(mnt, "user.snapfs.appliance_starts")) == 2
    calls = int(os.getxattr(mnt, "user.snapfs.appliance_calls"))
    compare(lvm.srcB, dom / "lv1")
    assert int(os.getxattr(mnt, "user.snapfs.appliance_calls")) == calls
    # Nothing was written to an image, and libvirt still sees the domain as it was.
    assert images_info(lvm) == before
    assert "lv1" in run("virsh", "-c", URI, "snapshot-list", "--name", lvm.dom.name).stdout.split()


def test_lvm_in_a_logical_partition(lvm, mnt):
    """What the look from the host misses, the shared appliance finds: the view then moves to one of its own."""
    starts = int(os.getxattr(mnt, "user.snapfs.appliance_starts"))
    base = mnt / lvm.logical.name / "layers" / "vda" / "0-logical.qcow2"
    assert FOLDER in os.listdir(base)
    compare(lvm.srcA, base / FOLDER)
    assert int(os.getxattr(mnt, "user.snapfs.appliance_starts")) == starts + 2
