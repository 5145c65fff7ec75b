# SPDX-License-Identifier: GPL-2.0-or-later
# What revert's tests share: test domains with real qcow2 chains on the real libvirtd, and what virsh and qemu-img say of them.
import itertools
import json
import os
import shutil
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import snapfs_commands  # noqa: E402

URI = os.environ.get("SNAPFS_TEST_URI", "qemu:///system")
REPO = Path(__file__).resolve().parents[2]
PREFIX = "revd-" + uuid.uuid4().hex[:6]
SERIAL = itertools.count()


def built(name):
    """A program of the build: $REVERT_CLI / $ENGINE_CLI as meson test sets them, else the newest build*/ here."""
    env = os.environ.get(name.upper().replace("-", "_"))
    if env:
        return env
    # Several build directories may hold one: the newest is the one just built.
    builds = sorted(REPO.glob(f"build*/tests/{name}"), key=lambda p: p.stat().st_mtime)
    if builds:
        return str(builds[-1])
    pytest.fail(f"{name} is not built (meson setup build && ninja -C build)")


run = snapfs_commands.run


def virsh(*args, check=True):
    return snapfs_commands.virsh(URI, *args, check=check)


class Domain:
    """A shut-off test domain with one qcow2 overlay per disk over a template made without an appliance."""

    def __init__(self, root, name, ndisks=2):
        self.name = name
        self.root = root
        self.dir = root / name
        self.dir.mkdir(mode=0o755)
        self.state = root / (name + "-state")
        self.saved = root / (name + "-saved")
        self.saved.mkdir(mode=0o755)
        self.targets = ["vd" + chr(ord("a") + i) for i in range(ndisks)]
        self.pattern = 0x10
        disks = ""
        for target in self.targets:
            tree = root / f"{name}-tree-{target}"
            tree.mkdir()
            (tree / "hello.txt").write_text(f"{name} {target}\n")
            raw = self.dir / f"template-{target}.raw"
            run("mkfs.ext4", "-q", "-d", tree, raw, "16M")
            base = self.dir / f"template-{target}.qcow2"
            run("qemu-img", "convert", "-O", "qcow2", raw, base)
            raw.unlink()
            top = self.dir / f"{name}-{target}.qcow2"
            run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top)
            disks += f"""<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
                <source file='{top}'/><target dev='{target}' bus='virtio'/></disk>"""
        for f in self.dir.iterdir():
            f.chmod(0o644)
        xml = f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
            <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{disks}</devices></domain>"""
        (root / f"{name}.xml").write_text(xml)
        virsh("define", root / f"{name}.xml")

    # -- acting
    def revert(self, request, keep=True, fault=None, check=True):
        """revert-cli write: (errno name or 'OK', stderr)."""
        env = {"REVERT_KEEP": "on" if keep else "off"}
        if fault:
            env["SNAPFS_FAULT"] = fault
        proc = run(built("revert-cli"), URI, self.state, "write", self.name, request, check=False, env=env)
        if fault and proc.returncode == 137:
            return "KILLED", proc.stderr
        status = "OK" if proc.returncode == 0 else proc.stderr.strip().split("\n")[-1].split(":", 1)[0]
        return status, proc.stderr

    def recover(self):
        proc = run(built("revert-cli"), URI, self.state, "recover", check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    def snapshot(self, name, internal=False):
        if internal:
            virsh("snapshot-create-as", self.name, name)
        else:
            virsh("snapshot-create-as", self.name, name, "--disk-only", "--atomic")

    def write(self, offset_mib):
        """64 KiB of a fresh pattern on every disk's live top, as a guest would write it."""
        self.pattern += 1
        for target in self.targets:
            run("qemu-io", "-f", "qcow2", "-c", f"write -P {self.pattern} {offset_mib}M 64k", self.top(target))

    def start_and_stop(self):
        virsh("start", self.name)
        assert self.running()
        virsh("destroy", self.name)

    # -- what libvirt says
    def running(self):
        return virsh("domstate", self.name, check=False).stdout.strip() == "running"

    def xml(self):
        return ET.fromstring(virsh("dumpxml", "--inactive", self.name).stdout)

    def disk(self, target):
        for disk in self.xml().iter("disk"):
            if disk.find("target").get("dev") == target:
                return disk
        raise KeyError(target)

    def top(self, target):
        return self.disk(target).find("source").get("file")

    def snapshots(self):
        return sorted(n for n in virsh("snapshot-list", self.name, "--name").stdout.split("\n") if n)

    def current(self):
        return virsh("snapshot-current", self.name, "--name", check=False).stdout.strip()

    def parent(self, snap):
        return virsh("snapshot-parent", self.name, snap, check=False).stdout.strip()

    def snapshot_xml(self, snap):
        return ET.fromstring(virsh("snapshot-dumpxml", self.name, snap).stdout)

    def kind(self, snap):
        kinds = {d.get("snapshot") for d in self.snapshot_xml(snap).find("disks")}
        return "external" if "external" in kinds else "internal"

    def overlay(self, snap, target):
        for disk in self.snapshot_xml(snap).find("disks"):
            if disk.get("name") == target and disk.get("snapshot") == "external":
                return disk.find("source").get("file")
        return None

    @staticmethod
    def chain(top):
        info = json.loads(run("qemu-img", "info", "-U", "--backing-chain", "--output=json", top).stdout)
        return [layer["filename"] for layer in info]

    def xml_chain(self, target):
        """The chain the domain XML spells out, top first."""
        files = []
        node = self.disk(target)
        while node is not None and node.find("source") is not None:
            files.append(node.find("source").get("file"))
            node = node.find("backingStore")
        return files

    # -- content
    def save_raw(self, image, label, snapshot=None):
        out = self.saved / f"{label}.raw"
        args = ["qemu-img", "convert", "-U", "-O", "raw"]
        if snapshot:
            args += ["-l", f"snapshot.name={snapshot}"]
        run(*args, image, out)
        return out

    def save(self):
        """Raw copies of what every snapshot and the live disks read, by (name, target)."""
        saved = {}
        for snap in self.snapshots():
            for target in self.targets:
                if self.kind(snap) == "external":
                    saved[(snap, target)] = self.save_raw(self.chain(self.overlay(snap, target))[1], f"{snap}-{target}")
                else:
                    saved[(snap, target)] = self.save_raw(self.top(target), f"{snap}-{target}", snapshot=snap)
        for target in self.targets:
            saved[("live", target)] = self.save_raw(self.top(target), f"live-{target}")
        return saved

    def reads_as(self, raw, image, snapshot=None):
        if snapshot:
            image = self.save_raw(image, "tmp-internal", snapshot=snapshot)
        return run("qemu-img", "compare", "-U", raw, image, check=False).returncode == 0

    def content(self, snap, target):
        """The image @snap froze: its overlay's backing, or, where libvirt's own revert (9.9 and later) discarded
        that overlay with the state it held, the image its <domain> names."""
        overlay = self.overlay(snap, target)
        if overlay and os.path.exists(overlay):
            return self.chain(overlay)[1]
        for disk in self.snapshot_xml(snap).find("domain").iter("disk"):
            if disk.find("target").get("dev") == target:
                return disk.find("source").get("file")
        raise KeyError(target)

    def fingerprint(self):
        """Everything a refused or rolled-back revert must leave as it was."""
        files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in self.dir.iterdir() if f.is_file())
        meta = {s: ET.tostring(self.snapshot_xml(s)) for s in self.snapshots()}
        return {"snapshots": self.snapshots(), "current": self.current(), "xml": ET.tostring(self.xml()),
                "files": files, "meta": meta, "running": self.running()}

    def remove(self):
        if self.running():
            virsh("destroy", self.name, check=False)
        virsh("undefine", self.name, "--snapshots-metadata", check=False)
        for path in (self.dir, self.saved, self.state):
            shutil.rmtree(path, ignore_errors=True)
