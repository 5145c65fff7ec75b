#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Benchmark of guest file browsing, snapfs beside guestmount on the same images: prints a markdown table.
"""Usage: bench-guest.py [--snapfs PATH] [--files N] [--snapshots N[,N...]] [--rounds N] [--keep]

Builds its own images under /var/tmp (no appliance needed): an ext4 tree of N small files (default
10,000) in 100 directories, a 64 MiB file and a directory to copy; for each count of --snapshots
(default 1,5,30) a shut-off test domain on qemu:///system whose disk is an overlay of that image,
with that many external snapshots (libvirt's, sharing the content).  Then measures, for snapfs and
for guestmount (--ro, one mount per snapshot image), on a fresh mount each: the first ls of the
newest snapshot (from the mount command on), then the first ls of the oldest one, find | wc -l cold
and warm, and the peak memory (RSS and PSS) of the daemon plus its appliances (qemu,
qemu-storage-daemon) while browsing 5 snapshots (ls -lR each; guestmount: 5 mounts one after the
other).  With --rounds N, everything is measured N times and the median is shown: single figures
vary by a third on a shared machine.  Needs root, libvirtd, guestmount.
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
        reap()
        time.sleep(0.1)


def reap():
    """Collect the exit of orphans this script inherited as their subreaper (guestmount's daemon and qemu): as
    zombies they would stay below it for ever."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


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
    ap.add_argument("--snapshots", default="1,5,30", help="counts of snapshots, one domain each (default 1,5,30)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    counts = [int(n) for n in args.snapshots.split(",")]
    if os.geteuid() != 0 or not shutil.which("guestmount"):
        sys.exit("needs root and guestmount (libguestfs-tools)")
    if min(counts) < 1:
        sys.exit("--snapshots: at least 1")
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    # KVM is broken on some hosts (nested): both tools then use TCG, as `snapfs --check` advises.
    if sh("snapfs_kvm=$(ls /dev/kvm 2>/dev/null); echo $snapfs_kvm", check=False).strip() == "" or \
            os.environ.get("BENCH_TCG", "1") == "1":
        os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")

    prefix = f"snapfsbench{os.getpid()}"
    root = Path("/var/tmp") / prefix
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    mnt, gmnt = root / "mnt", root / "gmnt"
    mnt.mkdir()
    gmnt.mkdir()
    results = {}
    doms = []
    try:
        print(f"building images in {root} ...", file=sys.stderr)
        build(root, args.files)
        base_top = root / "top.qcow2"

        def snapfs_mount():
            proc = subprocess.Popen([args.snapfs, "-f", "-c", URI, str(mnt)], stdout=subprocess.DEVNULL,
                                    stderr=open(root / "snapfs.log", "ab"))
            while not is_mount(mnt):
                if proc.poll() is not None:
                    raise SystemExit(f"snapfs exited: see {root}/snapfs.log")
                time.sleep(0.02)
            daemon_holder[0] = proc
            return proc

        def snapfs_unmount(proc):
            sh(f"fusermount3 -u {mnt}")
            proc.wait(timeout=120)
            daemon_holder[0] = None

        def guestmount(image):
            sh(f"guestmount --ro --format=qcow2 -a {image} -m /dev/sda --pid-file {root}/gm.pid {gmnt}")

        def guestunmount():
            sh(f"guestunmount {gmnt}")

        def put(n, tool, key, value):
            results.setdefault(n, {}).setdefault(tool, {}).setdefault(key, []).append(value)

        def measure(n, tool, first, second, mount_one, unmount_one, browse):
            """@first, @second: paths of the newest and the oldest snapshot; @mount_one(path) makes @path
            readable (guestmount mounts its image), @browse lists 5 snapshots in full."""
            peak = PeakRSS()
            t0 = time.monotonic()
            handle = mount_one(first)
            sh(f"ls {first}")
            put(n, tool, "first ls of the newest snapshot", time.monotonic() - t0)
            t0 = time.monotonic()
            handle = mount_one(second, handle)
            sh(f"ls {second}")
            put(n, tool, "then first ls of the oldest snapshot", time.monotonic() - t0)
            put(n, tool, "find \\| wc -l of it, cold", timed(f"find {second} | wc -l"))
            put(n, tool, "find \\| wc -l of it, warm", timed(f"find {second} | wc -l"))
            unmount_one(handle)
            rss, pss = peak.done()
            put(n, tool, "peak RSS (MiB), the above", rss)
            put(n, tool, "peak PSS (MiB), the above", pss)
            peak = PeakRSS()
            t0 = time.monotonic()
            browse()
            put(n, tool, f"browse {min(n, 5)} snapshot(s), ls -lR each", time.monotonic() - t0)
            rss, pss = peak.done()
            put(n, tool, f"peak RSS (MiB), browsing {min(n, 5)}", rss)
            put(n, tool, f"peak PSS (MiB), browsing {min(n, 5)}", pss)

        for n in counts:
            dom = f"{prefix}n{n}"
            ddir = root / f"n{n}"
            ddir.mkdir()
            shutil.copy(base_top, ddir / "top.qcow2")
            sh(f"qemu-img rebase -q -u -f qcow2 -F qcow2 -b {root}/base.qcow2 {ddir}/top.qcow2")
            define_domain(URI, dom, ddir)
            doms.append((dom, ddir))
            frozen = []
            for k in range(1, n + 1):
                frozen.append(sh(f"virsh -q -c {URI} domblklist {dom} --details | awk '$3==\"vda\"{{print $4}}'").strip())
                sh(f"virsh -q -c {URI} snapshot-create-as {dom} s{k} --disk-only --atomic")
            newest, oldest = f"s{n}", "s1"
            # Five snapshots spread over the domain's: the newest, the oldest and three between.
            picks = sorted({1, n, *(1 + (n - 1) * j // 4 for j in range(1, 4))})[:5]

            def snapfs_one(path, handle=None):
                return handle or snapfs_mount()

            def snapfs_browse():
                proc = snapfs_mount()
                for k in picks:
                    sh(f"ls -lR {mnt / dom / f's{k}' / 'sda'} > /dev/null")
                snapfs_unmount(proc)

            def gm_one(path, handle=None):
                if handle:
                    guestunmount()
                guestmount(frozen[n - 1] if path == "newest" else frozen[0])
                return True

            def gm_browse():
                for k in picks:
                    guestmount(frozen[k - 1])
                    sh(f"ls -lR {gmnt} > /dev/null")
                    guestunmount()

            for rnd in range(args.rounds):
                print(f"{n} snapshots, round {rnd + 1}: snapfs ...", file=sys.stderr)
                measure(n, "snapfs", mnt / dom / newest / "sda", mnt / dom / oldest / "sda", snapfs_one,
                        snapfs_unmount, snapfs_browse)
                print(f"{n} snapshots, round {rnd + 1}: guestmount ...", file=sys.stderr)
                # guestmount's paths name which image to mount; each is then read at gmnt.
                gm_paths = {"newest": gmnt, "oldest": gmnt}
                peak = PeakRSS()
                t0 = time.monotonic()
                gm_one("newest")
                sh(f"ls {gm_paths['newest']}")
                put(n, "guestmount", "first ls of the newest snapshot", time.monotonic() - t0)
                t0 = time.monotonic()
                gm_one("oldest", True)
                sh(f"ls {gmnt}")
                put(n, "guestmount", "then first ls of the oldest snapshot", time.monotonic() - t0)
                put(n, "guestmount", "find \\| wc -l of it, cold", timed(f"find {gmnt} | wc -l"))
                put(n, "guestmount", "find \\| wc -l of it, warm", timed(f"find {gmnt} | wc -l"))
                guestunmount()
                rss, pss = peak.done()
                put(n, "guestmount", "peak RSS (MiB), the above", rss)
                put(n, "guestmount", "peak PSS (MiB), the above", pss)
                peak = PeakRSS()
                t0 = time.monotonic()
                gm_browse()
                put(n, "guestmount", f"browse {min(n, 5)} snapshot(s), ls -lR each", time.monotonic() - t0)
                rss, pss = peak.done()
                put(n, "guestmount", f"peak RSS (MiB), browsing {min(n, 5)}", rss)
                put(n, "guestmount", f"peak PSS (MiB), browsing {min(n, 5)}", pss)
            print_table(results, n, args.files, args.rounds)
    finally:
        if daemon_holder[0] is not None and is_mount(mnt):
            sh(f"fusermount3 -u {mnt}", check=False)
        if is_mount(gmnt):
            sh(f"guestunmount {gmnt}", check=False)
        for dom, _ in doms:
            remove_domain(URI, dom, root, True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def print_table(results, n, files, rounds):
    tcg = os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "") == "force_tcg"
    if n in results:
        print(f"\n| {n} snapshot(s), {files} files, TCG={tcg}, median of {rounds} | snapfs | guestmount |")
        print("|---|---:|---:|")
        for key in results[n]["snapfs"]:
            a, b = statistics.median(results[n]["snapfs"][key]), statistics.median(results[n]["guestmount"][key])
            unit = "" if key.startswith("peak") else " s"
            print(f"| {key} | {a:.2f}{unit} | {b:.2f}{unit} |", flush=True)
        if rounds > 1:
            print("\nEvery round (snapfs / guestmount):", file=sys.stderr)
            for key in results[n]["snapfs"]:
                print(f"  {key}: " + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in
                                             zip(results[n]["snapfs"][key], results[n]["guestmount"][key])),
                      file=sys.stderr)


daemon_holder = [None]

if __name__ == "__main__":
    main()
