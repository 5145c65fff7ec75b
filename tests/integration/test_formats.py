# SPDX-License-Identifier: GPL-2.0-or-later
# Layers whose base image is vmdk, vdi, vhdx or vpc, through a real mount: every byte, name, mode and link of the
# base layer, the qcow2 overlay on it and the snapshot that froze the overlay, compared with the source trees.
#
# One shut-off domain, four disks (vda..vdd), one base format each:  FMT base <- qcow2 overlay <- snapshot's overlay.
# One mount, so one appliance, serves every check.
import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest

from conftest import IMAGE_ROOT, RUN_PREFIX, Domain, run, virsh, guest_set_fixtures
from test_guest import compare

SNAPSHOT = "frozen"

# target -> base format; the order is the domain's disk order, so the snapshot shows sda..sdd in it.
DISKS = {"vda": "vmdk", "vdb": "vdi", "vdc": "vhdx", "vdd": "vpc"}

# libvirt 9.0 has no 'vhdx' storage format: <format type='vhdx'/> is refused at define ("unknown storage source
# format"), so that disk's chain is left for the images' own headers to say (as snapfs reads it anyway).
LIBVIRT_FORMATS = {"vmdk", "vdi", "vpc"}


def fmt_params():
    """The disks' targets as parameters, with the format as their ids."""
    return [pytest.param(target, id=fmt) for target, fmt in DISKS.items()]


# ---------------------------------------------------------------- the source trees

def tree_spec(fmt, layer):
    """What the filesystem of FMT's LAYER ('base' or 'overlay') holds: {path: content}, with modes and owners
    set by make_tree. Each tree names its format, so that a disk swapped with another shows."""
    rng = random.Random(f"{fmt}-base")
    blob = bytearray(rng.randbytes(1536 * 1024 + 123))      # spans several read chunks, ends mid-block
    spec = {
        "format.txt": f"{layer} on {fmt}\n",
        "etc/hostname": f"{fmt}-{layer}\n",
        "data/random.bin": bytes(blob),
        "data/empty": b"",
        "data/sub/deeper/leaf.txt": f"leaf of {fmt}\n" * 100,
        "bin/run.sh": "#!/bin/sh\necho hello\n",
        "secret": f"owned by 1234:5678 on {fmt}\n",
        "private/inside": "in a 0700 directory\n",
        "name with spaces \u00e9\u00e8.txt": "utf-8 name\n",
        "empty-dir": ("dir",),
        "link-abs": ("symlink", "/etc/hostname"),
        "link-rel": ("symlink", "data/sub/deeper/leaf.txt"),
        "dangling": ("symlink", "nowhere/at/all"),
        "data/hard": ("hardlink", "format.txt"),
    }
    if layer == "base":
        spec["only-in-base.txt"] = "removed by the overlay\n"
    else:
        blob[700000:700000 + 4096] = random.Random(f"{fmt}-overlay").randbytes(4096)   # rewritten in place
        spec["data/random.bin"] = bytes(blob) + b"grown by the overlay\n"
        spec["only-in-overlay.txt"] = "added by the overlay\n"
        spec["link-abs"] = ("symlink", "/format.txt")
        spec["data/sub/deeper/leaf.txt"] = f"leaf of {fmt}, changed\n"
        del spec["dangling"]
    return spec


def make_tree(root, spec):
    """Write SPEC into a fresh ROOT; modes, owners and a user xattr set as mke2fs -d will copy them."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for rel, content in spec.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple) and content[0] == "symlink":
            os.symlink(content[1], dest)
        elif isinstance(content, tuple) and content[0] == "hardlink":
            pass                                            # once every file exists
        elif isinstance(content, tuple) and content[0] == "dir":
            dest.mkdir()
        else:
            dest.write_bytes(content.encode() if isinstance(content, str) else content)
            dest.chmod(0o644)
    for rel, content in spec.items():
        if isinstance(content, tuple) and content[0] == "hardlink":
            os.link(root / content[1], root / rel)
    (root / "bin" / "run.sh").chmod(0o755)
    (root / "secret").chmod(0o600 if "only-in-base.txt" in spec else 0o640)
    os.chown(root / "secret", 1234, 5678)
    (root / "private").chmod(0o700)
    os.setxattr(root / "format.txt", "user.snapfs_test", spec["format.txt"].encode())
    return root


# ---------------------------------------------------------------- images and the domain

def disk_xml(target, top, fmt, base):
    """A qcow2 disk on a FMT base, its backing chain spelled out where libvirt knows the format."""
    chain = ""
    if fmt in LIBVIRT_FORMATS:
        chain = (f"<backingStore type='file'><format type='{fmt}'/><source file={quoteattr(str(base))}/>"
                 f"<backingStore/></backingStore>")
    return (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file={quoteattr(str(top))}/>{chain}<target dev='{target}' bus='virtio'/></disk>")


class ChainDomain(Domain):
    """A Domain (removed by its Domains like any other) defined from XML that spells out backing chains."""

    def __init__(self, owner, name, disks, devices_xml):
        self.owner = owner
        self.name = name
        self.disks = list(disks)
        xml = (f"<domain type='qemu'><name>{escape(name)}</name><memory unit='MiB'>64</memory>"
               f"<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
               f"<devices>{devices_xml}<memballoon model='none'/></devices></domain>")
        xml_file = owner.images.root / f"{name}.xml"
        xml_file.write_text(xml)
        try:
            virsh("define", xml_file)
        finally:
            xml_file.unlink()


def fingerprint(path):
    """What must not change while snapfs reads an image: qemu-img info, bytes, size, mtime."""
    st = os.stat(path)
    info = json.loads(run("qemu-img", "info", "-U", "--output=json", path).stdout)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"info": info, "sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class FormatSet:
    """The trees, the images and the domain; .src[target][layer] is a source tree, .files[target] the chain."""

    def __init__(self, images, doms):
        self.dir = IMAGE_ROOT / "formats"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(mode=0o755, parents=True)
        self.dir.chmod(0o755)
        self.src = {}
        self.base = {}
        self.overlay = {}
        devices = ""
        for target, fmt in DISKS.items():
            self.src[target] = {layer: make_tree(self.dir / "src" / f"{fmt}-{layer}", tree_spec(fmt, layer))
                                for layer in ("base", "overlay")}
            raw_base = self.mkfs(self.src[target]["base"], f"{fmt}-base.raw")
            raw_over = self.mkfs(self.src[target]["overlay"], f"{fmt}-overlay.raw")
            base = self.dir / f"{RUN_PREFIX}-{fmt}-base.{fmt}"
            top = self.dir / f"{RUN_PREFIX}-{fmt}-top.qcow2"
            run("qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, raw_base, base)
            run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-B", base, "-F", fmt, raw_over, top)
            raw_base.unlink()
            raw_over.unlink()
            for f in (base, top):
                f.chmod(0o644)
            self.base[target], self.overlay[target] = base, top
            devices += disk_xml(target, top, fmt, base)
        name = doms.name("formats")
        assert RUN_PREFIX in name
        self.dom = ChainDomain(doms, name, [(t, self.overlay[t], "qcow2") for t in DISKS], devices)
        doms.made.append(self.dom)
        self.dom.snapshot(SNAPSHOT)
        self.top = {target: Path(self.dom.top(target)) for target in DISKS}
        self.files = {t: [self.base[t], self.overlay[t], self.top[t]] for t in DISKS}
        self.blklist = virsh("domblklist", self.dom.name).stdout
        # Written back first: a file's allocation (qemu-img's actual-size) may still change after its last write.
        os.sync()
        self.prints = {str(f): fingerprint(f) for t in DISKS for f in self.files[t]}

    def mkfs(self, tree, name):
        raw = self.dir / name
        run("mkfs.ext4", "-q", "-F", "-L", "snapfs", "-d", tree, raw, "32M")
        return raw


fset, mnt = guest_set_fixtures("fset", "formats", FormatSet)


def layer_dirs(fset, mnt, target):
    """The disk's layer directories, base first."""
    layers = mnt / fset.dom.name / "layers" / target
    names = sorted(os.listdir(layers), key=lambda n: int(n.split("-")[0]))
    return [layers / n for n in names]


# ---------------------------------------------------------------- the checks

def test_libvirt_sees_the_chains(fset):
    """The snapshot froze each overlay: the live disks are the snapshot's new overlays, on FMT base <- qcow2."""
    lines = [l.split() for l in fset.blklist.splitlines() if l.strip()]
    assert lines == [[t, str(fset.top[t])] for t in DISKS], fset.blklist
    for target, fmt in DISKS.items():
        assert fset.top[target].name == f"{RUN_PREFIX}-{fmt}-top.{SNAPSHOT}"
        assert fset.dom.chain(target) == [(str(fset.base[target]), fmt), (str(fset.overlay[target]), "qcow2"),
                                          (str(fset.top[target]), "qcow2")]
    assert fset.dom.state() == "shut off"


def test_layer_names(fset, mnt):
    dom = mnt / fset.dom.name
    assert sorted(os.listdir(dom / "layers")) == sorted(DISKS)
    for target in DISKS:
        names = [p.name for p in layer_dirs(fset, mnt, target)]
        assert names == [f"{i}-{f.name}" for i, f in enumerate(fset.files[target])], names


@pytest.mark.parametrize("target", fmt_params())
def test_base_layer(fset, mnt, target):
    base = layer_dirs(fset, mnt, target)[0]
    assert os.listdir(base) == ["sda"]
    compare(fset.src[target]["base"], base / "sda")


@pytest.mark.parametrize("target", fmt_params())
def test_overlay_layer(fset, mnt, target):
    """The qcow2 overlay on the FMT base, frozen by the snapshot."""
    layer = layer_dirs(fset, mnt, target)[1]
    assert os.listdir(layer) == ["sda"]
    compare(fset.src[target]["overlay"], layer / "sda")


@pytest.mark.parametrize("target", fmt_params())
def test_live_layer(fset, mnt, target):
    """The snapshot's empty overlay, the live disk, reads as the overlay through all three images."""
    live = layer_dirs(fset, mnt, target)[2]
    assert os.getxattr(live, "user.snapfs.live") == b"1"
    src = fset.src[target]["overlay"]
    assert (live / "sda" / "format.txt").read_bytes() == (src / "format.txt").read_bytes()


@pytest.mark.parametrize("target", fmt_params())
def test_layer_xattrs(fset, mnt, target):
    """Each layer's file, format and backing file, then its virtual size as qemu-img reads it."""
    fmt = DISKS[target]
    layers = layer_dirs(fset, mnt, target)
    want = [(fset.base[target], fmt, None), (fset.overlay[target], "qcow2", fset.base[target]),
            (fset.top[target], "qcow2", fset.overlay[target])]
    attrs = [{n[len("user.snapfs."):]: os.getxattr(layer, n).decode() for n in os.listxattr(layer)}
             for layer in layers]
    for got, (file, format_, backing) in zip(attrs, want):
        assert got["file"] == str(file), got
        assert got["format"] == format_, got
        assert got.get("backing") == (str(backing) if backing else None), got
    assert [a.get("snapshot") for a in attrs] == [None, SNAPSHOT, None], attrs
    assert [a.get("live") for a in attrs] == ["0", "0", "1"], attrs
    sizes = [fset.prints[str(file)]["info"]["virtual-size"] for file, _, _ in want]
    assert [a["virtual_size"] for a in attrs] == [str(n) for n in sizes], f"qemu-img says {sizes}: {attrs}"


def test_snapshot(fset, mnt):
    """The snapshot: one folder per disk's filesystem, named after its device in disk order, each the overlay."""
    snap = mnt / fset.dom.name / SNAPSHOT
    devices = [f"sd{chr(ord('a') + i)}" for i in range(len(DISKS))]
    assert sorted(os.listdir(snap)) == devices
    for device, target in zip(devices, DISKS):
        compare(fset.src[target]["overlay"], snap / device)


def test_nothing_was_written(fset, mnt):
    """After all the reading: the images are what they were, libvirt's view too, and at most two appliances did it
    all (the first look's, and the one it starts in the background for the 12 images that do not fit in it)."""
    for file, before in fset.prints.items():
        assert fingerprint(file) == before, f"{file} changed while snapfs read it"
    assert virsh("domblklist", fset.dom.name).stdout == fset.blklist
    assert fset.dom.state() == "shut off"
    assert fset.dom.snapshots() == [SNAPSHOT]
    assert int(os.getxattr(mnt, "user.snapfs.appliance_starts")) in (1, 2)
