# SPDX-License-Identifier: GPL-2.0-or-later
# What the benchmarks share: running a command, finding a mount, and the processes below a daemon.
import os
import shutil
import subprocess


def sh(cmd, check=True, env=None):
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise SystemExit(f"failed: {cmd}\n{proc.stderr}{proc.stdout}")
    return proc.stdout


def is_mount(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def descendants(pid):
    """PID and every process below it (libguestfs's qemu is a child of the daemon)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def define_domain(uri, dom, root):
    """A shut-off test domain (type qemu, no NIC, no graphics) whose disk vda is @root/top.qcow2."""
    xml = (f"<domain type='qemu'><name>{dom}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
           f"<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' device='disk'>"
           f"<driver name='qemu' type='qcow2'/><source file='{root}/top.qcow2'/><target dev='vda' bus='virtio'/>"
           f"</disk><memballoon model='none'/></devices></domain>")
    (root / "dom.xml").write_text(xml)
    sh(f"virsh -q -c {uri} define {root}/dom.xml")


def remove_domain(uri, dom, root, keep):
    """Undefine the test domain with its snapshots' metadata, and remove its images unless @keep."""
    sh(f"virsh -q -c {uri} undefine {dom} --snapshots-metadata", check=False)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)


def make_images(root, src, inodes, size, mode):
    """@root/base.qcow2, an ext4 filesystem of the tree @src made without an appliance, and the overlay
    @root/top.qcow2 on it, both of mode @mode."""
    sh(f"mkfs.ext4 -q -F -N {inodes} -d {src} {root}/base.raw {size}")
    sh(f"qemu-img convert -q -f raw -O qcow2 {root}/base.raw {root}/base.qcow2")
    os.unlink(root / "base.raw")
    sh(f"qemu-img create -q -f qcow2 -F qcow2 -b {root}/base.qcow2 {root}/top.qcow2")
    for f in root.iterdir():
        if f.is_file():
            f.chmod(mode)
