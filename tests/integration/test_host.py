# SPDX-License-Identifier: GPL-2.0-or-later
# snapfs as a host tool: mount -t fuse.snapfs, an fstab line and the systemd unit of examples/, allow_other, --check, the man page.
import errno
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from conftest import IMAGE_ROOT, REPO, URI, _mountpoint, errno_of, is_mount, run, snapfs_bin, wait_for

EXAMPLES = REPO / "examples"


@pytest.fixture
def mountpoint(run_prefix):
    """An empty directory to mount on; anything left mounted there is unmounted after the test."""
    path = _mountpoint("host")
    yield path
    if is_mount(str(path)):
        run("fusermount3", "-u", "-z", path, check=False)


@pytest.fixture
def path_with_snapfs(run_prefix):
    """`snapfs` on the PATH that mount(8) gives mount.fuse3 (it resets PATH): a link in /usr/local/sbin, removed after."""
    link = Path("/usr/local/sbin/snapfs")
    saved = None
    if link.is_symlink() or link.exists():
        saved = IMAGE_ROOT / "saved-snapfs"
        os.rename(link, saved)
    link.symlink_to(snapfs_bin())
    yield os.environ["PATH"]
    link.unlink()
    if saved:
        os.rename(saved, link)


def wait_unmounted_daemon(path, timeout=20):
    """After fusermount3 -u of a daemonized snapfs: no process still serves PATH."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-f", f"snapfs.*{path}"], capture_output=True, text=True).stdout
        if not out.strip():
            return True
        time.sleep(0.2)
    return False


def test_mount_type_fuse_snapfs(mountpoint, path_with_snapfs, demo):
    run("mount", "-t", "fuse.snapfs", URI, mountpoint, "-o", "ro", env={"PATH": path_with_snapfs})
    try:
        assert is_mount(str(mountpoint))
        assert demo.chain.name in os.listdir(mountpoint)
        assert errno_of(os.mkdir, mountpoint / demo.chain.name / "nope") == errno.EROFS
        fstype = [line.split()[2] for line in open("/proc/mounts") if line.split()[1] == str(mountpoint)]
        assert fstype == ["fuse.snapfs"]
    finally:
        run("fusermount3", "-u", mountpoint)
    assert wait_unmounted_daemon(mountpoint)


def test_fstab_line(mountpoint, path_with_snapfs, demo, tmp_path):
    lines = [line for line in (EXAMPLES / "snapfs.fstab").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    fields = lines[0].split()
    assert fields[2] == "fuse.snapfs"
    fields[1] = str(mountpoint)
    fstab = tmp_path / "fstab"
    fstab.write_text(" ".join(fields) + "\n")
    run("mount", "-T", fstab, mountpoint, env={"PATH": path_with_snapfs})
    try:
        assert is_mount(str(mountpoint))
        assert demo.chain.name in os.listdir(mountpoint)
        # The example asks for allow_other: default_permissions then applies, and mkdir stays root's.
        opts = [line.split()[3] for line in open("/proc/mounts") if line.split()[1] == str(mountpoint)][0]
        assert "default_permissions" in opts and "allow_other" in opts, opts
    finally:
        run("fusermount3", "-u", mountpoint)
    assert wait_unmounted_daemon(mountpoint)


def unit_commands(unit, mountpoint):
    """ExecStartPre, ExecStart and ExecStop of the example unit, pointed at the binary and mountpoint under test."""
    commands = {}
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key in ("ExecStartPre", "ExecStart", "ExecStop"):
            argv = [str(mountpoint) if a == "/mnt/vms" else a for a in shlex.split(value)]
            if argv[0].endswith("/snapfs"):
                argv[0] = snapfs_bin()
            commands[key] = argv
    return commands


def test_systemd_unit(mountpoint, demo):
    unit = EXAMPLES / "snapfs.service"
    if Path("/usr/bin/systemd-analyze").exists():
        out = run("systemd-analyze", "verify", unit, check=False)
        # Offline, only the missing installed binary and man page may be reported.
        problems = [line for line in (out.stdout + out.stderr).splitlines()
                    if line.strip() and "not executable" not in line and "man " not in line]
        assert not problems, problems
    commands = unit_commands(unit, mountpoint)
    assert "-f" in commands["ExecStart"], "Type=simple needs snapfs to stay in the foreground"
    run(*commands["ExecStartPre"])
    env = dict(os.environ)
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line[len("Environment="):].partition("=")
            env[key] = value
    proc = subprocess.Popen(commands["ExecStart"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        assert wait_for(lambda: is_mount(str(mountpoint)), timeout=20), "the unit's ExecStart did not mount"
        assert demo.chain.name in os.listdir(mountpoint)
        run(*commands["ExecStop"])
        assert proc.wait(timeout=30) == 0, "snapfs did not exit 0 after the unit's ExecStop"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read().decode(errors="replace")
    assert "AddressSanitizer" not in output and "runtime error" not in output, output


def as_nobody(*argv):
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True, text=True)


def test_allow_other(mount, demo):
    plain = mount()
    denied = as_nobody("ls", plain.path)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, "others may not enter by default"

    shared = mount("-o", "allow_other,allow_users=nobody")
    dom = shared.p(demo.chain.name)
    listed = as_nobody("ls", dom)
    assert listed.returncode == 0 and "s1" in listed.stdout.split(), listed.stderr
    attrs = as_nobody("getfattr", "-n", "user.snapfs.current", shared.p(demo.chain.name, "s3"))
    assert attrs.returncode == 0 and 'user.snapfs.current="1"' in attrs.stdout
    # Changing things stays with root and the mounting user.
    made = as_nobody("mkdir", shared.p(demo.chain.name, "by-nobody"))
    assert made.returncode != 0 and "Permission denied" in made.stderr
    reverted = as_nobody("sh", "-c", f"echo s1 > '{shared.p(demo.chain.name, 'revert')}'")
    assert reverted.returncode != 0 and "Permission denied" in reverted.stderr
    removed = as_nobody("rmdir", shared.p(demo.chain.name, "s3"))
    assert removed.returncode != 0
    assert demo.chain.snapshots() == ["s1", "s2", "s3"]
    assert demo.chain.current() == "s3"


def test_check_reports_in_plain_words():
    good = run(snapfs_bin(), "--check", "-c", URI, check=False, timeout=300)
    lines = good.stdout.splitlines()
    assert any(re.match(r"ok +/dev/fuse can be opened", line) for line in lines), good.stdout
    assert any(re.match(rf"ok +libvirt connection {re.escape(URI)}: \d+ domain", line) for line in lines), good.stdout
    launch = [line for line in lines if "libguestfs appliance starts" in line]
    assert launch and (launch[0].startswith("ok") or "only without KVM" in launch[0]), good.stdout
    assert good.stdout.rstrip().endswith(("snapfs can work here.", "until the problems above are fixed."))
    assert (good.returncode == 0) == launch[0].startswith("ok")

    bad = run(snapfs_bin(), "--check", "-c", "nosuchdriver:///x", check=False, timeout=300)
    assert bad.returncode != 0
    problem = [line for line in bad.stdout.splitlines() if line.startswith("PROBLEM") and "nosuchdriver" in line]
    assert problem, bad.stdout
    assert "fix:" in bad.stdout


def test_help_agrees_with_man_page():
    help_text = run(snapfs_bin(), "--help").stdout
    man = (REPO / "fs" / "snapfs.1").read_text().replace("\\-", "-").replace("\\fB", "").replace("\\fR", "") \
        .replace("\\fI", "")
    ours = set(re.findall(r"-o ([a-z_]+)", help_text.split("FUSE options:")[0]))
    assert {"ro", "nonempty", "max_appliances", "appliance_idle", "quiesce", "revert_keep", "state_dir",
            "allow_other", "connect"} <= ours, ours
    for option in sorted(ours):
        assert re.search(rf"-o {option}\b", man), f"the man page does not document -o {option}"
    documented = set(re.findall(r"^\.B[I]? \"?-o ([a-z_]+)", man, re.M))
    assert documented <= ours, f"the man page documents options --help does not know: {documented - ours}"
    for flag in ("--check", "-c URI", "--connect"):
        assert flag in help_text and flag in man
