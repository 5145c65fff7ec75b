# SPDX-License-Identifier: GPL-2.0-or-later
# Writing a snapshot's name to DOMAIN/revert through a real mount: what virsh, qemu-img and the mount show after.
import errno
import itertools
import json
import os
import shutil
import xml.etree.ElementTree as ET

import pytest

from conftest import IMAGE_ROOT, Mount, _mountpoint, errno_of, is_mount, libvirt_reverts_external, run, wait_for

SERIAL = itertools.count()


def read(path):
    with open(path, "rb") as f:
        return f.read().decode()


def write(path, data):
    """One write(2) of DATA to PATH, as `echo NAME > PATH` makes it."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def chain(top):
    info = json.loads(run("qemu-img", "info", "-U", "--backing-chain", "--output=json", top).stdout)
    return [i["filename"] for i in info]


def xml_chain(dom, target="vda"):
    for disk in dom.xml(inactive=True).iter("disk"):
        if disk.find("target").get("dev") == target:
            files, node = [], disk
            while node is not None and node.find("source") is not None:
                files.append(node.find("source").get("file"))
                node = node.find("backingStore")
            return files
    raise KeyError(target)


def frozen(dom, snap, target="vda"):
    """The image SNAP froze: its overlay's backing, or, where libvirt's own revert (libvirt 11) discarded that
    overlay with the state it held, the image the snapshot's <domain> names."""
    xml = dom.snapshot_xml(snap)
    for disk in xml.find("disks"):
        if disk.get("name") == target and disk.get("snapshot") == "external":
            overlay = disk.find("source").get("file")
            if os.path.exists(overlay):
                return chain(overlay)[1]
            for then in xml.find("domain").iter("disk"):
                if then.find("target").get("dev") == target:
                    return then.find("source").get("file")
    return None


def same(a, b):
    return run("qemu-img", "compare", "-U", a, b, check=False).returncode == 0


@pytest.fixture
def chained(domains, images):
    """template <- r1 <- s2 <- s3 <- live; every layer holds another file, the live one too."""
    tag = domains.name(f"rv{next(SERIAL)}")
    base = images.ext4(f"{tag}-template.qcow2", {"etc/hostname": "template\n"})
    top = images.overlay(f"{tag}-0.qcow2", base, {"etc/hostname": "r1\n"})
    dom = domains.define([("vda", top, "qcow2")], name=tag)
    previous = top
    for i, snap in enumerate(["r1", "s2", "s3"]):
        dom.snapshot(snap)
        new_top = dom.top("vda")
        os.unlink(new_top)
        images.overlay(new_top, previous, {"etc/hostname": ["s2\n", "s3\n", "live\n"][i]})
        previous = new_top
    dom.state_dir = IMAGE_ROOT / f"{tag}-state"
    return dom


def check_reverted(m, dom, snap):
    """The live disk reads as SNAP; XML, metadata and the mount agree; every other snapshot is there; it boots."""
    assert same(frozen(dom, snap), dom.top("vda"))
    # What the XML spells out of the chain is the images' chain (snapfs's own revert spells it all out, as
    # libvirt 9.0's delete needs; libvirt's own names the top only).
    xml = xml_chain(dom)
    assert xml and xml == chain(dom.top("vda"))[:len(xml)]
    assert dom.current() == snap
    assert wait_for(lambda: read(m.p(dom.name, "revert")).rstrip("\n") == snap)
    listed = sorted(os.listdir(m.p(dom.name)))
    assert sorted(["layers", "live", "revert", *dom.snapshots()]) == listed
    dom.start()
    assert dom.state() == "running"
    dom.destroy()


def test_echo_name_reverts_and_keeps(mount, chained):
    dom = chained
    m = mount("-o", f"state_dir={dom.state_dir}")
    live_before = IMAGE_ROOT / f"{dom.name}-live.raw"
    run("qemu-img", "convert", "-O", "raw", dom.top("vda"), live_before)

    write(m.p(dom.name, "revert"), "s2\n")
    check_reverted(m, dom, "s2")
    kept = [s for s in dom.snapshots() if s.startswith("pre-revert-")]
    assert len(kept) == 1 and os.path.isdir(m.p(dom.name, kept[0]))
    assert same(str(live_before), frozen(dom, kept[0]))
    assert os.getxattr(m.p(dom.name, kept[0]), "user.snapfs.kind") == b"external"
    live_before.unlink()

    # Root, then the kept state on its own branch; the revert overlay's name says what it is.
    write(m.p(dom.name, "revert"), "r1\n")
    check_reverted(m, dom, "r1")
    write(m.p(dom.name, "revert"), kept[0])
    check_reverted(m, dom, kept[0])

    # Every snapshot can still be deleted through the mount, leaves first.
    for snap in [kept[0], "s3", "s2", "r1"]:
        os.rmdir(m.p(dom.name, snap))
        assert snap not in dom.snapshots()
    assert dom.snapshots() == []


def test_content_after_revert(mount, chained):
    """Through the mount (one appliance for all of it): the live layer reads as the snapshot, the kept
    state as the live disk did, the other snapshots as they always did."""
    dom = chained
    m = mount("-o", f"state_dir={dom.state_dir}")
    # live/ read before the revert (another appliance start, the revert closes it) shows the revert after it.
    assert read(m.p(dom.name, "live", "sda", "etc", "hostname")) == "live\n"
    write(m.p(dom.name, "revert"), "s2\n")
    assert read(m.p(dom.name, "live", "sda", "etc", "hostname")) == "s2\n"
    kept = [s for s in dom.snapshots() if s.startswith("pre-revert-")]
    layers = sorted(os.listdir(m.p(dom.name, "layers", "vda")), key=lambda n: int(n.split("-", 1)[0]))
    # snapfs's own overlay says what it is; libvirt's own revert (libvirt 11) names it after the image below.
    assert ".revert-s2-" in layers[-1] or libvirt_reverts_external(), layers
    assert read(m.p(dom.name, "layers", "vda", layers[-1], "sda", "etc", "hostname")) == "s2\n"
    assert read(m.p(dom.name, kept[0], "sda", "etc", "hostname")) == "live\n"
    for snap, text in [("r1", "r1\n"), ("s2", "s2\n"), ("s3", "s3\n")]:
        assert read(m.p(dom.name, snap, "sda", "etc", "hostname")) == text


def test_delete_after_browsing(mount, chained):
    """Appliances that read the images are out of the way when rmdir merges them (libvirt's block-commit
    needs the write lock)."""
    dom = chained
    m = mount("-o", f"state_dir={dom.state_dir}")
    write(m.p(dom.name, "revert"), "s2\n")
    kept = [s for s in dom.snapshots() if s.startswith("pre-revert-")]
    for snap in [kept[0], "r1", "s2", "s3"]:
        os.listdir(m.p(dom.name, snap, "sda"))
    write(m.p(dom.name, "revert"), "r1\n")
    for snap in [kept[0], "s3", "s2", "r1"]:
        os.rmdir(m.p(dom.name, snap))
    assert dom.snapshots() == []


def test_refusals_change_nothing(mount, chained):
    dom = chained
    m = mount("-o", f"state_dir={dom.state_dir}")
    path = m.p(dom.name, "revert")
    before = (dom.snapshots(), dom.current(), xml_chain(dom), sorted(os.listdir(IMAGE_ROOT / "img")))
    for data, expect in [("\n", errno.EINVAL), ("s2\nr1\n", errno.EINVAL), ("s2 junk\n", errno.EINVAL),
                         ("s2 --now\n", errno.EINVAL), ("nosuch\n", errno.ENOENT)]:
        assert errno_of(write, path, data) == expect, data
        assert (dom.snapshots(), dom.current(), xml_chain(dom), sorted(os.listdir(IMAGE_ROOT / "img"))) == before
    assert "revert" in os.getxattr(m.p(dom.name), "user.snapfs.last_error").decode()

    dom.start()
    try:
        assert errno_of(write, path, "s2\n") == errno.EBUSY
        assert dom.state() == "running"
        write(path, "s2 --force\n")
        assert dom.state() != "running"
        assert dom.current() == "s2"
    finally:
        dom.destroy()


def test_read_only_and_other_users(mount, chained):
    dom = chained
    m = mount("-o", f"ro,state_dir={dom.state_dir}")
    assert errno_of(write, m.p(dom.name, "revert"), "s2\n") == errno.EROFS
    m2 = mount("-o", f"allow_other,state_dir={dom.state_dir}")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = run(*as_nobody, "sh", "-c", f"echo s2 > '{m2.p(dom.name, 'revert')}'", check=False)
    assert proc.returncode != 0 and "ermission denied" in proc.stderr
    assert dom.current() == "s3"


@pytest.mark.parametrize("step", ["keep", "domain"])
def test_killed_mid_revert_is_settled_at_next_start(mount, chained, step):
    """snapfs dies (as kill -9) inside a revert; the next mount finishes or rolls it back."""
    dom = chained
    before = (dom.snapshots(), dom.current(), xml_chain(dom))
    dead = Mount(_mountpoint("k"), ["-c", "qemu:///system", "-o", f"state_dir={dom.state_dir}"],
                 env={"SNAPFS_FAULT": f"revert:{step}"})
    if step == "domain" and libvirt_reverts_external():
        # Where libvirt reverts by itself, snapfs's own step 'domain' is never reached: the revert is whole.
        try:
            write(dead.p(dom.name, "revert"), "s2\n")
            assert os.listdir(dom.state_dir) == []
            check_reverted(dead, dom, "s2")
            dead.check_clean_exit()
        finally:
            run("fusermount3", "-u", "-z", dead.path, check=False)
            dead.close()
        return
    try:
        assert errno_of(write, dead.p(dom.name, "revert"), "s2\n") in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO)
        assert dead.proc.wait(timeout=30) == 137
    finally:
        run("fusermount3", "-u", "-z", dead.path, check=False)
    assert os.listdir(dom.state_dir), "no journal left by the killed revert"

    m = mount("-o", f"state_dir={dom.state_dir}")
    assert os.listdir(dom.state_dir) == []
    if step == "domain":
        check_reverted(m, dom, "s2")
    else:
        assert (dom.snapshots(), dom.current(), xml_chain(dom)) == before
        dom.start()
        dom.destroy()
    shutil.rmtree(dom.state_dir, ignore_errors=True)
    assert not is_mount(dead.path)


def test_crash_after_libvirt_was_asked_keeps_pre_revert(mount, domains, images):
    """The journal of an internal-snapshot revert says libvirt was asked to apply int1 (snapfs was killed then,
    and libvirt did not finish: int1 is not current): the next start keeps pre-revert-..., the only copy of what
    the disks held before, names it in a warning, removes the journal and changes nothing else."""
    import hashlib
    tag = domains.name(f"rv{next(SERIAL)}")
    base = images.ext4(f"{tag}-internal.qcow2", {"etc/hostname": "int\n"})
    dom = domains.define([("vda", base, "qcow2")], name=tag)
    dom.snapshot("int1", disk_only=False)
    dom.snapshot("int2", disk_only=False)
    kept = "pre-revert-20260101-000000"
    dom.snapshot(kept, disk_only=False)        # as snapfs takes it before asking libvirt to revert
    state_dir = IMAGE_ROOT / f"{tag}-state"
    state_dir.mkdir(mode=0o700)
    uri = "qemu:///system"
    uuid = run("virsh", "-q", "-c", uri, "domuuid", dom.name).stdout.strip()
    journal = state_dir / (hashlib.sha256(f"{uri}\n{dom.name}".encode()).hexdigest()[:16] + ".revert-journal")
    journal.write_text(f"[revert]\nuri={uri}\ndomain={dom.name}\nuuid={uuid}\ntarget=int1\nphase=internal-asked\n"
                       f"keep={kept}\nold-current=int2\n")
    journal.chmod(0o600)
    before = dom.snapshots(), dom.current(), ET.tostring(dom.xml(inactive=True))
    assert before[0] == ["int1", "int2", kept] and before[1] == kept
    m = mount("-o", f"state_dir={state_dir}")
    assert os.listdir(state_dir) == []
    assert (dom.snapshots(), dom.current(), ET.tostring(dom.xml(inactive=True))) == before
    text = m.stderr_text()
    assert "cut short" in text and kept in text, text
    assert os.path.isdir(m.p(dom.name, kept))
