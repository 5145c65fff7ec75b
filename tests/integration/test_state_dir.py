# SPDX-License-Identifier: GPL-2.0-or-later
# The state directory: one snapfs at a time on it, only a private one is used, and what a journal read back says is
# trusted only as far as it names images a revert makes, and dropped only when libvirt says the domain is gone.
import errno
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid as uuidlib

import pytest

from conftest import IMAGE_ROOT, RUN_PREFIX, URI, _mountpoint, errno_of, is_mount, snapfs_bin, virsh, wait_for

# How long a second snapfs waits for the state directory's lock before it refuses (fs/main.c), with room for a
# loaded machine.
STATE_WAIT = 10
REFUSAL_LIMIT = STATE_WAIT + 20
# Where the per-domain lock files of root's snapfs are (fs/main.c).
LOCK_DIR = "/run/snapfs"
# How long mkdir waits for another operation on its domain before EBUSY (include/snapfs/engine.h), with room.
OPERATION_WAIT = 3.0


def state_dir(name):
    path = IMAGE_ROOT / "state" / name
    shutil.rmtree(path, ignore_errors=True)
    return path


def snapfs(*args, foreground=True, timeout=REFUSAL_LIMIT):
    """Run a snapfs that is to be refused, to its end: (exit status, stderr, mountpoint, whether it mounted).
    One that mounts after all is stopped and unmounted (status None), so that the next test finds no mount."""
    mnt = _mountpoint("r")
    proc = subprocess.Popen([snapfs_bin(), *(["-f"] if foreground else []), "-c", URI, *map(str, args), str(mnt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        _, err = proc.communicate(timeout=timeout)
        status = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        status = None
    mounted = is_mount(mnt)
    if mounted:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    return status, err, mnt, mounted or status is None


def listing(path):
    """Every name under PATH, with its mode and owner: what a refusal must leave as it was."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), path)] = (st.st_mode, st.st_uid)
    return out


def journal_path(state, domain, uri=URI):
    """Where snapfs keeps DOMAIN's revert journal (src/revert/journal.c: a hash of the URI and the name)."""
    return state / (hashlib.sha256(f"{uri}\n{domain}".encode()).hexdigest()[:16] + ".revert-journal")


def write_journal(state, domain, uuid, disks, target="s1", phase="native", keep="pre-revert-20260101-000000",
                  old_current="s1", uri=URI):
    """A journal of a revert cut short before its commit point (as a kill -9 leaves it): a rollback at next start."""
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    lines = ["[revert]", f"uri={uri}", f"domain={domain}", f"uuid={uuid}", f"target={target}", f"phase={phase}",
             f"keep={keep}", f"old-current={old_current}"]
    for target_dev, keys in disks.items():
        lines.append(f"[disk {target_dev}]")
        lines += [f"{k}={v}" for k, v in keys.items()]
    path = journal_path(state, domain, uri)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------- one snapfs per state directory

def test_second_snapfs_refused_naming_the_first(mount, domains):
    """A second read-write snapfs on the same state directory waits for the first, then refuses before it mounts,
    naming the first's pid; the first works on as before, and a read-only one may run beside it."""
    dom = domains.simple()
    state = state_dir("second")
    first = mount("-o", f"state_dir={state}")
    assert dom.name in os.listdir(first.path)

    # As a daemon (fstab, mount -t fuse.snapfs): the parent's exit status says so.
    started = time.monotonic()
    status, err, mnt, mounted = snapfs("-o", f"state_dir={state}", foreground=False)
    waited = time.monotonic() - started
    assert status not in (0, None) and not mounted, err
    assert f"pid {first.proc.pid}" in err and str(state) in err, err
    assert waited >= STATE_WAIT - 1, f"refused after {waited:.1f} s: it does not wait for the first one to end"

    ro = mount("-o", f"ro,state_dir={state}")
    assert dom.name in os.listdir(ro.path)
    os.mkdir(first.p(dom.name, "after"))
    assert "after" in dom.snapshots()
    assert first.proc.poll() is None
    assert sorted(os.listdir(state)) == []


def test_second_snapfs_mounts_once_the_first_ends(mount, domains):
    """A restart right after an unmount: the old process may still be ending, the new one waits for it."""
    dom = domains.simple()
    state = state_dir("restart")
    first = mount("-o", f"state_dir={state}")
    ending = threading.Timer(2.0, first.unmount)
    ending.start()
    second = mount("-o", f"state_dir={state}", timeout=REFUSAL_LIMIT)
    ending.join(timeout=30)     # the second may mount before the first's unmount has collected its status
    assert first.exit_status == 0, first.stderr_text()
    assert "waiting" in second.stderr_text() and f"pid {first.proc.pid}" in second.stderr_text()
    assert dom.name in os.listdir(second.path)


def test_domain_lock_file_held_by_another_process(mount, domains):
    """Two snapfs with their own state directories: one domain's operations still run one at a time. The other
    process is played here by a flock on the domain's lock file: mkdir waits, then EBUSY naming it, nothing made."""
    dom = domains.simple()
    m = mount("-o", f"state_dir={state_dir('lockfile')}")
    name = hashlib.sha256(f"{URI}\n{dom.name}".encode()).hexdigest() + ".lock"
    path = os.path.join(LOCK_DIR, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"pid {os.getpid()}: deleting snapshot 'x'\n".encode())
        started = time.monotonic()
        assert errno_of(os.mkdir, m.p(dom.name, "blocked")) == errno.EBUSY
        assert time.monotonic() - started >= OPERATION_WAIT - 0.5
        assert dom.snapshots() == []
        reason = os.getxattr(m.p(dom.name), "user.snapfs.last_error").decode()
        assert f"another snapfs process acts on it (pid {os.getpid()}: deleting snapshot 'x')" in reason, reason
    finally:
        os.unlink(path)
        os.close(fd)
    os.mkdir(m.p(dom.name, "free"))
    assert dom.snapshots() == ["free"]
    assert not os.path.exists(path), "the lock file outlives the operation"
    st = os.stat(LOCK_DIR)
    assert st.st_uid == 0 and st.st_mode & 0o022 == 0


# ---------------------------------------------------------------- a private state directory

@pytest.mark.parametrize("kind", ["symlink", "mode0777", "other-owner", "group-writable"])
def test_unsafe_state_dir_refused(libvirtd, run_prefix, kind):
    """A state directory others could write in (or swap) is refused before anything is mounted; nothing changes."""
    base = state_dir(f"unsafe-{kind}")
    base.mkdir(mode=0o755, parents=True)
    real = base / "real"
    real.mkdir(mode=0o700)
    real.chmod(0o700)
    state = real
    if kind == "symlink":
        state = base / "link"
        state.symlink_to(real)
    elif kind == "mode0777":
        real.chmod(0o777)
    elif kind == "group-writable":
        real.chmod(0o770)
    else:
        os.chown(real, 65534, 65534)
    before = listing(base)

    status, err, mnt, mounted = snapfs("-o", f"state_dir={state}", timeout=60)
    assert status not in (0, None) and not mounted, err
    assert f"'{state}'" in err, err
    assert {"symlink": "symbolic link", "mode0777": "0777", "group-writable": "0770",
            "other-owner": "uid 65534"}[kind] in err, err
    assert listing(base) == before


def test_missing_state_dir_made_private(mount):
    state = state_dir("fresh") / "a" / "b"
    m = mount("-o", f"state_dir={state}")
    st = os.lstat(state)
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()
    assert os.lstat(state.parent).st_mode & 0o077 == 0
    assert os.listdir(state) == []
    m.unmount()


# ---------------------------------------------------------------- journals read back

def test_journal_naming_files_elsewhere_leaves_them(mount, domains, images):
    """A rollback at start unlinks what the journal says the revert made, but only images named as a revert names
    them next to the domain's images: a file elsewhere, another name, a link stay where they are (and are logged)."""
    dom = domains.simple()
    dom.snapshot("s1")
    uuid = virsh("domuuid", dom.name).stdout.strip()
    outside = IMAGE_ROOT / "outside"
    outside.mkdir(mode=0o755, exist_ok=True)
    stamp = "20260101-000000"
    made = images.path(f"{dom.name}.vda.revert-s1-{stamp}.qcow2")            # what the revert made: removed
    elsewhere = outside / f"{dom.name}.vdb.revert-s1-{stamp}.qcow2"          # the right name, elsewhere
    precious = images.path(f"{RUN_PREFIX}-precious.qcow2")                  # next to the images, another name
    target = outside / "target-of-link"
    link = images.path(f"{dom.name}.vda.pre-revert-{stamp}.qcow2")          # the right name and place, a link
    # Never a real system file here: the code before this test's fix unlinked whatever a journal named.
    decoy = outside / "passwd"                                              # neither the name nor the place
    for f in (made, elsewhere, precious, target, decoy):
        f.write_text("keep me\n")
    link.symlink_to(target)
    state = state_dir("outside")
    journal = write_journal(state, dom.name, uuid, {
        "vda": {"old-top": dom.top("vda"), "new-top": str(made), "new-created": "true",
                "keep-overlay": str(link), "drop-old": "false"},
        "vdb": {"new-top": str(elsewhere), "new-created": "true", "drop-old": "false"},
        "vdc": {"new-top": str(precious), "new-created": "true", "keep-overlay": str(decoy)},
    })

    m = mount("-o", f"state_dir={state}")
    assert not journal.exists(), m.stderr_text()
    assert not made.exists()
    for f in (elsewhere, precious, target, decoy):
        assert f.read_text() == "keep me\n", f
    assert os.path.islink(link)
    log = m.stderr_text()
    for f in (elsewhere, precious, link, decoy):
        assert f"leaving '{f}' as it is" in log, log
    assert dom.snapshots() == ["s1"] and dom.current() == "s1"
    link.unlink()


def test_journal_of_a_gone_domain_dropped(mount):
    """libvirt answers that the domain does not exist: the journal goes, nothing else is touched."""
    state = state_dir("gone")
    name = f"{RUN_PREFIX}-never-defined"
    decoy = IMAGE_ROOT / "gone-decoy.qcow2"
    decoy.write_text("keep me\n")
    journal = write_journal(state, name, str(uuidlib.uuid4()), {"vda": {"new-top": str(decoy), "new-created": "true"}})
    m = mount("-o", f"state_dir={state}")
    assert not journal.exists()
    assert "no longer exists" in m.stderr_text()
    assert decoy.read_text() == "keep me\n"


def test_journal_kept_on_a_lookup_error(mount, domains):
    """A lookup that fails for another reason than "no such domain" (here a UUID libvirt cannot parse) is not an
    answer about the domain: the journal stays, and the refusal is reported."""
    dom = domains.simple()
    state = state_dir("lookup")
    journal = write_journal(state, dom.name, "not-a-uuid", {"vda": {"old-top": dom.top("vda")}})
    text = journal.read_text()
    m = mount("-o", f"state_dir={state}")
    assert journal.read_text() == text
    assert "journal" in m.stderr_text() and "kept" in m.stderr_text()


# ---------------------------------------------------------------- libvirt not answering at start

@pytest.fixture(scope="module")
def host2(libvirtd, run_prefix):
    """A private libvirtd (tests/lib/host2.sh), never the system's: this module stops it (SIGSTOP) for a while."""
    from test_remote import Host2, free_port, namespaces_of, sweep_dead_hosts

    sweep_dead_hosts()
    h = Host2(IMAGE_ROOT / "host2-state", free_port())
    try:
        h.start()
        yield h
    finally:
        pid = h.daemon_pid()
        if pid:
            os.kill(pid, signal.SIGCONT)
        h.stop()
        for pid in namespaces_of(h):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(h.root, ignore_errors=True)


def test_journal_kept_while_libvirt_does_not_answer(mount, images, host2):
    """snapfs connects, then libvirtd stops answering (stopped, as a hung daemon): the lookup of the journal's
    domain fails with a keepalive timeout, which says nothing about the domain. The journal stays."""
    from conftest import domain_xml

    name = f"{RUN_PREFIX}-h2journal"
    base = images.ext4(f"{name}-base.qcow2", {"a.txt": "a\n"})
    top = images.empty_overlay(f"{name}-top.qcow2", base)
    xml = images.path(f"{name}.xml")
    xml.write_text(domain_xml(name, [("vda", top, "qcow2")]))
    host2.virsh("define", xml)
    try:
        uuid = host2.virsh("domuuid", name).stdout.strip()
        state = state_dir("unreachable")
        journal = write_journal(state, name, uuid, {"vda": {"old-top": str(top)}}, uri=host2.uri)
        text = journal.read_text()

        # A second "host" that accepts and never answers holds snapfs between connecting to host2 and recovering.
        hold = socket.socket()
        hold.bind(("127.0.0.1", 0))
        hold.listen(4)
        hold_uri = f"qemu+tcp://127.0.0.1:{hold.getsockname()[1]}/system"
        stopped = threading.Event()

        def choreography():
            conn, _ = hold.accept()
            os.kill(host2.daemon_pid(), signal.SIGSTOP)
            stopped.set()
            conn.close()
            hold.close()

        t = threading.Thread(target=choreography, daemon=True)
        t.start()
        m = mount("-c", host2.uri, "-c", hold_uri, "-o", f"state_dir={state}", uri=None, timeout=120)
        assert stopped.is_set()
        os.kill(host2.daemon_pid(), signal.SIGCONT)
        assert journal.exists(), m.stderr_text()
        assert journal.read_text() == text
        assert "kept" in m.stderr_text(), m.stderr_text()
    finally:
        pid = host2.daemon_pid()
        if pid:
            os.kill(pid, signal.SIGCONT)
        host2.virsh("undefine", name, check=False)
