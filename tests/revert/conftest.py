# SPDX-License-Identifier: GPL-2.0-or-later
# Fixtures for revert's tests: test domains on the real libvirtd, always removed.
import shutil
import subprocess
from pathlib import Path

import pytest

from revertlib import PREFIX, SERIAL, URI, Domain, virsh


@pytest.fixture(scope="session")
def root():
    if subprocess.run(["virsh", "-c", URI, "version"], capture_output=True).returncode != 0:
        pytest.fail(f"libvirt at {URI} is not reachable")
    path = Path("/var/tmp") / PREFIX
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    yield path
    # Whatever a test could not remove (libvirtd restarted under it, say) goes now.
    names = virsh("list", "--all", "--name", check=False).stdout.split()
    for name in names:
        if name.startswith(PREFIX):
            virsh("destroy", name, check=False)
            virsh("undefine", name, "--snapshots-metadata", check=False)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_domain(root):
    made = []

    def make(ndisks=2):
        dom = Domain(root, f"{PREFIX}-{next(SERIAL)}", ndisks)
        made.append(dom)
        return dom

    yield make
    for dom in made:
        dom.remove()


@pytest.fixture
def chained(make_domain):
    """A domain with a 3-deep external chain r1 -> s2 -> s3 on a template, and writes after each and live."""
    dom = make_domain()
    dom.write(1)
    dom.snapshot("r1")
    dom.write(2)
    dom.snapshot("s2")
    dom.write(3)
    dom.snapshot("s3")
    dom.write(4)
    return dom
