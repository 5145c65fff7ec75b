# SPDX-License-Identifier: GPL-2.0-or-later
# Guest files through a real mount: every byte, name, mode and link of snapshots and layers compared with the source trees.
import errno
import os
import shutil
import stat
from pathlib import Path

import pytest

from conftest import IMAGE_ROOT, REPO, errno_of, rewrite_top, run, virsh, wait_for, guest_set_fixtures

FIXTURE = REPO / "tests" / "unit" / "guest-fixture.sh"


class GuestSet:
    """The images of tests/unit/guest-fixture.sh behind four domains:
    chain:    vda = base.raw <- layer1.qcow2 <- layer2.qcow2 <- top.qcow2, snapshot 'snap1' (freezes top: src2);
              the overlay libvirt made for it, the live disk, then holds srclive (small.txt changed, live.txt new).
    running:  run.qcow2 over layer2.qcow2, started, live snapshot 'live1'.
    internal: a qcow2 whose internal snapshot 'int1' holds srcB while the image now holds srcA.
    blank:    a disk with no filesystem, snapshot 'empty1'.
    os:       a small Linux on two disks, root (an overlay over osroot.raw) and /boot (osboot.qcow2), joined by fstab.
    """

    def __init__(self, images, doms):
        self.dir = IMAGE_ROOT / "guest"
        run("sh", FIXTURE, self.dir, timeout=300)
        d = self.dir
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", d / "layer2.qcow2", d / "top.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", d / "layer2.qcow2", d / "run.qcow2")
        shutil.copy(d / "internal.qcow2", d / "int.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", d / "blank.qcow2", "16M")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", d / "osroot.raw", d / "osroot.qcow2")
        for f in d.iterdir():
            if f.is_file():
                f.chmod(0o644)
        self.chain = doms.define([("vda", d / "top.qcow2", "qcow2")], suffix="gchain")
        self.chain.snapshot("snap1")
        self.write_top(self.chain, "srclive", "changed in the live disk\n")
        self.running = doms.define([("vda", d / "run.qcow2", "qcow2")], suffix="grun", start=True)
        self.running.snapshot("live1")
        self.internal = doms.define([("vda", d / "int.qcow2", "qcow2")], suffix="gint")
        self.internal.snapshot("int1", disk_only=False)
        # After the snapshot the image's own content becomes srcA.
        run("mkfs.ext4", "-q", "-F", "-d", d / "srcA", d / "a.raw", "32M")
        run("qemu-img", "convert", "-q", "-n", "-f", "raw", "-O", "qcow2", d / "a.raw", d / "int.qcow2")
        (d / "a.raw").unlink()
        self.blank = doms.define([("vda", d / "blank.qcow2", "qcow2")], suffix="gblank")
        self.blank.snapshot("empty1")
        self.os = doms.define([("vda", d / "osroot.qcow2", "qcow2"), ("vdb", d / "osboot.qcow2", "qcow2")],
                              suffix="gos")

    def write_top(self, dom, name, small):
        """Makes DOM's top image (an overlay over top.qcow2) hold tree NAME: src2 with SMALL in small.txt, and live.txt."""
        src = self.dir / name
        shutil.rmtree(src, ignore_errors=True)
        run("cp", "-a", self.dir / "src2", src)
        (src / "small.txt").write_text(small)
        (src / "live.txt").write_text(f"only in {name}\n")
        # The UUID of guest-fixture.sh: the same filesystem, changed.
        rewrite_top(dom.top("vda"), src, "0f6c6a1e-5b53-4d7c-9a38-8c1b3b0e7a11")

    def src(self, name):
        return self.dir / name


guest, mnt = guest_set_fixtures("guest", "guest", GuestSet, own_tree=False)


def acl(path, attr):
    """A POSIX ACL as the kernel gives it, or None."""
    try:
        return os.getxattr(path, attr)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return None
        raise


def compare(host, view):
    """Every name, type, mode, owner, size, mtime, link count, byte, link target and user xattr, recursively."""
    host, view = Path(host), Path(view)
    inodes = {}
    checked = 0
    for dirpath, dirnames, filenames in os.walk(host):
        rel = Path(dirpath).relative_to(host)
        got = sorted(n for n in os.listdir(view / rel) if n != "lost+found")
        assert got == sorted(dirnames + filenames), f"listing of {view / rel}"
        for name in dirnames + filenames:
            h, v = Path(dirpath) / name, view / rel / name
            hs, vs = os.lstat(h), os.lstat(v)
            assert stat.S_IFMT(vs.st_mode) == stat.S_IFMT(hs.st_mode), v
            assert vs.st_mode == hs.st_mode, f"{v}: mode {vs.st_mode:o}, host {hs.st_mode:o}"
            assert (vs.st_uid, vs.st_gid) == (hs.st_uid, hs.st_gid), v
            assert int(vs.st_mtime) == int(hs.st_mtime), v    # mke2fs -d keeps whole seconds
            if not stat.S_ISDIR(hs.st_mode):
                assert vs.st_size == hs.st_size, v
                assert vs.st_nlink == hs.st_nlink, v
            if stat.S_ISCHR(hs.st_mode) or stat.S_ISBLK(hs.st_mode):
                assert vs.st_rdev == hs.st_rdev, v
            if hs.st_ino in inodes:
                assert vs.st_ino == inodes[hs.st_ino], f"{v}: a hard link with another inode number"
            inodes[hs.st_ino] = vs.st_ino
            if stat.S_ISREG(hs.st_mode):
                assert v.read_bytes() == h.read_bytes(), f"{v}: bytes differ"
            elif stat.S_ISLNK(hs.st_mode):
                assert os.readlink(v) == os.readlink(h), v
            for attr in os.listxattr(h, follow_symlinks=False):
                if attr.startswith("user."):
                    assert os.getxattr(v, attr, follow_symlinks=False) == \
                        os.getxattr(h, attr, follow_symlinks=False), f"{v}: {attr}"
            if not stat.S_ISLNK(hs.st_mode):
                for attr in ("system.posix_acl_access", "system.posix_acl_default"):
                    assert acl(v, attr) == acl(h, attr), f"{v}: {attr}"
            checked += 1
    assert checked > 10
    return checked


def test_layers_of_a_chain_with_a_raw_base(guest, mnt):
    layers = mnt / guest.chain.name / "layers" / "vda"
    names = sorted(os.listdir(layers), key=lambda n: int(n.split("-")[0]))
    assert names[:4] == ["0-base.raw", "1-layer1.qcow2", "2-layer2.qcow2", "3-top.qcow2"], names
    assert os.listdir(layers / names[0]) == ["sda"]
    compare(guest.src("src0"), layers / names[0] / "sda")
    compare(guest.src("src1"), layers / names[1] / "sda")
    compare(guest.src("src2"), layers / names[2] / "sda")


def test_external_snapshot(guest, mnt):
    snap = mnt / guest.chain.name / "snap1"
    assert os.listdir(snap) == ["sda"]
    compare(guest.src("src2"), snap / "sda")


def test_posix_acls(guest, mnt):
    """The guest's ACLs as the guest has them: getfacl through the mount prints what it prints on the source tree."""
    base = mnt / guest.chain.name / "layers" / "vda" / "0-base.raw" / "sda"
    for rel in ("dir/f7", "deep"):
        want = run("getfacl", "-n", "--omit-header", guest.src("src0") / rel).stdout
        assert "1234" in want, f"the fixture has no ACL on {rel}: {want}"
        assert run("getfacl", "-n", "--omit-header", base / rel).stdout == want, rel
    assert "+" in run("ls", "-l", base / "dir" / "f7").stdout.split()[0]


def appliance_qemus(mnt):
    """The arguments of every qemu that the snapfs serving MNT started (libguestfs forks qemu from snapfs itself)."""
    procs = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(pid)] = (ppid, argv)
    # snapfs, and any child it forked that has not run exec yet.
    daemons = {pid for pid, (_, argv) in procs.items() if str(mnt) in argv and "snapfs" in argv[0]}
    assert len({pid for pid in daemons if procs[pid][0] not in daemons}) == 1, f"snapfs of {mnt}: {daemons}"
    return {pid: argv for pid, (ppid, argv) in procs.items() if ppid in daemons and "-kernel" in argv}


def resident_kib(pid, folder):
    """How much of the files under FOLDER process PID has mapped in memory (KiB)."""
    total, inside = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields[0]) > 8 and not fields[0].endswith(":"):
            inside = len(fields) >= 6 and fields[5].startswith(f"{folder}/")
        elif fields[0] == "Rss:" and inside:
            total += int(fields[1])
    return total


def test_appliance_boot(guest, mnt):
    """The appliance boots the kernel of libguestfs's own appliance build, unpacked beside hard links to its initrd
    and root, so that qemu skips the kernel's decompressor (seconds under TCG); qemu's copy of that kernel for a
    reset does not stay in its memory; under TCG qemu keeps 64 MiB of translated code, not up to 1 GiB."""
    compare(guest.src("src2"), mnt / guest.chain.name / "snap1" / "sda")
    qemus = appliance_qemus(mnt)
    assert qemus, "no appliance of this mount is running"
    cache = Path(os.environ.get("LIBGUESTFS_CACHEDIR") or os.environ.get("TMPDIR") or "/var/tmp")
    built = cache / f".guestfs-{os.geteuid()}" / "appliance.d"
    for pid, argv in qemus.items():
        kernel = Path(argv[argv.index("-kernel") + 1])
        assert kernel.parent.parent == cache / f".snapfs-{os.geteuid()}", kernel
        assert kernel.read_bytes()[:4] == b"\x7fELF", f"{kernel} is not an unpacked kernel"
        assert kernel.stat().st_size > (built / "kernel").stat().st_size
        for part in ("initrd", "root"):
            assert (kernel.parent / part).stat().st_ino == (built / part).stat().st_ino, part
        assert (kernel.parent / "README.fixed").exists()
        assert resident_kib(pid, kernel.parent) < 8 << 10, f"qemu {pid} keeps the kernel it booted in memory"
        if not any(a.startswith("accel=kvm") or ",accel=kvm" in a for a in argv):
            assert argv[argv.index("-accel") + 1] == "tcg,tb-size=64", argv
            assert not any("accel=" in a for a in argv), argv


def appliance_calls(mnt):
    return int(os.getxattr(mnt, "user.snapfs.appliance_calls"))


def test_warm_walk_is_cached(guest, mnt):
    """A second walk of a frozen snapshot (names, attributes, xattrs, links, bytes) makes no appliance call."""
    layer = mnt / guest.chain.name / "layers" / "vda" / "1-layer1.qcow2" / "sda"
    walk = f"find {layer} -printf '%p %s %m %l\\n'; ls -lR {layer}; find {layer} -type f -exec cat {{}} + | md5sum"
    cold = run("sh", "-c", walk).stdout
    before = appliance_calls(mnt)
    warm = run("sh", "-c", walk).stdout
    assert cold == warm
    assert appliance_calls(mnt) == before, "a second walk of a frozen layer asked the appliance again"
    assert before > 0


def test_read_only_everywhere(guest, mnt):
    base = mnt / guest.chain.name / "snap1" / "sda"
    f = base / "small.txt"
    attempts = {
        "create": lambda: open(base / "new-file", "w"),
        "write": lambda: open(f, "r+b"),
        "truncate": lambda: os.truncate(f, 0),
        "unlink": lambda: os.unlink(f),
        "mkdir": lambda: os.mkdir(base / "made-here"),
        "rmdir": lambda: os.rmdir(base / "dir"),
        "rename": lambda: os.rename(f, base / "moved"),
        "link": lambda: os.link(f, base / "linked"),
        "symlink": lambda: os.symlink("x", base / "sym"),
        "chmod": lambda: os.chmod(f, 0o600),
        "chown": lambda: os.chown(f, 1, 1),
        "utime": lambda: os.utime(f, (1, 1)),
        "setxattr": lambda: os.setxattr(f, "user.x", b"1"),
        "removexattr": lambda: os.removexattr(f, "user.snapfs_test"),
        "mknod": lambda: os.mkfifo(base / "fifo2"),
    }
    for what, call in attempts.items():
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EROFS, f"{what}: {e.value}"
    assert f.read_bytes() == guest.src("src2").joinpath("small.txt").read_bytes()
    with pytest.raises(FileNotFoundError):
        os.lstat(base / "no such file")


def test_internal_snapshot(guest, mnt):
    dom = mnt / guest.internal.name
    assert (dom / "int1" / "sda" / "which").read_text() == "after snapshot A\n"
    assert sorted(os.listdir(dom / "int1" / "sda")) == ["later", "lost+found", "which"]
    live = dom / "layers" / "vda" / "0-int.qcow2" / "sda"
    assert (live / "which").read_text() == "at snapshot A\n"
    assert virsh("domstate", guest.internal.name).stdout.strip() == "shut off"
    # Reading changed nothing in the image: libvirt and qemu-img still see the snapshot.
    assert "int1" in run("qemu-img", "snapshot", "-l", guest.src("int.qcow2")).stdout


def test_running_domain(guest, mnt):
    dom = mnt / guest.running.name
    compare(guest.src("src2"), dom / "live1" / "sda")
    layers = sorted(os.listdir(dom / "layers" / "vda"), key=lambda n: int(n.split("-")[0]))
    top = dom / "layers" / "vda" / layers[-1]
    assert os.getxattr(top, "user.snapfs.live") == b"1"
    assert (top / "sda" / "small.txt").read_text() == "changed in layer 2\n"
    assert virsh("domstate", guest.running.name).stdout.strip() == "running"


def test_no_filesystem(guest, mnt):
    snap = mnt / guest.blank.name / "empty1"
    assert os.listdir(snap) == []
    why = os.getxattr(snap, "user.snapfs.error").decode()
    assert "no filesystem" in why and "blank" in why, why


def test_live_reads_the_disks_now(guest, mnt):
    """DOMAIN/live is the guest as the current top reads: where the top differs from the last snapshot, live/ shows
    the top's bytes and the snapshot folder its own."""
    dom = mnt / guest.chain.name
    live = dom / "live"
    assert os.listdir(dom) == ["revert", "layers", "live", "snap1"]
    assert stat.S_ISDIR(os.stat(live).st_mode)
    assert os.getxattr(live, "user.snapfs.live") == b"1"
    assert os.listdir(live) == ["sda"]
    assert (live / "sda" / "small.txt").read_text() == "changed in the live disk\n"
    assert (dom / "snap1" / "sda" / "small.txt").read_text() == "changed in layer 2\n"
    assert (live / "sda" / "live.txt").read_text() == "only in srclive\n"
    assert not (dom / "snap1" / "sda" / "live.txt").exists()
    want = sorted(os.listdir(guest.src("srclive")) + ["lost+found"])
    assert sorted(os.listdir(live / "sda")) == want
    assert (live / "sda" / "dir" / "f7").read_bytes() == guest.src("srclive").joinpath("dir", "f7").read_bytes()
    assert "user.snapfs.error" not in os.listxattr(live)


def test_live_of_a_running_domain_is_read_only(guest, mnt):
    """Without a guest agent (test_restore.py writes live/ of a shut-off domain)."""
    dom = mnt / guest.running.name
    live = dom / "live"
    f = live / "sda" / "small.txt"
    attempts = {
        "create": lambda: open(live / "sda" / "new-file", "w"),
        "create at its root": lambda: open(live / "new-file", "w"),
        "write": lambda: open(f, "r+b"),
        "truncate": lambda: os.truncate(f, 0),
        "unlink": lambda: os.unlink(f),
        "mkdir": lambda: os.mkdir(live / "sda" / "made-here"),
        "mkdir at its root": lambda: os.mkdir(live / "made-here"),
        "rename": lambda: os.rename(f, live / "sda" / "moved"),
        "setxattr": lambda: os.setxattr(f, "user.x", b"1"),
    }
    for what, call in attempts.items():
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EROFS, f"{what}: {e.value}"
    assert errno_of(os.mkdir, live) == errno.EEXIST
    assert errno_of(os.rmdir, live) == errno.EPERM
    assert f.read_text() == "changed in layer 2\n"
    assert guest.running.snapshots() == ["live1"]


def test_live_of_a_running_domain(guest, mnt):
    live = mnt / guest.running.name / "live"
    assert os.getxattr(live, "user.snapfs.live") == b"1"
    assert (live / "sda" / "small.txt").read_text() == "changed in layer 2\n"
    assert (live / "sda" / "newdir" / "new2.txt").read_text() == "new in layer 2\n"
    assert virsh("domstate", guest.running.name).stdout.strip() == "running"


def test_live_follows_a_chain_change(guest, mnt):
    """mkdir through the mount puts a new top on the disk: live/ reads it (a new view), the new snapshot what was."""
    dom = mnt / guest.chain.name
    assert (dom / "live" / "sda" / "small.txt").read_text() == "changed in the live disk\n"
    os.mkdir(dom / "then")
    guest.write_top(guest.chain, "srclive2", "changed after snapshot then\n")
    assert wait_for(lambda: (dom / "live" / "sda" / "small.txt").read_text() == "changed after snapshot then\n",
                    timeout=5)
    assert (dom / "live" / "sda" / "live.txt").read_text() == "only in srclive2\n"
    assert (dom / "then" / "sda" / "small.txt").read_text() == "changed in the live disk\n"


def test_live_of_an_os_on_two_disks(guest, mnt):
    """live/ reads every disk of the domain: where inspection finds an OS, its root with its fstab's mounts."""
    live = mnt / guest.os.name / "live"
    assert {"etc", "boot", "root", "bin", "usr"} <= set(os.listdir(live))
    assert (live / "etc" / "hostname").read_text() == "testhost\n"
    assert (live / "boot" / "vmlinuz-test").read_text() == "kernel\n"
    assert (live / "root" / "note").read_text() == "root file\n"
    assert os.stat(live / "boot").st_ino != os.stat(live / "etc").st_ino
