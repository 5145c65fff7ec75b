# SPDX-License-Identifier: GPL-2.0-or-later
# The foundation through a real mount: the command line, names, xattrs, mtimes, modes, errors, staleness, reconnects.
import errno
import os
import stat
import subprocess
import time

import pytest

from conftest import (RUN_PREFIX, URI, call_with_timeout, errno_of, is_mount, libvirtd_answers, libvirtd_kill,
                      libvirtd_start, run, snapfs_bin, virsh, wait_for)

# A view is "never stale" when a change made with virsh shows within this long.
STALE_LIMIT = 1.0


def xattrs(path):
    """All user.snapfs.* attributes of PATH as {short name: str}."""
    out = {}
    for name in os.listxattr(path):
        assert name.startswith("user.snapfs."), name
        out[name[len("user.snapfs."):]] = os.getxattr(path, name).decode()
    return out


def read(path):
    with open(path, "rb") as f:
        return f.read().decode()


# ---------------------------------------------------------------- command line

def test_help_and_version():
    proc = run(snapfs_bin(), "--help", check=False)
    assert proc.returncode == 0
    text = proc.stdout + proc.stderr
    for word in ("-c URI", "-o ro", "-f", "-d", "MOUNTPOINT"):
        assert word in text, f"--help does not mention {word!r}"
    proc = run(snapfs_bin(), "--version", check=False)
    assert proc.returncode == 0
    assert "snapfs" in proc.stdout and "libvirt" in proc.stdout


def _bad_start(tmp_mnt, *args, expect=None):
    """snapfs must refuse ARGS before mounting: non-zero exit, one line on stderr, nothing mounted."""
    proc = run(snapfs_bin(), "-f", *args, check=False, timeout=60)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode != 0, f"snapfs {args} exited 0"
    assert len(lines) == 1, f"snapfs {args} should say one line, said:\n{proc.stderr}"
    assert lines[0].startswith(("snapfs", "fuse:")), lines[0]
    if expect:
        assert expect in lines[0].lower(), lines[0]
    assert not is_mount(tmp_mnt)
    return lines[0]


@pytest.fixture
def empty_dir(run_prefix):
    from conftest import _mountpoint
    return str(_mountpoint("bad"))


def test_bad_uri(empty_dir):
    _bad_start(empty_dir, "-c", "qemu+tcp://127.0.0.1:1/system", empty_dir)
    _bad_start(empty_dir, "-c", "nosuchdriver:///x", empty_dir)


def test_missing_mountpoint(empty_dir):
    missing = empty_dir + "-missing"
    _bad_start(empty_dir, "-c", URI, missing)
    assert not os.path.exists(missing)


def test_no_mountpoint_given(empty_dir):
    _bad_start(empty_dir, "-c", URI)


def test_nonempty_mountpoint(empty_dir):
    with open(os.path.join(empty_dir, "file"), "w") as f:
        f.write("x")
    _bad_start(empty_dir, "-c", URI, empty_dir, expect="not empty")
    os.unlink(os.path.join(empty_dir, "file"))


def test_mountpoint_is_a_file(empty_dir):
    path = empty_dir + ".file"
    open(path, "w").close()
    _bad_start(empty_dir, "-c", URI, path)
    os.unlink(path)


def test_unknown_option(empty_dir):
    _bad_start(empty_dir, "-c", URI, "-o", "nosuchoption", empty_dir)
    _bad_start(empty_dir, "-c", URI, "-o", "quiesce=sometimes", empty_dir)


def test_no_dev_fuse(empty_dir):
    """Without /dev/fuse (here: an empty /dev in a private mount namespace): one line, non-zero, nothing mounted."""
    proc = run("unshare", "-m", "sh", "-c", 'mount -t tmpfs none /dev && exec "$0" -f -c "$1" "$2"',
               snapfs_bin(), URI, empty_dir, check=False, timeout=60)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1 and "/dev/fuse" in lines[0], proc.stderr
    assert not is_mount(empty_dir)


def test_clean_unmount(mount):
    m = mount()
    assert os.path.isdir(m.path)
    assert m.unmount() == 0
    assert not is_mount(m.path)


# ---------------------------------------------------------------- names

def test_root_lists_domains(shared_mount, demo):
    names = os.listdir(shared_mount.path)
    for dom in demo.domains():
        assert dom.name in names
    listed = {n for n in virsh("list", "--all", "--name").stdout.split("\n") if n and RUN_PREFIX in n}
    assert listed <= set(names)


def test_domain_dir_entries(shared_mount, demo):
    assert sorted(os.listdir(shared_mount.p(demo.chain.name))) == ["layers", "live", "revert", "s1", "s2", "s3"]
    assert sorted(os.listdir(shared_mount.p(demo.internal.name))) == ["int1", "int2", "layers", "live", "revert"]
    assert sorted(os.listdir(shared_mount.p(demo.running.name))) == ["layers", "live", "live1", "revert"]


def test_domain_without_snapshots(mount, domains):
    dom = domains.simple()
    m = mount()
    assert sorted(os.listdir(m.p(dom.name))) == ["layers", "live", "revert"]
    assert read(m.p(dom.name, "revert")) == ""
    assert os.listdir(m.p(dom.name, "layers")) == ["vda"]
    assert len(os.listdir(m.p(dom.name, "layers", "vda"))) == 2


def test_revert_reads_current(shared_mount, demo):
    assert demo.chain.current() == "s3"
    assert read(shared_mount.p(demo.chain.name, "revert")).rstrip("\n") == "s3"
    assert read(shared_mount.p(demo.internal.name, "revert")).rstrip("\n") == demo.internal.current() == "int2"
    assert read(shared_mount.p(demo.running.name, "revert")).rstrip("\n") == "live1"


def test_layer_names(shared_mount, demo):
    dom = demo.chain
    assert os.listdir(shared_mount.p(dom.name, "layers")) == ["vda"]
    expected = [f"{k}-{os.path.basename(f)}" for k, f in enumerate(dom.layer_files)]
    assert len(expected) == 5     # the template, the overlay on it, and one overlay per snapshot s1..s3
    got = sorted(os.listdir(shared_mount.p(dom.name, "layers", "vda")), key=lambda n: int(n.split("-", 1)[0]))
    assert got == expected
    # the chain libvirt and qemu-img know is the one shown
    assert [f for f, _ in dom.chain("vda")] == dom.layer_files


def test_layer_names_internal_and_running(shared_mount, demo):
    files = [f for f, _ in demo.internal.chain("vda")]
    assert sorted(os.listdir(shared_mount.p(demo.internal.name, "layers", "vda"))) == \
        [f"{k}-{os.path.basename(f)}" for k, f in enumerate(files)]
    files = [f for f, _ in demo.running.chain("vda")]
    assert len(files) == 3
    assert sorted(os.listdir(shared_mount.p(demo.running.name, "layers", "vda"))) == \
        [f"{k}-{os.path.basename(f)}" for k, f in enumerate(files)]


# ---------------------------------------------------------------- xattrs, times, modes

def test_snapshot_xattrs(shared_mount, demo):
    dom = demo.chain
    for snap, parent in (("s1", None), ("s2", "s1"), ("s3", "s2")):
        x = xattrs(shared_mount.p(dom.name, snap))
        sx = dom.snapshot_xml(snap)
        if parent is None:
            assert "parent" not in x
        else:
            assert x["parent"] == parent
        assert x["created"] == sx.findtext("creationTime")
        assert x["description"] == (sx.findtext("description") or "")
        assert x["state"] == sx.findtext("state")
        assert x["kind"] == "external"
        assert x["current"] == ("1" if snap == "s3" else "0")
    assert xattrs(shared_mount.p(dom.name, "s1"))["description"] == "snapshot s1"


def test_internal_snapshot_xattrs(shared_mount, demo):
    dom = demo.internal
    x1 = xattrs(shared_mount.p(dom.name, "int1"))
    x2 = xattrs(shared_mount.p(dom.name, "int2"))
    assert x1["kind"] == x2["kind"] == "internal"
    assert x1["state"] == "shutoff"
    assert "parent" not in x1 and x2["parent"] == "int1"
    assert (x1["current"], x2["current"]) == ("0", "1")


def test_running_domain(shared_mount, demo):
    dom = demo.running
    assert dom.state() == "running"
    assert xattrs(shared_mount.p(dom.name))["state"] == "running"
    x = xattrs(shared_mount.p(dom.name, "live1"))
    assert x["kind"] == "external"
    assert x["state"] == dom.snapshot_xml("live1").findtext("state")
    layers = sorted(os.listdir(shared_mount.p(dom.name, "layers", "vda")))
    top = xattrs(shared_mount.p(dom.name, "layers", "vda", layers[-1]))
    assert top["file"] == dom.top("vda")
    assert top.get("live") == "1"


def test_layer_xattrs(shared_mount, demo, images):
    dom = demo.chain
    for k, file in enumerate(dom.layer_files):
        x = xattrs(shared_mount.p(dom.name, "layers", "vda", f"{k}-{os.path.basename(file)}"))
        info = images.info(file)
        assert x["file"] == file
        assert x["format"] == "qcow2"
        assert int(x["virtual_size"]) == info["virtual-size"]
        if k == 0:
            assert "backing" not in x
        else:
            assert x["backing"] == dom.layer_files[k - 1]
        # layer k was frozen by the snapshot whose new overlay is layer k+1; the template and the live top by none
        if 1 <= k <= 3:
            assert x["snapshot"] == dom.snapshots_made[k - 1]
        else:
            assert "snapshot" not in x
        assert x.get("live", "0") == ("1" if k == 4 else "0")


def test_snapshot_mtime_is_creation_time(shared_mount, demo):
    for dom in (demo.chain, demo.internal):
        for snap in dom.snapshots():
            st = os.stat(shared_mount.p(dom.name, snap))
            assert int(st.st_mtime) == dom.snapshot_created(snap), (dom.name, snap)


def test_modes_and_owners(shared_mount, demo):
    root = os.stat(shared_mount.path)
    assert stat.S_ISDIR(root.st_mode)
    d = os.stat(shared_mount.p(demo.chain.name))
    assert stat.S_ISDIR(d.st_mode) and d.st_mode & 0o555 == 0o555
    assert d.st_uid == os.getuid()
    for sub in ("s1", "layers", os.path.join("layers", "vda")):
        st = os.stat(shared_mount.p(demo.chain.name, sub))
        assert stat.S_ISDIR(st.st_mode), sub
        assert st.st_mode & 0o555 == 0o555, sub
        assert st.st_mode & 0o022 == 0, f"{sub} is writable by group or others"
    st = os.stat(shared_mount.p(demo.chain.name, "revert"))
    assert stat.S_ISREG(st.st_mode)
    assert st.st_mode & 0o200 and not st.st_mode & 0o022


# ---------------------------------------------------------------- errors

def test_enoent(shared_mount, demo):
    d = demo.chain.name
    for parts in (("nosuchdomain",), (d, "nosuchsnapshot"), (d, "layers", "vdz"),
                  (d, "layers", "vda", "9-nosuchlayer"), (d, "layers", "vda", "0-wrongname"),
                  (RUN_PREFIX + "gone",)):
        assert errno_of(os.stat, shared_mount.p(*parts)) == errno.ENOENT, parts


READONLY = (errno.EROFS, errno.EPERM)


def _create(path):
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def test_writes_refused(shared_mount, demo):
    m, d = shared_mount, demo.chain.name
    layer0 = m.p(d, "layers", "vda", sorted(os.listdir(m.p(d, "layers", "vda")))[0])
    cases = [
        ("create in root", _create, m.p("newfile")),
        ("mkdir in root", os.mkdir, m.p(RUN_PREFIX + "newdom")),
        ("create in domain", _create, m.p(d, "newfile")),
        ("symlink in domain", lambda p: os.symlink("x", p), m.p(d, "newlink")),
        ("mkdir in layers", os.mkdir, m.p(d, "layers", "vdb")),
        ("mkdir in layers/vda", os.mkdir, m.p(d, "layers", "vda", "9-new")),
        ("create in a layer", _create, os.path.join(layer0, "newfile")),
        ("mkdir in a layer", os.mkdir, os.path.join(layer0, "newdir")),
        ("create in a snapshot", _create, m.p(d, "s1", "newfile")),
        ("mkdir in a snapshot", os.mkdir, m.p(d, "s1", "newdir")),
        ("unlink revert", os.unlink, m.p(d, "revert")),
        ("rmdir layers", os.rmdir, m.p(d, "layers")),
        ("rmdir a layer", os.rmdir, layer0),
        ("rename a snapshot into layers", lambda p: os.rename(p, m.p(d, "layers", "s1")), m.p(d, "s1")),
        ("chmod a snapshot", lambda p: os.chmod(p, 0o777), m.p(d, "s1")),
        ("chmod a layer", lambda p: os.chmod(p, 0o777), layer0),
        ("setxattr on a layer", lambda p: os.setxattr(p, "user.snapfs.file", b"/x"), layer0),
        ("setxattr parent on a snapshot", lambda p: os.setxattr(p, "user.snapfs.parent", b"s3"), m.p(d, "s1")),
        ("rmdir a domain", os.rmdir, m.p(d)),
    ]
    wrong = []
    for what, fn, path in cases:
        e = errno_of(fn, path)
        # rename is optional (src/README.md, "Operations"): EXDEV makes mv copy, which then meets EROFS
        if e not in READONLY and not (what.startswith("rename") and e in (errno.EXDEV, errno.ENOTSUP)):
            wrong.append(f"{what}: {errno.errorcode.get(e, e)}")
    assert not wrong, "expected EROFS or EPERM:\n" + "\n".join(wrong)
    # and nothing changed
    assert sorted(os.listdir(m.p(d))) == ["layers", "live", "revert", "s1", "s2", "s3"]
    assert demo.chain.snapshots() == ["s1", "s2", "s3"]


def test_ro_option_refuses_mkdir(mount, demo):
    m = mount("-o", "ro")
    assert errno_of(os.mkdir, m.p(demo.chain.name, "newsnap")) == errno.EROFS
    assert demo.chain.snapshots() == ["s1", "s2", "s3"]


def test_several_connections_named_by_host(mount, demo):
    m = mount("-c", "test:///default")
    names = sorted(os.listdir(m.path))
    assert names == ["localhost", "localhost-2"], names
    assert demo.chain.name in os.listdir(m.p("localhost"))
    assert "test" in os.listdir(m.p("localhost-2"))


# ---------------------------------------------------------------- staleness

def _listed(path, name):
    return name in os.listdir(path)


def test_stale_domain_define_undefine(mount, domains):
    m = mount()
    os.listdir(m.path)                  # fill whatever the mount caches
    dom = domains.simple()
    t0 = time.monotonic()
    assert wait_for(lambda: _listed(m.path, dom.name), timeout=STALE_LIMIT), "a defined domain did not show"
    shown = time.monotonic() - t0
    assert os.path.isdir(m.p(dom.name))
    dom.remove()
    t0 = time.monotonic()
    assert wait_for(lambda: not _listed(m.path, dom.name), timeout=STALE_LIMIT), "an undefined domain stayed"
    assert errno_of(os.stat, m.p(dom.name)) == errno.ENOENT
    print(f"define shown after {shown:.3f} s, undefine after {time.monotonic() - t0:.3f} s")


def test_stale_snapshot_create_delete(mount, domains, images):
    base = images.ext4(f"{RUN_PREFIX}-stale.qcow2", {"a": "b"})
    dom = domains.define([("vda", base, "qcow2")])
    m = mount()
    assert os.listdir(m.p(dom.name)) and read(m.p(dom.name, "revert")) == ""
    dom.snapshot("i1", disk_only=False)
    assert wait_for(lambda: _listed(m.p(dom.name), "i1"), timeout=STALE_LIMIT), "a new snapshot did not show"
    assert wait_for(lambda: read(m.p(dom.name, "revert")).strip() == "i1", timeout=STALE_LIMIT)
    dom.snapshot("i2", disk_only=False)
    assert wait_for(lambda: _listed(m.p(dom.name), "i2"), timeout=STALE_LIMIT)
    assert wait_for(lambda: xattrs(m.p(dom.name, "i1"))["current"] == "0", timeout=STALE_LIMIT)
    dom.snapshot_delete("i2")
    assert wait_for(lambda: not _listed(m.p(dom.name), "i2"), timeout=STALE_LIMIT), "a deleted snapshot stayed"
    assert errno_of(os.stat, m.p(dom.name, "i2")) == errno.ENOENT


def test_stale_external_snapshot_and_layers(mount, domains):
    dom = domains.simple()
    m = mount()
    before = sorted(os.listdir(m.p(dom.name, "layers", "vda")))
    assert len(before) == 2
    dom.snapshot("e1")
    assert wait_for(lambda: _listed(m.p(dom.name), "e1"), timeout=STALE_LIMIT)
    after = wait_for(lambda: (lambda l: l if len(l) == 3 else None)(sorted(os.listdir(m.p(dom.name, "layers", "vda")))),
                     timeout=STALE_LIMIT)
    assert after, "the new overlay did not show in layers/vda"
    assert after[:2] == before, "adding an overlay renumbered the layers below it"
    assert after[2] == "2-" + os.path.basename(dom.top("vda"))
    assert xattrs(m.p(dom.name, "layers", "vda", before[1]))["snapshot"] == "e1"


# ---------------------------------------------------------------- awkward names

AWKWARD_DOMAINS = [RUN_PREFIX + " with spaces", RUN_PREFIX + "-\u00e9t\u00e9-\u65e5\u672c", "." + RUN_PREFIX + "dot"]
# libvirt refuses snapshot names with a leading dot or a '/', and domain names with a newline.
AWKWARD_SNAPSHOTS = ["with space", "\u00fcml\u00e4ut-\u2603", "new\nline", "tab\there", "-dash", "x" * 200]


def test_awkward_names(mount, domains, images):
    made = []
    for name in AWKWARD_DOMAINS:
        made.append(domains.simple(name=name))
    base = images.ext4(f"{RUN_PREFIX}-awk.qcow2", {"a": "b"})
    snaps = domains.define([("vda", base, "qcow2")], suffix="awksnaps")
    for snap in AWKWARD_SNAPSHOTS:
        snaps.snapshot(snap, disk_only=False)
    m = mount()
    root = os.listdir(m.path)
    for dom in made:
        assert dom.name in root, repr(dom.name)
        assert sorted(os.listdir(m.p(dom.name))) == ["layers", "live", "revert"]
    listed = os.listdir(m.p(snaps.name))
    for snap in AWKWARD_SNAPSHOTS:
        assert snap in listed, repr(snap)
        assert xattrs(m.p(snaps.name, snap))["kind"] == "internal"
    assert read(m.p(snaps.name, "revert")) == AWKWARD_SNAPSHOTS[-1] + "\n"


# ---------------------------------------------------------------- libvirtd restarts

@pytest.mark.skipif(os.environ.get("SNAPFS_TEST_RESTART_LIBVIRTD") != "1",
                    reason="kills the system libvirtd: only where nothing else uses it (tests/run.sh sets "
                           "SNAPFS_TEST_RESTART_LIBVIRTD=1)")
def test_libvirtd_restart(mount, demo):
    m = mount()
    d = demo.chain.name
    assert _listed(m.path, d)
    libvirtd_kill()
    try:
        # While libvirtd is gone: answers (cached or EIO), never a hang.
        for fn in (lambda: os.listdir(m.path), lambda: os.listdir(m.p(d)),
                   lambda: xattrs(m.p(d, "s1")), lambda: read(m.p(d, "revert")),
                   lambda: os.stat(m.p(RUN_PREFIX + "nothere"))):
            outcome, value = call_with_timeout(fn, timeout=10)
            assert outcome != "hung", "a call hung while libvirtd was down"
            if outcome == "error":
                assert value in (errno.EIO, errno.ENOENT, errno.ENOTCONN), errno.errorcode.get(value, value)
    finally:
        libvirtd_start()
    assert libvirtd_answers()
    # Reconnected by itself within a few seconds, and in step with libvirt again.
    t0 = time.monotonic()

    def in_step():
        return (call_with_timeout(lambda: _listed(m.path, d), timeout=5) == ("ok", True) and
                call_with_timeout(lambda: sorted(os.listdir(m.p(d))), timeout=5)[0] == "ok")
    assert wait_for(in_step, timeout=15, interval=0.2), \
        f"no reconnect within 15 s after libvirtd restarted:\n{m.stderr_text()[-3000:]}"
    print(f"in step again {time.monotonic() - t0:.1f} s after libvirtd answered")
    assert sorted(os.listdir(m.p(d))) == ["layers", "live", "revert", "s1", "s2", "s3"]
    assert xattrs(m.p(d, "s2"))["parent"] == "s1"
