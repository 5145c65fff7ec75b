# SPDX-License-Identifier: GPL-2.0-or-later
# Where snapfs logs: syslog (ident snapfs, facility daemon, the pid) once daemonized, stderr with -f; -o debug adds lines.
import errno
import os
import re
import socket
import subprocess
import threading
import uuid
from urllib.parse import urlparse

import pytest

from conftest import RUN_PREFIX, URI, _mountpoint, errno_of, is_mount, run, snapfs_bin, wait_for

DEV_LOG = "/dev/log"
LOG_DAEMON = 3
SEVERITY = {3: "error", 4: "warning", 6: "info", 7: "debug"}

# glibc's syslog(3) with LOG_PID: "<PRI>Mmm dd hh:mm:ss IDENT[PID]: MESSAGE".
RECORD = re.compile(r"<(\d+)>(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d )?([^\[\s:]+)\[(\d+)\]: (.*)", re.S)

# What snapfs -f writes on stderr.
STDERR_LINE = re.compile(r"snapfs: (error|warning|info|debug): (.*)")

# The host part of a domain's name in the log: the folder snapfs gives the connection's host.
HOST = urlparse(URI).hostname or "localhost"


class Record:
    def __init__(self, raw):
        m = RECORD.fullmatch(raw.decode(errors="replace").rstrip("\0\n"))
        if not m:
            raise AssertionError(f"not a syslog record: {raw!r}")
        pri = int(m.group(1))
        self.facility, self.severity = pri >> 3, pri & 7
        self.ident, self.pid, self.message = m.group(2), int(m.group(3)), m.group(4)

    def __repr__(self):
        return f"<{self.facility}.{SEVERITY.get(self.severity, self.severity)}> {self.ident}[{self.pid}]: {self.message}"


class SyslogReceiver:
    """A datagram socket bound at /dev/log, as a syslog daemon has it: the test machine has none.
    Whatever was at /dev/log is moved aside and put back after; where that is a live socket (a syslog
    daemon, journald), every datagram is passed on to it, so the host's log loses nothing meanwhile."""

    def __init__(self):
        self.aside = None
        self.forward = None
        if os.path.lexists(DEV_LOG):
            self.aside = f"{DEV_LOG}.snapfs-test-{os.getpid()}"
            os.rename(DEV_LOG, self.aside)
            try:
                self.forward = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.forward.connect(self.aside)
            except OSError:
                self.forward.close()
                self.forward = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind(DEV_LOG)
        except OSError:
            self.sock.close()
            self._restore()
            raise
        os.chmod(DEV_LOG, 0o666)
        self.ino = os.lstat(DEV_LOG).st_ino
        self.sock.settimeout(0.1)
        self.raw = []
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self):
        while not self.stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.raw.append(data)
            if self.forward:
                try:
                    self.forward.send(data)
                except OSError:
                    pass

    def records(self, pid=None):
        with self.lock:
            raw = list(self.raw)
        found = [Record(r) for r in raw]
        return [r for r in found if pid is None or r.pid == pid]

    def _restore(self):
        if self.aside:
            os.rename(self.aside, DEV_LOG)

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close()
        if self.forward:
            self.forward.close()
        # Only our own socket: never what something else may have put there meanwhile.
        if os.path.lexists(DEV_LOG) and os.lstat(DEV_LOG).st_ino == self.ino:
            os.unlink(DEV_LOG)
        self._restore()


@pytest.fixture(scope="module")
def syslog():
    receiver = SyslogReceiver()
    yield receiver
    receiver.close()


def snapfs_records(syslog, mountpoint):
    """The records of the daemon that mounted MOUNTPOINT: found by its "mounted ... on MOUNTPOINT" line."""
    for r in syslog.records():
        if r.ident == "snapfs" and r.message.startswith("mounted ") and r.message.endswith(f" on {mountpoint}"):
            return syslog.records(r.pid)
    return []


def shut_off_domain(domains, images):
    """A domain with one disk, base and empty overlay, of image names no other test's domain shares."""
    tag = f"log{uuid.uuid4().hex[:8]}"
    base = images.ext4(f"{RUN_PREFIX}-{tag}-base.qcow2", {"hello.txt": "logged\n"})
    top = images.empty_overlay(f"{RUN_PREFIX}-{tag}-top.qcow2", base)
    return domains.define([("vda", top, "qcow2")], suffix=tag)


def exercise(mountpoint, dom, snap):
    """What logs about a domain and a snapshot: mkdir and rmdir of SNAP, and a revert refused (ENOENT)."""
    d = os.path.join(mountpoint, dom.name)
    os.mkdir(os.path.join(d, snap))
    assert snap in dom.snapshots()
    os.rmdir(os.path.join(d, snap))
    assert snap not in dom.snapshots()
    fd = os.open(os.path.join(d, "revert"), os.O_WRONLY | os.O_TRUNC)
    try:
        assert errno_of(os.write, fd, f"{snap}-nosuch\n".encode()) == errno.ENOENT
    finally:
        os.close(fd)


def check_lines(lines, dom, snap, debug):
    """LINES: [(severity name, message)] of one snapfs run."""
    label = f"domain '{HOST}/{dom.name}'"
    messages = [m for _, m in lines]
    for severity, message in [("info", f"created snapshot '{snap}' of {label}"),
                              ("info", f"deleted snapshot '{snap}' of {label}")]:
        assert (severity, message) in lines, f"no {severity} line {message!r} in:\n" + "\n".join(messages)
    refused = [(s, m) for s, m in lines if f"'{snap}-nosuch'" in m and not m.startswith("libvirt: ")]
    assert refused and all(s == "warning" and dom.name in m for s, m in refused), \
        f"the refused revert is not a warning naming the domain: {refused}"
    # Every line about the snapshot names its domain too (libvirt's own messages, passed on at debug
    # level, say what libvirt says).
    for message in messages:
        if snap in message and not message.startswith("libvirt: "):
            assert dom.name in message, f"a line names snapshot '{snap}' but not its domain: {message!r}"
    debug_lines = [m for s, m in lines if s == "debug"]
    if debug:
        assert any(label in m for m in debug_lines), "-o debug: no debug line names the domain:\n" + "\n".join(messages)
    else:
        assert not debug_lines, f"debug lines without -o debug: {debug_lines}"


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_daemon_logs_to_syslog(syslog, domains, images, debug):
    """Without -f: snapfs detaches once mounted (-o debug too) and logs to syslog, the domain and snapshot named."""
    dom = shut_off_domain(domains, images)
    mnt = str(_mountpoint("log"))
    args = [snapfs_bin(), "-c", URI, *(["-o", "debug"] if debug else []), mnt]
    started = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert started.returncode == 0, f"snapfs {args}: {started.returncode}\n{started.stderr}"
    pid = None
    try:
        assert is_mount(mnt), "snapfs returned before mounting"
        assert wait_for(lambda: snapfs_records(syslog, mnt), timeout=5), \
            f"no 'mounted ... on {mnt}' record in syslog: {syslog.records()}"
        pid = snapfs_records(syslog, mnt)[0].pid
        assert os.path.exists(f"/proc/{pid}"), f"the record's pid {pid} is not the running daemon's"
        exercise(mnt, dom, "logged")
    finally:
        run("fusermount3", "-u", mnt, check=False)
        if is_mount(mnt):
            run("fusermount3", "-u", "-z", mnt, check=False)
    unmounted = f"unmounted {HOST} ({URI}) from {mnt}"
    assert wait_for(lambda: any(r.message == unmounted for r in syslog.records(pid)), timeout=20), \
        f"no {unmounted!r} record: {syslog.records(pid)}"
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=20), "the daemon did not exit"

    records = syslog.records(pid)
    assert all(r.ident == "snapfs" and r.facility == LOG_DAEMON for r in records), records
    mounted = [(r.severity, r.message) for r in records if r.message.startswith("mounted ")]
    assert mounted == [(6, f"mounted {HOST} ({URI}) on {mnt}")], mounted
    check_lines([(SEVERITY.get(r.severity, str(r.severity)), r.message) for r in records], dom, "logged", debug)
    # Until it has mounted, the daemon logs to the terminal as well (and only then), so that what goes
    # wrong on the way is seen where the command was typed.
    before = [g.group(2) for g in map(STDERR_LINE.fullmatch, started.stderr.splitlines()) if g]
    assert len(before) == len(started.stderr.splitlines()), f"not a log line: {started.stderr}"
    assert set(before) <= {r.message for r in records}, f"on stderr, not in syslog: {before}"
    assert not any(m.startswith(("mounted ", "created snapshot ")) for m in before), before
    if not debug:
        assert before == [], started.stderr


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_foreground_logs_to_stderr(syslog, mount, domains, images, debug):
    """With -f: the same lines on stderr, "snapfs: LEVEL: ...", and nothing in syslog."""
    dom = shut_off_domain(domains, images)
    m = mount(*(["-o", "debug"] if debug else []))
    exercise(m.path, dom, "logged")
    assert m.unmount() == 0, m.stderr_text()[-3000:]
    text = m.stderr_text()
    lines = [(g.group(1), g.group(2)) for g in map(STDERR_LINE.fullmatch, text.splitlines()) if g]
    assert ("info", f"mounted {HOST} ({URI}) on {m.path}") in lines, text[-3000:]
    assert ("info", f"unmounted {HOST} ({URI}) from {m.path}") in lines, text[-3000:]
    check_lines(lines, dom, "logged", debug)
    assert not snapfs_records(syslog, m.path), f"a foreground snapfs logged to syslog: {syslog.records()}"
    if debug:
        assert "opcode: " in text, "-o debug with -f: no FUSE request log on stderr"


def test_daemon_logs_to_terminal_until_mounted(syslog, libvirtd, run_prefix):
    """What a daemon logs before it has mounted (here: a second host that does not answer) is on the
    terminal and in syslog; lines about hosts name their URI."""
    down = "qemu+tcp://127.0.0.1:1/system"
    mnt = str(_mountpoint("log"))
    started = subprocess.run([snapfs_bin(), "-c", URI, "-c", down, mnt], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30)
    assert started.returncode == 0, started.stderr
    try:
        assert wait_for(lambda: snapfs_records(syslog, mnt), timeout=5), syslog.records()
        records = snapfs_records(syslog, mnt)
    finally:
        run("fusermount3", "-u", mnt, check=False)
    pid = records[0].pid
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=20), "the daemon did not exit"
    warned = [g.group(2) for g in map(STDERR_LINE.fullmatch, started.stderr.splitlines())
              if g and g.group(1) == "warning"]
    assert len(warned) == 1 and warned[0].startswith(f"{down}: not answering yet"), started.stderr
    assert (4, warned[0]) in [(r.severity, r.message) for r in records], records
    assert f"mounted {HOST} ({URI}), 127.0.0.1 ({down}) on {mnt}" in [r.message for r in records], records
