# SPDX-License-Identifier: GPL-2.0-or-later
# The mount itself: nosuid,nodev, who allow_other lets in, revert writes, unambiguous inode numbers, example scripts.
import errno
import os
import stat
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
    """fuse3's mount.fuse appends dev,suid to every fstab mount without nodev/nosuid (mount(8) has taken an
    explicit suid out of the line already, so the two cannot be told apart): ignored with a message, never obeyed."""
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
    (dom / "live" / "etc").mkdir(parents=True)
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


def test_restore_file_is_cp_a_into_live(fake_domain):
    """snapfs-restore-file.sh copies the snapshot's file to the same path under live/, bytes, mode and times kept;
    a path in live/ or layers/ is no snapshot's."""
    src = fake_domain / "s1" / "etc" / "motd"
    src.write_text("as it was\n")
    src.chmod(0o640)
    os.utime(src, ns=(1_000_000_000_123_456_789, 1_000_000_000_123_456_789))
    proc = run(EXAMPLES / "snapfs-restore-file.sh", src)
    assert proc.stdout.strip() == "restored /etc/motd of dom from s1", proc.stdout
    dst = fake_domain / "live" / "etc" / "motd"
    assert dst.read_text() == "as it was\n"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o640 and dst.stat().st_mtime_ns == src.stat().st_mtime_ns
    proc = run(EXAMPLES / "snapfs-restore-file.sh", dst, check=False)
    assert proc.returncode == 1 and "not inside a snapshot" in proc.stderr, proc.stderr


def test_restore_file_refuses_a_link_in_live(fake_domain, tmp_path):
    """The folder the file goes into is a guest symlink in live/ (to a host folder, as the kernel would resolve it):
    refused, and nothing is written where it points."""
    (fake_domain / "s1" / "etc" / "motd").write_text("as it was\n")
    host = tmp_path / "host-etc"
    host.mkdir()
    (fake_domain / "live" / "etc").rmdir()
    os.symlink(host, fake_domain / "live" / "etc")
    proc = run(EXAMPLES / "snapfs-restore-file.sh", fake_domain / "s1" / "etc" / "motd", check=False)
    assert proc.returncode == 1 and "symbolic link" in proc.stderr, proc.stderr
    assert list(host.iterdir()) == []


def test_file_history_never_follows_guest_symlinks(fake_domain):
    shadow = run("sh", "-c", "sha256sum </etc/shadow | cut -c1-16").stdout.strip()
    for rel in ("linkdir/shadow", "etc/up/shadow"):
        proc = run(EXAMPLES / "snapfs-file-history.sh", fake_domain, rel, check=False)
        assert proc.returncode != 0 and "refused" in proc.stderr, proc.stderr
        assert shadow not in proc.stdout
    proc = run(EXAMPLES / "snapfs-file-history.sh", fake_domain, "etc/passwd", check=False)
    assert shadow not in proc.stdout, proc.stdout


# ---------------------------------------------------------------- with real guests (libguestfs appliances)

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def guest_image(root, name, files, links=(), modes=None):
    """A qcow2 ext4 image holding FILES {path: text} and LINKS [(path, target)] (symlinks inside the guest
    only: their targets are names, never followed), made with mkfs.ext4 -d from a temp dir of this run."""
    import shutil
    tree = root / f".{name}.tree"
    shutil.rmtree(tree, ignore_errors=True)
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
        os.chmod(tree / rel, (modes or {}).get(rel, 0o644))
    for rel, target in links:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, tree / rel)
    raw = root / f"{name}.raw"
    run("mkfs.ext4", "-q", "-F", "-d", tree, raw, "16M")
    shutil.rmtree(tree)
    image = root / f"{name}.qcow2"
    run("qemu-img", "convert", "-q", "-O", "qcow2", raw, image)
    raw.unlink()
    image.chmod(0o644)
    return image


def image_sums(folder):
    import hashlib
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def guests(libvirtd, run_prefix, images):
    """Two shut-off domains whose names and snapshot names hold '|' (a|b / s1 and a / b|s1), built from the
    same files (so the same guest inode numbers); the first's guest holds links to /etc/shadow and /etc; and one
    mount with allow_other,allow_users=nobody that every check here shares (appliances start slowly)."""
    from conftest import module_domains, Mount
    folder = IMAGE_ROOT / "guests"
    folder.mkdir(mode=0o755, exist_ok=True)
    files = {"public.txt": "for everyone\n", "secret.txt": "root only\n", "etc/hostname": "guest\n"}
    links = [("etc/passwd", "/etc/shadow"), ("linkdir", "/etc"), ("etc/up", "../../../../../../../../etc")]
    with module_domains(images, run_prefix, tree=folder) as doms:
        out = []
        for i, (name, snap) in enumerate([(f"{RUN_PREFIX}a|b", "s1"), (f"{RUN_PREFIX}a", "b|s1")]):
            base = guest_image(folder, f"g{i}", files, links, modes={"secret.txt": 0o600})
            top = folder / f"g{i}-top.qcow2"
            run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top)
            top.chmod(0o644)
            dom = doms.define([("vda", str(top), "qcow2")], name=name)
            dom.snapshot(snap)
            out.append((dom, snap))
        m = Mount(_mountpoint("guests"), ["-c", "qemu:///system", "-o", "allow_other,allow_users=nobody"],
                  timeout=30)
        try:
            yield m, out, folder
            m.check_clean_exit()
        finally:
            if m.exit_status is None:
                m.unmount()
            m.close()


def test_allow_users_nobody_reads_by_guest_modes(guests):
    """allow_users=nobody: nobody reads a guest file its guest mode lets everyone read, never a 0600 one."""
    m, doms, _ = guests
    dom, snap = doms[0]
    public = m.p(dom.name, snap, "sda", "public.txt")
    proc = run(*NOBODY, "cat", public, check=False, timeout=300)
    assert proc.returncode == 0 and proc.stdout == "for everyone\n", proc.stderr
    proc = run(*NOBODY, "cat", m.p(dom.name, snap, "sda", "secret.txt"), check=False, timeout=300)
    assert proc.returncode != 0 and "Permission denied" in proc.stderr, (proc.stdout, proc.stderr)
    with open(m.p(dom.name, snap, "sda", "secret.txt")) as f:      # root reads it
        assert f.read() == "root only\n"


def test_allow_other_alone_keeps_guest_files_from_others(mount, guests):
    """-o allow_other without allow_users: another local user gets EACCES on a guest file everyone could read
    by its guest mode, even once root has read it (kernel caches warm)."""
    _, doms, _ = guests
    dom, snap = doms[0]
    m = mount("-o", "allow_other")
    public = m.p(dom.name, snap, "sda", "public.txt")
    with open(public) as f:
        assert f.read() == "for everyone\n"
    for argv in (["cat", public], ["stat", public], ["ls", m.p(dom.name, snap, "sda")]):
        proc = run(*NOBODY, *argv, check=False, timeout=120)
        assert proc.returncode != 0 and "Permission denied" in proc.stderr, (argv, proc.stdout, proc.stderr)


def test_cp_a_of_two_domains_makes_no_cross_links(guests, tmp_path):
    """cp -a of both domains' snapshot trees (same guest inode numbers, names with '|') into one host folder:
    no file of one is a hard link to a file of the other; every inode number in the mount is its own."""
    m, doms, _ = guests
    sources = [m.p(dom.name, snap) for dom, snap in doms]
    inodes = {}
    for src in sources:
        for top, dirs, names in os.walk(src):
            for n in dirs + names:
                st = os.lstat(os.path.join(top, n))
                inodes.setdefault(st.st_ino, []).append(os.path.join(top, n))
    shared = {ino: paths for ino, paths in inodes.items() if len(paths) > 1}
    assert not shared, f"inode numbers shared: {shared}"
    dest = tmp_path / "copy"
    dest.mkdir()
    for i, src in enumerate(sources):
        (dest / str(i)).mkdir()
        run("cp", "-a", src, dest / str(i) / "snap", timeout=300)
    seen = {}
    for i in range(len(sources)):
        for top, _, names in os.walk(dest / str(i)):
            for n in names:
                st = os.lstat(os.path.join(top, n))
                seen.setdefault((st.st_dev, st.st_ino), set()).add(i)
                if not os.path.islink(os.path.join(top, n)):
                    assert st.st_nlink == 1, f"{top}/{n} is a hard link ({st.st_nlink})"
    assert all(len(v) == 1 for v in seen.values()), "a file of one domain's copy is a hard link to the other's"
    assert (dest / "0" / "snap" / "sda" / "public.txt").read_text() == "for everyone\n"
    assert os.readlink(dest / "1" / "snap" / "sda" / "etc" / "passwd") == "/etc/shadow"   # copied as a link


@pytest.mark.parametrize("rel", ["etc/passwd", "linkdir/shadow", "etc/up/shadow"])
def test_restore_file_refuses_a_real_guest_symlink(guests, rel):
    """snapfs-restore-file.sh on a real guest's link to /etc/shadow (or a folder link on the way): refused, and
    the shut-off domain's disk images are byte for byte as before (nothing copied in)."""
    m, doms, folder = guests
    dom, snap = doms[0]
    before = image_sums(folder)
    proc = run(EXAMPLES / "snapfs-restore-file.sh", m.p(dom.name, snap, "sda", rel), check=False, timeout=300)
    assert proc.returncode == 1 and "symbolic link" in proc.stderr, (proc.stdout, proc.stderr)
    assert image_sums(folder) == before
    assert os.readlink(m.p(dom.name, snap, "sda", "etc", "passwd")) == "/etc/shadow"
    assert dom.state() == "shut off"


def test_file_history_on_a_real_guest_symlink(guests):
    """snapfs-file-history.sh: a link on the way is refused; a link as the file is shown as its target, never
    read; the disk images are unchanged."""
    m, doms, folder = guests
    dom, snap = doms[0]
    before = image_sums(folder)
    for rel in ("sda/linkdir/shadow", "sda/etc/up/shadow"):
        proc = run(EXAMPLES / "snapfs-file-history.sh", m.p(dom.name), rel, check=False, timeout=300)
        assert proc.returncode != 0 and "refused" in proc.stderr, (rel, proc.stdout, proc.stderr)
    proc = run(EXAMPLES / "snapfs-file-history.sh", m.p(dom.name), "sda/etc/passwd", check=False, timeout=300)
    assert proc.returncode == 0 and "link:/etc/shadow" in proc.stdout, (proc.stdout, proc.stderr)
    assert image_sums(folder) == before
