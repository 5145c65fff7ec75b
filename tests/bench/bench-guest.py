#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Benchmark of guest file browsing, snapfs beside guestmount on the same images: prints a markdown table.
"""Usage: bench-guest.py [--snapfs PATH] [--files N] [--rounds N] [--keep]

Builds its own images under /var/tmp (no appliance needed): an ext4 tree of N small files (default
10,000) in 100 directories, a 64 MiB file and a directory to copy; a shut-off test domain on
qemu:///system whose disk is an overlay of that image, with 5 external snapshots.  Then measures,
for snapfs and for guestmount (--ro, one mount per snapshot image):
first ls of a snapshot (from the mount command on), find | wc -l and ls -lR cold and warm, cp -r of
a directory, cat of the 64 MiB file cold and warm, browsing all 5 snapshots (guestmount: 5 mounts),
and the peak memory (RSS and PSS) of the daemon plus its appliances (qemu, qemu-storage-daemon).
With --rounds N, everything is measured N times (each time from a fresh mount) and the median is
shown: single figures vary by a third on a shared machine.  Needs root, libvirtd, guestmount.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import define_domain, descendants, is_mount, make_images, remove_domain, sh  # noqa: E402

URI = "qemu:///system"
REPO = Path(__file__).resolve().parents[2]


def timed(cmd):
    t0 = time.monotonic()
    sh(cmd)
    return time.monotonic() - t0


def memory_kib(pids):
    """RSS and PSS summed over @pids: PSS counts a page shared by several of them (libguestfs forks a
    recovery process of the daemon, for both tools) once in all, RSS once per process."""
    rss = pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def wait_alone(timeout=60):
    """Wait until no process is left below this script: a qemu of the tool measured before (guestunmount returns
    before guestmount's qemu has exited) must not count in the next tool's memory."""
    deadline = time.monotonic() + timeout
    while [p for p in descendants(os.getpid()) if p != os.getpid()] and time.monotonic() < deadline:
        time.sleep(0.1)


class PeakRSS:
    """Samples the RSS of every process below this script, every 0.2 s: the daemon and its appliances
    (guestmount daemonizes, so its qemu is an orphan: this script is their subreaper)."""

    def __init__(self):
        wait_alone()
        self.get_pids, self.peak, self.stop = (lambda: [os.getpid()]), (0, 0), False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            pids = []
            for root in self.get_pids():
                pids += descendants(root)
            pids = [p for p in pids if p != os.getpid()]
            rss, pss = memory_kib(set(pids))
            self.peak = (max(self.peak[0], rss), max(self.peak[1], pss))
            time.sleep(0.2)

    def done(self):
        self.stop = True
        self.thread.join()
        return self.peak[0] / 1024, self.peak[1] / 1024


def build(root, n_files):
    src = root / "src"
    for d in range(100):
        sub = src / "tree" / f"d{d:03}"
        sub.mkdir(parents=True)
        for i in range(n_files // 100):
            (sub / f"f{i:04}.txt").write_text(f"{d} {i}\n" * (1 + i % 50))
    copy = src / "copyme"
    copy.mkdir()
    for i in range(100):
        (copy / f"c{i:03}.bin").write_bytes(os.urandom(65536))
    with open(src / "big.bin", "wb") as f:
        f.write(os.urandom(64 << 20))
    make_images(root, src, n_files + 2000, "400M", 0o644)


def main():
    import ctypes
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)    # PR_SET_CHILD_SUBREAPER
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapfs", default=str(REPO / "build" / "snapfs"))
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("guestmount"):
        sys.exit("needs root and guestmount (libguestfs-tools)")
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    # KVM is broken on some hosts (nested): both tools then use TCG, as `snapfs --check` advises.
    if sh("snapfs_kvm=$(ls /dev/kvm 2>/dev/null); echo $snapfs_kvm", check=False).strip() == "" or \
            os.environ.get("BENCH_TCG", "1") == "1":
        os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")

    prefix = f"snapfsbench{os.getpid()}"
    root = Path("/var/tmp") / prefix
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    dom = prefix + "dom"
    mnt, gmnt = root / "mnt", root / "gmnt"
    mnt.mkdir()
    gmnt.mkdir()
    results = {}
    try:
        print(f"building images in {root} ...", file=sys.stderr)
        build(root, args.files)
        define_domain(URI, dom, root)
        frozen = []
        for k in range(1, 6):
            frozen.append(sh(f"virsh -q -c {URI} domblklist {dom} --details | awk '$3==\"vda\"{{print $4}}'").strip())
            sh(f"virsh -q -c {URI} snapshot-create-as {dom} s{k} --disk-only --atomic")

        def snapfs_mount():
            proc = subprocess.Popen([args.snapfs, "-f", "-c", URI, str(mnt)], stdout=subprocess.DEVNULL,
                                    stderr=open(root / "snapfs.log", "ab"))
            while not is_mount(mnt):
                if proc.poll() is not None:
                    raise SystemExit(f"snapfs exited: see {root}/snapfs.log")
                time.sleep(0.02)
            return proc

        def snapfs_unmount(proc):
            sh(f"fusermount3 -u {mnt}")
            proc.wait(timeout=120)

        def guestmount(image):
            sh(f"guestmount --ro --format=qcow2 -a {image} -m /dev/sda --pid-file {root}/gm.pid {gmnt}")

        def guestunmount():
            sh(f"guestunmount {gmnt}")

        def put(tool, key, value):
            results.setdefault(tool, {}).setdefault(key, []).append(value)

        def run_set(tool, start, stop, path):
            peak = PeakRSS()
            t0 = time.monotonic()
            handle = start()
            sh(f"ls {path}")
            put(tool, "first ls of a snapshot", time.monotonic() - t0)
            put(tool, "find | wc -l, cold", timed(f"find {path} | wc -l"))
            put(tool, "find | wc -l, warm", timed(f"find {path} | wc -l"))
            put(tool, "ls -lR, cold", timed(f"ls -lR {path} > /dev/null"))
            put(tool, "ls -lR, warm", timed(f"ls -lR {path} > /dev/null"))
            out = root / f"copy-{tool}"
            put(tool, "cp -r of a directory (6.4 MiB, 100 files)", timed(f"cp -r {path}/copyme {out}"))
            shutil.rmtree(out)
            put(tool, "cat of a 64 MiB file, cold", timed(f"cat {path}/big.bin > /dev/null"))
            put(tool, "cat of a 64 MiB file, warm", timed(f"cat {path}/big.bin > /dev/null"))
            stop(handle)
            rss, pss = peak.done()
            put(tool, "peak RSS (MiB), one snapshot", rss)
            put(tool, "peak PSS (MiB), one snapshot", pss)

        def five_snapshots(tool, browse):
            peak = PeakRSS()
            t0 = time.monotonic()
            browse()
            put(tool, "browse 5 snapshots (ls -lR each)", time.monotonic() - t0)
            rss, pss = peak.done()
            put(tool, "peak RSS (MiB), 5 snapshots", rss)
            put(tool, "peak PSS (MiB), 5 snapshots", pss)

        def snapfs_five():
            daemon_holder[0] = snapfs_mount()
            for k in range(1, 6):
                sh(f"ls -lR {mnt / dom / f's{k}' / 'sda'} > /dev/null")
            snapfs_unmount(daemon_holder[0])
            daemon_holder[0] = None

        def guestmount_five():
            for k in range(5):
                guestmount(frozen[k])
                sh(f"ls -lR {gmnt} > /dev/null")
                guestunmount()

        for rnd in range(args.rounds):
            print(f"round {rnd + 1}: snapfs ...", file=sys.stderr)
            run_set("snapfs", lambda: (daemon_holder.__setitem__(0, snapfs_mount()), daemon_holder[0])[1],
                    snapfs_unmount, mnt / dom / "s1" / "sda")
            print(f"round {rnd + 1}: guestmount ...", file=sys.stderr)
            run_set("guestmount", lambda: guestmount(frozen[0]), lambda _: guestunmount(), gmnt)
            # Five snapshots of one domain, each listed in full (guestmount: one mount after the other).
            print(f"round {rnd + 1}: 5 snapshots ...", file=sys.stderr)
            five_snapshots("snapfs", snapfs_five)
            five_snapshots("guestmount", guestmount_five)
    finally:
        if daemon_holder[0] is not None and is_mount(mnt):
            sh(f"fusermount3 -u {mnt}", check=False)
        if is_mount(gmnt):
            sh(f"guestunmount {gmnt}", check=False)
        remove_domain(URI, dom, root, args.keep)

    print(f"| {args.files} files, TCG={os.environ.get('LIBGUESTFS_BACKEND_SETTINGS', '') == 'force_tcg'}, "
          f"median of {args.rounds} | snapfs | guestmount | guestmount / snapfs |")
    print("|---|---:|---:|---:|")
    for key in results["snapfs"]:
        a, b = statistics.median(results["snapfs"][key]), statistics.median(results["guestmount"][key])
        unit = "" if key.startswith("peak") else " s"
        ratio = f"{b / a:.1f}x" if b and a > 0 else "-"
        label = key.replace("|", "\\|")     # a markdown table cell
        print(f"| {label} | {a:.2f}{unit} | {b:.2f}{unit} | {ratio} |")
    if args.rounds > 1:
        print("\nEvery round (snapfs / guestmount):", file=sys.stderr)
        for key in results["snapfs"]:
            print(f"  {key}: " + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in
                                         zip(results["snapfs"][key], results["guestmount"][key])), file=sys.stderr)


daemon_holder = [None]

if __name__ == "__main__":
    main()
