# SPDX-License-Identifier: GPL-2.0-or-later
# mkdir takes an external snapshot and rmdir deletes one, through a real mount: names, errno, and nothing lost.
import errno
import json
import os
import threading
import uuid

import pytest

from conftest import RUN_PREFIX, errno_of, guest_mount, run, virsh, wait_for


def chain_files(top):
    info = json.loads(run("qemu-img", "info", "-U", "--backing-chain", "--output=json", top).stdout)
    return [i["filename"] for i in info]


def state_of(dom):
    """What a refusal must leave as it was: snapshots, current, disk XML, the chain and each image's header."""
    top = dom.top("vda")
    headers = [run("qemu-img", "info", "-U", "--output=json", f).stdout for f in chain_files(top)]
    files = sorted(os.listdir(os.path.dirname(top)))
    return dom.snapshots(), dom.current(), top, headers, files


def write_guest_data(dom, offset_mib, pattern):
    """64 KiB at OFFSET of the live disk, as the guest would write it (shut off: straight into the image)."""
    if dom.state() == "running":
        dev = "/machine/peripheral/virtio-disk0/virtio-backend"
        virsh("qemu-monitor-command", dom.name, "--hmp", f'qemu-io -d {dev} "write -P {pattern} {offset_mib}M 64k"')
        virsh("qemu-monitor-command", dom.name, "--hmp", f"qemu-io -d {dev} flush")
    else:
        run("qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset_mib}M 64k", dom.top("vda"))


def frozen_image(dom, snap):
    """The image whose chain reads as SNAP: the one below the overlay the snapshot made."""
    for disk in dom.snapshot_xml(snap).find("disks"):
        if disk.get("name") == "vda":
            return chain_files(disk.find("source").get("file"))[1]
    raise KeyError(snap)


def save_contents(dom, workdir):
    saved = {}
    for snap in dom.snapshots():
        raw = workdir / f"{snap}.raw"
        run("qemu-img", "convert", "-U", "-O", "raw", frozen_image(dom, snap), raw)
        saved[snap] = raw
    raw = workdir / "live.raw"
    run("qemu-img", "convert", "-U", "-O", "raw", dom.top("vda"), raw)
    saved[None] = raw
    return saved


def check_contents(dom, saved):
    """Every snapshot left and the live disk read byte for byte as saved; every image left checks clean."""
    for snap, raw in saved.items():
        if snap is not None and snap not in dom.snapshots():
            continue
        image = dom.top("vda") if snap is None else frozen_image(dom, snap)
        proc = run("qemu-img", "compare", "-U", raw, image, check=False)
        assert proc.returncode == 0, f"{snap or 'the live disk'} reads differently: {proc.stdout}"
    for image in chain_files(dom.top("vda")):
        assert run("qemu-img", "check", "-U", image, check=False).returncode == 0, image


@pytest.fixture
def new_domain(domains, images):
    """A one-disk domain over images of its own (names unique in the session, so overlays never collide)."""
    def make(start=False):
        tag = f"{RUN_PREFIX}-snap-{uuid.uuid4().hex[:8]}"
        base = images.ext4(f"{tag}-base.qcow2", {"hello.txt": f"{tag}\n"})
        top = images.empty_overlay(f"{tag}-top.qcow2", base)
        return domains.define([("vda", top, "qcow2")], start=start)
    return make


@pytest.fixture
def workdir(images, request):
    path = images.root / f"work-{request.node.name[:40]}"
    path.mkdir(exist_ok=True)
    yield path
    for f in path.iterdir():
        f.unlink()
    path.rmdir()


def test_mkdir_takes_a_snapshot(new_domain, mount):
    dom = new_domain()
    old_top = dom.top("vda")
    m = mount()
    os.mkdir(m.p(dom.name, "before-upgrade"))
    # it is there at once, as libvirt has it
    assert os.path.isdir(m.p(dom.name, "before-upgrade"))
    assert "before-upgrade" in os.listdir(m.p(dom.name))
    assert dom.snapshots() == ["before-upgrade"]
    assert os.getxattr(m.p(dom.name, "before-upgrade"), "user.snapfs.kind") == b"external"
    # libvirt's default overlay name, on top of what was the live disk
    new_top = dom.top("vda")
    assert new_top == os.path.splitext(old_top)[0] + ".before-upgrade"
    assert chain_files(new_top)[1] == old_top
    # and it takes a description
    os.setxattr(m.p(dom.name, "before-upgrade"), "user.snapfs.description", b"before apt upgrade")
    assert dom.snapshot_xml("before-upgrade").findtext("description") == "before apt upgrade"
    assert os.getxattr(m.p(dom.name, "before-upgrade"), "user.snapfs.description") == b"before apt upgrade"


def test_mkdir_running(new_domain, mount):
    dom = new_domain(start=True)
    m = mount()
    os.mkdir(m.p(dom.name, "while-running"))
    assert dom.state() == "running"
    assert dom.snapshots() == ["while-running"]
    assert dom.top("vda").endswith(".while-running")


def test_bad_names_change_nothing(new_domain, mount):
    dom = new_domain()
    m = mount()
    os.mkdir(m.p(dom.name, "taken"))
    before = state_of(dom)
    for name, err in [("taken", errno.EEXIST), ("revert", errno.EEXIST), ("layers", errno.EEXIST),
                      ("live", errno.EEXIST), (".hidden", errno.EINVAL), (".Trash-0", errno.EINVAL), ("a\nb", errno.EINVAL),
                      ("tab\tname", errno.EINVAL)]:
        assert errno_of(os.mkdir, m.p(dom.name, name)) == err, name
        assert state_of(dom) == before, name
    assert errno_of(os.rmdir, m.p(dom.name, "no-such-snapshot")) == errno.ENOENT
    assert state_of(dom) == before
    # the reason of the last refusal is on the domain
    assert os.getxattr(m.p(dom.name), "user.snapfs.last_error")


def test_mkdir_inside_snapshot_or_layer_erofs(new_domain, mount):
    dom = new_domain()
    dom.snapshot("s1")
    m = mount()
    before = state_of(dom)
    assert errno_of(os.mkdir, m.p(dom.name, "s1", "x")) == errno.EROFS
    layer = sorted(os.listdir(m.p(dom.name, "layers", "vda")))[0]
    assert errno_of(os.mkdir, m.p(dom.name, "layers", "vda", layer, "x")) == errno.EROFS
    assert state_of(dom) == before


def test_read_only_mount(new_domain, mount):
    dom = new_domain()
    dom.snapshot("s1")
    m = mount("-o", "ro")
    before = state_of(dom)
    assert errno_of(os.mkdir, m.p(dom.name, "s2")) == errno.EROFS
    assert errno_of(os.rmdir, m.p(dom.name, "s1")) == errno.EROFS
    assert state_of(dom) == before


def test_other_user_eacces(new_domain, mount):
    dom = new_domain()
    dom.snapshot("s1")
    m = mount("-o", "allow_other")
    before = state_of(dom)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = run(*as_nobody, "mkdir", m.p(dom.name, "s2"), check=False)
    assert proc.returncode != 0 and "Permission denied" in proc.stderr, proc.stderr
    proc = run(*as_nobody, "rmdir", m.p(dom.name, "s1"), check=False)
    assert proc.returncode != 0 and "Permission denied" in proc.stderr, proc.stderr
    assert state_of(dom) == before


def test_block_job_ebusy(new_domain, mount, images):
    dom = new_domain()
    dom.snapshot("s1")
    dom.start()
    copy = images.root / f"{RUN_PREFIX}-{dom.name}-copy.qcow2"
    virsh("blockcopy", dom.name, "vda", copy, "--transient-job", "--shallow")
    m = mount()
    try:
        before = state_of(dom)
        assert errno_of(os.mkdir, m.p(dom.name, "s2")) == errno.EBUSY
        assert errno_of(os.rmdir, m.p(dom.name, "s1")) == errno.EBUSY
        assert state_of(dom) == before
    finally:
        virsh("blockjob", dom.name, "vda", "--abort", check=False)
        if copy.exists():
            copy.unlink()


def test_two_mkdirs_of_one_name(new_domain, mount):
    dom = new_domain()
    m = mount()
    results = []
    barrier = threading.Barrier(2)

    def make():
        barrier.wait()
        results.append(errno_of(os.mkdir, m.p(dom.name, "twin")))

    threads = [threading.Thread(target=make) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results, key=str) == sorted([None, errno.EEXIST], key=str)
    assert dom.snapshots() == ["twin"]


@pytest.mark.parametrize("running", [False, True], ids=["shutoff", "running"])
def test_rmdir_middle_leaf_root(new_domain, mount, workdir, running):
    dom = new_domain()
    if running:
        dom.start()
    m = mount()
    for i, snap in enumerate(["s1", "s2", "s3", "s4"]):
        write_guest_data(dom, 1 + i, 0x20 + i)
        write_guest_data(dom, 20, 0x30 + i)
        os.mkdir(m.p(dom.name, snap))
    write_guest_data(dom, 10, 0x40)
    base = chain_files(dom.top("vda"))[-1]
    for victim in ["s2", "s4", "s1"]:
        saved = save_contents(dom, workdir)
        overlay = [d.find("source").get("file") for d in dom.snapshot_xml(victim).find("disks")][0]
        os.rmdir(m.p(dom.name, victim))
        assert victim not in dom.snapshots()
        assert not os.path.exists(m.p(dom.name, victim))
        assert victim not in os.listdir(m.p(dom.name))
        check_contents(dom, saved)
        assert not os.path.exists(overlay), f"{overlay} merged but left behind"
        assert os.path.exists(base)
        assert dom.state() == ("running" if running else "shut off")
    assert dom.snapshots() == ["s3"]
    assert sorted(os.listdir(m.p(dom.name))) == ["layers", "live", "revert", "s3"]


def test_rmdir_internal(new_domain, mount, workdir):
    dom = new_domain()
    dom.snapshot("i1", disk_only=False)
    m = mount()
    os.rmdir(m.p(dom.name, "i1"))
    assert dom.snapshots() == []
    assert "i1" not in run("qemu-img", "snapshot", "-l", dom.top("vda")).stdout


def test_rmdir_refused_keeps_everything(new_domain, mount):
    """An overlay that holds a child's internal snapshot: libvirt 9.0 would destroy it; ENOTSUP instead."""
    dom = new_domain()
    m = mount()
    os.mkdir(m.p(dom.name, "e1"))
    write_guest_data(dom, 4, 0x55)
    dom.snapshot("i2", disk_only=False)
    before = state_of(dom)
    assert errno_of(os.rmdir, m.p(dom.name, "e1")) == errno.ENOTSUP
    assert state_of(dom) == before
    assert b"internal snapshot" in os.getxattr(m.p(dom.name), "user.snapfs.last_error")


# ---------------------------------------------------------------- open files in views that rmdir would change

BIG = 5 * 1024 * 1024


def generation(n):
    """data/big.bin as generation N has it: 5 MiB, different at every offset from every other generation."""
    import random
    return random.Random(f"generation {n}").randbytes(BIG)


@pytest.fixture(scope="module")
def views_mnt(libvirtd, run_prefix):
    """One mount for the tests of open files (appliances start slowly under TCG)."""
    with guest_mount("views") as path:
        yield path


@pytest.fixture
def generations(domains, images):
    """A domain whose data/big.bin differs in every state: s1 froze generation 1, s2 froze generation 2, the live
    disk holds generation 3, the base generation 0.  Layers 0-base, 1-TOP, 2-TOP.s1 (frozen by s2), 3-TOP.s2."""
    def make(start=False):
        tag = f"{RUN_PREFIX}-gen-{uuid.uuid4().hex[:8]}"
        files = lambda n: {"data/big.bin": generation(n), "data/which.txt": f"generation {n}\n"}
        base = images.ext4(f"{tag}-base.qcow2", files(0))
        top = images.overlay(f"{tag}-top.qcow2", base, files(1))
        dom = domains.define([("vda", top, "qcow2")])
        below = str(top)
        for n, snap in ((2, "s1"), (3, "s2")):
            dom.snapshot(snap)
            new_top = dom.top("vda")
            os.unlink(new_top)
            images.overlay(new_top, below, files(n))
            below = new_top
        if start:
            dom.start()
        return dom
    return make


def image_state(dom):
    """What a refused rmdir or revert leaves as it was: state_of() and every image's header of every snapshot."""
    frozen = [run("qemu-img", "info", "-U", "--output=json", frozen_image(dom, s)).stdout for s in dom.snapshots()]
    return state_of(dom), frozen


def layer_dirs(mnt, dom):
    path = mnt / dom.name / "layers" / "vda"
    return [path / n for n in sorted(os.listdir(path), key=lambda n: int(n.split("-")[0]))]


def last_error(mnt, dom):
    return os.getxattr(mnt / dom.name, "user.snapfs.last_error").decode()


def test_rmdir_busy_while_a_file_of_the_snapshot_is_open(generations, views_mnt):
    """The issue's reproduction: rmdir of a snapshot with a file open in it is EBUSY and changes nothing; the file
    reads on; once closed, rmdir merges, and fresh lookups show the merged state.  A working directory inside the
    snapshot holds nothing: after the merge, reads through it fail with EIO."""
    import subprocess
    dom = generations()
    snap = views_mnt / dom.name / "s2"
    before = image_state(dom)
    with open(snap / "sda" / "data" / "big.bin", "rb", buffering=0) as f:
        assert f.read(4096) == generation(2)[:4096]
        assert errno_of(os.rmdir, snap) == errno.EBUSY
        assert image_state(dom) == before
        why = last_error(views_mnt, dom)
        assert "1 open in snapshot 's2'" in why, why
        assert f.read() == generation(2)[4096:]
    shell = subprocess.Popen(["sleep", "600"], cwd=snap / "sda" / "data")
    try:
        os.rmdir(snap)
        assert dom.snapshots() == ["s1"]
        assert errno_of(os.listdir, f"/proc/{shell.pid}/cwd") == errno.EIO
        assert errno_of(lambda: open(f"/proc/{shell.pid}/cwd/which.txt", "rb").read()) == errno.EIO
    finally:
        shell.kill()
        shell.wait()
    assert not os.path.exists(snap)
    layers = layer_dirs(views_mnt, dom)
    assert len(layers) == 3
    assert (layers[2] / "sda" / "data" / "big.bin").read_bytes() == generation(3)
    assert (layers[1] / "sda" / "data" / "big.bin").read_bytes() == generation(1)
    assert (views_mnt / dom.name / "s1" / "sda" / "data" / "big.bin").read_bytes() == generation(1)


def test_rmdir_busy_while_a_layer_it_merges_into_is_open(generations, views_mnt):
    """rmdir s2 merges layer 3 (its overlay, the live disk) into layer 2: a file open in layer 2, or a directory in
    layer 3, holds it off, and revert too; nothing changes.  Layers below (1, and s1 which reads it) are not
    changed by it: files open there do not hold it off, and read on after it."""
    dom = generations()
    layers = layer_dirs(views_mnt, dom)
    assert [p.name.split("-")[0] for p in layers] == ["0", "1", "2", "3"]
    before = image_state(dom)
    with open(layers[2] / "sda" / "data" / "big.bin", "rb", buffering=0) as f:
        assert f.read(4096) == generation(2)[:4096]
        assert errno_of(os.rmdir, views_mnt / dom.name / "s2") == errno.EBUSY
        assert image_state(dom) == before
        assert "1 open in layer 2" in last_error(views_mnt, dom)
        assert f.read() == generation(2)[4096:]
    fd = os.open(layers[3] / "sda" / "data", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert errno_of(os.rmdir, views_mnt / dom.name / "s2") == errno.EBUSY
        assert "1 open in layer 3" in last_error(views_mnt, dom)

        def revert():
            with open(views_mnt / dom.name / "revert", "w") as r:
                r.write("s1\n")
        assert errno_of(revert) == errno.EBUSY
        assert "cannot revert" in last_error(views_mnt, dom)
        assert image_state(dom) == before
    finally:
        os.close(fd)
    with open(layers[1] / "sda" / "data" / "big.bin", "rb", buffering=0) as below, \
            open(views_mnt / dom.name / "s1" / "sda" / "data" / "big.bin", "rb", buffering=0) as s1:
        assert below.read(4096) == generation(1)[:4096]
        assert s1.read(4096) == generation(1)[:4096]
        os.rmdir(views_mnt / dom.name / "s2")
        assert dom.snapshots() == ["s1"]
        assert below.read() == generation(1)[4096:]
        assert s1.read() == generation(1)[4096:]


def test_virsh_delete_under_an_open_file_eio(generations, views_mnt):
    """A snapshot deleted behind snapfs's back (virsh, a running domain: block commit and pivot) while a file is
    open in it and in the live layer: their next reads fail with EIO, never other bytes, and fresh lookups show
    the merged state."""
    dom = generations(start=True)
    layers = layer_dirs(views_mnt, dom)
    fd = os.open(views_mnt / dom.name / "s2" / "sda" / "data" / "big.bin", os.O_RDONLY)
    live = os.open(layers[3] / "sda" / "data" / "big.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == generation(2)[:4096]
        assert os.pread(live, 4096, 0) == generation(3)[:4096]
        virsh("snapshot-delete", dom.name, "s2", timeout=120)
        assert dom.snapshots() == ["s1"]
        assert errno_of(os.pread, fd, 65536, 3 * 1024 * 1024) == errno.EIO
        assert errno_of(os.pread, live, 65536, 3 * 1024 * 1024) == errno.EIO

        # From then on: what the kernel had cached is dropped, so that fails too, and never reads otherwise.
        def first_page(f, want):
            try:
                assert os.pread(f, 4096, 0) == want
            except OSError as e:
                return e.errno == errno.EIO
            return False
        assert wait_for(lambda: first_page(fd, generation(2)[:4096]), timeout=5)
        assert wait_for(lambda: first_page(live, generation(3)[:4096]), timeout=5)
    finally:
        os.close(fd)
        os.close(live)
    assert wait_for(lambda: not os.path.exists(views_mnt / dom.name / "s2"), timeout=3)
    layers = layer_dirs(views_mnt, dom)
    assert len(layers) == 3
    assert (layers[2] / "sda" / "data" / "big.bin").read_bytes() == generation(3)
