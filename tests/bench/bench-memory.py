#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Benchmark of snapfs's memory bound: peak RSS while walking a large guest tree in three snapshots, per cache_size.
"""Usage: bench-memory.py [--snapfs PATH] [--files N] [--sizes DEFAULT,16,...] [--keep]

Builds its own image under /var/tmp without an appliance (mkfs.ext4 -d of a tree of N empty and small
files, default 200,000, in folders of 2,000, then qemu-img convert to qcow2), a shut-off test domain on
qemu:///system (type qemu, no NIC, no graphics) whose disk is an overlay of it, and three external
disk-only snapshots.  For each cache bound (-o cache_size=MiB; "default" for none given), it mounts
snapfs, walks each snapshot with `find -ls` (a lookup and a stat of every file), and prints, as a
markdown table, the peak RSS (VmHWM) of the snapfs process and, separately, of the appliance's qemu,
with the time of the walk, the files seen and the appliance calls.  Then removes everything.  Needs
root and libvirtd.  Use a build without ASan: it inflates RSS several times.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import define_domain, descendants, is_mount, make_images, remove_domain, sh  # noqa: E402

URI = "qemu:///system"
REPO = Path(__file__).resolve().parents[2]
PER_DIR = 2000


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def qemu_pids(pid):
    out = []
    for p in descendants(pid):
        try:
            if Path(f"/proc/{p}/comm").read_text().strip().startswith("qemu-system"):
                out.append(p)
        except OSError:
            pass
    return out


def build(root, n_files):
    """A tree of @n_files files in folders of PER_DIR, two levels deep, with names of typical length."""
    src = root / "src"
    made = 0
    d = 0
    while made < n_files:
        sub = src / f"group-{d // 20:03}" / f"package-{d:04}-files"
        sub.mkdir(parents=True)
        for i in range(min(PER_DIR, n_files - made)):
            path = sub / f"module_{i:04}_implementation.py"
            if i % 10 == 0:
                path.write_text(f"# {d} {i}\n")
            else:
                path.touch()
        made += PER_DIR
        d += 1
    make_images(root, src, n_files + 10000, "2G", 0o600)
    shutil.rmtree(src)


def root_xattr(mnt, name):
    try:
        return os.getxattr(mnt, name).decode()
    except OSError:
        return "?"


def measure(args, root, dom, size):
    mnt = root / "mnt"
    cmd = [args.snapfs, "-f", "-c", URI, str(mnt)]
    if size != "default":
        cmd[1:1] = ["-o", f"cache_size={size}"]
    log = open(root / f"snapfs-{size}.log", "ab")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    while not is_mount(mnt):
        if proc.poll() is not None:
            raise SystemExit(f"snapfs exited: see {root}/snapfs-{size}.log")
        time.sleep(0.02)
    qemu_peak, files = {}, 0
    t0 = time.monotonic()
    try:
        for k in range(1, 4):
            walk = subprocess.Popen(f"find {mnt}/{dom}/s{k}/sda -ls | wc -l", shell=True, stdout=subprocess.PIPE,
                                    text=True)
            # qemu's VmHWM is read while it runs: it exits with the unmount.
            while walk.poll() is None:
                for q in qemu_pids(proc.pid):
                    qemu_peak[q] = max(qemu_peak.get(q, 0), status_kib(q, "VmHWM"))
                time.sleep(0.5)
            files += int(walk.stdout.read().strip() or 0)
        elapsed = time.monotonic() - t0
        calls = root_xattr(mnt, "user.snapfs.appliance_calls")
        hwm = status_kib(proc.pid, "VmHWM")
        rss = status_kib(proc.pid, "VmRSS")
    finally:
        sh(f"fusermount3 -u {mnt}", check=False)
        proc.wait(timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"snapfs exited with status {proc.returncode}: see {root}/snapfs-{size}.log")
    return {"size": size, "hwm": hwm / 1024, "rss": rss / 1024, "qemu": max(qemu_peak.values(), default=0) / 1024,
            "time": elapsed, "files": files, "calls": calls}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapfs", default=str(REPO / "build" / "snapfs"))
    ap.add_argument("--files", type=int, default=200000)
    ap.add_argument("--sizes", default="default,16")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or os.environ.get("BENCH_TCG", "1") == "1":
        os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")

    prefix = f"snapfsmem{os.getpid()}"
    root = Path("/var/tmp") / prefix
    root.mkdir(mode=0o755)
    (root / "mnt").mkdir()
    dom = prefix + "dom"
    results = []
    try:
        print(f"building {args.files} files in {root} ...", file=sys.stderr)
        t0 = time.monotonic()
        build(root, args.files)
        print(f"built in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        define_domain(URI, dom, root)
        for k in range(1, 4):
            sh(f"virsh -q -c {URI} snapshot-create-as {dom} s{k} --disk-only --atomic")
        for size in args.sizes.split(","):
            print(f"cache_size={size}: walking 3 snapshots ...", file=sys.stderr)
            results.append(measure(args, root, dom, size))
            print(f"  {results[-1]}", file=sys.stderr)
    finally:
        if is_mount(root / "mnt"):
            sh(f"fusermount3 -u {root / 'mnt'}", check=False)
        remove_domain(URI, dom, root, args.keep)

    print(f"| {args.files} files x 3 snapshots, find -ls | snapfs peak RSS (VmHWM) | snapfs RSS at the end "
          f"| appliance qemu peak RSS | walk | entries seen | appliance calls |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        label = "default (256 MiB)" if r["size"] == "default" else f"{r['size']} MiB"
        print(f"| cache_size {label} | {r['hwm']:.0f} MiB | {r['rss']:.0f} MiB | {r['qemu']:.0f} MiB "
              f"| {r['time']:.0f} s | {r['files']} | {r['calls']} |")


if __name__ == "__main__":
    main()
