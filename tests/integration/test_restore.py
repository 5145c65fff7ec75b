# SPDX-License-Identifier: GPL-2.0-or-later
# Restoring into live/ of a shut-off domain: cp -a from a snapshot, read back without snapfs, undone by revert.
import errno
import os
import stat
import subprocess
import time
from pathlib import Path

from conftest import IMAGE_ROOT, REPO, errno_of, rewrite_top, run, virsh, wait_for, guest_set_fixtures
from test_guest import compare

# src/guest: GUEST_WRITER_IDLE_S after the last call, plus the unmount, the sync and the NBD server's exit.
RELEASE_BOUND_S = 25


def make_tree(root):
    """What is restored: modes, owners, symlinks (one dangling, one absolute), hard links, a sparse file, xattrs."""
    app = root / "etc" / "app"
    (app / "conf.d").mkdir(parents=True)
    (app / "app.conf").write_text("listen 8080\n")
    for i in range(6):
        (app / "conf.d" / f"{i}.conf").write_text(f"n = {i}\n" * (i * 100 + 1))
    (app / "secret").write_bytes(os.urandom(300_000))
    os.link(app / "secret", app / "secret.hardlink")
    os.symlink("app.conf", app / "current")
    os.symlink("/nowhere/at/all", app / "dangling")
    with open(app / "sparse", "wb") as f:
        f.seek(5 << 20)
        f.write(b"end")
    os.setxattr(app / "app.conf", "user.origin", b"backup")
    os.chown(app / "secret", 1000, 1000)
    os.chmod(app / "secret", 0o600)
    os.chown(app / "conf.d", 33, 33)
    os.chmod(app / "conf.d", 0o750)
    os.utime(app / "app.conf", (1_500_000_000, 1_500_000_000))
    os.lchown(app / "current", 1000, 1000)
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)


class RestoreSet:
    """shut:  vda = base.qcow2 <- top.qcow2, snapshot 'nightly' holds /etc/app; the top now lacks it, keep.txt changed.
    other: a vmdk disk (never written).  running: the same chain started (live/ read-only without an agent)."""

    def __init__(self, images, doms):
        d = self.dir = IMAGE_ROOT / "restore"
        d.mkdir(parents=True, exist_ok=True)
        old, now = d / "old", d / "now"
        for tree in (old, now):
            run("rm", "-rf", tree)
            tree.mkdir()
        make_tree(old)
        (old / "etc" / "keep.txt").write_text("keep, as it was\n")
        (now / "etc").mkdir()
        (now / "tmp").mkdir()
        os.chmod(now / "tmp", 0o1777)
        (now / "etc" / "keep.txt").write_text("keep, as it is now\n")
        uuid = "4d1f1e0c-2b8e-4c59-8d3f-6f1c1a2b3c4d"
        run("mkfs.ext4", "-q", "-F", "-U", uuid, "-d", old, d / "old.raw", "64M")
        run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", d / "old.raw", d / "base.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", d / "base.qcow2", d / "top.qcow2")
        run("qemu-img", "create", "-q", "-f", "vmdk", d / "other.vmdk", "16M")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", d / "base.qcow2", d / "run.qcow2")
        for f in d.iterdir():
            if f.is_file():
                f.chmod(0o644)
        self.shut = doms.define([("vda", d / "top.qcow2", "qcow2")], suffix="rshut")
        self.shut.snapshot("nightly")
        # The disk now: the same filesystem without /etc/app (as if deleted since), written without any appliance.
        top = self.shut.top("vda")
        rewrite_top(top, now, uuid, "64M")
        os.chmod(top, 0o600)
        self.other = doms.define([("vda", d / "other.vmdk", "vmdk")], suffix="rvmdk")
        self.running = doms.define([("vda", d / "run.qcow2", "qcow2")], suffix="rrun", start=True)
        self.old = old


restore, mnt = guest_set_fixtures("restore", "restore", RestoreSet)


def snapshots_and_top(dom):
    return dom.snapshots(), dom.top("vda"), os.stat(dom.top("vda")).st_mtime_ns


def test_refusals_change_nothing(restore, mnt):
    """A running domain without an agent, a vmdk disk, snapfs's own names: refused, with nothing taken or written."""
    before = {d.name: snapshots_and_top(d) for d in (restore.running, restore.other)}
    live = mnt / restore.running.name / "live" / "sda"   # no OS: a folder per filesystem
    assert (live / "etc" / "keep.txt").read_text() == "keep, as it was\n"
    for what, call in {
        "create": lambda: open(live / "etc" / "new", "w"),
        "mkdir": lambda: os.mkdir(live / "etc" / "d"),
        "unlink": lambda: os.unlink(live / "etc" / "keep.txt"),
        "open for writing": lambda: open(live / "etc" / "keep.txt", "r+b"),
        "chmod": lambda: os.chmod(live / "etc" / "keep.txt", 0o600),
    }.items():
        assert errno_of(call) == errno.EROFS, what
    assert errno_of(os.mkdir, mnt / restore.other.name / "live" / "x") == errno.EROFS
    assert b"while the domain runs" in os.getxattr(live.parent, "user.snapfs.error")
    assert b"vmdk" in os.getxattr(mnt / restore.other.name / "live", "user.snapfs.error")
    after = {d.name: snapshots_and_top(d) for d in (restore.running, restore.other)}
    assert after == before


def change_in_live(restore, mnt):
    """rename, unlink, rmdir, truncate, chmod, chown, touch, ln -s, setfattr: each as on a local filesystem.  Called
    while cp -a's writer runs, so that one appliance start serves both (the suite's time)."""
    live = mnt / restore.shut.name / "live" / "sda"
    assert errno_of(os.mkdir, live.parent / "beside-the-filesystems") == errno.EPERM
    d = live / "etc" / "work"
    d.mkdir(mode=0o755)
    (d / "a").write_text("hello\n")
    os.rename(d / "a", d / "b")
    assert not (d / "a").exists() and (d / "b").read_text() == "hello\n"
    os.truncate(d / "b", 2)
    assert (d / "b").read_bytes() == b"he"
    with open(d / "b", "ab") as f:
        f.write(b"y")
    assert (d / "b").read_bytes() == b"hey"
    os.chmod(d / "b", 0o640)
    os.chown(d / "b", 1234, 5678)
    os.utime(d / "b", ns=(1_000_000_000_123_456_789, 1_100_000_000_987_654_321))
    st = os.stat(d / "b")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert st.st_mtime_ns == 1_100_000_000_987_654_321
    os.symlink("../keep.txt", d / "link")
    assert os.readlink(d / "link") == "../keep.txt"
    os.setxattr(d / "b", "user.note", b"restored")
    assert os.getxattr(d / "b", "user.note") == b"restored"
    os.removexattr(d / "b", "user.note")
    assert "user.note" not in os.listxattr(d / "b")
    assert errno_of(os.setxattr, d / "b", "user.snapfs.error", b"x") == errno.EPERM
    snap_file = mnt / restore.shut.name / "nightly" / "sda" / "etc" / "keep.txt"
    assert errno_of(os.link, snap_file, d / "from-a-snapshot") == errno.EXDEV
    os.rename(d, live / "etc" / "work2")
    assert sorted(os.listdir(live / "etc" / "work2")) == ["b", "link"]
    assert errno_of(os.rmdir, live / "etc" / "work2") == errno.ENOTEMPTY
    os.unlink(live / "etc" / "work2" / "b")
    os.unlink(live / "etc" / "work2" / "link")
    os.rmdir(live / "etc" / "work2")
    assert not (live / "etc" / "work2").exists()


def test_cp_a_into_live_of_a_shut_off_domain(restore, mnt):
    """cp -a from a snapshot into live/: exact bytes, modes, owners, times, links and xattrs, read back by snapfs
    and, once the writer let go, by libguestfs without snapfs; every other change; one pre-restore snapshot undoes
    it all; virsh start then works."""
    dom = mnt / restore.shut.name
    live = dom / "live" / "sda"
    assert not (live / "etc" / "app").exists()
    assert restore.shut.snapshots() == ["nightly"]
    # A bound, not a timing: the pre-restore snapshot and two appliance starts, under TCG on a loaded machine.
    run("cp", "-a", dom / "nightly" / "sda" / "etc" / "app", live / "etc" / "", timeout=600)
    copied = time.monotonic()
    compare(restore.old / "etc" / "app", live / "etc" / "app")
    assert (live / "etc" / "keep.txt").read_text() == "keep, as it is now\n"
    change_in_live(restore, mnt)
    # examples/snapfs-restore-file.sh: cp -a of one file to its place in live/, through the same writer.
    proc = run(REPO / "examples" / "snapfs-restore-file.sh", dom / "nightly" / "sda" / "etc" / "keep.txt")
    assert proc.stdout.strip() == f"restored /sda/etc/keep.txt of {restore.shut.name} from nightly", proc.stdout
    assert (live / "etc" / "keep.txt").read_text() == "keep, as it was\n"

    snaps = restore.shut.snapshots()
    pre = [s for s in snaps if s.startswith("pre-restore-")]
    assert len(pre) == 1 and sorted(snaps) == sorted(["nightly"] + pre), snaps
    # The pre-restore snapshot is the disk before the copy.
    assert not (dom / pre[0] / "sda" / "etc" / "app").exists()
    assert (dom / pre[0] / "sda" / "etc" / "keep.txt").read_text() == "keep, as it is now\n"

    # The writer lets go of the images within the bound: virsh start works then, and the top is a clean qcow2.
    top = restore.shut.top("vda")
    last_access, started, why = time.monotonic(), None, ""
    while time.monotonic() - last_access < RELEASE_BOUND_S:
        r = virsh("start", restore.shut.name, check=False)
        if r.returncode == 0:
            started = time.monotonic() - last_access
            break
        why = r.stderr
        time.sleep(0.5)
    assert started is not None, f"virsh start failed for {RELEASE_BOUND_S} s after the last access to live/: {why}"
    print(f"virsh start worked {started:.1f} s after the last access to live/ ({last_access - copied:.1f} s after cp)")
    virsh("destroy", restore.shut.name)
    run("qemu-img", "check", "-q", top)

    # Read without snapfs: the top image through libguestfs, attributes and xattrs kept by tar.
    out = restore.dir / "read-back"
    run("rm", "-rf", out)
    out.mkdir()
    run("guestfish", "--ro", "--format=qcow2", "-a", top, "-m", "/dev/sda", "tar-out", "/etc/app",
        restore.dir / "app.tar", "numericowner:true", "xattrs:true", timeout=300,
        # The independent reader, not snapfs: this machine's KVM may be broken (snapfs copes by itself).
        env=dict(os.environ, LIBGUESTFS_BACKEND="direct", LIBGUESTFS_BACKEND_SETTINGS="force_tcg"))
    run("tar", "-x", "--xattrs", "--xattrs-include=user.*", "--numeric-owner", "-f", restore.dir / "app.tar",
        "-C", out)
    compare(restore.old / "etc" / "app", out)

    # Revert to pre-restore: the files are gone again, and keep.txt is as it was before the restore.
    (dom / "revert").write_text(pre[0] + "\n")
    assert wait_for(lambda: not (live / "etc" / "app").exists(), timeout=10)
    assert (live / "etc" / "keep.txt").read_text() == "keep, as it is now\n"


def as_nobody(*argv):
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True, text=True)


def released(image):
    """Whether no writer holds IMAGE: qemu-img takes its lock as a domain would."""
    return run("qemu-img", "info", image, check=False).returncode == 0


def test_read_only_mount_and_others_change_nothing(restore, mount):
    """-o ro: EROFS, the reason in user.snapfs.error; another user let in (allow_other) by the guest's modes (/tmp
    is 1777) gets EACCES before that; no snapshot taken, the top untouched."""
    # The module's mount wrote last: its writer ends first, and its last sync moves the top's mtime.
    assert wait_for(lambda: released(restore.shut.top("vda")), timeout=RELEASE_BOUND_S, interval=0.5)
    before = snapshots_and_top(restore.shut)
    m = mount("-o", "ro,allow_other", timeout=30)
    live = Path(m.p(restore.shut.name, "live"))
    assert b"mounted with -o ro" in os.getxattr(live, "user.snapfs.error")
    assert errno_of(os.mkdir, live / "sda" / "tmp" / "by-root") == errno.EROFS
    tried = as_nobody("sh", "-c", f"echo x > '{live / 'sda' / 'tmp' / 'by-nobody'}'")
    assert tried.returncode != 0 and "Permission denied" in tried.stderr, tried.stderr
    made = as_nobody("mkdir", live / "sda" / "tmp" / "dir-by-nobody")
    assert made.returncode != 0 and "Permission denied" in made.stderr, made.stderr
    assert sorted(os.listdir(live / "sda" / "tmp")) == []
    assert snapshots_and_top(restore.shut) == before
