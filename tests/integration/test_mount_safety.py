# SPDX-License-Identifier: GPL-2.0-or-later
# The mount itself: nosuid,nodev, who allow_other lets in, revert writes, unambiguous inode numbers, example scripts.
import errno
import os
import subprocess

import pytest

from conftest import IMAGE_ROOT, REPO, RUN_PREFIX, _mountpoint, errno_of, run, snapfs_bin, virsh

EXAMPLES = REPO / "examples"


def mount_options(path):
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(path):
                return fields[5].split(",")
    raise AssertionError(f"{path} is not mounted")


def test_nosuid_nodev(mount):
    m = mount()
    opts = mount_options(m.path)
    assert "nosuid" in opts and "nodev" in opts, opts


def test_suid_dev_ignored(mount):
    """mount(8) passes suid,dev from fstab's defaults: they are ignored with a message, never obeyed."""
    m = mount("-o", "suid,dev")
    opts = mount_options(m.path)
    assert "nosuid" in opts and "nodev" in opts, opts
    assert "-o suid is ignored" in m.stderr_text()


@pytest.fixture
def users():
    """Temporary users u1 (allowed by name), u2 (not allowed), u3 (in the allowed group g); removed afterwards."""
    names = {k: f"{RUN_PREFIX}{k}" for k in ("u1", "u2", "u3", "g")}
    try:
        run("groupadd", names["g"])
        run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", names["u1"])
        run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", names["u2"])
        run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", "-G", names["g"], names["u3"])
        yield names
    finally:
        for k in ("u1", "u2", "u3"):
            run("userdel", names[k], check=False)
        run("groupdel", names["g"], check=False)


def as_user(user, *argv):
    return subprocess.run(["setpriv", f"--reuid={user}", "--regid=users", "--init-groups", *map(str, argv)],
                          capture_output=True, text=True)


def test_allow_users_and_groups(mount, domains, users):
    dom = domains.simple()
    dom.snapshot("s1")
    m = mount("-o", f"allow_users={users['u1']},allow_groups={users['g']}")
    layers = os.listdir(m.p(dom.name, "layers", "vda"))
    layer = m.p(dom.name, "layers", "vda", layers[0])
    os.stat(m.p(dom.name))      # cached by root: the others must still not get through
    for who in ("u1", "u3"):
        listed = as_user(users[who], "ls", m.path)
        assert listed.returncode == 0 and dom.name in listed.stdout.split(), (who, listed.stderr)
        listed = as_user(users[who], "ls", m.p(dom.name))
        assert listed.returncode == 0 and "s1" in listed.stdout.split(), (who, listed.stderr)
    checks = [("ls", m.path), ("ls", m.p(dom.name)), ("stat", m.p(dom.name)), ("cat", m.p(dom.name, "revert")),
              ("getfattr", "-n", "user.snapfs.file", layer), ("stat", m.p(dom.name, "s1"))]
    for argv in checks:
        denied = as_user(users["u2"], *argv)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (argv, denied.stdout, denied.stderr)
    assert "warning" not in m.stderr_text()


def test_allow_other_alone_lets_in_only_root_and_owner(mount, domains, users):
    domains.simple()
    m = mount("-o", "allow_other")
    denied = as_user(users["u1"], "ls", m.path)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert "allow_other without allow_users" in m.stderr_text()


def test_unknown_user_refused(libvirtd):
    mnt = _mountpoint("refused")
    proc = run(snapfs_bin(), "-f", "-o", f"allow_users={RUN_PREFIX}nosuchuser", mnt, check=False, timeout=30)
    assert proc.returncode != 0 and "there is no user" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- revert writes and names

def test_revert_writes(mount, domains):
    dom = domains.simple()
    for snap in ("s1", "s2", "s"):
        dom.snapshot(snap)
    state = IMAGE_ROOT / f"{dom.name}-state"
    m = mount("-o", f"state_dir={state}")
    revert = m.p(dom.name, "revert")
    run("sh", "-c", f"echo s1 > '{revert}'")
    assert dom.current() == "s1"
    run("bash", "-c", f"printf s2 > '{revert}'")
    assert dom.current() == "s2"
    before = (dom.snapshots(), dom.current(), dom.top("vda"))
    # Not at offset 0, or a second write of one open: EINVAL, nothing reverted.
    fd = os.open(revert, os.O_WRONLY)
    try:
        assert errno_of(os.pwrite, fd, b"s1\n", 3) == errno.EINVAL
    finally:
        os.close(fd)
    fd = os.open(revert, os.O_WRONLY)
    try:
        assert errno_of(os.pwrite, fd, b"nosuch\n", 0) == errno.ENOENT
        # a refused write moved nothing: trying again from the start is a new request (a buffered close does)
        assert errno_of(os.pwrite, fd, b"nosuch\n", 0) == errno.ENOENT
        assert errno_of(os.pwrite, fd, b"s1\n", 3) == errno.EINVAL
    finally:
        os.close(fd)
    assert (dom.snapshots(), dom.current(), dom.top("vda")) == before
    # In pieces (dd bs=1): gathered, and carried out whole at close, never as a prefix ("s" exists).
    dd = run("sh", "-c", f"printf s1 | dd bs=1 of='{revert}'", check=False)
    assert dd.returncode == 0, dd.stderr
    assert dom.current() == "s1", "a byte-by-byte write was carried out before its end"
    before = (dom.snapshots(), dom.current(), dom.top("vda"))
    dd = run("sh", "-c", f"printf sx | dd bs=1 of='{revert}'", check=False)
    assert dd.returncode != 0, "dd did not see the refusal at close"
    assert (dom.snapshots(), dom.current(), dom.top("vda")) == before, "reverted to a prefix of the name"
    assert "'sx'" in os.getxattr(m.p(dom.name), "user.snapfs.last_error").decode()
    # A newline ends the request: the write that brings it carries it out and answers for it.
    fd = os.open(revert, os.O_WRONLY)
    try:
        assert os.write(fd, b"s") == 1
        # dom.current() runs virsh: its child has fd until exec closes it, a flush that must not end the request
        assert dom.current() == "s1", m.stderr_text()
        assert os.write(fd, b"2\n") == 2
        assert dom.current() == "s2"
    finally:
        os.close(fd)
    fd = os.open(revert, os.O_WRONLY)
    try:
        os.write(fd, b"s")
        assert errno_of(os.write, fd, b"y\n") == errno.ENOENT
    finally:
        os.close(fd)
    assert dom.current() == "s2"


@pytest.mark.parametrize("name", [" lead", "trail ", "x --force", "y --other"])
def test_mkdir_refuses_unrevertable_names(mount, domains, name):
    dom = domains.simple()
    m = mount()
    before = dom.snapshots()
    assert errno_of(os.mkdir, m.p(dom.name, name)) == errno.EINVAL
    assert dom.snapshots() == before


# ---------------------------------------------------------------- inode numbers

def test_inode_numbers_with_separators(mount, domains):
    one = domains.simple(name=f"{RUN_PREFIX}a|b")
    two = domains.simple(name=f"{RUN_PREFIX}a")
    one.snapshot("c")
    two.snapshot("b|c")
    m = mount()
    assert os.stat(m.p(one.name, "c")).st_ino != os.stat(m.p(two.name, "b|c")).st_ino
    found = run("find", m.p(one.name), m.p(two.name), "-maxdepth", "1", check=False)
    assert found.returncode == 0 and "loop" not in found.stderr, found.stderr


# ---------------------------------------------------------------- example scripts

@pytest.fixture
def fake_domain(tmp_path):
    """A directory shaped as a snapfs domain, whose snapshot holds guest symlinks to the host's files."""
    dom = tmp_path / "dom"
    snap = dom / "s1"
    (dom / "layers" / "vda").mkdir(parents=True)
    (dom / "revert").write_text("s1\n")
    (snap / "etc").mkdir(parents=True)
    os.symlink("/etc/shadow", snap / "etc" / "passwd")
    os.symlink("/etc", snap / "linkdir")
    os.symlink("../../../../../../../../../etc", snap / "etc" / "up")
    return dom


@pytest.mark.parametrize("rel", ["etc/passwd", "linkdir/shadow", "etc/up/shadow"])
def test_restore_file_refuses_guest_symlinks(fake_domain, rel):
    proc = run(EXAMPLES / "snapfs-restore-file.sh", fake_domain / "s1" / rel, check=False)
    assert proc.returncode == 1 and "symbolic link" in proc.stderr, proc.stderr


def test_file_history_never_follows_guest_symlinks(fake_domain):
    shadow = run("sh", "-c", "sha256sum </etc/shadow | cut -c1-16").stdout.strip()
    for rel in ("linkdir/shadow", "etc/up/shadow"):
        proc = run(EXAMPLES / "snapfs-file-history.sh", fake_domain, rel, check=False)
        assert proc.returncode != 0 and "refused" in proc.stderr, proc.stderr
        assert shadow not in proc.stdout
    proc = run(EXAMPLES / "snapfs-file-history.sh", fake_domain, "etc/passwd", check=False)
    assert shadow not in proc.stdout, proc.stdout
