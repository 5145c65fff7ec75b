#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Benchmark of restoring a tree into a shut-off domain: cp -a into snapfs's live/ beside virt-copy-in and guestfish.
"""Usage: bench-restore.py [--snapfs PATH] [--files N] [--mib N] [--rounds N] [--keep]

Builds a host tree of N files (default 1,000) holding M MiB in all (default 100) in 10 folders, and a
shut-off test domain on qemu:///system whose disk is an overlay on a minimal Debian root.  Then copies the tree
into the disk's filesystem, on fresh images each time, with:
  snapfs        cp -a into DOMAIN/live/ of a fresh mount (the pre-restore snapshot and the
                writer's appliance start included), then until the writer let go of the image;
  virt-copy-in  virt-copy-in -a TOP (one appliance start included);
  guestfish     guestfish -a TOP -m /dev/sda copy-in (the same).
The median of --rounds runs is shown.  Needs root, libvirtd, libguestfs-tools.  libguestfs's own
tools run with force_tcg (this machine's /dev/kvm may be broken; snapfs copes with it by itself).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import define_domain, is_mount, make_images, remove_domain, sh  # noqa: E402

URI = "qemu:///system"
REPO = Path(__file__).resolve().parents[2]
TCG = dict(os.environ, LIBGUESTFS_BACKEND="direct", LIBGUESTFS_BACKEND_SETTINGS="force_tcg")


def build_tree(src, files, mib):
    """@files files of @mib MiB in all, in 10 folders, with modes and owners that cp -a keeps."""
    shutil.rmtree(src, ignore_errors=True)
    size = mib * (1 << 20) // files
    for i in range(files):
        folder = src / f"d{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"f{i}"
        path.write_bytes(os.urandom(size))
        os.chown(path, 1000 + i % 3, 1000)


def fresh_images(root):
    """A 1 GiB ext4 base holding a minimal Debian as libguestfs inspection knows one (virt-copy-in needs it), and an
    empty overlay on it."""
    os_tree = root / "os"
    shutil.rmtree(os_tree, ignore_errors=True)
    for d in ("etc", "bin", "usr/bin"):
        (os_tree / d).mkdir(parents=True)
    (os_tree / "etc" / "fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    (os_tree / "etc" / "os-release").write_text('NAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n')
    (os_tree / "etc" / "debian_version").write_text("12.0\n")
    (os_tree / "etc" / "hostname").write_text("bench\n")
    shutil.copy("/bin/true", os_tree / "bin" / "ls")
    shutil.copy("/bin/true", os_tree / "usr" / "bin" / "true")
    for f in root.iterdir():
        if f.is_file():
            f.unlink()   # the images, and the overlays a pre-restore snapshot made
    make_images(root, os_tree, 65536, "1G", 0o600)


def released(image):
    return subprocess.run(["qemu-img", "info", str(image)], capture_output=True).returncode == 0


def run_snapfs(args, root, dom, src):
    """Seconds for cp -a, and until the image is let go after it."""
    mnt = root / "mnt"
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen([args.snapfs, "-f", "-c", URI, "-o", f"state_dir={root}/state", str(mnt)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not is_mount(mnt):
            time.sleep(0.05)
        target = mnt / dom / "live"   # the guest's root: inspection finds the OS
        t0 = time.monotonic()
        sh(f"cp -a {src} {target}/")
        copied = time.monotonic() - t0
        top = sh(f"virsh -q -c {URI} domblklist {dom}").split()[-1]
        while not released(top):
            time.sleep(0.1)
        return copied, time.monotonic() - t0
    finally:
        sh(f"fusermount3 -u {mnt}", check=False)
        proc.wait()


def timed(cmd):
    t0 = time.monotonic()
    proc = subprocess.run(cmd, shell=True, env=TCG, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {cmd}\n{proc.stderr}")
    return time.monotonic() - t0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--snapfs", default=str(REPO / "build" / "snapfs"))
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    root = Path("/var/tmp/snapfs-bench-restore")
    root.mkdir(parents=True, exist_ok=True)
    src = root / "tree"
    build_tree(src, args.files, args.mib)
    dom = "snapfs-bench-restore"
    results = {"snapfs cp -a into live/": [], "snapfs, until the image is let go": [], "virt-copy-in": [],
               "guestfish copy-in": []}
    try:
        for _ in range(args.rounds):
            remove_domain(URI, dom, root, keep=True)
            fresh_images(root)
            define_domain(URI, dom, root)
            copied, released_after = run_snapfs(args, root, dom, src)
            results["snapfs cp -a into live/"].append(copied)
            results["snapfs, until the image is let go"].append(released_after)
            fresh_images(root)
            results["virt-copy-in"].append(timed(f"virt-copy-in --format=qcow2 -a {root}/top.qcow2 {src} /"))
            fresh_images(root)
            results["guestfish copy-in"].append(
                timed(f"guestfish --format=qcow2 -a {root}/top.qcow2 -m /dev/sda copy-in {src} /"))
    finally:
        remove_domain(URI, dom, root, keep=args.keep)

    print(f"Restoring {args.files} files, {args.mib} MiB, into a shut-off domain's ext4 disk "
          f"(median of {args.rounds}, seconds)\n")
    print("| tool | seconds |")
    print("|---|---:|")
    for tool, samples in results.items():
        print(f"| {tool} | {statistics.median(samples):.1f} |")


if __name__ == "__main__":
    main()
