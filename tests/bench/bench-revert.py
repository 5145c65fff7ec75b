#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Times snapfs's revert of a shut-off domain with a 3-deep external chain beside libvirt's own revert of an internal snapshot.
"""
Usage (as root, libvirtd running; builds its own images under /var/tmp, removes them after):
    /usr/bin/python3 tests/bench/bench-revert.py [--rounds N] [--mount MOUNTPOINT]
Needs revert-cli from a build (meson setup build && ninja -C build), found as in tests/revert.
With --mount, also times `echo NAME > MOUNTPOINT/DOMAIN/revert` through a running snapfs
mounted on qemu:///system.
"""
import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "revert"))
from revertlib import PREFIX, URI, Domain, built, run, virsh  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(samples):
    return f"{statistics.median(samples) * 1000:7.0f} ms median, {max(samples) * 1000:5.0f} ms max (n={len(samples)})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mount")
    args = parser.parse_args()
    cli = built("revert-cli")
    root = Path("/var/tmp") / (PREFIX + "-bench")
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    doms = []
    results = []
    try:
        # External: template <- r1 <- s2 <- s3 <- live, writes in every layer.
        ext = Domain(root, PREFIX + "-ext", ndisks=1)
        doms.append(ext)
        for i, snap in enumerate(["r1", "s2", "s3"]):
            ext.write(i + 1)
            ext.snapshot(snap)
        ext.write(4)

        def revert(target, keep=True):
            def go():
                proc = run(cli, URI, ext.state, "write", ext.name, target + "\n", check=False,
                           env={"REVERT_KEEP": "on" if keep else "off"})
                assert proc.returncode == 0, proc.stderr
            return go

        # Each round leaves state behind (a write), so every revert keeps a pre-revert snapshot.
        keep_times, plain_times = [], []
        for i in range(args.rounds):
            ext.write(5)
            keep_times.append(timed(revert(["r1", "s2", "s3"][i % 3])))
        for i in range(args.rounds):
            plain_times.append(timed(revert(["s2", "r1", "s3"][i % 3], keep=False)))
        results.append(("snapfs revert, external 3-deep chain, keeping pre-revert", keep_times))
        results.append(("snapfs revert, external 3-deep chain, revert_keep=off", plain_times))

        if args.mount:
            mount_times = []
            for i in range(args.rounds):
                ext.write(6)
                target = ["r1", "s2", "s3"][i % 3]
                path = Path(args.mount) / ext.name / "revert"
                mount_times.append(timed(lambda: path.write_text(target + "\n")))
            results.append(("echo NAME > DOMAIN/revert through the mount", mount_times))

        # Internal: libvirt's own revert (virsh) and snapfs's (which calls it, after keeping the state).
        intl = Domain(root, PREFIX + "-int", ndisks=1)
        doms.append(intl)
        intl.write(1)
        intl.snapshot("i1", internal=True)
        virsh_times, snapfs_int = [], []
        for _ in range(args.rounds):
            intl.write(2)
            virsh_times.append(timed(lambda: virsh("snapshot-revert", intl.name, "i1")))
        for _ in range(args.rounds):
            intl.write(2)
            snapfs_int.append(timed(lambda: run(cli, URI, intl.state, "write", intl.name, "i1\n",
                                                env={"REVERT_KEEP": "off"})))
        snapfs_int_keep = []
        for _ in range(args.rounds):
            intl.write(2)
            snapfs_int_keep.append(timed(lambda: run(cli, URI, intl.state, "write", intl.name, "i1\n")))
        results.append(("virsh snapshot-revert, internal snapshot", virsh_times))
        results.append(("snapfs revert, internal snapshot, revert_keep=off", snapfs_int))
        results.append(("snapfs revert, internal snapshot, keeping pre-revert", snapfs_int_keep))
    finally:
        for dom in doms:
            dom.remove()
        shutil.rmtree(root, ignore_errors=True)

    print(f"revert benchmark ({URI}, {time.strftime('%Y-%m-%d')}); each row a whole process, connection included")
    for label, samples in results:
        print(f"  {label:60s} {summary(samples)}")


if __name__ == "__main__":
    main()
