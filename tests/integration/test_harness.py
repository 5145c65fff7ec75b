# SPDX-License-Identifier: GPL-2.0-or-later
# Checks of the harness itself: a sanitizer report or a bad exit status of the daemon must fail a test.
import os
import stat

import pytest

from conftest import Mount, _mountpoint, URI, is_mount, snapfs_bin


def _wrapper(tmp_dir, line, status=None, then="exit"):
    """A daemon that runs the real snapfs, then says LINE on stderr (and exits with STATUS if given, or runs THEN)."""
    path = tmp_dir / "fake-snapfs"
    path.write_text("#!/bin/sh\n"
                    f"'{snapfs_bin()}' \"$@\"\n"
                    "rc=$?\n"
                    f"echo '{line}' >&2\n"
                    f"{then} {status if status is not None else '$rc'}\n")
    path.chmod(stat.S_IRWXU)
    return str(path)


@pytest.mark.parametrize("line", ["==1==ERROR: AddressSanitizer: heap-use-after-free on address 0x1",
                                  "==1==ERROR: LeakSanitizer: detected memory leaks",
                                  "src/tree.c:1:1: runtime error: signed integer overflow"])
def test_sanitizer_report_fails(libvirtd, run_prefix, tmp_path, monkeypatch, line):
    monkeypatch.setenv("SNAPFS_BIN", _wrapper(tmp_path, line))
    m = Mount(_mountpoint("harness"), ["-c", URI])
    assert os.listdir(m.path) is not None
    with pytest.raises(AssertionError, match="sanitizer report"):
        m.check_clean_exit()
    assert not is_mount(m.path)


def test_bad_exit_status_fails(libvirtd, run_prefix, tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPFS_BIN", _wrapper(tmp_path, "bye", status=3))
    m = Mount(_mountpoint("harness"), ["-c", URI])
    with pytest.raises(AssertionError, match="exited with 3"):
        m.check_clean_exit()


def test_daemon_that_never_mounts_fails(libvirtd, run_prefix):
    with pytest.raises(AssertionError, match="before mounting"):
        Mount(_mountpoint("harness"), ["-c", "nosuchdriver:///x"])


def test_hang_after_unmount_shows_threads(libvirtd, run_prefix, tmp_path, monkeypatch):
    """A daemon still alive after the unmount fails the test with every thread's stack, taken before it is killed."""
    monkeypatch.setenv("SNAPFS_BIN", _wrapper(tmp_path, "bye", status=600, then="exec sleep"))
    m = Mount(_mountpoint("harness"), ["-c", URI])
    with pytest.raises(AssertionError, match="hung after unmount") as failure:
        m.unmount(timeout=3)
        m.check_clean_exit()
    # The stack of what hung (here the sleep the wrapper became), as gdb shows it.
    assert "nanosleep" in str(failure.value), str(failure.value)[-3000:]
    assert m.proc.poll() is not None
