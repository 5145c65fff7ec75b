# SPDX-License-Identifier: GPL-2.0-or-later
# Restoring into live/ of a running domain through its guest agent: a real Debian guest (tests/lib/agent-guest.sh),
# booted once for the module; read back through the agent, and from its disk once it is shut down.
import base64
import errno
import json
import os
import stat
import time

import pytest

from conftest import IMAGE_ROOT, REPO, URI, Mount, _mountpoint, errno_of, run, virsh, wait_for, guest_set_fixtures

AGENT_GUEST = REPO / "tests" / "lib" / "agent-guest.sh"
# Booting the guest under TCG to its agent: measured 40-90 s on two loaded cores (see the script).
BOOT_BOUND_S = 600
RESTORED = "/root/restored"


def make_tree(root):
    """What is restored: modes, owners, a subfolder, symlinks (one dangling), a hard link, a sparse file, a 1 MiB+ file."""
    (root / "conf.d").mkdir(parents=True)
    (root / "app.conf").write_text("listen 8080\n")
    os.setxattr(root / "app.conf", "user.origin", b"backup")
    for i in range(3):
        (root / "conf.d" / f"{i}.conf").write_text(f"n = {i}\n" * (i * 50 + 1))
    (root / "big").write_bytes(os.urandom((1 << 20) + 12345))
    os.link(root / "big", root / "big.hardlink")
    os.symlink("app.conf", root / "current")
    os.symlink("/nowhere/at/all", root / "dangling")
    with open(root / "sparse", "wb") as f:
        f.seek(3 << 20)
        f.write(b"end")
    os.chown(root / "big", 1000, 1000)
    os.chmod(root / "big", 0o600)
    os.chown(root / "conf.d", 33, 33)
    os.chmod(root / "conf.d", 0o750)
    os.utime(root / "app.conf", ns=(1_500_000_000_123_456_789, 1_500_000_000_987_654_321))
    os.lchown(root / "current", 1000, 1000)


def agent(dom, execute, **arguments):
    cmd = {"execute": execute}
    if arguments:
        cmd["arguments"] = arguments
    return json.loads(virsh("qemu-agent-command", dom, json.dumps(cmd), timeout=120).stdout)["return"]


def agent_cat(dom, path):
    """A guest file's bytes read by the agent directly (virsh, not snapfs)."""
    handle = agent(dom, "guest-file-open", path=path, mode="r")
    data = b""
    try:
        while True:
            chunk = agent(dom, "guest-file-read", handle=handle, count=1 << 20)
            data += base64.b64decode(chunk.get("buf-b64", ""))
            if chunk.get("eof"):
                return data
    finally:
        agent(dom, "guest-file-close", handle=handle)


def agent_stat(dom, path):
    """stat(1) in the guest, through the agent directly: 'mode uid gid size mtime_seconds'."""
    pid = agent(dom, "guest-exec", path="stat", arg=["-c", "%a %u %g %s %Y", "--", path],
                **{"capture-output": True})["pid"]
    for _ in range(600):
        st = agent(dom, "guest-exec-status", pid=pid)
        if st["exited"]:
            assert st["exitcode"] == 0, base64.b64decode(st.get("err-data", "")).decode()
            return base64.b64decode(st["out-data"]).decode().split()
        time.sleep(0.1)
    raise AssertionError(f"stat {path} in the guest did not finish")


class AgentSet:
    """One running Debian guest with qemu-guest-agent; its disk a copy of the cached image, so a run changes no cache."""

    def __init__(self, images, doms):
        run(AGENT_GUEST, "build", timeout=1800)
        cache = os.environ.get("SNAPFS_AGENT_GUEST_CACHE", "/var/cache/snapfs-tests/agent-guest")
        d = self.dir = IMAGE_ROOT / "agent"
        d.mkdir(parents=True, exist_ok=True)
        disk = d / "disk.qcow2"
        run("cp", "--sparse=always", os.path.join(cache, "disk.qcow2"), disk)
        os.chmod(disk, 0o600)
        name = doms.name("agent")
        self.dom = doms.define([("vda", disk, "qcow2")], name=name,
                               xml=run(AGENT_GUEST, "xml", name, disk).stdout)
        self.name = name
        started = time.monotonic()
        self.dom.start()
        run(AGENT_GUEST, "wait", name, str(BOOT_BOUND_S), timeout=BOOT_BOUND_S + 30)
        self.boot_s = time.monotonic() - started
        self.src = d / "src"
        make_tree(self.src)


agentset, mnt = guest_set_fixtures("agentset", "agent", AgentSet)


def snapshots(dom):
    return sorted(s for s in dom.snapshots() if s.startswith("pre-restore-"))


def same_attrs(a, b):
    sa, sb = os.lstat(a), os.lstat(b)
    assert (stat.S_IFMT(sa.st_mode), stat.S_IMODE(sa.st_mode)) == (stat.S_IFMT(sb.st_mode), stat.S_IMODE(sb.st_mode)), b
    assert (sa.st_uid, sa.st_gid) == (sb.st_uid, sb.st_gid), b
    if stat.S_ISREG(sa.st_mode):   # a folder's size is its filesystem's; a symlink's times are not kept
        assert sa.st_size == sb.st_size, b
    if not stat.S_ISLNK(sa.st_mode):
        assert sa.st_mtime_ns == sb.st_mtime_ns, b


def test_cp_a_into_live_of_a_running_domain(agentset, mnt):
    """Reading live/ of a running domain takes nothing; cp -a goes through the agent: a live pre-restore snapshot
    first, then the guest's own files; diff -r and stat agree through snapfs, and the agent itself reads the same
    bytes and attributes."""
    live = mnt / agentset.name / "live"
    assert "user.snapfs.error" not in os.listxattr(live)
    assert (live / "etc" / "hostname").exists()
    assert snapshots(agentset.dom) == []
    run("cp", "-a", agentset.src, live / RESTORED.lstrip("/"), timeout=600)
    taken = snapshots(agentset.dom)
    assert len(taken) == 1, taken
    assert agentset.dom.state() == "running"
    dest = live / RESTORED.lstrip("/")
    run("diff", "-r", "--no-dereference", agentset.src, dest)
    for rel in ["", "app.conf", "conf.d", "conf.d/2.conf", "big", "current", "dangling", "sparse"]:
        same_attrs(agentset.src / rel, dest / rel)
    assert os.readlink(dest / "dangling") == "/nowhere/at/all"
    assert os.getxattr(dest / "app.conf", "user.origin") == b"backup"
    assert os.stat(dest / "big").st_ino == os.stat(dest / "big.hardlink").st_ino
    assert os.stat(dest / "big").st_nlink == 2
    # Not through snapfs: the agent reads what the guest holds.
    assert agent_cat(agentset.name, RESTORED + "/big") == (agentset.src / "big").read_bytes()
    mode, uid, gid, size, mtime = agent_stat(agentset.name, RESTORED + "/app.conf")
    assert (mode, uid, gid, size, mtime) == ("644", "0", "0", "12", "1500000000")
    assert agent_stat(agentset.name, RESTORED + "/big")[:3] == ["600", "1000", "1000"]
    # The live snapshot was quiesced: the agent could freeze, so snapfs did not fall back.
    assert b"without quiescing" not in mnt.parent.joinpath(mnt.name + ".stderr").read_bytes()


def test_changes_in_live_of_a_running_domain(agentset, mnt):
    """rename, truncate, append, chmod, chown, touch, ln -s, setfattr, unlink, rmdir through the agent; what is not
    on the guest's disks (/proc) shows empty and refuses."""
    live = mnt / agentset.name / "live"
    d = live / "root" / "work"
    d.mkdir(mode=0o755)
    (d / "a").write_text("hello\n")
    os.rename(d / "a", d / "b")
    assert not (d / "a").exists() and (d / "b").read_text() == "hello\n"
    os.truncate(d / "b", 2)
    with open(d / "b", "ab") as f:
        f.write(b"y")
    assert (d / "b").read_bytes() == b"hey"
    os.chmod(d / "b", 0o640)
    os.chown(d / "b", 1234, 5678)
    os.utime(d / "b", ns=(1_000_000_000_123_456_789, 1_100_000_000_987_654_321))
    st = os.stat(d / "b")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert st.st_mtime_ns == 1_100_000_000_987_654_321
    os.symlink("../b", d / "link")
    assert os.readlink(d / "link") == "../b"
    os.setxattr(d / "b", "user.note", b"restored\0\n")
    assert os.getxattr(d / "b", "user.note") == b"restored\0\n"
    assert "user.note" in os.listxattr(d / "b")
    os.removexattr(d / "b", "user.note")
    assert errno_of(os.getxattr, d / "b", "user.note") == errno.ENODATA
    assert errno_of(os.rmdir, d) == errno.ENOTEMPTY
    assert errno_of(os.mkdir, d) == errno.EEXIST
    os.unlink(d / "link")
    os.unlink(d / "b")
    os.rmdir(d)
    assert not d.exists()
    assert os.listdir(live / "proc") == []
    assert errno_of(os.stat, live / "proc" / "version") == errno.ENOENT
    assert errno_of(lambda: (live / "proc" / "version").read_bytes()) == errno.ENOENT
    assert errno_of(os.mkdir, live / "proc" / "x") == errno.EACCES


def test_quiesce_on_takes_a_frozen_snapshot(agentset, mnt):
    """-o quiesce=on: mkdir of a running domain whose agent can freeze succeeds, and leaves the guest thawed."""
    m = Mount(_mountpoint("agentq"), ["-c", URI, "-o", "quiesce=on"])
    try:
        os.mkdir(os.path.join(m.path, agentset.name, "frozen"))
        assert "frozen" in agentset.dom.snapshots()
        assert agent(agentset.name, "guest-fsfreeze-status") == "thawed"
    finally:
        m.unmount()
        m.close()


def test_after_shutdown_the_disk_holds_the_files(agentset, mnt):
    """What close() returned for is on the guest's disk: once the guest is off, its top image holds the restored
    files and the image the pre-restore snapshot froze holds none of them, read without snapfs (one guestfish)."""
    virsh("shutdown", "--mode", "agent", agentset.name)
    assert wait_for(lambda: agentset.dom.state() == "shut off", timeout=180, interval=1)
    chain = [f for f, _ in agentset.dom.chain("vda")]
    assert chain[0] == str(agentset.dir / "disk.qcow2")   # frozen by the pre-restore snapshot, then 'frozen'
    out = run("guestfish", "--ro", "--format=qcow2", "-a", chain[-1], "-a", chain[0], "run",
              ":", "mount", "/dev/sda", "/", ":", "cat", RESTORED + "/conf.d/2.conf", ":", "umount", "/",
              ":", "mount", "/dev/sdb", "/", ":", "exists", RESTORED, timeout=600).stdout
    # guestfish ends what cat prints with a newline of its own.
    assert out == (agentset.src / "conf.d" / "2.conf").read_text() + "\nfalse\n"
