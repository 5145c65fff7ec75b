# SPDX-License-Identifier: GPL-2.0-or-later
# Images snapfs makes (or has libvirt make) are private, and image formats are never guessed: through a real mount.
import errno
import hashlib
import itertools
import json
import os
import stat
import struct

import pytest

from conftest import IMAGE_ROOT, RUN_PREFIX, errno_of, run, virsh

SERIAL = itertools.count()
QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA


def write(path, data):
    """One write(2) of DATA to PATH, as `echo NAME > PATH` makes it."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def mode_owner(path):
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def header(path):
    """What qemu-img reads of one image's own header (never its backing file's)."""
    return json.loads(run("qemu-img", "info", "-U", "--output=json", path).stdout)


def backing_of(path):
    info = header(path)
    return info.get("full-backing-filename") or info.get("backing-filename"), info.get("backing-filename-format")


def patch_backing_format(path, fmt):
    """The qcow2 image's backing-format header extension made unknown (FMT None: the format is no longer
    recorded, as in an image made by an old qemu-img) or its text replaced by FMT (of the same length)."""
    with open(path, "r+b") as f:
        head = f.read(104)
        offset = struct.unpack(">I", head[100:104])[0]       # header_length: the extensions follow it
        while True:
            f.seek(offset)
            kind, length = struct.unpack(">II", f.read(8))
            assert kind != 0, f"{path} records no backing format"
            if kind == QCOW2_EXT_BACKING_FORMAT:
                f.seek(offset)
                if fmt is None:
                    f.write(struct.pack(">I", 0x12345678))
                else:
                    assert len(fmt) == length
                    f.seek(offset + 8)
                    f.write(fmt.encode())
                return
            offset += 8 + ((length + 7) & ~7)


def folder_state(dom, folder):
    """What a refusal must leave as it was: snapshots, current, definition, and every file's bytes and mode."""
    files = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        with open(path, "rb") as f:
            files[name] = (hashlib.sha256(f.read()).hexdigest(), mode_owner(path))
    return dom.snapshots(), dom.current(), virsh("dumpxml", "--inactive", dom.name).stdout, files


def all_xml(dom):
    """The domain's definitions and every snapshot's XML: where a format or file snapfs wrote would show."""
    text = virsh("dumpxml", "--inactive", dom.name).stdout + virsh("dumpxml", dom.name).stdout
    for snap in dom.snapshots():
        text += virsh("snapshot-dumpxml", dom.name, snap).stdout
    return text


def xattrs(path):
    return {name: os.getxattr(path, name) for name in os.listxattr(path)}


@pytest.fixture
def folder():
    """A folder of one test's images, 0755 like a pool's, removed after."""
    path = IMAGE_ROOT / f"private{next(SERIAL)}"
    path.mkdir(mode=0o755, parents=True)
    yield path
    run("rm", "-rf", path)


def owned_domain(domains, images, folder, uid, gid):
    """base <- top (the live disk), both mode 0644; the top owned by UID:GID, the base by root."""
    base = images.ext4(f"{RUN_PREFIX}-private-{folder.name}-base.qcow2", {"hello.txt": "hello\n"})
    os.rename(base, folder / "base.qcow2")
    top = folder / "top.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", folder / "base.qcow2", top)
    os.chmod(top, 0o644)
    os.chown(top, uid, gid)
    return domains.define([("vda", str(top), "qcow2")], suffix=f"pv{folder.name}")


def write_guest_data(dom, offset_mib, pattern):
    """64 KiB at OFFSET of the running guest's disk, written by qemu itself."""
    dev = "/machine/peripheral/virtio-disk0/virtio-backend"
    virsh("qemu-monitor-command", dom.name, "--hmp", f'qemu-io -d {dev} "write -P {pattern} {offset_mib}M 64k"')
    virsh("qemu-monitor-command", dom.name, "--hmp", f"qemu-io -d {dev} flush")


# ---------------------------------------------------------------- private images

def test_mkdir_shut_off_overlay_private(mount, domains, images, folder):
    """libvirt 9.0 leaves a shut-off domain's overlay 0644 and root's (CVE-2025-13193): snapfs makes it
    0600 with the owner and group of the image it stands on."""
    dom = owned_domain(domains, images, folder, 1234, 2345)
    m = mount()
    os.mkdir(m.p(dom.name, "s1"))
    overlay = dom.top("vda")
    assert overlay != str(folder / "top.qcow2")
    assert backing_of(overlay) == (str(folder / "top.qcow2"), "qcow2")
    assert mode_owner(overlay) == (0o600, 1234, 2345)
    assert mode_owner(folder / "top.qcow2") == (0o644, 1234, 2345)   # what it stands on is left as it was
    os.mkdir(m.p(dom.name, "s2"))
    assert mode_owner(dom.top("vda")) == (0o600, 1234, 2345)


class Inotify:
    """The events of one directory (inotify(7) through ctypes): [(name, mask)] in the order they happened."""
    IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_OPEN, IN_CREATE = 0x2, 0x4, 0x8, 0x20, 0x100
    IN_NONBLOCK = os.O_NONBLOCK

    def __init__(self, path):
        import ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(self.IN_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        mask = self.IN_MODIFY | self.IN_ATTRIB | self.IN_CLOSE_WRITE | self.IN_OPEN | self.IN_CREATE
        assert self.libc.inotify_add_watch(self.fd, str(path).encode(), mask) >= 0, os.strerror(ctypes.get_errno())

    def events(self):
        out, data = [], b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            data += chunk
        while data:
            _, mask, _, length = struct.unpack("iIII", data[:16])
            name = data[16:16 + length].rstrip(b"\0").decode()
            out.append((name, mask))
            data = data[16 + length:]
        return out

    def close(self):
        os.close(self.fd)


def test_mkdir_shut_off_overlay_never_open_to_others(mount, domains, images, folder):
    """The overlay of a shut-off domain is made private before a byte of it is written: its mode and owner
    change (inotify's IN_ATTRIB) right after it is created, before qemu-img writes its header (IN_MODIFY), so it
    is never the 0644 root file libvirt 9.0 makes and snapfs used to close only after libvirt returned."""
    dom = owned_domain(domains, images, folder, 1234, 2345)
    m = mount()
    watch = Inotify(folder)
    try:
        os.mkdir(m.p(dom.name, "s1"))
        events = watch.events()
    finally:
        watch.close()
    overlay = dom.top("vda")
    name = os.path.basename(overlay)
    seen = [mask for n, mask in events if n == name]
    assert seen and seen[0] & Inotify.IN_CREATE, events
    first_attrib = next(i for i, mask in enumerate(seen) if mask & Inotify.IN_ATTRIB)
    first_write = next(i for i, mask in enumerate(seen) if mask & Inotify.IN_MODIFY)
    assert first_attrib < first_write, f"the overlay's header was written before it was made private: {events}"
    assert mode_owner(overlay) == (0o600, 1234, 2345)
    assert backing_of(overlay) == (str(folder / "top.qcow2"), "qcow2")
    assert dom.snapshots() == ["s1"]
    assert {n for n in os.listdir(folder)} == {"base.qcow2", "top.qcow2", name}


def entries(folder):
    """Every name of FOLDER as it is: a link's target (never followed), a file's bytes, mode and owner."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = folder / name
        if os.path.islink(path):
            out[name] = ("link", os.readlink(path))
        else:
            with open(path, "rb") as f:
                out[name] = ("file", hashlib.sha256(f.read()).hexdigest(), mode_owner(path))
    return out


@pytest.mark.parametrize("taken", ["dangling-link", "link-to-file", "file"])
def test_mkdir_shut_off_taken_name_is_left_alone(mount, domains, images, folder, taken):
    """The overlay's name is taken (a link, dangling or to a file, or a file): EEXIST, the link never
    followed, the file never written, nothing else changed."""
    dom = owned_domain(domains, images, folder, 0, 0)
    name = folder / "top.s1"                 # what libvirt names the overlay of top.qcow2 for snapshot s1
    victim = folder / "victim"
    if taken == "dangling-link":
        os.symlink(victim, name)
    elif taken == "link-to-file":
        victim.write_bytes(b"someone's file\n")
        os.symlink(victim, name)
    else:
        name.write_bytes(b"someone's file\n")
    m = mount()
    before = dom.snapshots(), dom.current(), virsh("dumpxml", "--inactive", dom.name).stdout, entries(folder)
    assert errno_of(os.mkdir, m.p(dom.name, "s1")) == errno.EEXIST
    after = dom.snapshots(), dom.current(), virsh("dumpxml", "--inactive", dom.name).stdout, entries(folder)
    assert after == before
    assert b"exists" in os.getxattr(m.p(dom.name), "user.snapfs.last_error")
    assert not os.path.lexists(m.p(dom.name, "s1"))


def test_mkdir_running_overlay_private(mount, domains, images, folder):
    """A running domain's overlay: 0600 with the owner libvirt labelled the disk for (qemu's), and the
    guest keeps running and writing into it."""
    dom = owned_domain(domains, images, folder, 0, 0)
    dom.start()
    try:
        m = mount()
        os.mkdir(m.p(dom.name, "live1"))
        overlay = dom.top("vda")
        below = folder / "top.qcow2"
        mode, uid, gid = mode_owner(overlay)
        assert mode == 0o600
        assert (uid, gid) == mode_owner(below)[1:], "the overlay's owner differs from the image below it"
        write_guest_data(dom, 1, 0x5A)
        assert dom.state() == "running"
        read = run("qemu-io", "-r", "-U", "-f", "qcow2", "-c", "read -P 0x5a 1M 64k", overlay).stdout
        assert "Pattern verification failed" not in read and "read 65536/65536" in read, read
        os.mkdir(m.p(dom.name, "live2"))
        assert mode_owner(dom.top("vda"))[0] == 0o600
        write_guest_data(dom, 2, 0x5B)
        assert dom.state() == "running"
    finally:
        dom.destroy()
    # libvirt gives the files back to their remembered owner; they stay closed to others.
    assert mode_owner(overlay)[0] == 0o600


def test_revert_overlays_private(mount, domains, images, folder):
    """`echo s1 > revert`: the new overlay on s1's image and the pre-revert overlay on the old top are 0600
    and owned as the image each stands on; the domain boots on them."""
    dom = owned_domain(domains, images, folder, 1234, 2345)
    dom.snapshot("s1")                      # libvirt's overlay on top.qcow2 (0644, root's)
    old_top = dom.top("vda")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 7 0 64k", old_top)   # written since s1: kept by the revert
    os.chown(old_top, 3456, 4567)
    m = mount("-o", f"state_dir={folder}-state")
    write(m.p(dom.name, "revert"), "s1\n")
    assert dom.current() == "s1"
    made = sorted(n for n in os.listdir(folder) if ".revert-s1-" in n or ".pre-revert-" in n)
    # libvirt's own revert (libvirt 11) names the live overlay it makes after the image below it.
    live = os.path.basename(dom.top("vda"))
    if live not in made:
        made.append(live)
    assert len(made) == 2, made
    for name in made:
        path = str(folder / name)
        below, fmt = backing_of(path)
        assert fmt == "qcow2"
        st_below = os.stat(below)
        assert mode_owner(path) == (0o600, st_below.st_uid, st_below.st_gid), name
        if name == live:
            assert below == str(folder / "top.qcow2") and dom.top("vda") == path
        else:
            assert below == old_top
    dom.start()
    try:
        assert dom.state() == "running"
    finally:
        dom.destroy()


def qemu_user():
    """The uid and gid libvirt's DAC driver runs qemu as (qemu.conf's default user)."""
    import grp
    import pwd
    try:
        return pwd.getpwnam("libvirt-qemu").pw_uid, grp.getgrnam("libvirt-qemu").gr_gid
    except KeyError:
        return None


def test_rmdir_middle_leaves_nothing_wider(mount, domains, images, folder):
    """rmdir of a middle snapshot: every image left is as closed as it was, owned as it was (or, for an image
    the merge left below the others, by qemu's user: libvirt's DAC driver never gives a backing image back)."""
    dom = owned_domain(domains, images, folder, 0, 0)
    os.chmod(folder / "top.qcow2", 0o600)
    os.chmod(folder / "base.qcow2", 0o600)
    m = mount()
    for snap in ("s1", "s2", "s3"):
        os.mkdir(m.p(dom.name, snap))
    before = {n: mode_owner(folder / n) for n in os.listdir(folder)}
    assert all(mode == 0o600 for mode, _, _ in before.values()), before
    os.rmdir(m.p(dom.name, "s2"))
    assert dom.snapshots() == ["s1", "s3"]
    after = {n: mode_owner(folder / n) for n in os.listdir(folder)}
    assert after and set(after) <= set(before), (before, after)
    for name, (mode, uid, gid) in after.items():
        assert mode & ~before[name][0] == 0, f"{name} is mode {mode:o} now, {before[name][0]:o} before"
        assert (uid, gid) in (before[name][1:], qemu_user()), f"{name} is owned by {uid}:{gid} now"


def names_in(folder):
    """The folder's entries, links as links (a dangling one is a name taken too)."""
    return {n: (os.readlink(folder / n) if os.path.islink(folder / n) else None) for n in os.listdir(folder)}


def test_revert_never_overwrites_a_taken_name(mount, domains, images, folder):
    """A name a revert would make is taken by a link to a file nobody made yet: EEXIST, nothing changed,
    the link never followed (no file made at its target)."""
    import time
    dom = owned_domain(domains, images, folder, 0, 0)
    dom.snapshot("s1")
    dom.snapshot("s2")
    m = mount("-o", f"state_dir={folder}-state")
    now = time.time()
    for delta in range(-2, 120):            # every second's names of the next two minutes
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now + delta))
        for what in (f"pre-revert-{stamp}", f"revert-s1-{stamp}"):
            os.symlink(folder / f"victim-{what}", folder / f"{dom.name}.vda.{what}.qcow2")
    before = dom.snapshots(), dom.current(), virsh("dumpxml", "--inactive", dom.name).stdout, names_in(folder)
    assert errno_of(write, m.p(dom.name, "revert"), "s1\n") == errno.EEXIST
    after = dom.snapshots(), dom.current(), virsh("dumpxml", "--inactive", dom.name).stdout, names_in(folder)
    assert after == before
    assert not [n for n in os.listdir(folder) if n.startswith("victim-")]
    assert b"exists" in os.getxattr(m.p(dom.name), "user.snapfs.last_error")


# ---------------------------------------------------------------- formats are never guessed

def crafted_raw(folder, secret):
    """A raw disk whose guest wrote a qcow2 header at offset 0 naming SECRET, a host file, as its backing file."""
    raw = folder / "guest.raw"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", secret, "-u", raw, "16M")
    run("truncate", "-s", "16M", raw)
    os.chmod(raw, 0o644)
    return raw


@pytest.fixture
def secret(folder):
    path = folder / "host-secret.txt"
    path.write_text(f"host secret {RUN_PREFIX}\n" * 100)
    return path


def test_raw_disk_header_is_not_followed(mount, domains, folder, secret):
    """A domain whose disk is <driver type='raw'/>: the qcow2 header its guest wrote is data. layers/ shows
    the raw image alone, and mkdir and revert never write the host file it names into an overlay or XML."""
    raw = crafted_raw(folder, secret)
    dom = domains.define([("vda", str(raw), "raw")], suffix=f"raw{folder.name}")
    m = mount("-o", f"state_dir={folder}-state")
    layers = m.p(dom.name, "layers", "vda")
    assert os.listdir(layers) == ["0-guest.raw"]
    attrs = xattrs(os.path.join(layers, "0-guest.raw"))
    assert attrs["user.snapfs.format"] == b"raw" and "user.snapfs.backing" not in attrs

    os.mkdir(m.p(dom.name, "s1"))
    assert backing_of(dom.top("vda")) == (str(raw), "raw")
    os.mkdir(m.p(dom.name, "s2"))
    assert sorted(os.listdir(layers)) == sorted(["0-guest.raw", f"1-{os.path.basename(backing_of(dom.top('vda'))[0])}",
                                                 f"2-{os.path.basename(dom.top('vda'))}"])
    write(m.p(dom.name, "revert"), "s1\n")
    assert dom.current() == "s1"
    assert backing_of(dom.top("vda")) == (str(raw), "raw")
    for name in os.listdir(folder):
        path = folder / name
        if name.endswith(".qcow2") or ".s1" in name or ".s2" in name:
            assert str(secret) not in json.dumps(header(path)), name
    assert str(secret) not in all_xml(dom)
    assert all(str(secret) not in "".join(n) for n in os.listdir(layers))


@pytest.fixture
def unrecorded(domains, folder, secret):
    """guest.raw (a crafted raw disk) <- mid.qcow2 <- the overlay of snapshot s1, made while mid.qcow2 still
    recorded its backing's format; then mid.qcow2's record is removed (or names PATCH) as an old qemu-img or
    a hand-made image leaves it."""
    def make(patch):
        raw = crafted_raw(folder, secret)
        mid = folder / "mid.qcow2"
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", raw, mid)
        os.chmod(mid, 0o644)
        dom = domains.define([("vda", str(mid), "qcow2")], suffix=f"unrec{folder.name}")
        dom.snapshot("s1")
        # Written since s1, so that a revert to it has something to do.
        run("qemu-io", "-f", "qcow2", "-c", "write -P 7 0 64k", dom.top("vda"))
        patch_backing_format(mid, patch)
        return dom
    return make


@pytest.mark.parametrize("patch", [None, "nbd"], ids=["no-format", "not-a-format"])
def test_backing_without_format_is_refused(mount, unrecorded, folder, secret, patch):
    """A qcow2 image naming its backing file without a format (or with a name that is no image format):
    never probed. Browsing shows the error (ENOTSUP); mkdir, revert and rmdir refuse it, changing nothing."""
    dom = unrecorded(patch)
    m = mount("-o", f"state_dir={folder}-state")
    layers = m.p(dom.name, "layers", "vda")
    assert errno_of(os.listdir, layers) == errno.ENOTSUP
    why = os.getxattr(layers, "user.snapfs.error").decode()
    assert "guest.raw" in why and "format" in why and str(secret) not in why
    assert b"format" in os.getxattr(m.p(dom.name), "user.snapfs.last_error")
    assert "format" in m.stderr_text()

    before = folder_state(dom, folder)
    assert errno_of(os.mkdir, m.p(dom.name, "s2")) == errno.ENOTSUP
    assert folder_state(dom, folder) == before
    assert errno_of(write, m.p(dom.name, "revert"), "s1\n") == errno.ENOTSUP
    assert folder_state(dom, folder) == before
    assert b"format" in os.getxattr(m.p(dom.name), "user.snapfs.last_error")
    assert errno_of(os.rmdir, m.p(dom.name, "s1")) == errno.ENOTSUP
    assert folder_state(dom, folder) == before
    assert str(secret) not in all_xml(dom)
    assert str(secret) not in m.stderr_text()
