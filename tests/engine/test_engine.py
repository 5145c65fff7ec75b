# SPDX-License-Identifier: GPL-2.0-or-later
# The snapshot engine against the real libvirtd: mkdir's create and rmdir's delete on shut-off and running domains.
import os
import subprocess

import pytest

from conftest import URI, run, virsh


def build_chain(dom, engine, names):
    """One snapshot per name, with fresh data written to every disk before each and after the last."""
    for i, name in enumerate(names):
        dom.write(1 + i)
        dom.write(20)        # the same place each time: merges must keep the newest
        assert engine("create", dom.name, name)[0] == "OK"
    dom.write(10)
    dom.write(20)


# ---- names (src/README.md, "The tree and its names": EINVAL unusable, EEXIST reserved) --

@pytest.mark.parametrize("name,err", [
    ("", "EINVAL"),
    (".hidden", "EINVAL"),
    (".", "EINVAL"),
    ("..", "EINVAL"),
    ("a\nb", "EINVAL"),
    ("tab\there", "EINVAL"),
    ("del\x7f", "EINVAL"),
    ("revert", "EEXIST"),
    ("layers", "EEXIST"),
    ("live", "EEXIST"),
    ("before-upgrade", "OK"),
    ("with space", "OK"),
    ("ünïcödé", "OK"),
])
def test_check_name(engine, name, err):
    assert engine("check", name)[0] == err


# ---- mkdir ------------------------------------------------------------------------------

def test_create_shutoff_two_disks(make_domain, engine):
    dom = make_domain(ndisks=2)
    old = {t: dom.top(t) for t in dom.targets}
    result, out, err = engine("create", dom.name, "before upgrade")
    assert result == "OK", err
    assert dom.snapshots() == ["before upgrade"]
    assert dom.current() == "before upgrade"
    for t in dom.targets:
        # libvirt's own default name: the image's name with its extension replaced by the snapshot's
        expected = old[t][: -len(".qcow2")] + ".before upgrade"
        assert dom.top(t) == expected
        assert dom.snapshot_overlay("before upgrade", t) == expected
        assert dom.chain(expected)[1] == old[t]
        assert f"changed {old[t]}" in out.splitlines()
    state = dom.snapshot_xml("before upgrade").findtext("state")
    assert state in ("shutoff", "disk-snapshot")


def test_create_running_live(make_domain, engine):
    dom = make_domain()
    dom.start()
    dom.write(3)
    result, _, err = engine("create", dom.name, "live1", "auto")
    assert result == "OK", err
    assert dom.running()
    assert dom.top("vda").endswith(".live1")
    # the frozen image holds what the guest wrote before the snapshot
    frozen = dom.content_of("live1", "vda")
    run("qemu-io", "-U", "-r", "-f", "qcow2", "-c", "read -P 0x10 3M 64k", frozen)


def test_quiesce_on_without_agent_changes_nothing(make_domain, engine):
    dom = make_domain()
    dom.start()
    before = dom.fingerprint()
    result, _, err = engine("create", dom.name, "q", "on")
    assert result != "OK"
    assert "agent" in err.lower()
    assert dom.fingerprint() == before


def test_description(make_domain, engine):
    dom = make_domain()
    assert engine("create", dom.name, "a")[0] == "OK"
    assert engine("create", dom.name, "b")[0] == "OK"
    assert engine("describe", dom.name, "a", "x < y & \"z\"")[0] == "OK"
    assert dom.snapshot_xml("a").findtext("description") == "x < y & \"z\""
    assert dom.current() == "b"
    assert engine("describe", dom.name, "b", "newest")[0] == "OK"
    assert dom.current() == "b"
    assert engine("describe", dom.name, "nope", "x")[0] == "ENOENT"


def test_race_one_name(make_domain, engine):
    dom = make_domain()
    result, out, err = engine("race", dom.name, "twin")
    results = [line for line in out.splitlines() if not line.startswith("changed ")]
    assert sorted(results) == ["EEXIST", "OK"], out + err
    assert dom.snapshots() == ["twin"]


# ---- refusals leave everything as it was ---------------------------------------------------

def test_refusals_change_nothing(make_domain, engine):
    dom = make_domain()
    assert engine("create", dom.name, "s1")[0] == "OK"
    dom.write(5)
    # a file where the overlay would go
    blocker = dom.dir / (dom.name + "-vda.blocked")
    blocker.write_text("not an image")
    before = dom.fingerprint()
    for name, err in [("s1", "EEXIST"), ("revert", "EEXIST"), ("layers", "EEXIST"), ("live", "EEXIST"),
                      ("", "EINVAL"), (".Trash-0", "EINVAL"), ("a\nb", "EINVAL"), ("blocked", "EEXIST")]:
        result, _, msg = engine("create", dom.name, name)
        assert result == err, (name, msg)
        assert dom.fingerprint() == before, name
    result, _, _ = engine("delete", dom.name, "missing")
    assert result == "ENOENT"
    assert engine("create", "no-such-domain-" + dom.name, "x")[0] == "ENOENT"
    assert engine("delete", "no-such-domain-" + dom.name, "x")[0] == "ENOENT"
    assert dom.fingerprint() == before


def test_block_job_busy(make_domain, engine, root):
    dom = make_domain()
    assert engine("create", dom.name, "s1")[0] == "OK"
    dom.start()
    copy = root / (dom.name + "-copy.qcow2")
    virsh("blockcopy", dom.name, "vda", copy, "--transient-job", "--shallow")
    try:
        before = dom.fingerprint()
        result, _, err = engine("create", dom.name, "s2")
        assert result == "EBUSY", err
        result, _, err = engine("delete", dom.name, "s1")
        assert result == "EBUSY", err
        assert dom.fingerprint() == before
    finally:
        virsh("blockjob", dom.name, "vda", "--abort", check=False)
        if copy.exists():
            copy.unlink()


# ---- rmdir of external snapshots --------------------------------------------------------------

@pytest.mark.parametrize("running", [False, True], ids=["shutoff", "running"])
def test_delete_middle_leaf_root(make_domain, engine, running):
    dom = make_domain(ndisks=2)
    if running:
        dom.start()
    build_chain(dom, engine, ["s1", "s2", "s3", "s4"])
    base_files = {t: dom.chain(dom.top(t))[-1] for t in dom.targets}
    gone = set()
    for victim in ["s2", "s4", "s1"]:     # a middle one, the current leaf, the root
        saved = dom.save()
        overlays = {t: dom.snapshot_overlay(victim, t) for t in dom.targets}
        result, out, err = engine("delete", dom.name, victim)
        assert result == "OK", err
        gone.add(victim)
        assert victim not in dom.snapshots()
        dom.verify(saved, gone=gone)
        for t in dom.targets:
            assert not os.path.exists(overlays[t]), f"{overlays[t]} was merged but not removed"
            assert f"changed {overlays[t]}" in out.splitlines()
            assert os.path.exists(base_files[t])
        assert dom.running() == running
    assert dom.snapshots() == ["s3"]
    # what is left still deletes
    saved = dom.save()
    result, _, err = engine("delete", dom.name, "s3")
    assert result == "OK", err
    dom.verify(saved, gone={"s3"})
    assert dom.snapshots() == []


@pytest.mark.parametrize("running", [False, True], ids=["shutoff", "running"])
def test_raw_disk(make_domain, engine, running):
    """A raw disk: the first overlay stands on it, and a merge writes into it."""
    dom = make_domain(fmt="raw")
    raw = dom.top("vda")
    if running:
        dom.start()
    build_chain(dom, engine, ["s1", "s2"])
    assert dom.chain(dom.top("vda"))[-1] == raw
    for victim in ["s1", "s2"]:
        saved = dom.save()
        result, _, err = engine("delete", dom.name, victim)
        assert result == "OK", err
        dom.verify(saved, gone={"s1", "s2"} if victim == "s2" else {"s1"})
    assert dom.top("vda") == raw
    assert dom.snapshots() == []


def test_leaf_not_current_is_merged(make_domain, engine):
    """libvirt 9.0 would unlink what a non-current leaf froze (the live disk's backing): it must merge instead."""
    dom = make_domain()
    build_chain(dom, engine, ["s1", "s2"])
    virsh("snapshot-current", dom.name, "s1")
    frozen = dom.content_of("s2", "vda")
    overlay = dom.snapshot_overlay("s2", "vda")
    saved = dom.save()
    result, _, err = engine("delete", dom.name, "s2")
    assert result == "OK", err
    assert dom.snapshots() == ["s1"]
    assert os.path.exists(frozen)
    assert not os.path.exists(overlay)
    dom.verify(saved, gone={"s2"})


@pytest.mark.parametrize("running", [False, True], ids=["shutoff", "running"])
def test_delete_internal(make_domain, engine, running):
    dom = make_domain()
    dom.write(2)
    if running:
        dom.start()
    virsh("snapshot-create-as", dom.name, "i1")
    dom.write(2)
    saved = dom.save()
    assert "i1" in run("qemu-img", "snapshot", "-U", "-l", dom.top("vda")).stdout
    result, _, err = engine("delete", dom.name, "i1")
    assert result == "OK", err
    assert dom.snapshots() == []
    assert "i1" not in run("qemu-img", "snapshot", "-U", "-l", dom.top("vda")).stdout
    dom.verify(saved)


# ---- branches and mixed trees ---------------------------------------------------------------

def redefine_current(dom, snap):
    """What a revert leaves: @snap current (its XML redefined as libvirt does on revert)."""
    xml = dom.dir / f"{snap}.snap.xml"
    xml.write_text(virsh("snapshot-dumpxml", dom.name, snap, "--security-info").stdout)
    virsh("snapshot-create", dom.name, xml, "--redefine", "--current")


def test_branch_after_revert(make_domain, engine):
    """s1 -> s2, then the domain moves to a new overlay on s1's image (as a by-hand revert does)."""
    dom = make_domain()
    build_chain(dom, engine, ["s1", "s2"])
    s1_frozen = dom.content_of("s1", "vda")
    branch = dom.dir / (dom.name + "-vda.branch")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", s1_frozen, branch)
    branch.chmod(0o644)
    xml = virsh("dumpxml", "--inactive", dom.name).stdout.replace(dom.top("vda"), str(branch))
    (dom.dir / "branch.xml").write_text(xml)
    virsh("define", dom.dir / "branch.xml")
    redefine_current(dom, "s1")
    dom.write(7)

    # s1 is current, with a child on the old branch: nothing to merge, every image it froze is still read
    saved = dom.save()
    files = sorted(p.name for p in dom.dir.iterdir())
    result, _, err = engine("delete", dom.name, "s1")
    assert result == "OK", err
    assert dom.snapshots() == ["s2"]
    assert sorted(p.name for p in dom.dir.iterdir()) == files
    dom.verify(saved, gone={"s1"})

    # s2 is a leaf on the abandoned branch: its own overlay goes, everything the live disk reads stays
    saved = dom.save()
    s2_overlay = dom.snapshot_overlay("s2", "vda")
    result, out, err = engine("delete", dom.name, "s2")
    assert result == "OK", err
    assert dom.snapshots() == []
    assert not os.path.exists(s2_overlay)
    assert f"changed {s2_overlay}" in out.splitlines()
    assert os.path.exists(s1_frozen)
    dom.verify(saved, gone={"s2"})


def test_branch_point_with_two_children_refused(make_domain, engine):
    """s1 -> s2 on the live branch and s1 -> s3 beside it: libvirt cannot merge s1 into both."""
    dom = make_domain()
    build_chain(dom, engine, ["s1", "s2"])
    # a second child of s1, as a revert to s1 and a snapshot there would make
    xml = virsh("snapshot-dumpxml", dom.name, "s2", "--security-info").stdout
    s1_overlay = dom.snapshot_overlay("s1", "vda")
    side = dom.dir / (dom.name + "-vda.s3")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", s1_overlay, side)
    side.chmod(0o644)
    s2_overlay = dom.snapshot_overlay("s2", "vda")
    xml = xml.replace("<name>s2</name>", "<name>s3</name>").replace(s2_overlay, str(side))
    (dom.dir / "s3.xml").write_text(xml)
    virsh("snapshot-create", dom.name, dom.dir / "s3.xml", "--redefine")
    redefine_current(dom, "s2")
    before = dom.fingerprint()
    result, _, err = engine("delete", dom.name, "s1")
    assert result == "ENOTSUP", err
    assert dom.fingerprint() == before


def test_external_after_revert_to_internal_keeps_base(make_domain, engine):
    """The upstream data loss: internal i1, external e1, revert to i1, delete e1 removed the base."""
    dom = make_domain()
    dom.write(2)
    original = dom.top("vda")
    virsh("snapshot-create-as", dom.name, "i1")
    assert engine("create", dom.name, "e1")[0] == "OK"
    dom.write(3)
    virsh("snapshot-revert", dom.name, "i1")
    assert dom.top("vda") == original
    saved = dom.save()
    e1_overlay = dom.snapshot_overlay("e1", "vda")
    result, _, err = engine("delete", dom.name, "e1")
    assert result == "OK", err
    assert dom.snapshots() == ["i1"]
    assert os.path.exists(original)
    assert "i1" in run("qemu-img", "snapshot", "-l", original).stdout
    assert not os.path.exists(e1_overlay)
    dom.verify(saved, gone={"e1"})


def test_internal_inside_overlay_refused(make_domain, engine):
    """libvirt 9.0 merges away an overlay that holds a child's internal snapshot: refuse."""
    dom = make_domain()
    assert engine("create", dom.name, "e1")[0] == "OK"
    dom.write(4)
    virsh("snapshot-create-as", dom.name, "i2")
    overlay = dom.snapshot_overlay("e1", "vda")
    assert "i2" in run("qemu-img", "snapshot", "-l", overlay).stdout
    before = dom.fingerprint()
    result, _, err = engine("delete", dom.name, "e1")
    assert result == "ENOTSUP", err
    assert "internal snapshot" in err
    assert dom.fingerprint() == before


def test_shared_template_refused(make_domain, engine, root):
    """A snapshot whose frozen image another domain runs on must not be merged into."""
    dom = make_domain()
    assert engine("create", dom.name, "s1")[0] == "OK"
    frozen = dom.content_of("s1", "vda")
    other = make_domain()
    xml = virsh("dumpxml", "--inactive", other.name).stdout.replace(other.top("vda"), frozen)
    (other.dir / "shared.xml").write_text(xml)
    virsh("define", other.dir / "shared.xml")
    # s1 is the current leaf: deleting it merges its overlay into the image the other domain uses
    before = dom.fingerprint()
    result, _, err = engine("delete", dom.name, "s1")
    assert result == "EBUSY", err     # another domain is a user of it, named (issue 13)
    assert other.name in err
    assert dom.fingerprint() == before


def test_describe_after_merges(make_domain, engine):
    """A description can still be set once the images a snapshot's XML names were merged away."""
    dom = make_domain()
    build_chain(dom, engine, ["s1", "s2", "s3"])
    assert engine("delete", dom.name, "s2")[0] == "OK"
    assert engine("describe", dom.name, "s3", "after the merge")[0] == "OK"
    assert dom.snapshot_xml("s3").findtext("description") == "after the merge"
    assert engine("describe", dom.name, "s1", "the root")[0] == "OK"
    assert dom.current() == "s3"
    saved = dom.save()
    result, _, err = engine("delete", dom.name, "s3")
    assert result == "OK", err
    dom.verify(saved, gone={"s3"})


def test_merge_below_a_branch_refused(make_domain, engine):
    """s0 -> s1 -> s2, then a revert to s1: the live overlay and s1's old overlay both stand on s0's overlay.
    libvirt 9.0 would merge s0's overlay away and rebase only the live one, breaking s2's chain."""
    dom = make_domain()
    build_chain(dom, engine, ["s0", "s1", "s2"])
    s1_frozen = dom.content_of("s1", "vda")
    branch = dom.dir / (dom.name + "-vda.branch")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", s1_frozen, branch)
    branch.chmod(0o644)
    xml = virsh("dumpxml", "--inactive", dom.name).stdout.replace(dom.top("vda"), str(branch))
    (dom.dir / "branch.xml").write_text(xml)
    virsh("define", dom.dir / "branch.xml")
    redefine_current(dom, "s1")
    dom.write(8)
    before = dom.fingerprint()
    result, _, err = engine("delete", dom.name, "s0")
    assert result == "ENOTSUP", err
    assert "branch" in err
    assert dom.fingerprint() == before
    # what can go, goes, and then s0 merges like any root
    saved = dom.save()
    for snap in ["s2", "s1"]:
        result, _, err = engine("delete", dom.name, snap)
        assert result == "OK", err
    dom.verify(saved, gone={"s1", "s2"})
    assert dom.snapshots() == ["s0"]


def test_progress_of_a_long_merge(make_domain, engine):
    """While libvirt merges, engine_progress() says what runs and how far (for user.snapfs.progress)."""
    dom = make_domain(size="512M")
    dom.start()
    assert engine("create", dom.name, "big")[0] == "OK"
    dom.write(0, 0x5a, "320M")
    saved = dom.save()
    result, out, err = engine("delete-watch", dom.name, "big")
    assert result == "OK", err
    lines = out.splitlines()
    progress = [line for line in lines if line.startswith("progress ")]
    assert progress and progress[0].startswith("progress deleting snapshot 'big'"), out
    assert any("merging" in line and line.endswith("%") for line in progress), out
    assert "after nothing" in lines
    dom.verify(saved, gone={"big"})
