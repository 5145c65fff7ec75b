# SPDX-License-Identifier: GPL-2.0-or-later
# Several hypervisors in one mount: a second libvirtd on this machine as another host, reached over loopback TCP.
#
# The second host is tests/lib/host2.sh: a privileged libvirtd in a mount namespace of its
# own (its /run/libvirt, /var/lib/libvirt, /etc/libvirt... are private), listening on
# 127.0.0.1 with auth none. Its test domain's images live under /var/tmp, which both daemons
# see. snapfs treats a loopback server as this machine; to see what a really remote host
# looks like, the same daemon is also reached as qemu+tcp://2130706433:PORT/ (127.0.0.1
# written as one number, which getaddrinfo accepts but which names no loopback host).
import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (IMAGE_ROOT, REPO, RUN_PREFIX, URI, _mountpoint, call_with_timeout, domain_xml, errno_of,
                      is_mount, mounts_under, run, snapfs_bin, wait_for)

HOST2_SCRIPT = REPO / "tests" / "lib" / "host2.sh"
# How long a folder of a host that went away may take to say so, and one that came back to fill again.
DOWN_LIMIT = 5.0
BACK_LIMIT = 6.0
# The name under which snapfs must treat the second daemon as a host elsewhere (see the top of this file).
NONLOCAL_NAME = "2130706433"


def xattrs(path):
    """All user.snapfs.* attributes of PATH as {short name: str}."""
    out = {}
    for name in os.listxattr(path):
        if name.startswith("user.snapfs."):
            out[name[len("user.snapfs."):]] = os.getxattr(path, name).decode()
    return out


def listing(path, timeout=5):
    """('ok', sorted names) | ('error', errno) | ('hung', None): a listing that may not hang the test."""
    outcome, value = call_with_timeout(lambda: sorted(os.listdir(path)), timeout=timeout)
    return outcome, value


def free_port():
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the second host

class Host2:
    """The second libvirtd: start(), kill() (SIGKILL, a crash), stop(); .uri, .virsh()."""

    def __init__(self, root, port):
        self.root = Path(root)
        self.port = port
        self.uri = f"qemu+tcp://127.0.0.1:{port}/system"
        self.nonlocal_uri = f"qemu+tcp://{NONLOCAL_NAME}:{port}/system"
        self.proc = None
        self.log = None
        self.namespaces = set()   # the mount namespaces of every start, to find what a stop leaves behind
        self.ended_at = None      # _boot_ticks() when the host was last killed or stopped

    def virsh(self, *args, check=True, timeout=30):
        return run("virsh", "-q", "-c", self.uri, *args, check=check, timeout=timeout)

    def answers(self):
        try:
            return self.virsh("version", check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def start(self, timeout=30):
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.log = open(self.root / "host2.out", "ab")
        self.proc = subprocess.Popen([str(HOST2_SCRIPT), str(self.root), str(self.port)], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log = self.root / "log" / "libvirtd.log"
                raise AssertionError(f"the second libvirtd does not answer at {self.uri}:\n"
                                     f"{(self.root / 'host2.out').read_text(errors='replace')[-3000:]}\n"
                                     f"{log.read_text(errors='replace')[-3000:] if log.exists() else ''}")
            time.sleep(0.1)
        self.namespaces.add(os.readlink(f"/proc/{self.daemon_pid()}/ns/mnt"))

    def daemon_pid(self):
        """The host pid of the second libvirtd (a grandchild of the unshare process this class started)."""
        if not self.proc:
            return None
        parents = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            parents[int(entry.name)] = (int(stat[stat.rindex(")") + 2:].split()[1]), comm)
        for pid, (ppid, comm) in parents.items():
            if comm == "libvirtd-host2" and parents.get(ppid, (0, ""))[0] == self.proc.pid:
                return pid
        return None

    def _end(self, sig, timeout):
        """Signal the daemon; its namespace (virtlogd and all) ends with it. SIGKILL of unshare if it lingers."""
        self.ended_at = _boot_ticks()
        if self.proc and self.proc.poll() is None:
            pid = self.daemon_pid()
            if pid:
                os.kill(pid, sig)
            try:
                self.proc.wait(timeout=timeout if pid else 0.1)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log:
            self.log.close()
            self.log = None

    def kill(self):
        self._end(signal.SIGKILL, 10)

    def stop(self):
        self._end(signal.SIGTERM, 15)

    def running(self):
        return self.proc is not None and self.proc.poll() is None


def _boot_ticks():
    """Now, in the unit and from the origin of a process's start time in /proc/PID/stat."""
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def _start_ticks(stat):
    return int(stat[stat.rindex(")") + 2:].split()[19])


def namespaces_of(host):
    """Pids of processes still in a mount namespace of HOST (a host left behind, or some of it).  The kernel gives
    a freed namespace's number to the next new one, another program's as well (other tests run on this machine):
    only a process that started before the host was last ended can be the host's."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "mnt") not in host.namespaces:
                continue
            if host.ended_at is None or _start_ticks((entry / "stat").read_text()) <= host.ended_at:
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


def sweep_dead_hosts():
    """Second libvirtds of earlier runs that were killed before their teardown: snapfst<pid>x of a pid that is gone."""
    import re
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "mountinfo").read_text()
        except OSError:
            continue
        if "host2-run" not in text:
            continue
        m = re.search(r"snapfst(\d+)x/host2/", text)
        if m and int(m.group(1)) != os.getpid() and not os.path.exists(f"/proc/{m.group(1)}"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="module")
def host2(libvirtd, run_prefix):
    """A second libvirtd for this module's tests; always stopped, its namespace and state gone afterwards."""
    sweep_dead_hosts()
    h = Host2(IMAGE_ROOT / "host2", free_port())
    try:
        h.start()
        yield h
    finally:
        h.stop()
        left = namespaces_of(h)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        import shutil
        shutil.rmtree(h.root, ignore_errors=True)
        assert not left, f"processes of the second libvirtd were left behind: {left}"


@pytest.fixture
def host2_up(host2):
    """The second host, running: tests that kill it leave it to the next one to start it again."""
    if not host2.running():
        host2.start()
    return host2


class RemoteDomain:
    """A domain on the second host, vda = base <- top; by default shut off with external snapshots s1 <- s2."""

    def __init__(self, host, images, suffix="h2", snapshots=(("s1", "first on host2"), ("s2", None)), start=False):
        self.host = host
        self.name = f"{RUN_PREFIX}{suffix}"
        self.base = images.ext4(f"{RUN_PREFIX}-{suffix}-base.qcow2", {"host2.txt": "on the second host\n"})
        self.top = images.empty_overlay(f"{RUN_PREFIX}-{suffix}-top.qcow2", self.base)
        xml = images.root / f"{RUN_PREFIX}-{suffix}.xml"
        xml.write_text(domain_xml(self.name, [("vda", self.top, "qcow2")]))
        host.virsh("define", xml)
        xml.unlink()
        if start:
            host.virsh("start", self.name)
        for snap, description in snapshots:
            host.virsh("snapshot-create-as", self.name, snap, *(["--description", description] if description else []),
                       "--disk-only", "--atomic")

    def snapshots(self):
        return sorted(l for l in self.host.virsh("snapshot-list", self.name, "--name").stdout.split("\n") if l)

    def created(self, snap):
        import xml.etree.ElementTree as ET
        return int(ET.fromstring(self.host.virsh("snapshot-dumpxml", self.name, snap).stdout).findtext("creationTime"))

    def current(self):
        return self.host.virsh("snapshot-current", self.name, "--name", check=False).stdout.strip()

    def state(self):
        """What a refused operation must leave as it was: snapshots, the current one, the disk the XML names."""
        import xml.etree.ElementTree as ET
        top = ET.fromstring(self.host.virsh("dumpxml", self.name).stdout).find("devices/disk/source").get("file")
        return self.snapshots(), self.current(), top

    def chain(self):
        """The files of vda's chain as qemu-img reads it from the file the host's XML names, base first."""
        import json
        import xml.etree.ElementTree as ET
        top = ET.fromstring(self.host.virsh("dumpxml", self.name).stdout).find("devices/disk/source").get("file")
        info = json.loads(run("qemu-img", "info", "-U", "--backing-chain", "--output=json", top).stdout)
        return [i["filename"] for i in reversed(info)]

    def remove(self):
        self.host.virsh("destroy", self.name, check=False)
        self.host.virsh("undefine", self.name, "--snapshots-metadata", check=False)


@pytest.fixture(scope="module")
def remote_dom(host2, images):
    dom = RemoteDomain(host2, images)
    yield dom
    if host2.running():
        dom.remove()


@pytest.fixture(scope="module")
def local_dom(session_domains):
    """A domain on the system libvirtd, which the second host must not show."""
    return session_domains.simple(suffix="h1", files={"host1.txt": "on this host\n"})


# ---------------------------------------------------------------- names and what each folder holds

def test_one_folder_per_host(mount, host2_up, remote_dom, local_dom):
    m = mount("-c", host2_up.uri)
    assert sorted(os.listdir(m.path)) == ["127.0.0.1", "localhost"]
    assert xattrs(m.p("localhost"))["uri"] == URI
    assert xattrs(m.p("127.0.0.1"))["uri"] == host2_up.uri
    assert "error" not in xattrs(m.p("127.0.0.1")), "a reachable host carries user.snapfs.error"

    # The second host holds only what this test defined there; the first one has it not.
    assert listing(m.p("127.0.0.1")) == ("ok", [remote_dom.name])
    local = os.listdir(m.p("localhost"))
    assert local_dom.name in local
    assert remote_dom.name not in local
    assert errno_of(os.stat, m.p("127.0.0.1", local_dom.name)) == errno.ENOENT
    assert sorted(os.listdir(m.p("localhost", local_dom.name))) == ["layers", "live", "revert"]


def test_names_on_clashes(mount, host2_up, remote_dom):
    """localhost for local URIs, the server's name otherwise, -2, -3... in command-line order on clashes."""
    uris = {"localhost": URI, "localhost-2": "test:///default", "127.0.0.1": host2_up.uri,
            "localhost-3": f"qemu+tcp://localhost:{host2_up.port}/system"}
    m = mount("-c", uris["localhost-2"], "-c", uris["127.0.0.1"], "-c", uris["localhost-3"])
    assert sorted(os.listdir(m.p())) == sorted(uris)
    for name, uri in uris.items():
        assert xattrs(m.p(name))["uri"] == uri, name
    # test:///default's own domain, and the second host's domain under both of its names.
    assert "test" in os.listdir(m.p("localhost-2"))
    assert listing(m.p("localhost-3")) == ("ok", [remote_dom.name])


def test_remote_snapshots_and_xattrs(mount, host2_up, remote_dom):
    m = mount("-c", host2_up.uri)
    d = m.p("127.0.0.1", remote_dom.name)
    assert sorted(os.listdir(d)) == ["layers", "live", "revert", "s1", "s2"]
    s1, s2 = xattrs(os.path.join(d, "s1")), xattrs(os.path.join(d, "s2"))
    assert "parent" not in s1
    assert s2["parent"] == "s1"
    for snap, attrs in (("s1", s1), ("s2", s2)):
        assert attrs["kind"] == "external"
        assert attrs["state"] == "shutoff"
        assert int(attrs["created"]) == remote_dom.created(snap)
        assert int(os.stat(os.path.join(d, snap)).st_mtime) == remote_dom.created(snap)
    assert s1["description"] == "first on host2"
    assert s2["current"] == "1"
    assert s1.get("current", "0") == "0"
    with open(os.path.join(d, "revert")) as f:
        assert f.read().strip() == "s2"


def test_loopback_host_layers(mount, host2_up, remote_dom):
    """A loopback server is this machine: its chain is read from the image files, base (0) up to the live disk."""
    m = mount("-c", host2_up.uri)
    layers = m.p("127.0.0.1", remote_dom.name, "layers", "vda")
    names = os.listdir(layers)
    assert sorted(names) == sorted(["0-" + remote_dom.base.name, "1-" + remote_dom.top.name,
                                    "2-" + remote_dom.top.name.replace(".qcow2", ".s1"),
                                    "3-" + remote_dom.top.name.replace(".qcow2", ".s2")]), names
    assert xattrs(os.path.join(layers, "0-" + remote_dom.base.name))["file"] == str(remote_dom.base)


def test_remote_mkdir_and_rmdir(mount, host2_up, remote_dom):
    """mkdir on the second host goes through its libvirt (virsh on the TCP URI sees it); so does rmdir, or it
    answers ENOTSUP with the reason in user.snapfs.last_error."""
    m = mount("-c", host2_up.uri)
    d = m.p("127.0.0.1", remote_dom.name)
    err = errno_of(os.mkdir, os.path.join(d, "s3"))
    assert err is None, f"mkdir on the second host: {errno.errorcode.get(err, err)}: {xattrs(d).get('last_error')}"
    assert remote_dom.snapshots() == ["s1", "s2", "s3"]
    assert xattrs(os.path.join(d, "s3"))["parent"] == "s2"
    assert xattrs(os.path.join(d, "s3"))["kind"] == "external"
    assert remote_dom.host.virsh("snapshot-current", remote_dom.name, "--name").stdout.strip() == "s3"

    err = errno_of(os.rmdir, os.path.join(d, "s3"))
    print(f"rmdir on 127.0.0.1: {errno.errorcode.get(err, 'done')}")
    if err == errno.ENOTSUP:
        assert xattrs(d).get("last_error"), "ENOTSUP without a reason in user.snapfs.last_error"
        assert remote_dom.snapshots() == ["s1", "s2", "s3"]
        remote_dom.host.virsh("snapshot-delete", remote_dom.name, "s3", "--metadata")
        return
    assert err is None, f"rmdir on the second host: {errno.errorcode.get(err, err)}: {xattrs(d).get('last_error')}"
    assert remote_dom.snapshots() == ["s1", "s2"]
    assert wait_for(lambda: "s3" not in os.listdir(d))
    # The disk the host now names is a sound chain down to the same base.
    chain = remote_dom.chain()
    assert chain[0] == str(remote_dom.base), chain
    for image in chain:
        run("qemu-img", "check", "-U", image)


# ---------------------------------------------------------------- a host elsewhere

def _write_errno(path, text):
    """The errno of writing TEXT to PATH in one write, or None."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        return e.errno
    try:
        os.write(fd, text.encode())
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)
    return None


def _walk_layers(path, depth=0):
    """Every directory under PATH with its listing, each listing bounded in time."""
    outcome, names = listing(path, timeout=10)
    assert outcome == "ok", f"{path}: {outcome} {errno.errorcode.get(names, names)}"
    found = [(path, names, depth)]
    if depth < 2:
        for name in names:
            found += _walk_layers(os.path.join(path, name), depth + 1)
    return found


def _says_not_local(text):
    return text and ("local" in text or "this machine" in text)


def test_nonlocal_host_has_no_files(mount, host2_up, remote_dom):
    """Where the images are not files here, snapshots, live and layers are empty directories that say why: never a hang,
    never what a local file of the same name holds (here it would be the very image, and show host2.txt)."""
    m = mount("-c", host2_up.nonlocal_uri)
    assert sorted(os.listdir(m.p())) == [NONLOCAL_NAME, "localhost"]
    d = m.p(NONLOCAL_NAME, remote_dom.name)
    assert sorted(os.listdir(d)) == ["layers", "live", "revert", *remote_dom.snapshots()]
    # What libvirt's API tells still shows.
    assert xattrs(os.path.join(d, "s2"))["parent"] == "s1"

    for snap in ("s1", "s2", "live"):
        t0 = time.monotonic()
        assert listing(os.path.join(d, snap), timeout=10) == ("ok", []), snap
        assert time.monotonic() - t0 < 5, f"{snap} took {time.monotonic() - t0:.1f} s to say it is empty"
        why = xattrs(os.path.join(d, snap)).get("error")
        assert _says_not_local(why), f"{snap}: user.snapfs.error = {why!r}"

    # layers/, layers/vda/ or each N-FILE/ may be where it stops; wherever it does, it says why, and no
    # layer shows a single guest file.
    dirs = _walk_layers(os.path.join(d, "layers"))
    assert not [p for p, names, depth in dirs if depth == 2 and names], dirs
    empty = [p for p, names, depth in dirs if not names]
    assert empty, dirs
    for path in empty:
        why = xattrs(path).get("error")
        assert _says_not_local(why), f"{path}: user.snapfs.error = {why!r}"


def test_nonlocal_host_operations(mount, host2_up, remote_dom):
    """mkdir needs only libvirt's API; revert and rmdir, which libvirt 9.0 cannot do alone, are done by the host's
    libvirt (as virsh then says) or refused with ENOTSUP and the reason, and then nothing changed."""
    m = mount("-c", host2_up.nonlocal_uri)
    d = m.p(NONLOCAL_NAME, remote_dom.name)
    before = remote_dom.state()
    err = _write_errno(os.path.join(d, "revert"), "s1\n")
    print(f"revert on {NONLOCAL_NAME}: {errno.errorcode.get(err, 'done')}")
    if err is None:
        assert remote_dom.current() == "s1"
        before = remote_dom.state()
    else:
        assert err == errno.ENOTSUP, f"revert: {errno.errorcode.get(err, err)}: {xattrs(d).get('last_error')}"
        assert "revert" in xattrs(d).get("last_error", ""), xattrs(d).get("last_error")
        assert remote_dom.state() == before
    err = errno_of(os.rmdir, os.path.join(d, "s1"))
    print(f"rmdir on {NONLOCAL_NAME}: {errno.errorcode.get(err, 'done')}")
    if err is None:
        assert "s1" not in remote_dom.snapshots()
    else:
        assert err == errno.ENOTSUP, f"rmdir: {errno.errorcode.get(err, err)}: {xattrs(d).get('last_error')}"
        assert "delete" in xattrs(d).get("last_error", ""), xattrs(d).get("last_error")
        assert remote_dom.state() == before

    # mkdir is libvirt's API alone (no by-hand step): it works on any host.
    err = errno_of(os.mkdir, os.path.join(d, "s9"))
    assert err is None, f"mkdir on a host elsewhere: {errno.errorcode.get(err, err)}: {xattrs(d).get('last_error')}"
    assert "s9" in remote_dom.snapshots()
    assert remote_dom.current() == "s9"
    assert xattrs(os.path.join(d, "s9"))["kind"] == "external"
    assert listing(os.path.join(d, "s9"), timeout=10) == ("ok", [])
    remote_dom.host.virsh("snapshot-delete", remote_dom.name, "s9", "--metadata")


def test_nonlocal_running_domain(mount, host2_up, images):
    """A running domain on a host elsewhere: shown running, a live mkdir through its libvirt, and rmdir done by it or
    refused with the reason, nothing changed."""
    dom = RemoteDomain(host2_up, images, suffix="h2run", snapshots=(), start=True)
    try:
        m = mount("-c", host2_up.nonlocal_uri)
        d = m.p(NONLOCAL_NAME, dom.name)
        assert xattrs(d)["state"] == "running"
        err = errno_of(os.mkdir, os.path.join(d, "live1"))
        assert err is None, f"live mkdir on a host elsewhere: {errno.errorcode.get(err, err)}: {xattrs(d).get('last_error')}"
        assert dom.snapshots() == ["live1"]
        snapshots, current, top = dom.state()
        assert top != str(dom.top), "the running domain does not write to a new overlay"
        attrs = xattrs(os.path.join(d, "live1"))
        assert (attrs["kind"], attrs["state"], attrs["current"]) == ("external", "disk-snapshot", "1")
        assert listing(os.path.join(d, "live1"), timeout=10) == ("ok", [])
        assert _says_not_local(xattrs(os.path.join(d, "live1")).get("error"))

        before = dom.state()
        err = errno_of(os.rmdir, os.path.join(d, "live1"))
        print(f"live rmdir on {NONLOCAL_NAME}: {errno.errorcode.get(err, 'done')}")
        if err is None:
            assert dom.snapshots() == []
            assert dom.chain()[0] == str(dom.base)
        else:
            assert err == errno.ENOTSUP, f"rmdir: {errno.errorcode.get(err, err)}: {xattrs(d).get('last_error')}"
            assert "delete" in xattrs(d).get("last_error", ""), xattrs(d).get("last_error")
            assert dom.state() == before
        assert host2_up.virsh("domstate", dom.name).stdout.strip() == "running"
    finally:
        dom.remove()


# ---------------------------------------------------------------- a host that goes away and comes back

def _down(m, name):
    """The folder of a host that is down: an empty listing or EIO, at once, and the reason in user.snapfs.error."""
    outcome, value = listing(m.p(name))
    assert outcome != "hung", f"listing {name} hung while its host was down"
    if not ((outcome == "ok" and value == []) or (outcome == "error" and value == errno.EIO)):
        return False
    return bool(xattrs(m.p(name)).get("error"))


def _local_works(m, local_dom):
    outcome, names = listing(m.p("localhost"))
    return outcome == "ok" and local_dom.name in names


def test_host_killed_while_mounted(mount, host2_up, remote_dom, local_dom):
    """A host that goes away: its folder says so within seconds (empty or EIO, the reason in user.snapfs.error),
    nothing below it hangs, the other host is not disturbed."""
    m = mount("-c", host2_up.uri)
    assert listing(m.p("127.0.0.1")) == ("ok", [remote_dom.name])
    host2_up.kill()
    try:
        # The crash takes all of the host with it: no virtlogd or namespace of it is left.
        assert wait_for(lambda: not namespaces_of(host2_up), timeout=5), namespaces_of(host2_up)
        t0 = time.monotonic()
        # Nothing hangs, whatever it answers meanwhile.
        for fn in (lambda: os.listdir(m.p("127.0.0.1", remote_dom.name)),
                   lambda: xattrs(m.p("127.0.0.1", remote_dom.name, "s1"))):
            outcome, value = call_with_timeout(fn, timeout=5)
            assert outcome != "hung", "a call below a host that is down hung"
        assert _local_works(m, local_dom)
        assert listing(m.p("localhost", local_dom.name)) == ("ok", ["layers", "live", "revert"])
        assert wait_for(lambda: _down(m, "127.0.0.1"), timeout=DOWN_LIMIT, interval=0.2), \
            (f"{DOWN_LIMIT} s after the second libvirtd was killed, its folder holds "
             f"{listing(m.p('127.0.0.1'))} with xattrs {xattrs(m.p('127.0.0.1'))}")
        print(f"down after {time.monotonic() - t0:.1f} s: {xattrs(m.p('127.0.0.1'))['error']}")
        assert _local_works(m, local_dom)
    finally:
        host2_up.start()


def test_host_restarted_while_mounted(mount, host2_up, remote_dom):
    """A host that comes back after a crash fills its folder again by itself, and the error goes."""
    m = mount("-c", host2_up.uri)
    assert listing(m.p("127.0.0.1")) == ("ok", [remote_dom.name])
    host2_up.kill()
    try:
        assert wait_for(lambda: xattrs(m.p("127.0.0.1")).get("error"), timeout=DOWN_LIMIT, interval=0.2), \
            f"no user.snapfs.error {DOWN_LIMIT} s after the second libvirtd was killed"
    finally:
        host2_up.start()
    t0 = time.monotonic()
    assert wait_for(lambda: listing(m.p("127.0.0.1")) == ("ok", [remote_dom.name]) and
                    "error" not in xattrs(m.p("127.0.0.1")), timeout=BACK_LIMIT, interval=0.2), \
        f"not back {BACK_LIMIT} s after the second libvirtd answered again:\n{m.stderr_text()[-3000:]}"
    print(f"back {time.monotonic() - t0:.1f} s after the second libvirtd answered")
    assert sorted(os.listdir(m.p("127.0.0.1", remote_dom.name))) == ["layers", "live", "revert", *remote_dom.snapshots()]
    assert xattrs(m.p("127.0.0.1", remote_dom.name, "s2"))["kind"] == "external"


def test_host_down_at_start(mount, host2_up, remote_dom, local_dom):
    """With several -c, a host that does not answer at mount time still mounts, empty with the reason, and fills
    by itself once it answers."""
    host2_up.kill()
    try:
        m = mount("-c", host2_up.uri)
        assert sorted(os.listdir(m.p())) == ["127.0.0.1", "localhost"]
        assert wait_for(lambda: _down(m, "127.0.0.1"), timeout=DOWN_LIMIT, interval=0.2), \
            f"{listing(m.p('127.0.0.1'))} {xattrs(m.p('127.0.0.1'))}"
        assert xattrs(m.p("127.0.0.1"))["uri"] == host2_up.uri
        assert _local_works(m, local_dom)
    finally:
        host2_up.start()
    assert wait_for(lambda: listing(m.p("127.0.0.1")) == ("ok", [remote_dom.name]), timeout=BACK_LIMIT,
                    interval=0.2), f"not back {BACK_LIMIT} s after the second libvirtd answered"
    assert "error" not in xattrs(m.p("127.0.0.1"))


def test_unknown_driver_fails_before_mounting(libvirtd, run_prefix):
    """A URI whose driver does not exist is a bad URI, not a host that is down: non-zero exit, nothing mounted."""
    mnt = _mountpoint("bad")
    proc = subprocess.Popen([snapfs_bin(), "-f", "-c", URI, "-c", "nosuch:///x", str(mnt)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    finally:
        if is_mount(mnt):
            run("fusermount3", "-u", "-z", mnt, check=False)
    assert proc.returncode not in (0, None), f"exit {proc.returncode}; stderr: {err}"
    assert "nosuch" in err, f"stderr does not name the URI: {err!r}"
    assert len(err.strip().splitlines()) <= 3, err
    assert not mounts_under(mnt)
    os.rmdir(mnt)


# ---------------------------------------------------------------- a host that crashes again and again

def _walk_host_metadata(m, dom_name, stop, errors):
    """Walk what libvirt's API alone answers below the second host (no appliance) until STOP is set; any error
    other than one a host that is down may answer goes to ERRORS."""
    host = m.p("127.0.0.1")
    dom = os.path.join(host, dom_name)
    steps = (lambda: os.listdir(host), lambda: xattrs(host), lambda: os.listdir(dom), lambda: xattrs(dom),
             lambda: xattrs(os.path.join(dom, "s1")), lambda: os.listdir(os.path.join(dom, "layers", "vda")),
             lambda: open(os.path.join(dom, "revert")).read())
    while not stop.is_set():
        for step in steps:
            try:
                step()
            except OSError as e:
                # A host going away or back: EIO, an entry gone meanwhile, an attribute listed then dropped.
                if e.errno not in (errno.EIO, errno.ENOENT, errno.ENODATA):
                    errors.append(f"{errno.errorcode.get(e.errno, e.errno)}: {e}")


def test_host_crashing_repeatedly_then_unmount(mount, host2_up, remote_dom):
    """The second libvirtd killed and started again 40 times while four threads walk its folder: nothing below it
    hangs, its folder fills again after the last start, and the unmount that follows ends snapfs (exit 0, no
    sanitizer report) within 10 s."""
    import random
    import threading
    m = mount("-c", host2_up.uri)
    assert listing(m.p("127.0.0.1")) == ("ok", [remote_dom.name])
    stop, errors = threading.Event(), []
    walkers = [threading.Thread(target=_walk_host_metadata, args=(m, remote_dom.name, stop, errors), daemon=True)
               for _ in range(4)]
    for walker in walkers:
        walker.start()
    rng = random.Random(17)
    t0 = time.monotonic()
    try:
        # 40 rounds: about a minute here with other suites running (a start of the host is most of a round).
        for _ in range(40):
            host2_up.kill()
            time.sleep(rng.choice((0, 0.1)))
            host2_up.start()
            # Killed again at once (snapfs not yet aware, or still reconnecting), or once it has reconnected.
            time.sleep(rng.choice((0, 0, 0.3, 1.1)))
    finally:
        stop.set()
        for walker in walkers:
            walker.join(timeout=15)
    print(f"40 crashes and restarts in {time.monotonic() - t0:.1f} s")
    assert not [w for w in walkers if w.is_alive()], "a walk below the second host hung"
    assert not errors, errors[:5]
    assert wait_for(lambda: listing(m.p("127.0.0.1")) == ("ok", [remote_dom.name]) and
                    "error" not in xattrs(m.p("127.0.0.1")), timeout=BACK_LIMIT, interval=0.2), \
        f"not back {BACK_LIMIT} s after the last start:\n{m.stderr_text()[-3000:]}"
    print(f"snapfs exited {_unmount_within(m):.1f} s after the unmount")


# ---------------------------------------------------------------- the end of a mount, whatever a host does

def _unmount_within(m, limit=10):
    """Unmount M; assert snapfs exited 0, waiting LIMIT seconds for it (the bound is the wait's, which fails with
    every thread's stack). Returns how long it took, for the log."""
    t0 = time.monotonic()
    status = m.unmount(timeout=limit)
    assert status == 0, f"snapfs exited with {status} after unmount:\n{m.stderr_text()[-6000:]}"
    return time.monotonic() - t0


@pytest.mark.parametrize("state", ["connected", "killed", "stopped"])
def test_unmount_whatever_the_host_does(mount, host2_up, remote_dom, state):
    """The unmount ends snapfs within 10 s with the second host answering, killed (snapfs reconnecting to a refused
    port), or stopped (SIGSTOP: a peer that holds its connection open and never answers, as a wedged or unreachable
    host does, until keepalive gives up after 20 s)."""
    m = mount("-c", host2_up.uri)
    assert listing(m.p("127.0.0.1")) == ("ok", [remote_dom.name])
    pid = host2_up.daemon_pid()
    try:
        if state == "killed":
            host2_up.kill()
            assert wait_for(lambda: xattrs(m.p("127.0.0.1")).get("error"), timeout=DOWN_LIMIT, interval=0.2)
        elif state == "stopped":
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.5)
        print(f"{state}: snapfs exited {_unmount_within(m):.1f} s after the unmount")
    finally:
        if state == "stopped":
            os.kill(pid, signal.SIGCONT)


def test_unmount_while_connecting_to_a_silent_host(mount):
    """A host whose port accepts connections but never answers, as a wedged libvirtd does: snapfs, reconnecting to
    it in the background, is caught in libvirt's open, which has no time limit; the unmount still ends it within
    10 s."""
    port = free_port()
    m = mount("-c", f"qemu+tcp://127.0.0.1:{port}/system")
    assert wait_for(lambda: xattrs(m.p("127.0.0.1")).get("error"), timeout=DOWN_LIMIT, interval=0.2)
    with socket.socket() as silent:
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        silent.bind(("127.0.0.1", port))
        silent.listen(8)
        silent.settimeout(5)
        # Accepted and never answered: snapfs now waits in virConnectOpen() for the first reply.
        peer, _ = silent.accept()
        with peer:
            print(f"snapfs exited {_unmount_within(m):.1f} s after the unmount")


# ---------------------------------------------------------------- copies of the mount in other mount namespaces

def _copy_in(pid, m):
    """Whether process PID, in a mount namespace of its own, has a copy of M's mount (by its device)."""
    try:
        if os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            return False
        with open(f"/proc/{pid}/mountinfo") as f:
            return any(line.split()[2] == m.device and " - fuse" in line for line in f)
    except OSError:
        return False


def test_unmount_while_another_namespace_holds_a_copy(mount, host2_up, remote_dom):
    """A mount namespace made while snapfs is mounted (here by unshare; a container, a sandboxed service or a qemu
    started where / is not shared alike) holds a copy of the mount that fusermount3 -u does not reach, and the kernel
    keeps the session alive for it: snapfs still exits 0 within 10 s of the unmount, and says why."""
    m = mount("-c", host2_up.uri)
    assert listing(m.p("127.0.0.1")) == ("ok", [remote_dom.name])
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "300"])
    try:
        assert wait_for(lambda: _copy_in(holder.pid, m), timeout=10), "unshare made no copy of the mount"
        print(f"snapfs exited {_unmount_within(m):.1f} s after the unmount")
        assert _copy_in(holder.pid, m), "the copy went with the unmount: the test proves nothing"
        assert f"pid {holder.pid} (sleep)" in m.stderr_text(), m.stderr_text()[-3000:]
    finally:
        holder.kill()
        holder.wait()


def test_lazy_unmount_serves_open_folders_until_closed(mount, host2_up, remote_dom):
    """fusermount3 -u -z: a folder still open under the mount goes on answering (snapfs does not end a session that
    still has an open handle just because the mount left its namespace), and its close ends snapfs."""
    m = mount("-c", host2_up.uri)
    fd = os.open(m.p("127.0.0.1", remote_dom.name), os.O_RDONLY | os.O_DIRECTORY)
    try:
        run("fusermount3", "-u", "-z", m.path)
        time.sleep(2.5)   # past the second after which snapfs ends a session nobody uses
        assert m.proc.poll() is None, f"snapfs ended with a folder open:\n{m.stderr_text()[-3000:]}"
        assert sorted(os.listdir(fd)) == ["layers", "live", "revert", *remote_dom.snapshots()]
    finally:
        os.close(fd)
    print(f"snapfs exited {_unmount_within(m):.1f} s after the last close")
