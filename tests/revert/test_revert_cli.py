# SPDX-License-Identifier: GPL-2.0-or-later
# revert through src/revert*.c (revert-cli) against the real libvirtd: what virsh and qemu-img see afterwards.
import pytest

from revertlib import URI, built, run, virsh

STEPS = ["journal", "keep-overlays", "keep", "overlays", "domain", "current", "cleanup"]
COMMITTED = {"domain", "current", "cleanup"}


def by_libvirt(err):
    """Whether libvirt's own external revert (libvirt 9.9 and later) did it, as revert-cli's log says."""
    return "libvirt reverted domain" in err


def pre_reverts(dom):
    return [s for s in dom.snapshots() if s.startswith("pre-revert-")]


def check_reverted(dom, target, saved, before_snaps, kept_from=None):
    """The live disks read as @target, XML and metadata agree, every other snapshot is intact, the domain boots."""
    assert dom.current() == target
    for t in dom.targets:
        if dom.kind(target) == "external":
            assert dom.reads_as(saved[(target, t)], dom.top(t)), f"{t} does not read as {target}"
            # What the XML spells out of the chain is the chain the images have (snapfs's own revert spells it
            # all out, as libvirt 9.0's delete needs; libvirt's own names the top only).
            xml = dom.xml_chain(t)
            assert xml and xml == dom.chain(dom.top(t))[:len(xml)]
        else:
            assert dom.reads_as(saved[(target, t)], dom.top(t))
    for snap in before_snaps:
        assert snap in dom.snapshots()
        if dom.kind(snap) == "external":
            for t in dom.targets:
                assert dom.reads_as(saved[(snap, t)], dom.content(snap, t)), f"{snap}/{t} changed"
    if kept_from is not None:
        new = [s for s in pre_reverts(dom) if s not in before_snaps]
        assert len(new) == 1, dom.snapshots()
        for t in dom.targets:
            if dom.kind(new[0]) == "external":
                assert dom.reads_as(saved[(kept_from, t)], dom.content(new[0], t)), "the state left behind is lost"
    dom.start_and_stop()


def test_revert_root_middle_leaf_and_back(chained):
    dom = chained
    saved = dom.save()
    before = dom.snapshots()

    status, err = dom.revert("s2\n")
    assert status == "OK", err
    check_reverted(dom, "s2", saved, before, kept_from="live")
    names = [f.name for f in dom.dir.iterdir()]
    if not by_libvirt(err):
        assert any(".revert-s2-" in n for n in names), names   # a person can tell what the overlay is

    # From s2 with nothing written: no second pre-revert, the empty revert overlay is not left behind.
    before = dom.snapshots()
    saved = dom.save()
    status, err = dom.revert("r1")
    assert status == "OK", err
    check_reverted(dom, "r1", saved, before)
    assert dom.snapshots() == before
    assert not any(".revert-s2-" in f.name for f in dom.dir.iterdir())

    # A leaf, then the pre-revert snapshot on its own branch, after writes each time.
    dom.write(5)
    saved = dom.save()
    before = dom.snapshots()
    status, err = dom.revert("s3")
    assert status == "OK", err
    check_reverted(dom, "s3", saved, before, kept_from="live")

    saved = dom.save()
    before = dom.snapshots()
    first = sorted(pre_reverts(dom))[0]
    status, err = dom.revert(first + "\n")
    assert status == "OK", err
    check_reverted(dom, first, saved, before)

    # Reverting to where the domain is: nothing changes, nothing is kept.
    status, err = dom.revert(first)
    assert status == "OK", err
    assert dom.snapshots() == before

    # Every snapshot can still be deleted (by snapfs's rmdir), leaves first, and what remains reads the same.
    engine = built("engine-cli")
    saved = dom.save()
    for snap in sorted(dom.snapshots(), key=lambda s: (s.startswith("pre-revert"), s), reverse=True):
        proc = run(engine, "qemu:///system", "delete", dom.name, snap, check=False)
        assert proc.returncode == 0, f"rmdir {snap}: {proc.stderr}"
        for t in dom.targets:
            assert dom.reads_as(saved[("live", t)], dom.top(t))
            for other in dom.snapshots():
                assert dom.reads_as(saved[(other, t)], dom.content(other, t)), f"{other}/{t} changed deleting {snap}"
    assert dom.snapshots() == []
    dom.start_and_stop()


def test_keep_off_discards(chained):
    dom = chained
    saved = dom.save()
    before = dom.snapshots()
    status, err = dom.revert("r1", keep=False)
    assert status == "OK", err
    check_reverted(dom, "r1", saved, before)
    assert pre_reverts(dom) == []


def test_bad_requests_change_nothing(chained):
    dom = chained
    print_before = dom.fingerprint()
    for request, errno in [("", "EINVAL"), ("\n", "EINVAL"), ("s2\nr1\n", "EINVAL"), ("s2 junk", "EINVAL"),
                           ("s2 --bogus", "EINVAL"), (" s2", "EINVAL"), ("s2\n\n", "EINVAL"),
                           ("s2\x01", "EINVAL"), ("nosuch", "ENOENT"), ("nosuch\n", "ENOENT")]:
        status, err = dom.revert(request)
        assert status == errno, f"{request!r}: {err}"
        assert dom.fingerprint() == print_before, f"{request!r} changed something"


def test_running_domain(chained):
    dom = chained
    virsh("start", dom.name)
    try:
        files = dom.fingerprint()["files"]
        status, err = dom.revert("s2\n")
        assert status == "EBUSY", err
        assert "--force" in err
        assert dom.running()
        assert dom.fingerprint()["files"] == files
        status, err = dom.revert("s2 --force\n")
        assert status == "OK", err
        assert not dom.running()
        assert dom.current() == "s2"
        assert len(pre_reverts(dom)) == 1
    finally:
        if dom.running():
            virsh("destroy", dom.name)
    dom.start_and_stop()


def test_internal_snapshot(make_domain):
    dom = make_domain(ndisks=1)
    dom.write(1)
    dom.snapshot("i1", internal=True)
    dom.write(2)
    saved = dom.save()
    status, err = dom.revert("i1")
    assert status == "OK", err
    assert dom.current() == "i1"
    assert dom.reads_as(saved[("i1", "vda")], dom.top("vda"))
    kept = pre_reverts(dom)
    assert len(kept) == 1
    assert dom.reads_as(saved[("live", "vda")], dom.top("vda"), snapshot=kept[0])
    dom.start_and_stop()


@pytest.mark.parametrize("step", STEPS)
def test_killed_at_every_step(chained, step):
    dom = chained
    saved = dom.save()
    before = dom.fingerprint()
    status, err = dom.revert("s2", fault=f"revert:{step}")
    if step in {"overlays", "domain", "current"} and by_libvirt(err):
        # Where libvirt reverts by itself, snapfs's own steps are never reached: the revert is whole.
        assert status == "OK", err
        assert list(dom.state.iterdir()) == [], "the journal is left behind"
        check_reverted(dom, "s2", saved, before["snapshots"], kept_from="live")
        return
    assert status == "KILLED", err

    # Killed there, the domain is one libvirt accepts and that boots.
    for t in dom.targets:
        assert dom.xml_chain(t)[0] == dom.top(t)
        assert dom.chain(dom.top(t))
    if step not in COMMITTED:
        assert dom.fingerprint()["xml"] == before["xml"]
    dom.start_and_stop()

    dom.recover()
    assert list(dom.state.iterdir()) == [], "the journal is left behind"
    if step in COMMITTED:
        check_reverted(dom, "s2", saved, before["snapshots"], kept_from="live")
    else:
        assert dom.fingerprint() == before, f"not rolled back after a kill at {step}"
        dom.start_and_stop()
    # And a second recover finds nothing to do.
    dom.recover()


def test_branches_and_live_snapshots(chained):
    """A snapshot taken on a revert's overlay makes a branch; one taken live holds the live XML; revert across both."""
    dom = chained
    status, err = dom.revert("r1")
    assert status == "OK", err
    dom.write(6)
    dom.snapshot("b1")                      # on the revert overlay: a second branch under r1
    dom.write(7)
    virsh("start", dom.name)
    try:
        dom.snapshot("l1")                  # live, disk-only: its <domain> is the running one
    finally:
        virsh("destroy", dom.name)
    dom.write(8)
    saved = dom.save()
    before = dom.snapshots()
    assert dom.parent("b1") == "r1"

    for target in ["s3", "b1", "l1", "s2", "l1"]:
        status, err = dom.revert(target + "\n")
        assert status == "OK", f"{target}: {err}"
        check_reverted(dom, target, saved, before)
        saved = dom.save()
        before = dom.snapshots()


def test_busy_while_another_operation_runs(chained):
    dom = chained
    before = dom.fingerprint()
    proc = run(built("revert-cli"), URI, dom.state, "busy", dom.name, "s2\n", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().split(":", 1)[0] == "EBUSY", proc.stderr
    assert dom.fingerprint() == before
    status, err = dom.revert("s2\n")
    assert status == "OK", err


def test_disk_left_out_of_snapshots(make_domain):
    """A disk the snapshots leave out (snapshot='no') keeps its image and content through a revert."""
    dom = make_domain(ndisks=2)
    dom.write(1)
    virsh("snapshot-create-as", dom.name, "a1", "--disk-only", "--atomic", "--diskspec", "vdb,snapshot=no")
    dom.write(2)
    vdb = dom.top("vdb")
    vdb_raw = dom.save_raw(vdb, "vdb-before")
    saved = dom.save_raw(dom.content("a1", "vda"), "a1-vda")
    status, err = dom.revert("a1")
    assert status == "OK", err
    assert dom.reads_as(saved, dom.top("vda"))
    if by_libvirt(err):
        # libvirt's own revert gives every disk a new overlay, this one's on the image it left out.
        assert vdb in dom.chain(dom.top("vdb"))
    else:
        assert dom.top("vdb") == vdb
    assert dom.reads_as(vdb_raw, dom.top("vdb"))
    kept = pre_reverts(dom)
    assert len(kept) == 1
    assert dom.overlay(kept[0], "vdb") is None
    dom.start_and_stop()


@pytest.mark.parametrize("step", ["journal", "keep", "current"])
def test_killed_reverting_to_internal(make_domain, step):
    dom = make_domain(ndisks=1)
    dom.write(1)
    dom.snapshot("i1", internal=True)
    dom.write(2)
    saved = dom.save()
    before = dom.fingerprint()
    status, err = dom.revert("i1", fault=f"revert:{step}")
    assert status == "KILLED", err
    dom.start_and_stop()
    dom.recover()
    assert list(dom.state.iterdir()) == []
    if step == "current":
        assert dom.current() == "i1"
        assert dom.reads_as(saved[("i1", "vda")], dom.top("vda"))
        assert len(pre_reverts(dom)) == 1
    else:
        after = dom.fingerprint()
        for key in ("snapshots", "current", "xml", "meta"):
            assert after[key] == before[key], f"{key} not rolled back after a kill at {step}"
        assert dom.reads_as(saved[("live", "vda")], dom.top("vda"))
    dom.start_and_stop()


def test_killed_after_asking_libvirt_keeps_pre_revert(make_domain):
    """snapfs dies once the journal says libvirt is asked to apply internal snapshot i1, and libvirt applied it to
    the first disk only (as 9.0 does when the second fails: no undo): the next start never deletes pre-revert-...,
    which alone holds what both disks held before; it names it in a warning and changes nothing else."""
    dom = make_domain(ndisks=2)
    dom.write(1)
    dom.snapshot("i1", internal=True)
    dom.write(2)
    saved = dom.save()
    status, err = dom.revert("i1", fault="revert:asked")
    assert status == "KILLED", err
    kept = pre_reverts(dom)
    assert len(kept) == 1, dom.snapshots()
    assert dom.current() == kept[0]
    # What libvirt 9.0 leaves when it applied vda and then failed on vdb.
    run("qemu-img", "snapshot", "-a", "i1", dom.top("vda"))
    before = dom.fingerprint()
    err = dom.recover()
    assert list(dom.state.iterdir()) == []
    assert kept[0] in err and "cut short" in err, err
    after = dom.fingerprint()
    for key in ("snapshots", "current", "xml", "meta"):
        assert after[key] == before[key], f"{key} changed by the recovery"
    assert dom.reads_as(saved[("i1", "vda")], dom.top("vda"))
    assert dom.reads_as(saved[("live", "vdb")], dom.top("vdb"))
    for t in dom.targets:
        assert dom.reads_as(saved[("live", t)], dom.top(t), snapshot=kept[0]), f"{t}: the state before is lost"
    # The kept state brings both disks back.
    status, err = dom.revert(kept[0])
    assert status == "OK", err
    for t in dom.targets:
        assert dom.reads_as(saved[("live", t)], dom.top(t))
    dom.start_and_stop()


def test_transient_domain_refused(chained):
    dom = chained
    xml = virsh("dumpxml", "--inactive", dom.name).stdout
    snaps = {s: virsh("snapshot-dumpxml", dom.name, s).stdout for s in ["r1", "s2", "s3"]}
    virsh("undefine", dom.name, "--snapshots-metadata")
    path = dom.root / f"{dom.name}-transient.xml"
    path.write_text(xml)
    virsh("create", path)                   # running and transient: no definition to revert
    try:
        for name, snap_xml in snaps.items():
            snap_path = dom.root / f"{dom.name}-{name}.xml"
            snap_path.write_text(snap_xml)
            virsh("snapshot-create", dom.name, snap_path, "--redefine")
        status, err = dom.revert("s2 --force")
        assert status in ("ENOTSUP", "EOPNOTSUPP"), err     # one value on Linux, two names
        assert dom.running()
    finally:
        virsh("destroy", dom.name, check=False)
        # A transient domain with snapshot metadata outlives its destroy: undefine it too.
        virsh("undefine", dom.name, "--snapshots-metadata", check=False)


def test_internal_under_external_refused(make_domain):
    """An internal snapshot under an external one: libvirt would rewrite the image the external one froze."""
    dom = make_domain(ndisks=1)
    dom.write(1)
    dom.snapshot("i1", internal=True)
    dom.write(2)
    dom.snapshot("e1")
    dom.write(3)
    saved = dom.save_raw(dom.content("e1", "vda"), "e1-before")
    before = dom.fingerprint()
    status, err = dom.revert("i1")
    assert status in ("ENOTSUP", "EOPNOTSUPP"), err
    assert dom.fingerprint() == before
    assert dom.reads_as(saved, dom.content("e1", "vda"))
