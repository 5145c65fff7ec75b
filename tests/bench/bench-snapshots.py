#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Times snapfs's snapshot create and delete beside virsh's on the same domain, shut off and running.
"""
Usage (as root, libvirtd running):
    tests/bench/bench-snapshots.py [--engine-cli build/tests/engine-cli] [--mount MOUNTPOINT] [--rounds N]

Builds its own small domain (qcow2 over a template, no OS: TCG idles in the firmware),
then, for the domain shut off and running, N rounds of each of:
  virsh snapshot-create-as D NAME --disk-only --atomic   vs  engine create (and mkdir MOUNT/D/NAME)
  virsh snapshot-delete D NAME (leaf and middle)          vs  engine delete (and rmdir MOUNT/D/NAME)
and prints the median wall time of each with snapfs's overhead in percent.
With --mount, the mount must show the libvirt of qemu:///system (its root holds the domains).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

URI = "qemu:///system"


def sh(*args, check=True):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))}: {proc.stderr.strip()}")
    return proc


def virsh(*args, check=True):
    return sh("virsh", "-q", "-c", URI, *args, check=check)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_domain(root, name):
    tree = root / "tree"
    tree.mkdir()
    (tree / "hello.txt").write_text("hello\n")
    sh("mkfs.ext4", "-q", "-d", tree, root / "base.raw", "64M")
    sh("qemu-img", "convert", "-O", "qcow2", root / "base.raw", root / "base.qcow2")
    (root / "base.raw").unlink()
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", root / "base.qcow2", root / "vm.qcow2")
    for f in root.iterdir():
        f.chmod(0o644 if f.is_file() else 0o755)
    xml = root / "domain.xml"
    xml.write_text(f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>96</memory><vcpu>1</vcpu>
        <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
        <source file='{root}/vm.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>""")
    virsh("define", xml)


def spell_out_chain(name):
    """What libvirt 9.0 needs before virsh can delete a shut-off domain's middle snapshot."""
    import json
    import xml.etree.ElementTree as ET
    dom = ET.fromstring(virsh("dumpxml", "--inactive", name).stdout)
    disk = dom.find("devices/disk")
    for old in disk.findall("backingStore"):
        disk.remove(old)
    top = disk.find("source").get("file")
    chain = json.loads(sh("qemu-img", "info", "-U", "--backing-chain", "--output=json", top).stdout)
    parent = disk
    index = list(disk).index(disk.find("source")) + 1
    for layer in chain[1:]:
        bs = ET.Element("backingStore", type="file")
        ET.SubElement(bs, "format", type=layer["format"])
        ET.SubElement(bs, "source", file=layer["filename"])
        if parent is disk:
            disk.insert(index, bs)
        else:
            parent.append(bs)
        parent = bs
    parent.append(ET.Element("backingStore"))
    path = Path("/tmp") / f"{name}-spelled.xml"
    path.write_text(ET.tostring(dom, encoding="unicode"))
    virsh("define", path)
    path.unlink()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = Path(__file__).resolve().parents[2]
    default_cli = next(iter(sorted(repo.glob("build*/tests/engine-cli"))), None)
    ap.add_argument("--engine-cli", default=default_cli)
    ap.add_argument("--mount", help="a snapfs mount of qemu:///system, to time mkdir/rmdir through FUSE too")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if not args.engine_cli or not os.path.exists(args.engine_cli):
        sys.exit("engine-cli not found: build first (ninja -C build) or pass --engine-cli")

    name = "snapfs-bench-" + uuid.uuid4().hex[:6]
    root = Path("/var/tmp") / name
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    results = []
    try:
        make_domain(root, name)
        for state in ("shutoff", "running"):
            if state == "running":
                virsh("start", name)
            times = {}

            def add(key, seconds):
                times.setdefault(key, []).append(seconds)

            # Each round: three snapshots a, b, c by one tool, then delete b (a middle one) and c (the leaf).
            tools = [("virsh", None), ("engine", None)] + ([("mount", None)] if args.mount else [])
            for r in range(args.rounds):
                for tool, _ in tools:
                    names = [f"{tool}{r}{x}" for x in "abc"]
                    for snap in names:
                        if tool == "virsh":
                            t = timed(lambda: virsh("snapshot-create-as", name, snap, "--disk-only", "--atomic"))
                        elif tool == "engine":
                            t = timed(lambda: sh(args.engine_cli, URI, "create", name, snap, "off"))
                        else:
                            t = timed(lambda: os.mkdir(os.path.join(args.mount, name, snap)))
                        add((tool, "create"), t)
                    for snap, kind in ((names[1], "delete middle"), (names[2], "delete leaf"),
                                       (names[0], "delete leaf")):
                        if tool == "virsh":
                            if state == "shutoff":
                                spell_out_chain(name)   # virsh alone cannot; not timed
                            t = timed(lambda: virsh("snapshot-delete", name, snap))
                        elif tool == "engine":
                            t = timed(lambda: sh(args.engine_cli, URI, "delete", name, snap))
                        else:
                            t = timed(lambda: os.rmdir(os.path.join(args.mount, name, snap)))
                        add((tool, kind), t)
            for op in ("create", "delete middle", "delete leaf"):
                base = statistics.median(times[("virsh", op)])
                row = [state, op, f"{base * 1000:.0f}"]
                for tool in ("engine", "mount"):
                    if (tool, op) in times:
                        med = statistics.median(times[(tool, op)])
                        row += [f"{med * 1000:.0f}", f"{(med / base - 1) * 100:+.0f}%"]
                    else:
                        row += ["-", "-"]
                results.append(row)
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, "--snapshots-metadata", check=False)
        shutil.rmtree(root, ignore_errors=True)

    print(f"median of {args.rounds} rounds, milliseconds (engine = engine-cli, a process per call like virsh)")
    header = ["domain", "operation", "virsh", "engine", "vs virsh", "mkdir/rmdir", "vs virsh"]
    widths = [max(len(h), *(len(r[i]) for r in results)) for i, h in enumerate(header)]
    for row in [header] + results:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    main()
