# SPDX-License-Identifier: GPL-2.0-or-later
# Never hung: a KVM that stalls or aborts, an appliance frozen in a call or at its first mount, unmount and
# SIGTERM with a frozen appliance, the per-domain lock behind a long operation, --check on a stalling KVM.
import errno
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, URI, Mount, _mountpoint, module_domains, run, snapfs_bin, virsh

FAKE_KVM = REPO / "tests" / "lib" / "fake-kvm-qemu"
# Short deadlines, so that what is bounded shows within a test's time; a TCG boot of 3 disks takes 10-15 s here.
TIMEOUT = 45
KVM_TIMEOUT = 8
CALL_TIMEOUT_ARGS = ["-o", f"appliance_timeout={TIMEOUT},kvm_timeout={KVM_TIMEOUT}"]
# A call's own deadline, shorter than a boot's: mounting a view of these small disks takes a second or two.
CALL = 15
KVM_USABLE = os.access("/dev/kvm", os.R_OK | os.W_OK)
RETRY = 11     # a view that failed is not tried again for 10 s (GUEST_RETRY_US)


class BoundSet:
    """Two small domains, each with a snapshot: 'one' holds a.txt and big.bin, 'two' holds b.txt."""

    def __init__(self, doms):
        self.big = os.urandom(3 << 20)
        self.one = doms.simple(suffix="bone", files={"a.txt": "alpha\n", "big.bin": self.big,
                                                      "more.bin": os.urandom(3 << 20)})
        self.one.snapshot("s1")
        self.two = doms.simple(suffix="btwo", files={"b.txt": "bravo\n"})
        self.two.snapshot("t1")


@pytest.fixture(scope="module")
def bset(libvirtd, images, run_prefix):
    with module_domains(images, run_prefix) as doms:
        yield BoundSet(doms)


def mount(prefix, env=None, args=()):
    return Mount(_mountpoint(prefix), ["-c", URI, *CALL_TIMEOUT_ARGS, *args], timeout=30, env=env)


def qemus_of(pid):
    """The qemu processes snapfs PID started (libguestfs forks them as its children)."""
    out = run("pgrep", "-P", str(pid), "-f", "qemu-system", check=False).stdout.split()
    return [int(p) for p in out]


def descendants(pid):
    out = run("ps", "-e", "-o", "pid=,ppid=", check=False).stdout.split("\n")
    children = {}
    for line in out:
        parts = line.split()
        if len(parts) == 2:
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def timed(fn, *args):
    started = time.monotonic()
    try:
        value = ("ok", fn(*args))
    except OSError as e:
        value = ("error", e.errno)
    return value, time.monotonic() - started


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def fake_kvm_env(mode, runtime):
    """A qemu whose KVM is broken the MODE way; what snapfs remembers of KVM goes to RUNTIME, this test's own."""
    return {"LIBGUESTFS_HV": str(FAKE_KVM), "SNAPFS_FAKE_KVM": mode, "LIBGUESTFS_BACKEND_SETTINGS": "",
            "SNAPFS_RUNTIME_DIR": str(runtime)}


def kvm_verdicts(runtime):
    return sorted(p.name for p in runtime.glob("kvm-failed-*")) if runtime.exists() else []


@pytest.mark.parametrize("mode", ["stall", "abort"])
def test_broken_kvm_falls_back_to_tcg(bset, mode, tmp_path):
    """A KVM that accepts the guest and runs nothing, or that aborts: the first read still shows the bytes,
    through TCG, with one line in the log that says why; the second domain's appliance starts on TCG at once.
    The next snapfs of this boot starts on TCG at once too: the first one wrote down that KVM failed."""
    runtime = tmp_path / "run"
    m = mount(f"kvm{mode}", env=fake_kvm_env(mode, runtime))
    try:
        (status, data), took = timed(read_file, m.p(bset.one.name, "s1", "sda", "a.txt"))
        assert (status, data) == ("ok", b"alpha\n"), m.stderr_text()
        (status, data), took2 = timed(read_file, m.p(bset.two.name, "t1", "sda", "b.txt"))
        assert (status, data) == ("ok", b"bravo\n"), m.stderr_text()
        log = m.stderr_text()
        if KVM_USABLE:
            said = [line for line in log.splitlines() if "trying again without KVM" in line]
            assert len(said) == 1, log
            if mode == "stall":
                assert f"printed nothing for {KVM_TIMEOUT} s" in said[0], said
                assert took > KVM_TIMEOUT, took     # it did wait for the stall, then no more than a TCG boot
            else:
                assert "printed nothing" not in said[0], said   # an abort is seen at once, not waited out
        assert took < KVM_TIMEOUT + TIMEOUT, took
        m.check_clean_exit()
    finally:
        if m.exit_status is None:
            m.unmount()
        m.close()
    if not KVM_USABLE:
        assert kvm_verdicts(runtime) == []      # TCG from the start: KVM never failed
        return
    verdicts = kvm_verdicts(runtime)
    assert len(verdicts) == 1, verdicts
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    assert stat.S_IMODE((runtime / verdicts[0]).stat().st_mode) == 0o600

    # The next snapfs: no wait for a stall, no failed start; the log says why.
    m = mount(f"kvm{mode}again", env=fake_kvm_env(mode, runtime))
    try:
        assert read_file(m.p(bset.one.name, "s1", "sda", "a.txt")) == b"alpha\n", m.stderr_text()
        log = m.stderr_text()
        assert "trying again without KVM" not in log, log
        assert "KVM failed an appliance of an earlier snapfs of this boot" in log, log
        assert verdicts[0] in log
        # Said when the first appliance starts, not at mount (a mount that reads no guest file says nothing of it).
        assert log.index("mounted ") < log.index("KVM failed an appliance of an earlier snapfs"), log
        m.check_clean_exit()
    finally:
        if m.exit_status is None:
            m.unmount()
        m.close()


def test_kvm_verdict_of_another_user_or_qemu_is_ignored(bset, tmp_path):
    """What snapfs wrote down of KVM counts only where only this user could have written it, and only for the
    qemu it was found with: a verdict others may write, or one of another qemu, and KVM is tried again.
    Without a usable /dev/kvm, snapfs never tries KVM: it neither writes a verdict nor heeds one."""
    runtime = tmp_path / "run"
    if not KVM_USABLE:
        runtime.mkdir(mode=0o700)
        planted = runtime / "kvm-failed-0000000000000000"
        planted.write_text("boot x qemu y kvm z\nplanted by the test\n")
        m = mount("kvmnone", env=fake_kvm_env("abort", runtime))
        try:
            assert read_file(m.p(bset.one.name, "s1", "sda", "a.txt")) == b"alpha\n"
            log = m.stderr_text()
            assert "earlier snapfs" not in log and "trying again without KVM" not in log, log
            m.check_clean_exit()
        finally:
            if m.exit_status is None:
                m.unmount()
            m.close()
        assert kvm_verdicts(runtime) == [planted.name]
        assert planted.read_text() == "boot x qemu y kvm z\nplanted by the test\n"
        return
    m = mount("kvmfirst", env=fake_kvm_env("abort", runtime))
    try:
        assert read_file(m.p(bset.one.name, "s1", "sda", "a.txt")) == b"alpha\n"
    finally:
        m.unmount()
        m.close()
    [verdict] = kvm_verdicts(runtime)
    (runtime / verdict).chmod(0o666)
    # Another qemu binary (a copy of the fake): its own verdict, not the first one's.
    other = tmp_path / "other-qemu"
    shutil.copy(FAKE_KVM, other)
    for name, env in (("kvmunsafe", fake_kvm_env("abort", runtime)),
                      ("kvmother", {**fake_kvm_env("abort", runtime), "LIBGUESTFS_HV": str(other)})):
        m = mount(name, env=env)
        try:
            assert read_file(m.p(bset.one.name, "s1", "sda", "a.txt")) == b"alpha\n"
            log = m.stderr_text()
            assert len([line for line in log.splitlines() if "trying again without KVM" in line]) == 1, log
            assert "earlier snapfs" not in log, log
            m.check_clean_exit()
        finally:
            if m.exit_status is None:
                m.unmount()
            m.close()
    # The unsafe one was written anew (0600) by the snapfs that found KVM failing again; the other qemu has its own.
    assert stat.S_IMODE((runtime / verdict).stat().st_mode) == 0o600
    assert len(kvm_verdicts(runtime)) == 2, kvm_verdicts(runtime)


def test_check_ends_on_a_stalling_kvm(tmp_path):
    started = time.monotonic()
    out = run(snapfs_bin(), "--check", "-c", URI, check=False, timeout=400, env=fake_kvm_env("stall", tmp_path))
    took = time.monotonic() - started
    line = [l for l in out.stdout.splitlines() if "libguestfs appliance starts" in l]
    assert line and line[0].startswith("ok"), out.stdout
    if KVM_USABLE:
        assert "KVM is broken here (it accepts the guest but runs nothing)" in line[0], out.stdout
        assert "uses TCG" in line[0]
    # The stall is noticed after snapfs's default kvm_timeout (20 s), then one TCG boot.
    assert took < 20 + 200, took


@pytest.fixture(scope="module")
def frozen(bset):
    """One mount with short deadlines whose first appliance freezes before its first mount."""
    m = mount("frozen", env={"SNAPFS_FAULT": "guest:freeze-at-mount"}, args=["-o", f"call_timeout={CALL}"])
    yield m
    if m.exit_status is None:
        m.unmount()
    m.close()


def test_appliance_that_never_answers_its_mount(bset, frozen):
    """The first appliance never answers its mount: the request fails with EIO within the deadline, says why, and
    the next access starts a fresh appliance that returns the right bytes; meanwhile another domain answers."""
    m = frozen
    path = m.p(bset.one.name, "s1")
    box = {}
    t = threading.Thread(target=lambda: box.update(r=timed(os.listdir, path)))
    t.start()
    # While that one waits on its frozen appliance, the root and another domain's folder answer at once.
    time.sleep(3)
    (status, names), took = timed(os.listdir, m.path)
    assert status == "ok" and bset.one.name in names and took < 15, (status, took)
    (status, names), took = timed(os.listdir, m.p(bset.two.name))
    assert status == "ok" and "t1" in names and took < 15, (status, took)
    t.join(TIMEOUT + CALL + 60)
    assert not t.is_alive(), "the listing of a frozen appliance's view never answered"
    (status, value), took = box["r"]
    assert (status, value) == ("error", errno.EIO), box
    assert CALL < took < TIMEOUT + CALL + 30, took     # the launch, then the mount's own deadline
    why = os.getxattr(path, "user.snapfs.error").decode()
    assert f"did not answer within {CALL} s (-o call_timeout)" in why, why
    assert "did not answer within" in m.stderr_text()
    # Within GUEST_RETRY (10 s) the view fails at once, as the kernel's retries must; then a fresh appliance.
    (status, value), took = timed(os.listdir, path)
    assert (status, value) == ("error", errno.EIO) and took < 15, (status, took)
    time.sleep(RETRY)
    assert read_file(m.p(bset.one.name, "s1", "sda", "a.txt")) == b"alpha\n"
    assert "user.snapfs.error" not in os.listxattr(path)


def test_appliance_frozen_mid_call(bset, frozen):
    """SIGSTOP the appliance's qemu, then read what is not cached: EIO within the deadline, then right bytes."""
    m = frozen
    big = m.p(bset.one.name, "s1", "sda", "big.bin")
    assert os.path.getsize(big) == len(bset.big)
    qemus = qemus_of(m.proc.pid)
    assert qemus, "no appliance running"
    for q in qemus:
        os.kill(q, signal.SIGSTOP)
    (status, value), took = timed(read_file, big)
    assert (status, value) == ("error", errno.EIO), (status, took)
    assert CALL - 1 < took < CALL + 30, took
    assert "did not answer within" in os.getxattr(m.p(bset.one.name, "s1"), "user.snapfs.error").decode()
    time.sleep(RETRY)
    assert read_file(big) == bset.big
    for q in qemus:
        assert not Path(f"/proc/{q}").exists() or "Z" in Path(f"/proc/{q}/stat").read_text().split()[2]
    m.check_clean_exit()
    assert not descendants(m.proc.pid)


@pytest.mark.parametrize("how", ["unmount", "sigterm"])
def test_stop_with_a_frozen_appliance(bset, how):
    """Unmount, or SIGTERM while a read waits on a frozen appliance: snapfs ends within 10 s, nothing left."""
    m = mount(f"stop{how}")
    try:
        assert read_file(m.p(bset.one.name, "s1", "sda", "a.txt")) == b"alpha\n"
        qemus = qemus_of(m.proc.pid)
        assert qemus
        kids = descendants(m.proc.pid)
        for q in qemus:
            os.kill(q, signal.SIGSTOP)
        reader = None
        if how == "sigterm":
            reader = subprocess.Popen(["cat", m.p(bset.one.name, "s1", "sda", "more.bin")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2)
            assert reader.poll() is None, "the read should wait on the frozen appliance"
            started = time.monotonic()
            m.proc.send_signal(signal.SIGTERM)
        else:
            started = time.monotonic()
            run("fusermount3", "-u", m.path)
        status = m.proc.wait(timeout=30)
        took = time.monotonic() - started
        m.exit_status = status
        assert took < 10, (took, m.stderr_text()[-3000:])
        assert status == 0, m.stderr_text()[-3000:]
        if reader:
            reader.wait(timeout=10)
        time.sleep(1)
        left = [k for k in kids if Path(f"/proc/{k}").exists()]
        assert not left, run("ps", "-o", "pid,stat,args", "-p", ",".join(map(str, left)), check=False).stdout
        assert not m.sanitizer_reports(), m.stderr_text()
    finally:
        if m.exit_status is None:
            m.unmount()
        if Path(m.path).exists() and os.path.ismount(m.path):
            run("fusermount3", "-u", "-z", m.path, check=False)
        m.close()


def test_lock_behind_a_long_operation(libvirtd, images, run_prefix):
    """While an rmdir holds a domain's lock (held 8 s by a test fault), a revert and a setfattr there answer EBUSY
    within the bound, naming what runs, and change nothing; other domains' snapshots answer meanwhile.
    (mkdir and ls of the same domain folder wait in the kernel, which locks a folder during rmdir.)"""
    with module_domains(images, run_prefix) as doms:
        busy = doms.simple(suffix="block", files={"c.txt": "charlie\n"})
        busy.snapshot("s0")
        busy.snapshot("s1")
        other = doms.simple(suffix="bother", files={"d.txt": "delta\n"})
        other.snapshot("o1")
        m = mount("lock", env={"SNAPFS_FAULT": "engine:slow-delete"})
        try:
            assert "d.txt" in os.listdir(m.p(other.name, "o1", "sda"))
            # Opened and looked up before the rmdir: during it the kernel lets no new name of the folder be looked up.
            control = os.open(m.p(busy.name, "revert"), os.O_WRONLY)
            os.stat(m.p(busy.name, "s0"))
            box = {}
            t = threading.Thread(target=lambda: box.update(r=timed(os.rmdir, m.p(busy.name, "s1"))))
            t.start()
            time.sleep(1)
            progress = os.getxattr(m.p(busy.name), "user.snapfs.progress").decode()
            assert "deleting snapshot 's1'" in progress, progress

            (status, value), took = timed(os.write, control, b"s0\n")
            os.close(control)
            assert (status, value) == ("error", errno.EBUSY), (status, value)
            assert 2.5 < took < 10, took
            last = os.getxattr(m.p(busy.name), "user.snapfs.last_error").decode()
            assert "another snapshot operation on it is under way (deleting snapshot 's1')" in last, last
            (status, value), took = timed(os.setxattr, m.p(busy.name, "s0"), "user.snapfs.description", b"x")
            assert (status, value) == ("error", errno.EBUSY) and took < 10, (status, value, took)
            (status, names), took = timed(os.listdir, m.p(other.name, "o1", "sda"))
            assert status == "ok" and "d.txt" in names and took < 5, (status, took)
            t.join(60)
            assert box["r"][0] == ("ok", None), box
            # The refused revert and description changed nothing: s0 is as it was, and no pre-revert state.
            assert busy.snapshots() == ["s0"]
            assert busy.snapshot_xml("s0").findtext("description") in (None, "")
            m.check_clean_exit()
        finally:
            if m.exit_status is None:
                m.unmount()
            m.close()


def test_max_appliances_is_a_hard_limit(bset):
    """With max_appliances=1 and that one appliance held by a call, another domain's first look answers EAGAIN
    after a bounded wait and starts no second qemu; once the call ends, it takes the appliance's place."""
    m = mount("maxapp", args=["-o", "max_appliances=1"])
    try:
        assert read_file(m.p(bset.one.name, "s1", "sda", "a.txt")) == b"alpha\n"
        qemus = qemus_of(m.proc.pid)
        assert len(qemus) == 1
        for q in qemus:
            os.kill(q, signal.SIGSTOP)
        reader = subprocess.Popen(["cat", m.p(bset.one.name, "s1", "sda", "more.bin")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)
        (status, value), took = timed(os.listdir, m.p(bset.two.name, "t1"))
        assert (status, value) == ("error", errno.EAGAIN), (status, value)
        assert 9 < took < 20, took
        assert len(qemus_of(m.proc.pid)) == 1
        assert "all 1 appliances (-o max_appliances) are busy" in m.stderr_text()
        for q in qemus:
            os.kill(q, signal.SIGCONT)
        assert reader.wait(timeout=60) == 0
        assert "b.txt" in os.listdir(m.p(bset.two.name, "t1", "sda"))
        assert len(qemus_of(m.proc.pid)) == 1
        m.check_clean_exit()
    finally:
        if m.exit_status is None:
            m.unmount()
        m.close()
