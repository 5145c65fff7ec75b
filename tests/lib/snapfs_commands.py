# SPDX-License-Identifier: GPL-2.0-or-later
# What the parts' pytest suites (tests/engine, tests/revert) share: running a command and virsh, failing with their output.
import os
import subprocess


def run(*args, check=True, env=None):
    """Run a command; on failure raise with its output so the test says what went wrong."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc


def virsh(uri, *args, check=True):
    return run("virsh", "-q", "-c", uri, *args, check=check)
