# SPDX-License-Identifier: GPL-2.0-or-later
# rmdir and revert fail closed: what other domains, their snapshots and processes stand on is never merged into or
# unlinked, an unreadable image refuses the operation, and a failed revert keeps what it saved.
import errno
import hashlib
import json
import os
import subprocess
import uuid

import pytest

from conftest import RUN_PREFIX, domain_xml, errno_of, libvirt_reverts_external, run, virsh


def write(path, data):
    """One write(2) of DATA to PATH, as `echo NAME > PATH` makes it."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def last_error(m, dom):
    return os.getxattr(m.p(dom.name), "user.snapfs.last_error").decode()


def guest_write(image, offset_mib, pattern):
    """64 KiB the guest would have written at OFFSET of IMAGE (qcow2, domain shut off)."""
    run("qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset_mib}M 64k", image)


class Reader:
    """What a disk reads, as qemu-img sees it: the chain's headers and a checksum of every byte."""

    def __init__(self, workdir):
        self.workdir = workdir

    def digest(self, image):
        raw = self.workdir / f"{uuid.uuid4().hex}.raw"
        try:
            run("qemu-img", "convert", "-U", "-O", "raw", image, raw)
            h = hashlib.sha256()
            with open(raw, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()
        finally:
            raw.unlink(missing_ok=True)

    def chain(self, image):
        info = json.loads(run("qemu-img", "info", "-U", "--backing-chain", "--output=json", image).stdout)
        return [(i["filename"], i.get("backing-filename"), i["format"], i.get("actual-size"),
                 [s["name"] for s in i.get("snapshots", [])]) for i in info]

    def state(self, *doms, extra=()):
        """Everything a refusal must leave as it was: snapshots, current, each disk's chain and bytes."""
        out = []
        for dom in doms:
            disks = [d.find("target").get("dev") for d in dom.xml(inactive=True).iter("disk")]
            out.append((dom.name, dom.state(), dom.snapshots(), dom.current(),
                        [(t, dom.top(t), self.chain(dom.top(t)), self.digest(dom.top(t))) for t in disks]))
        for image in extra:
            out.append((str(image), self.chain(image), self.digest(image)))
        return out


@pytest.fixture
def reader(images, request):
    path = images.root / f"fc-{request.node.name[:40]}"
    path.mkdir(exist_ok=True)
    yield Reader(path)
    for f in path.iterdir():
        f.unlink()
    path.rmdir()


def tag():
    return f"{RUN_PREFIX}-fc-{uuid.uuid4().hex[:8]}"


def redefine(dom, disks):
    """The same domain (its snapshots kept) on other disks: [(target, file, format)]."""
    xml_file = dom.owner.images.root / f"{uuid.uuid4().hex}.xml"
    dom_uuid = virsh("domuuid", dom.name).stdout.strip()
    xml_file.write_text(domain_xml(dom.name, disks).replace("</name>", f"</name><uuid>{dom_uuid}</uuid>", 1))
    virsh("define", xml_file)
    xml_file.unlink()


@pytest.fixture
def frozen_pair(domains, images):
    """Domain A: base <- a (frozen by snapshot s1) <- a.s1 (live, holding data of its own). Returns (A, a)."""
    t = tag()
    base = images.ext4(f"{t}-base.qcow2", {"hello.txt": "base\n"})
    a_img = images.empty_overlay(f"{t}-a.qcow2", base)
    guest_write(a_img, 2, "0x11")
    a = domains.define([("vda", a_img, "qcow2")])
    a.snapshot("s1")
    assert a.top("vda") != str(a_img)
    guest_write(a.top("vda"), 2, "0x22")    # what rmdir s1 would merge into a
    return a, a_img


# ---------------------------------------------------------------- rmdir: who stands on an image

def test_rmdir_refused_while_a_linked_clone_stands_on_the_frozen_image(frozen_pair, domains, images, mount, reader):
    a, a_img = frozen_pair
    clone = domains.define([("vda", images.empty_overlay(f"{tag()}-clone.qcow2", a_img), "qcow2")])
    m = mount()
    before = reader.state(a, clone)
    assert errno_of(os.rmdir, m.p(a.name, "s1")) == errno.EBUSY
    reason = last_error(m, a)
    assert f"domain '{clone.name}'" in reason and str(a_img) in reason, reason
    assert reader.state(a, clone) == before
    assert os.path.isdir(m.p(a.name, "s1"))


def test_rmdir_refused_while_another_domains_snapshot_stands_on_it(frozen_pair, domains, images, mount, reader):
    """The clone has moved on to a disk of its own: only its snapshot's XML says that it reads a's image."""
    a, a_img = frozen_pair
    t = tag()
    clone_img = images.empty_overlay(f"{t}-clone.qcow2", a_img)
    clone = domains.define([("vda", clone_img, "qcow2")])
    clone.snapshot("c1")
    clone_top = clone.top("vda")
    redefine(clone, [("vda", images.blank(f"{t}-other.qcow2"), "qcow2")])
    m = mount()
    before = reader.state(a, clone, extra=[clone_img, clone_top])
    assert errno_of(os.rmdir, m.p(a.name, "s1")) == errno.EBUSY
    reason = last_error(m, a)
    assert f"snapshot 'c1' of domain '{clone.name}'" in reason, reason
    assert reader.state(a, clone, extra=[clone_img, clone_top]) == before
    assert clone.snapshots() == ["c1"]


def test_rmdir_refused_while_a_process_holds_the_image_open(frozen_pair, mount, reader):
    a, a_img = frozen_pair
    m = mount()
    before = reader.state(a)
    with open(a_img, "rb") as f:
        holder = subprocess.Popen(["sleep", "300"], stdin=f)
    try:
        assert errno_of(os.rmdir, m.p(a.name, "s1")) == errno.EBUSY
        reason = last_error(m, a)
        assert f"process {holder.pid} (sleep)" in reason and str(a_img) in reason, reason
        assert reader.state(a) == before
    finally:
        holder.kill()
        holder.wait()
    # Once it is gone the delete goes through, and the live disk reads as it did.
    live = reader.digest(a.top("vda"))
    os.rmdir(m.p(a.name, "s1"))
    assert a.snapshots() == []
    assert reader.digest(a.top("vda")) == live


def test_rmdir_refused_when_any_image_header_cannot_be_read(frozen_pair, domains, images, mount, reader):
    """Another domain's disk is not a readable qcow2: what it stands on is unknown, so nothing is merged."""
    a, _ = frozen_pair
    broken = images.blank(f"{tag()}-broken.qcow2")
    os.truncate(broken, 50)
    other = domains.define([("vda", broken, "qcow2")])
    m = mount()
    before = reader.state(a)
    assert errno_of(os.rmdir, m.p(a.name, "s1")) == errno.EIO
    reason = last_error(m, a)
    assert str(broken) in reason and other.name in reason, reason
    assert reader.state(a) == before


# ---------------------------------------------------------------- revert: what it leaves and what it rewrites

def test_revert_keeps_an_old_top_a_linked_clone_stands_on(frozen_pair, domains, images, mount, reader):
    """With revert_keep=off a revert unlinks the top it leaves, unless another domain is built on it."""
    a, _ = frozen_pair
    state_dir = images.root / f"{a.name}-state"
    m = mount("-o", f"revert_keep=off,state_dir={state_dir}")
    write(m.p(a.name, "revert"), "s1\n")
    left = a.top("vda")
    # snapfs's own overlay says what it is; libvirt's own revert (libvirt 11) names it after the image below.
    assert ".revert-s1-" in left or libvirt_reverts_external()
    guest_write(left, 4, "0x33")
    clone_img = images.empty_overlay(f"{tag()}-clone.qcow2", left)
    clone = domains.define([("vda", clone_img, "qcow2")])
    before = reader.state(clone)
    write(m.p(a.name, "revert"), "s1\n")
    assert a.top("vda") != left
    assert os.path.exists(left)
    assert reader.state(clone) == before


@pytest.fixture
def internal_pair(domains, images):
    """A shut-off domain with two qcow2 disks and internal snapshot int1, written to since."""
    t = tag()
    vda = images.ext4(f"{t}-vda.qcow2", {"hello.txt": "vda\n"})
    vdb = images.blank(f"{t}-vdb.qcow2")
    dom = domains.define([("vda", vda, "qcow2"), ("vdb", vdb, "qcow2")])
    dom.snapshot("int1", disk_only=False)
    guest_write(vda, 20, "0x44")
    guest_write(vdb, 1, "0x55")
    return dom, vda, vdb


def internal_snapshots(image):
    info = json.loads(run("qemu-img", "info", "-U", "--output=json", image).stdout)
    return sorted(s["name"] for s in info.get("snapshots", []))


def test_failed_internal_revert_keeps_pre_revert(internal_pair, images, mount, reader):
    """libvirt reverts vda, then fails on vdb (int1 is gone from it): what vda held is in pre-revert, kept."""
    dom, vda, vdb = internal_pair
    held = {str(vda): reader.digest(vda), str(vdb): reader.digest(vdb)}
    run("qemu-img", "snapshot", "-d", "int1", vdb)
    m = mount("-o", f"state_dir={images.root / (dom.name + '-state')}")
    err = errno_of(write, m.p(dom.name, "revert"), "int1\n")
    assert err == errno.EIO
    kept = [s for s in dom.snapshots() if s.startswith("pre-revert-")]
    assert len(kept) == 1, dom.snapshots()
    reason = last_error(m, dom)
    assert kept[0] in reason, reason
    assert kept[0] in internal_snapshots(vda) and kept[0] in internal_snapshots(vdb)
    # Reverting to it brings back both disks as they were before the failed revert.
    write(m.p(dom.name, "revert"), kept[0] + "\n")
    assert {str(vda): reader.digest(vda), str(vdb): reader.digest(vdb)} == held


# ---------------------------------------------------------------- --force stops a domain only once nothing refuses

def test_force_refused_in_planning_leaves_the_domain_running(domains, images, mount, reader):
    """int1 lives in an image that an external snapshot froze since: refused before the domain is stopped."""
    base = images.ext4(f"{tag()}-int.qcow2", {"hello.txt": "int\n"})
    dom = domains.define([("vda", base, "qcow2")])
    dom.snapshot("int1", disk_only=False)
    dom.snapshot("ext1")
    dom.start()
    m = mount("-o", f"state_dir={images.root / (dom.name + '-state')}")
    before = (dom.snapshots(), dom.current(), dom.top("vda"), reader.chain(dom.top("vda")))
    assert errno_of(write, m.p(dom.name, "revert"), "int1 --force\n") == errno.ENOTSUP
    assert dom.state() == "running"
    assert (dom.snapshots(), dom.current(), dom.top("vda"), reader.chain(dom.top("vda"))) == before
    assert "int1" in last_error(m, dom)


def test_force_refused_when_a_clone_stands_on_the_image_leaves_it_running(domains, images, mount, reader):
    """An internal revert rewrites the image a linked clone reads: EBUSY naming the clone, the domain still runs."""
    base = images.ext4(f"{tag()}-int.qcow2", {"hello.txt": "int\n"})
    dom = domains.define([("vda", base, "qcow2")])
    dom.snapshot("int1", disk_only=False)
    guest_write(base, 3, "0x66")
    clone_img = images.empty_overlay(f"{tag()}-clone.qcow2", base)
    clone = domains.define([("vda", clone_img, "qcow2")])
    dom.start()
    m = mount("-o", f"state_dir={images.root / (dom.name + '-state')}")
    # (the running domain may grow its own image: what the clone reads is what must not change)
    before = (reader.chain(clone_img)[0], internal_snapshots(base), reader.digest(clone_img))
    assert errno_of(write, m.p(dom.name, "revert"), "int1 --force\n") == errno.EBUSY
    assert dom.state() == "running"
    assert f"domain '{clone.name}'" in last_error(m, dom)
    assert dom.snapshots() == ["int1"]
    dom.destroy()
    assert (reader.chain(clone_img)[0], internal_snapshots(base), reader.digest(clone_img)) == before
