# SPDX-License-Identifier: GPL-2.0-or-later
# A domain with 30 external snapshots through a real mount: every snapshot shows its own generation of a file, and
# the whole domain is read by one appliance start (a small one for the first look, every other image added to it).
import os
import re
from pathlib import Path

from conftest import IMAGE_ROOT, run, guest_set_fixtures

SNAPSHOTS = 30
# What the design promises for one domain whose views fit in one appliance (src/guest/pool.c): the first look starts
# an appliance of at most this many disks, and the images asked for later are added to it while it runs.
FIRST_DISKS = 6


class ManySet:
    """vda: gen0.qcow2, then snapshot sN (N = 1..30) made by libvirt, after which the new top is rewritten (qemu-img
    convert -B its backing, no appliance) to hold generation N: sN freezes the image of generation N-1, and the live
    top holds generation 30.  Every generation's ext4 holds the same tree but for gen.txt."""

    def __init__(self, doms):
        d = self.dir = IMAGE_ROOT / "many"
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
        d.chmod(0o755)
        self.tree = d / "tree"
        self.tree.mkdir(exist_ok=True)
        for i in range(20):
            (self.tree / f"same{i}.txt").write_text(f"shared content {i}\n")
        top = self.generation(0, d / "gen0.qcow2", None)
        self.dom = doms.define([("vda", top, "qcow2")], suffix="many")
        for n in range(1, SNAPSHOTS + 1):
            self.dom.snapshot(f"s{n}")
            new_top = Path(self.dom.top("vda"))
            self.generation(n, new_top, top)
            top = new_top
        for f in d.iterdir():
            if f.is_file():
                f.chmod(0o644)

    def generation(self, n, dest, backing):
        (self.tree / "gen.txt").write_text(f"generation {n}\n")
        raw = self.dir / "gen.raw"
        run("mkfs.ext4", "-q", "-F", "-L", "many", "-d", self.tree, raw, "16M")
        args = ["-B", backing, "-F", "qcow2"] if backing else []
        tmp = dest.with_name(dest.name + ".tmp")
        run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", *args, raw, tmp)
        os.replace(tmp, dest)
        raw.unlink()
        return dest


many, mnt = guest_set_fixtures("many", "many", lambda images, doms: ManySet(doms))


def starts(mnt):
    return int(os.getxattr(mnt, "user.snapfs.appliance_starts"))


def test_every_snapshot_shows_its_generation(many, mnt):
    """The newest snapshot first, then the oldest, then every other one and the live top: each shows the generation it
    froze, and the whole domain took one appliance start: the first look's, of at most FIRST_DISKS disks; every image
    asked for later was added to that appliance as a disk while it ran (hotplug.c), so one appliance runs."""
    dom = mnt / many.dom.name
    assert sorted(n for n in os.listdir(dom) if re.fullmatch(r"s\d+", n)) == sorted(f"s{n}" for n in
                                                                                 range(1, SNAPSHOTS + 1))
    assert starts(mnt) == 0, "listing a domain started an appliance"
    order = [SNAPSHOTS, 1] + list(range(2, SNAPSHOTS))
    for n in order:
        assert (dom / f"s{n}" / "sda" / "gen.txt").read_text() == f"generation {n - 1}\n", f"snapshot s{n}"
        assert (dom / f"s{n}" / "sda" / "same7.txt").read_text() == "shared content 7\n", f"snapshot s{n}"
    layers = sorted(os.listdir(dom / "layers" / "vda"), key=lambda name: int(name.split("-")[0]))
    assert len(layers) == SNAPSHOTS + 1, layers
    assert (dom / "layers" / "vda" / layers[-1] / "sda" / "gen.txt").read_text() == f"generation {SNAPSHOTS}\n"
    assert (dom / "layers" / "vda" / layers[0] / "sda" / "gen.txt").read_text() == "generation 0\n"
    assert starts(mnt) == 1
    log = mnt.parent / (mnt.name + ".stderr")
    text = log.read_bytes()
    disks = [int(m) for m in re.findall(rb"appliance \d+ of domain '[^']*many' started with (\d+) disks", text)]
    added = re.findall(rb"appliance \d+ of domain '[^']*many' took image '[^']*' as /dev/sd\w+", text)
    assert len(disks) == 1 and disks[0] <= FIRST_DISKS, disks
    # Every image of the domain is in the one appliance: the 31 generations and the live top (the top layer, live).
    assert int(os.getxattr(mnt, "user.snapfs.appliance_disks_added")) == len(added)
    assert disks[0] + len(added) >= SNAPSHOTS + 1, (disks, len(added))
    assert os.getxattr(mnt, "user.snapfs.appliances") == b"1"
    # Reading everything again asks the appliance nothing new and starts none.
    calls = int(os.getxattr(mnt, "user.snapfs.appliance_calls"))
    for n in order:
        assert (dom / f"s{n}" / "sda" / "gen.txt").read_text() == f"generation {n - 1}\n", f"snapshot s{n}"
    assert int(os.getxattr(mnt, "user.snapfs.appliance_calls")) == calls
    assert starts(mnt) == 1


def test_without_a_monitor_a_background_appliance_serves(many, mount):
    """Where an appliance's qemu cannot be given a monitor (snapfs's temporary directory on a noexec mount: the script
    that adds it cannot run), nothing is added to a running appliance: the first look's appliance is up, one more starts
    in the background with every view of the domain, and the oldest snapshot, not among the first look's disks, is
    read from that one, with the generation it froze."""
    noexec = IMAGE_ROOT / "noexec"
    noexec.mkdir(mode=0o700, exist_ok=True)
    run("mount", "-t", "tmpfs", "-o", "noexec,nosuid,nodev,mode=0700,size=64m", "snapfs-noexec", noexec)
    try:
        m = mount(env={"TMPDIR": str(noexec), "LIBGUESTFS_CACHEDIR": "/var/tmp"}, timeout=30)
        dom = Path(m.path) / many.dom.name
        assert (dom / f"s{SNAPSHOTS}" / "sda" / "gen.txt").read_text() == f"generation {SNAPSHOTS - 1}\n"
        assert (dom / "s1" / "sda" / "gen.txt").read_text() == "generation 0\n"
        assert int(os.getxattr(m.path, "user.snapfs.appliance_disks_added")) == 0
        assert int(os.getxattr(m.path, "user.snapfs.appliance_starts")) == 2
        assert "runs without a monitor" in m.stderr_text() or "takes no disks once up" in m.stderr_text(), \
            m.stderr_text()[-3000:]
        m.check_clean_exit()
    finally:
        run("umount", noexec, check=False)
