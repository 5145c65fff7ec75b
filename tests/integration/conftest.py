# SPDX-License-Identifier: GPL-2.0-or-later
# Fixtures for tests through a real mount: libvirtd, test images and domains (always removed), the snapfs daemon.
#
# Other test files use these; names here are added to, never renamed.
#   libvirtd (session)     libvirtd and virtlogd run and answer
#   run_prefix (session)   the prefix of every domain and image this run makes
#   images (session)       Images: ext4 qcow2 bases, overlays with other content, empty overlays
#   domains (function)     Domains: define/start/snapshot test domains, removed after the test
#   session_domains        the same, removed at the end of the session
#   demo (session)         Demo: a 4-layer chain domain, a running domain, an internal-snapshot domain
#   mount (function)       a factory: mount(*args) -> Mount, unmounted and checked after the test
#   shared_mount (session) one mount of qemu:///system for read-only checks of many tests
import atexit
import contextlib
import errno
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

URI = os.environ.get("SNAPFS_TEST_URI", "qemu:///system")
REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024

# Every name this run makes starts with this, so that the sweeps never touch anything else.
RUN_PREFIX = os.environ.get("SNAPFS_TEST_PREFIX", f"snapfst{os.getpid()}x")
IMAGE_ROOT = Path("/var/tmp") / RUN_PREFIX

# Any sanitizer report fails the test that sees it (the daemon's stderr is checked at unmount).
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "LeakSanitizer", "runtime error:", "ERROR: UndefinedBehaviorSanitizer")


def _sanitizer_env():
    supp = REPO / "tests" / "lsan.supp"
    env = {
        "ASAN_OPTIONS": "halt_on_error=1:abort_on_error=0:detect_leaks=1:exitcode=86:"
                        "detect_stack_use_after_return=0",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=87",
        "LSAN_OPTIONS": f"suppressions={supp}:print_suppressions=0" if supp.exists() else "print_suppressions=0",
        "LIBGUESTFS_BACKEND": "direct",
    }
    for key, value in env.items():
        os.environ.setdefault(key, value)


_sanitizer_env()


# ---------------------------------------------------------------- commands

def run(*args, check=True, timeout=120, env=None, input=None):
    """Run a command; on failure raise with its output so the test says what went wrong."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def virsh(*args, check=True, uri=None, timeout=60):
    return run("virsh", "-q", "-c", uri or URI, *args, check=check, timeout=timeout)


def snapfs_bin():
    """The daemon under test: $SNAPFS_BIN, else the sanitizer build, else any build."""
    if os.environ.get("SNAPFS_BIN"):
        return os.environ["SNAPFS_BIN"]
    for name in ("build-asan", "build"):
        path = REPO / name / "snapfs"
        if path.exists():
            return str(path)
    pytest.fail("snapfs is not built (meson setup build-asan && ninja -C build-asan)")


def is_mount(path):
    """True when PATH is a mount point (checked in /proc, which never blocks on FUSE)."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4].encode().decode("unicode_escape") == path:
                return True
    return False


# ---------------------------------------------------------------- libvirtd

def pids_here(name):
    """The processes named NAME in this pid namespace: a Debian root's daemons (tests/lib/debian-root.sh,
    in a pid namespace below this one, perhaps running its suite beside this one) are not this host's."""
    out = run("pgrep", "--ns", str(os.getpid()), "--nslist", "pid", "-x", name, check=False).stdout
    return [int(p) for p in out.split()]


def libvirtd_pids():
    return pids_here("libvirtd")


def libvirtd_answers(timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if run("virsh", "-c", URI, "version", check=False, timeout=10).returncode == 0:
                return True
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.3)
    return False


def libvirtd_start():
    """Start virtlogd and libvirtd where they do not run (the CI machine has nothing running).
    Where libvirt already answers (a daemon, or systemd's socket activation), nothing is started."""
    if not libvirtd_pids() and libvirtd_answers(timeout=3):
        return
    if not pids_here("virtlogd"):
        run("virtlogd", "-d")
    if not libvirtd_pids():
        run("libvirtd", "-d")
    if not libvirtd_answers():
        raise AssertionError(f"libvirtd does not answer at {URI}")


def libvirtd_kill():
    """SIGKILL libvirtd (a crash, not a shutdown) and wait until it is gone."""
    for pid in libvirtd_pids():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while libvirtd_pids() and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture(scope="session")
def libvirtd():
    if os.geteuid() != 0:
        pytest.fail("the integration tests run as root (qemu:///system, FUSE, /var/tmp images)")
    # As tests/run.sh does: where / is private, a qemu libvirt starts keeps a copy of a FUSE mount
    # alive in its own mount namespace, and snapfs never sees fusermount3 -u.
    propagation = subprocess.run(["findmnt", "-no", "PROPAGATION", "/"], capture_output=True, text=True).stdout
    if propagation.strip() == "private":
        subprocess.run(["mount", "--make-rshared", "/"], check=True)
    libvirtd_start()
    return URI


def libvirt_reverts_external(uri=URI):
    """Whether the connection's libvirt reverts external snapshots itself (libvirt 11: <externalSnapshot/>
    in its capabilities), as snapfs then lets it do: the overlays it makes carry libvirt's names."""
    return "<externalSnapshot/>" in virsh("capabilities", uri=uri).stdout


# ---------------------------------------------------------------- the sweep

def sweep(prefix=RUN_PREFIX, uri=URI):
    """Destroy and undefine every domain whose name holds PREFIX (awkward names put it after a leading dot),
    with its snapshot metadata."""
    proc = run("virsh", "-q", "-c", uri, "list", "--all", "--name", check=False, timeout=30)
    for name in proc.stdout.split("\n"):
        name = name.strip()
        if prefix not in name:
            continue
        run("virsh", "-c", uri, "destroy", name, check=False, timeout=30)
        for flags in (["--snapshots-metadata", "--checkpoints-metadata"], ["--snapshots-metadata"], []):
            if run("virsh", "-c", uri, "undefine", name, *flags, check=False, timeout=30).returncode == 0:
                break


def mounts_under(root):
    """Mount points at or below ROOT (from /proc, which never blocks on FUSE)."""
    root = os.path.realpath(root)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return found


def remove_tree(root):
    """rm -r ROOT, but never through a mount left behind: removing inside a snapfs mount would rmdir
    real snapshots. Detach such mounts first; if one stays, leave ROOT where it is."""
    for point in mounts_under(root):
        subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)
    if mounts_under(root):
        print(f"leaving {root}: still mounted: {mounts_under(root)}")
        return
    shutil.rmtree(root, ignore_errors=True)


def _sweep_at_exit():
    try:
        sweep()
    except Exception:
        pass
    remove_tree(IMAGE_ROOT)


atexit.register(_sweep_at_exit)


def sweep_dead_runs():
    """Leftovers of earlier runs that were killed before their own sweep: snapfst<pid>x of a pid that is gone."""
    import re
    pattern = re.compile(r"snapfst(\d+)x")
    names = run("virsh", "-q", "-c", URI, "list", "--all", "--name", check=False, timeout=30).stdout.split("\n")
    dirs = [p.name for p in Path("/var/tmp").iterdir()]
    for pid in {int(m.group(1)) for n in names + dirs for m in [pattern.search(n)] if m}:
        if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        sweep(f"snapfst{pid}x")
        remove_tree(Path("/var/tmp") / f"snapfst{pid}x")


@pytest.fixture(scope="session")
def run_prefix(libvirtd, request):
    sweep()
    sweep_dead_runs()
    IMAGE_ROOT.mkdir(mode=0o755, exist_ok=True)
    IMAGE_ROOT.chmod(0o755)
    request.addfinalizer(_sweep_at_exit)
    return RUN_PREFIX


# ---------------------------------------------------------------- images

class Images:
    """Guest images made without an appliance: mkfs.ext4 -d, qemu-img convert/create. All under one 0755 dir."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.serial = 0

    def path(self, name):
        return self.root / name

    def _tree(self, files):
        """Write {path: bytes | str | ('symlink', target) | ('dir',)} into a fresh directory."""
        self.serial += 1
        tree = self.root / f".tree{self.serial}"
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir()
        for rel, content in files.items():
            dest = tree / rel.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, tuple) and content[0] == "symlink":
                os.symlink(content[1], dest)
            elif isinstance(content, tuple) and content[0] == "dir":
                dest.mkdir(exist_ok=True)
            else:
                dest.write_bytes(content.encode() if isinstance(content, str) else content)
        return tree

    def ext4(self, name, files, size="32M", fmt="qcow2"):
        """An ext4 filesystem holding FILES, as NAME (qcow2 unless fmt='raw')."""
        tree = self._tree(files)
        raw = self.root / (name + ".raw.tmp")
        run("mkfs.ext4", "-q", "-F", "-L", "snapfs", "-d", tree, raw, size)
        shutil.rmtree(tree)
        dest = self.root / name
        if fmt == "raw":
            raw.rename(dest)
        else:
            run("qemu-img", "convert", "-q", "-O", fmt, raw, dest)
            raw.unlink()
        dest.chmod(0o644)
        return dest

    def overlay(self, name, backing, files, size="32M"):
        """An overlay on BACKING whose chain reads as an ext4 filesystem holding FILES (qemu-img convert -B)."""
        tree = self._tree(files)
        raw = self.root / (name + ".raw.tmp")
        run("mkfs.ext4", "-q", "-F", "-L", "snapfs", "-d", tree, raw, size)
        shutil.rmtree(tree)
        dest = self.root / name
        run("qemu-img", "convert", "-q", "-O", "qcow2", "-B", backing, "-F", "qcow2", raw, dest)
        raw.unlink()
        dest.chmod(0o644)
        return dest

    def empty_overlay(self, name, backing, backing_fmt="qcow2"):
        """A plain overlay on BACKING (qemu-img create -b): reads as its backing."""
        dest = self.root / name
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_fmt, "-b", backing, dest)
        dest.chmod(0o644)
        return dest

    def blank(self, name, size="16M", fmt="qcow2"):
        """A disk with no filesystem."""
        dest = self.root / name
        run("qemu-img", "create", "-q", "-f", fmt, dest, size)
        dest.chmod(0o644)
        return dest

    def info(self, path):
        import json
        return json.loads(run("qemu-img", "info", "-U", "--output=json", path).stdout)


@pytest.fixture(scope="session")
def images(run_prefix):
    imgs = Images(IMAGE_ROOT / "img")
    yield imgs
    remove_tree(imgs.root)


# ---------------------------------------------------------------- domains

def domain_xml(name, disks, memory_mib=64):
    """DISKS: [(target, file, format)]; a type='qemu' domain with no NIC, no graphics, no serial."""
    devs = ""
    for target, file, fmt in disks:
        devs += (f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
                 f"<source file='{file}'/><target dev='{target}' bus='virtio'/></disk>")
    from xml.sax.saxutils import escape
    return (f"<domain type='qemu'><name>{escape(name)}</name><memory unit='MiB'>{memory_mib}</memory>"
            f"<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"<devices>{devs}<memballoon model='none'/></devices></domain>")


class Domain:
    """A test domain on the real libvirtd, as virsh sees it."""

    def __init__(self, owner, name, disks, xml=None):
        self.owner = owner
        self.name = name
        self.disks = list(disks)
        xml_file = owner.images.root / f"{abs(hash(name))}.xml"
        xml_file.write_text(xml or domain_xml(name, self.disks))
        # libvirtd probes qemu again when its capabilities cache is stale: over a minute on a loaded machine.
        virsh("define", xml_file, timeout=300)
        xml_file.unlink()

    def start(self):
        virsh("start", self.name)
        return self

    def destroy(self):
        virsh("destroy", self.name, check=False)
        return self

    def state(self):
        return virsh("domstate", self.name).stdout.strip()

    def snapshot(self, snap, disk_only=True, description=None):
        """External disk-only atomic (default), or internal (disk_only=False, shut-off qcow2 domain)."""
        args = ["snapshot-create-as", self.name, snap]
        if description is not None:
            args += ["--description", description]
        if disk_only:
            args += ["--disk-only", "--atomic"]
        virsh(*args)
        return snap

    def snapshot_delete(self, snap, metadata=False):
        virsh("snapshot-delete", self.name, snap, *(["--metadata"] if metadata else []))

    def snapshots(self):
        return sorted(l for l in virsh("snapshot-list", self.name, "--name").stdout.split("\n") if l)

    def current(self):
        return virsh("snapshot-current", self.name, "--name", check=False).stdout.strip()

    def snapshot_xml(self, snap):
        return ET.fromstring(virsh("snapshot-dumpxml", self.name, snap).stdout)

    def snapshot_created(self, snap):
        return int(self.snapshot_xml(snap).findtext("creationTime"))

    def xml(self, inactive=False):
        return ET.fromstring(virsh("dumpxml", self.name, *(["--inactive"] if inactive else [])).stdout)

    def top(self, target):
        """The file the disk TARGET uses now (the live layer)."""
        for disk in self.xml().iter("disk"):
            if disk.find("target").get("dev") == target:
                return disk.find("source").get("file")
        raise KeyError(target)

    def chain(self, target):
        """The disk's backing chain from the base up, as qemu-img reads it: [(file, format)]."""
        import json
        info = json.loads(run("qemu-img", "info", "-U", "--backing-chain", "--output=json", self.top(target)).stdout)
        return [(i["filename"], i["format"]) for i in reversed(info)]

    def remove(self):
        virsh("destroy", self.name, check=False)
        for flags in (["--snapshots-metadata", "--checkpoints-metadata"], ["--snapshots-metadata"], []):
            if virsh("undefine", self.name, *flags, check=False).returncode == 0:
                break


_IMAGE_SERIAL = itertools.count(1)


class Domains:
    """Makes test domains named RUN_PREFIX + suffix; remove_all() undefines each one it made."""

    def __init__(self, images, prefix):
        self.images = images
        self.prefix = prefix
        self.made = []
        self.serial = 0

    def name(self, suffix=None):
        self.serial += 1
        return self.prefix + (suffix if suffix is not None else f"d{self.serial}")

    def define(self, disks, name=None, suffix=None, start=False, xml=None):
        """DISKS: [(target, file, format)]. NAME must hold the run prefix (suffix is appended to it).  XML, where
        given, is the domain's whole definition (it must name NAME and DISKS)."""
        name = name or self.name(suffix)
        assert RUN_PREFIX in name, name
        dom = Domain(self, name, disks, xml)
        self.made.append(dom)
        if start:
            dom.start()
        return dom

    def simple(self, suffix=None, files=None, start=False, name=None):
        """A domain with one disk vda: an ext4 qcow2 base (FILES) and an empty overlay as its live disk."""
        name = name or self.name(suffix)
        tag = next(_IMAGE_SERIAL)     # one counter for the whole run: two fixtures never share an image
        base = self.images.ext4(f"{RUN_PREFIX}-{tag}-base.qcow2", files or {"hello.txt": f"{name}\n"})
        top = self.images.empty_overlay(f"{RUN_PREFIX}-{tag}-top.qcow2", base)
        return self.define([("vda", top, "qcow2")], name=name, start=start)

    def remove_all(self):
        for dom in reversed(self.made):
            try:
                dom.remove()
            except Exception:
                pass
        self.made.clear()


@pytest.fixture
def domains(images, run_prefix):
    doms = Domains(images, run_prefix)
    yield doms
    doms.remove_all()


@pytest.fixture(scope="session")
def session_domains(images, run_prefix):
    doms = Domains(images, run_prefix)
    yield doms
    doms.remove_all()


# ---------------------------------------------------------------- the demo-like set

class Demo:
    """Built once per session:
    chain:    vda = base (template) <- s1 <- s2 <- s3 <- live, made with virsh --disk-only snapshots over
              overlays that hold different files; layers 0..3 = base, the overlays frozen by s1, s2, s3; 4 = live.
              (so 5 layers; chain.layer_files[k] is layer k's file.)
    running:  one disk, started (sits in the BIOS under TCG), one external snapshot 'live1'.
    internal: one qcow2 disk, shut off, internal snapshots 'int1' then 'int2'.
    """

    CHAIN_FILES = [
        {"etc/hostname": "base\n", "base.txt": "in the template\n"},
        {"etc/hostname": "one\n", "base.txt": "in the template\n", "one.txt": "layer one\n"},
        {"etc/hostname": "two\n", "base.txt": "in the template\n", "one.txt": "layer one\n", "two.txt": "2\n"},
        {"etc/hostname": "three\n", "base.txt": "in the template\n", "three.txt": "3\n",
         "link": ("symlink", "/etc/hostname")},
    ]

    def __init__(self, doms, images):
        self.prefix = RUN_PREFIX
        # The template base and the overlays are made first; the snapshots are then taken by libvirt
        # so that its metadata is real, and each new overlay file is replaced by one holding new files.
        tag = f"{RUN_PREFIX}-chain"
        base = images.ext4(f"{tag}-template.qcow2", self.CHAIN_FILES[0])
        top = images.overlay(f"{tag}-0.qcow2", base, self.CHAIN_FILES[1])
        self.chain = doms.define([("vda", top, "qcow2")], suffix="chain")
        self.chain.snapshots_made = []
        self.chain.layer_files = [str(base), str(top)]
        for i, snap in enumerate(("s1", "s2", "s3"), start=1):
            desc = f"snapshot {snap}" if snap != "s2" else None
            self.chain.snapshot(snap, description=desc)
            new_top = self.chain.top("vda")
            # Rewrite the fresh, empty overlay so that it holds what the next state has.
            if i + 1 < len(self.CHAIN_FILES):
                os.unlink(new_top)
                images.overlay(new_top, self.chain.layer_files[-1], self.CHAIN_FILES[i + 1])
            self.chain.layer_files.append(new_top)
            self.chain.snapshots_made.append(snap)

        self.running = doms.simple(suffix="running", files={"running.txt": "runs\n"})
        self.running.start()
        self.running.snapshot("live1")

        ibase = images.ext4(f"{RUN_PREFIX}-internal.qcow2", {"internal.txt": "before\n"})
        self.internal = doms.define([("vda", ibase, "qcow2")], suffix="internal")
        self.internal.snapshot("int1", disk_only=False)
        self.internal.snapshot("int2", disk_only=False)

    def domains(self):
        return [self.chain, self.running, self.internal]


@pytest.fixture(scope="session")
def demo(session_domains, images):
    return Demo(session_domains, images)


# ---------------------------------------------------------------- the mount

def _mount_device(path):
    """The device ("major:minor") of the filesystem mounted at PATH, from /proc (never blocks on FUSE); None."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].encode().decode("unicode_escape") == path:
                return fields[2]
    return None


def _mount_holders(device):
    """Where a mount of DEVICE still is after its unmount here: "pid (comm) at point" per other mount namespace.
    A copy in another namespace (one made by unshare, a service or a qemu while it was mounted) keeps the
    filesystem, and so its daemon, alive after the unmount here."""
    own = os.readlink("/proc/self/ns/mnt")
    seen = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ns = os.readlink(entry / "ns" / "mnt")
            if ns in seen:
                continue
            points = []
            for line in (entry / "mountinfo").read_text().splitlines():
                fields = line.split()
                if fields[2] == device and " - fuse" in line:
                    points.append(fields[4].encode().decode("unicode_escape"))
            if points:
                comm = (entry / "comm").read_text().strip()
                seen[ns] = f"pid {entry.name} ({comm}){' (this namespace)' if ns == own else ''} at {', '.join(points)}"
            else:
                seen[ns] = None
        except (OSError, IndexError):
            continue
    return [where for where in seen.values() if where]


class Mount:
    """A running `snapfs -f` on a fresh mount point; .path, .stderr_text(), .unmount()."""

    def __init__(self, mountpoint, args, timeout=20, env=None):
        self.path = str(mountpoint)
        args = [str(a) for a in args]
        # One snapfs at a time acts on a state directory (the others wait, then refuse): each mount its own,
        # unless the test names one.
        if not any("state_dir=" in a for a in args):
            args += ["-o", f"state_dir={self.path}.state"]
        self.args = [snapfs_bin(), "-f", *args, self.path]
        self.stderr_file = open(Path(self.path).parent / (Path(self.path).name + ".stderr"), "w+b")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self.stderr_file,
                                     stderr=self.stderr_file, env=dict(os.environ, **(env or {})))
        self.exit_status = None
        deadline = time.monotonic() + timeout
        while not is_mount(self.path):
            if self.proc.poll() is not None:
                raise AssertionError(f"snapfs exited ({self.proc.returncode}) before mounting:\n{self.stderr_text()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"snapfs did not mount within {timeout} s:\n{self.stderr_text()}")
            time.sleep(0.05)
        self.device = _mount_device(self.path)

    def p(self, *parts):
        """A path under the mount."""
        return os.path.join(self.path, *parts)

    def stderr_text(self):
        self.stderr_file.flush()
        with open(self.stderr_file.name, "rb") as f:
            return f.read().decode(errors="replace")

    def sanitizer_reports(self):
        text = self.stderr_text()
        return [mark for mark in SANITIZER_MARKS if mark in text]

    def unmount(self, timeout=30):
        """fusermount3 -u, wait for the daemon; returns its exit status."""
        if self.exit_status is not None:
            return self.exit_status
        if self.proc.poll() is None and is_mount(self.path):
            deadline = time.monotonic() + timeout
            while True:
                proc = run("fusermount3", "-u", self.path, check=False, timeout=timeout)
                if proc.returncode == 0 or not is_mount(self.path):
                    break
                if time.monotonic() > deadline:
                    run("fusermount3", "-u", "-z", self.path, check=False)
                    break
                time.sleep(0.5)    # EBUSY: a test's process still has a file open
        try:
            self.exit_status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Where each thread stopped, and who still has the mount, is what such a failure needs to be
            # understood: both are taken before the kill.
            holders = _mount_holders(self.device) if self.device else []
            try:
                gdb = run("gdb", "-p", self.proc.pid, "-batch", "-ex", "thread apply all bt", check=False, timeout=120)
                stacks = gdb.stdout if "Thread " in gdb.stdout else f"(no stacks: gdb: {gdb.stderr}{gdb.stdout})"
            except (OSError, subprocess.TimeoutExpired) as e:
                stacks = f"(no stacks: gdb: {e})"
            self.proc.kill()
            self.proc.wait()
            where = ("the mount was still in other mount namespaces, which keep the filesystem alive:\n  " +
                     "\n  ".join(holders) if holders else "the mount was in no other mount namespace")
            self.exit_status = f"hung after unmount; {where}\nits threads were at:\n{stacks}\n"
        if is_mount(self.path):
            run("fusermount3", "-u", "-z", self.path, check=False)
        return self.exit_status

    def close(self):
        self.stderr_file.close()

    def check_clean_exit(self):
        """After unmount: exit status 0 and no sanitizer report on stderr."""
        status = self.unmount()
        reports = self.sanitizer_reports()
        assert not reports, f"sanitizer report from snapfs ({reports}):\n{self.stderr_text()}"
        assert status == 0, f"snapfs exited with {status} after unmount:\n{self.stderr_text()[-6000:]}"


def _mountpoint(prefix):
    base = IMAGE_ROOT / "mnt"
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    n = 0
    while (base / f"{prefix}{n}").exists():
        n += 1
    path = base / f"{prefix}{n}"
    path.mkdir(mode=0o755)
    return path


@pytest.fixture
def mount(libvirtd, run_prefix):
    """mount(*args, uri=URI) starts `snapfs -f -c URI ARGS MNT` (uri=None: no -c) and returns a Mount."""
    made = []

    def start(*args, uri=URI, timeout=20, env=None):
        connect = ["-c", uri] if uri else []
        m = Mount(_mountpoint("m"), [*connect, *args], timeout=timeout, env=env)
        made.append(m)
        return m

    yield start
    errors = []
    for m in made:
        try:
            m.check_clean_exit()
        except AssertionError as e:
            errors.append(str(e))
        finally:
            m.close()
    if errors:
        pytest.fail("\n".join(errors))


@contextlib.contextmanager
def module_domains(images, run_prefix, tree=None):
    """Domains for one module's fixture, every one removed afterwards (and TREE, the folder of their images)."""
    doms = Domains(images, run_prefix)
    try:
        yield doms
    finally:
        doms.remove_all()
        if tree is not None:
            remove_tree(tree)


@contextlib.contextmanager
def guest_mount(prefix):
    """A mount of qemu:///system for one module's guest tests (appliances start slowly: 30 s to mount); its path.
    Unmounted afterwards, and after passing tests checked to have exited cleanly."""
    m = Mount(_mountpoint(prefix), ["-c", URI], timeout=30)
    try:
        yield Path(m.path)
        m.check_clean_exit()
    finally:
        if m.exit_status is None:
            m.unmount()
        m.close()


def guest_set_fixtures(fixture, folder, make, own_tree=True):
    """A guest-test module's two module fixtures: FIXTURE, its set of domains MAKE(images, doms) (with their images
    under IMAGE_ROOT/FOLDER, removed afterwards, where OWN_TREE), and `mnt`, a guest mount that the set outlives.
    Use as `guest, mnt = guest_set_fixtures("guest", ...)` at the module's top level."""

    @pytest.fixture(scope="module", name=fixture)
    def domain_set(libvirtd, images, run_prefix):
        with module_domains(images, run_prefix, IMAGE_ROOT / folder if own_tree else None) as doms:
            yield make(images, doms)

    @pytest.fixture(scope="module", name="mnt")
    def mount(request):
        request.getfixturevalue(fixture)
        with guest_mount(folder) as path:
            yield path

    return domain_set, mount


@pytest.fixture(scope="session")
def shared_mount(libvirtd, run_prefix, demo):
    """One mount of qemu:///system, shared by tests that only read (after the demo set exists)."""
    m = Mount(_mountpoint("shared"), ["-c", URI])
    yield m
    m.check_clean_exit()


def rewrite_top(top, src, uuid, size="96M"):
    """Makes the overlay TOP hold tree SRC instead, over the same backing image: an ext4 with UUID (the backing
    filesystem's, changed), made without any appliance."""
    raw = Path(str(top) + ".raw")
    run("mkfs.ext4", "-q", "-F", "-U", uuid, "-d", src, raw, size)
    backing = json.loads(run("qemu-img", "info", "-U", "--output=json", top).stdout)["backing-filename"]
    os.unlink(top)
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-B", backing, "-F", "qcow2", raw, top)
    raw.unlink()


def wait_for(predicate, timeout=1.5, interval=0.05):
    """Poll PREDICATE until it is true or TIMEOUT passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def call_with_timeout(fn, timeout=10):
    """Run FN in a thread: ('ok', value) | ('error', errno) | ('hung', None) (a FUSE call that never answers)."""
    box = {}

    def body():
        try:
            box["r"] = ("ok", fn())
        except OSError as e:
            box["r"] = ("error", e.errno)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    return box.get("r", ("hung", None))


def errno_of(fn, *args):
    """The errno FN(*ARGS) fails with, or None when it succeeds."""
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return None


__all__ = ["URI", "RUN_PREFIX", "run", "virsh", "snapfs_bin", "is_mount", "wait_for", "call_with_timeout",
           "errno_of", "libvirtd_kill", "libvirtd_start", "libvirtd_answers", "errno", "MiB"]
