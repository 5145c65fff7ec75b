# SPDX-License-Identifier: GPL-2.0-or-later
# Fixtures for the snapshot engine's tests: small qcow2 chains and test domains on the real libvirtd, always removed.
import json
import os
import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import snapfs_commands  # noqa: E402

URI = os.environ.get("SNAPFS_TEST_URI", "qemu:///system")
REPO = Path(__file__).resolve().parents[2]
PREFIX = "engc-" + uuid.uuid4().hex[:6]
MiB = 1024 * 1024


def engine_cli():
    if os.environ.get("ENGINE_CLI"):
        return os.environ["ENGINE_CLI"]
    for build in sorted(REPO.glob("build*/tests/engine-cli")):
        return str(build)
    pytest.fail("engine-cli is not built (meson setup build && ninja -C build)")


def run(*args, check=True, env=None):
    return snapfs_commands.run(*args, check=check, env=dict(LIBVIRT_DEFAULT_URI=URI, **(env or {})))


def virsh(*args, check=True):
    return snapfs_commands.virsh(URI, *args, check=check)


class Engine:
    """engine-cli: returns (errno name or 'OK', stdout, stderr)."""

    def __call__(self, *args):
        proc = run(engine_cli(), URI, *args, check=False)
        if os.environ.get("ENGINE_TRACE"):
            print(f"\n    engine-cli {' '.join(map(repr, args))} -> {proc.returncode}: {proc.stderr.strip()}")
        if proc.returncode == 0:
            return "OK", proc.stdout, proc.stderr
        name = proc.stderr.split(":", 1)[0].strip()
        # one value on Linux, two names
        return ("ENOTSUP" if name == "EOPNOTSUPP" else name), proc.stdout, proc.stderr


class Domain:
    """A test domain with qcow2 disks over a raw-made template, shut off until start()."""

    def __init__(self, root, name, ndisks=1, fmt="qcow2", size="32M"):
        self.name = name
        self.dir = root / name
        self.dir.mkdir(mode=0o755)
        self.saved = root / (name + "-saved")
        self.saved.mkdir(mode=0o755)
        self.targets = ["vd" + chr(ord("a") + i) for i in range(ndisks)]
        disks = ""
        for i, target in enumerate(self.targets):
            tree = self.dir / f"tree-{target}"
            tree.mkdir()
            (tree / "hello.txt").write_text(f"{name} {target}\n")
            raw = self.dir / f"base-{target}.raw"
            run("mkfs.ext4", "-q", "-d", tree, raw, size)
            base = self.dir / f"base-{target}.qcow2"
            run("qemu-img", "convert", "-O", "qcow2", raw, base)
            raw.unlink()
            if fmt == "raw":
                top = self.dir / f"{name}-{target}.img"
                run("qemu-img", "convert", "-O", "raw", base, top)
            else:
                top = self.dir / f"{name}-{target}.qcow2"
                run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top)
            disks += f"""<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>
                <source file='{top}'/><target dev='{target}' bus='virtio'/></disk>"""
        for f in self.dir.iterdir():
            f.chmod(0o644 if f.is_file() else 0o755)
        xml = f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>96</memory><vcpu>1</vcpu>
            <os><type arch='x86_64' machine='pc'>hvm</type></os>
            <devices>{disks}</devices></domain>"""
        (self.dir / "domain.xml").write_text(xml)
        virsh("define", self.dir / "domain.xml")
        self.pattern = 0x10

    # -- what libvirt says
    def running(self):
        return virsh("domstate", self.name).stdout.strip() == "running"

    def start(self):
        virsh("start", self.name)

    def xml(self, inactive=False):
        args = ["dumpxml", self.name] + (["--inactive"] if inactive else [])
        return ET.fromstring(virsh(*args).stdout)

    def top(self, target):
        for disk in self.xml(inactive=not self.running()).iter("disk"):
            if disk.find("target").get("dev") == target:
                return disk.find("source").get("file")
        raise KeyError(target)

    def snapshots(self):
        return sorted(line for line in virsh("snapshot-list", self.name, "--name").stdout.split("\n") if line)

    def current(self):
        return virsh("snapshot-current", self.name, "--name", check=False).stdout.strip()

    def snapshot_xml(self, snap):
        return ET.fromstring(virsh("snapshot-dumpxml", self.name, snap).stdout)

    def snapshot_overlay(self, snap, target):
        for disk in self.snapshot_xml(snap).find("disks"):
            if disk.get("name") == target and disk.get("snapshot") == "external":
                return disk.find("source").get("file")
        return None

    def snapshot_kind(self, snap):
        kinds = {d.get("snapshot") for d in self.snapshot_xml(snap).find("disks")}
        return "external" if "external" in kinds else "internal"

    # -- images
    @staticmethod
    def chain(top):
        info = json.loads(run("qemu-img", "info", "-U", "--backing-chain", "--output=json", top).stdout)
        return [layer["filename"] for layer in info]

    def write(self, offset_mib, pattern=None, length="64k"):
        """Writes LENGTH of a fresh pattern to every disk's live top, as the guest would."""
        pattern = pattern if pattern is not None else self.pattern
        self.pattern += 1
        for target in self.targets:
            cmd = f"write -P {pattern} {offset_mib}M {length}"
            if self.running():
                dev = f"/machine/peripheral/virtio-disk{self.targets.index(target)}/virtio-backend"
                out = virsh("qemu-monitor-command", self.name, "--hmp", f'qemu-io -d {dev} "{cmd}"').stdout
                assert "rror" not in out, out
                virsh("qemu-monitor-command", self.name, "--hmp", f"qemu-io -d {dev} flush")
            else:
                top = self.top(target)
                fmt = json.loads(run("qemu-img", "info", "-U", "--output=json", top).stdout)["format"]
                run("qemu-io", "-f", fmt, "-c", cmd, top)

    def content_of(self, snap, target):
        """The file whose chain reads as @snap's @target did: the image its overlay stands on."""
        if self.snapshot_kind(snap) == "internal":
            return None
        return self.chain(self.snapshot_overlay(snap, target))[1]

    def save(self):
        """Raw copies of every snapshot's and the live disks' content, to compare after an operation."""
        saved = {}
        for snap in self.snapshots():
            if self.snapshot_kind(snap) != "external":
                continue
            for target in self.targets:
                out = self.saved / f"{snap}-{target}.raw"
                run("qemu-img", "convert", "-U", "-O", "raw", self.content_of(snap, target), out)
                saved[(snap, target)] = out
        for target in self.targets:
            out = self.saved / f"live-{target}.raw"
            run("qemu-img", "convert", "-U", "-O", "raw", self.top(target), out)
            saved[("live", target)] = out
        return saved

    def verify(self, saved, gone=()):
        """Every snapshot still there and the live disks read byte for byte as saved; every image checks clean."""
        for (snap, target), raw in saved.items():
            if snap in gone:
                continue
            image = self.top(target) if snap == "live" else self.content_of(snap, target)
            proc = run("qemu-img", "compare", "-U", raw, image, check=False)
            assert proc.returncode == 0, f"{snap}/{target} reads differently: {proc.stdout}{proc.stderr}"
        for image in self.dir.iterdir():
            if image.suffix == ".xml" or image.is_dir():
                continue
            fmt = run("qemu-img", "info", "-U", "--output=json", image).stdout
            if json.loads(fmt)["format"] == "qcow2":
                proc = run("qemu-img", "check", "-U", image, check=False)
                assert proc.returncode == 0, f"qemu-img check {image}: {proc.stdout}{proc.stderr}"
        for target in self.targets:
            for layer in self.chain(self.top(target)):
                assert os.path.exists(layer), f"{layer} is still in the chain of {target} but gone"

    def fingerprint(self):
        """What a refusal must leave alone: snapshots, current, XML, files and their chains."""
        files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in self.dir.iterdir() if f.is_file())
        chains = [self.chain(self.top(t)) for t in self.targets]
        meta = [ET.tostring(self.snapshot_xml(s)) for s in self.snapshots()]
        return (self.snapshots(), self.current(), ET.tostring(self.xml(inactive=True)), files, chains, meta)

    def remove(self):
        if self.running():
            virsh("destroy", self.name, check=False)
        virsh("undefine", self.name, "--snapshots-metadata", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.saved, ignore_errors=True)


@pytest.fixture(scope="session")
def root():
    if subprocess.run(["virsh", "-c", URI, "version"], capture_output=True).returncode != 0:
        pytest.fail(f"libvirt at {URI} is not reachable")
    path = Path("/var/tmp") / PREFIX
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_domain(root, request):
    made = []

    def make(ndisks=1, fmt="qcow2", size="32M"):
        dom = Domain(root, f"{PREFIX}-{request.node.name[5:30]}-{len(made)}".replace("[", "-").replace("]", ""),
                     ndisks, fmt, size)
        made.append(dom)
        return dom

    yield make
    for dom in made:
        dom.remove()


@pytest.fixture
def engine():
    return Engine()
