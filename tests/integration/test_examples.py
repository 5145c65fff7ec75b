# SPDX-License-Identifier: GPL-2.0-or-later
# The README's demo (examples/demo.sh) and the example scripts run against it, in a directory of this test run.
import os
import time

import pytest

from conftest import IMAGE_ROOT, REPO, is_mount, run, snapfs_bin

EXAMPLES = REPO / "examples"


def xattr(path, name):
    return os.getxattr(path, "user.snapfs." + name).decode()


@pytest.fixture(scope="module")
def demo_mount(libvirtd, run_prefix):
    """examples/demo.sh with its directories moved under this run's, no apt-get, the build under test."""
    env = {"SNAPFS_DEMO_DIR": str(IMAGE_ROOT / "demo"), "SNAPFS_DEMO_MOUNT": str(IMAGE_ROOT / "demo-mnt"),
           "SNAPFS_SKIP_APT": "1", "SNAPFS_BUILD": os.path.dirname(os.path.abspath(snapfs_bin()))}
    proc = run(EXAMPLES / "demo.sh", env=env, check=False, timeout=600)
    try:
        assert proc.returncode == 0, f"demo.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert is_mount(env["SNAPFS_DEMO_MOUNT"])
        assert "fusermount3 -u" in proc.stdout
        yield env["SNAPFS_DEMO_MOUNT"], env
    finally:
        clean = run(EXAMPLES / "demo.sh", "--clean", env=env, check=False, timeout=180)
        assert clean.returncode == 0, clean.stderr
        assert "warning" not in clean.stderr, clean.stderr
        assert not is_mount(env["SNAPFS_DEMO_MOUNT"])
        assert not os.path.exists(env["SNAPFS_DEMO_DIR"])


def test_demo_tree(demo_mount):
    mnt, env = demo_mount
    assert sorted(os.listdir(mnt)) == ["db01", "scratch", "web01"]
    assert sorted(os.listdir(os.path.join(mnt, "web01"))) == \
        ["after-upgrade", "before-upgrade", "layers", "live", "nightly-2026-11-24", "revert"]
    assert sorted(os.listdir(os.path.join(mnt, "db01"))) == ["initial-load", "layers", "live", "revert", "with-orders"]
    layers = sorted(os.listdir(os.path.join(mnt, "web01", "layers", "vda")))
    assert layers == ["0-demo-template.qcow2", "1-web01.qcow2", "2-web01.before-upgrade",
                      "3-web01.after-upgrade", "4-web01.nightly-2026-11-24"]
    assert xattr(os.path.join(mnt, "web01", "layers", "vda", layers[1]), "snapshot") == "before-upgrade"
    assert xattr(os.path.join(mnt, "web01", "after-upgrade"), "parent") == "before-upgrade"
    assert xattr(os.path.join(mnt, "db01", "with-orders"), "kind") == "internal"
    with open(os.path.join(mnt, "web01", "revert")) as f:
        assert f.read().strip() == "nightly-2026-11-24"


def test_demo_runs_twice(demo_mount):
    """Idempotent: a second run unmounts, starts over and mounts again."""
    mnt, env = demo_mount
    os.mkdir(os.path.join(mnt, "scratch", "extra"))
    proc = run(EXAMPLES / "demo.sh", env=env, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning" not in proc.stderr, proc.stderr[-3000:]
    assert is_mount(mnt)
    assert sorted(os.listdir(os.path.join(mnt, "scratch"))) == ["layers", "live", "revert"]


def test_rotate(demo_mount):
    mnt, _ = demo_mount
    dom = os.path.join(mnt, "scratch")
    made = []
    for _ in range(3):
        proc = run(EXAMPLES / "snapfs-rotate.sh", "--keep", "2", dom)
        made.append(os.path.basename(proc.stdout.splitlines()[0]))
        time.sleep(1.1)         # the names have a resolution of one second
    nightly = sorted(n for n in os.listdir(dom) if n.startswith("nightly-"))
    assert nightly == made[1:], (nightly, made)
    assert "removed" in proc.stdout
    # other snapshots are never touched
    os.mkdir(os.path.join(dom, "keep-me"))
    run(EXAMPLES / "snapfs-rotate.sh", "--keep", "1", dom)
    names = os.listdir(dom)
    assert "keep-me" in names and len([n for n in names if n.startswith("nightly-")]) == 1
    assert run(EXAMPLES / "snapfs-rotate.sh", "--keep", "0", dom, check=False).returncode == 2
    assert run(EXAMPLES / "snapfs-rotate.sh", "--keep", "2", os.path.join(mnt, "web01", "layers"),
               check=False).returncode == 1


def test_demo_guest_roots(demo_mount):
    """The demo's disks hold an OS libguestfs inspects: every snapshot and layer is the guest's root."""
    mnt, _ = demo_mount
    web = os.path.join(mnt, "web01")
    dirs = [os.path.join(web, s) for s in ("before-upgrade", "after-upgrade", "nightly-2026-11-24")]
    dirs += [os.path.join(web, "layers", "vda", l) for l in sorted(os.listdir(os.path.join(web, "layers", "vda")))]
    dirs += [os.path.join(mnt, "db01", s) for s in ("initial-load", "with-orders")]
    wrong = {d[len(mnt):]: sorted(os.listdir(d)) for d in dirs if "etc" not in os.listdir(d)}
    assert not wrong, f"not shown as the guest's root: {wrong}"
    hostnames = {d[len(mnt):]: open(os.path.join(d, "etc", "hostname")).read().strip() for d in dirs}
    assert hostnames["/web01/layers/vda/0-demo-template.qcow2"] == "template"
    assert {v for k, v in hostnames.items() if k.startswith("/web01/") and "template" not in k} == {"web01"}
    with open(os.path.join(mnt, "db01", "initial-load", "srv", "db", "tables.txt")) as f:
        assert f.read() == "users\n"
    with open(os.path.join(mnt, "db01", "with-orders", "srv", "db", "tables.txt")) as f:
        assert f.read() == "users orders\n"
    # Their fstab names the root by LABEL: snapfs read it, and libguestfs never inspected all the disks.
    assert xattr(mnt, "inspections") == "0"


def test_file_history(demo_mount):
    mnt, _ = demo_mount
    web = os.path.join(mnt, "web01")

    def last(path):
        proc = run(EXAMPLES / "snapfs-file-history.sh", web, path, check=False)
        return proc.returncode, proc.stdout.strip().splitlines()[-1]

    assert last("var/www/index.html") == (0, "/var/www/index.html last changed in nightly-2026-11-24")
    assert last("etc/hostname") == (0, "/etc/hostname last changed in before-upgrade")
    assert last("etc/nginx/nginx.conf") == (0, "/etc/nginx/nginx.conf is absent in nightly-2026-11-24; "
                                               "it was removed in nightly-2026-11-24")
    assert last("home/alice/notes.txt") == (0, "/home/alice/notes.txt last changed in nightly-2026-11-24")
    assert last("no/such/file")[0] == 1
