#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# Runs a second, privileged libvirtd on this machine that behaves as another host: own state, reachable only on loopback TCP.
#
#   tests/lib/host2.sh DIR PORT
#
# The host runs in the foreground until its libvirtd (the process named libvirtd-host2)
# ends: SIGTERM it to stop the host, SIGKILL it to crash the host (a SIGKILL of this
# script's process, which becomes unshare, ends it too). Its state lives under DIR (made
# on first use, kept across restarts so that its domains survive a crash), and it listens
# on 127.0.0.1:PORT with auth none: qemu+tcp://127.0.0.1:PORT/system. For tests only.
#
# A privileged libvirtd cannot share /run/libvirt, /var/lib/libvirt, /etc/libvirt... with the
# system's one (sockets, pid files, domain definitions and status would clash), so it runs in
# a mount namespace of its own, where those directories are DIR's. Everything else, /var/tmp
# with its test images included, is the same for both daemons.
set -eu

# The host itself, run by the unshare below inside the new namespaces.
if [ "${1:-}" = --in-namespace ]; then
    dir=$2
    # Copies of FUSE mounts (a test's snapfs) would keep them alive after their unmount.
    . "$(dirname "$(readlink -f "$0")")/detach-fuse.sh"
    # (On a fresh machine whose libvirtd never ran, some of these do not exist yet.)
    mkdir -p /run/libvirt /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
    mount -t tmpfs -o mode=0755 host2-run /run/libvirt
    mount --bind "$dir/etc" /etc/libvirt
    mount --bind "$dir/lib" /var/lib/libvirt
    mount --bind "$dir/cache" /var/cache/libvirt
    mount --bind "$dir/log" /var/log/libvirt
    # libvirt 9.0 deletes an external snapshot of a shut-off domain through a paused qemu,
    # whose output goes through virtlogd: this host needs its own.
    virtlogd -d -p /run/libvirt/virtlogd.pid
    "$dir/libvirtd-host2" --listen -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid &
    daemon=$!
    trap 'kill -TERM "$daemon"' TERM INT
    while kill -0 "$daemon" 2>/dev/null; do wait "$daemon" || true; done
    exit 0
fi

dir=${1:?usage: host2.sh DIR PORT}
port=${2:?usage: host2.sh DIR PORT}

if [ ! -e "$dir/etc/libvirtd.conf" ]; then
    mkdir -p "$dir/etc/qemu" "$dir/lib/qemu" "$dir/cache" "$dir/log/qemu"
    chmod 0755 "$dir" "$dir/lib" "$dir/log"
    # Only the daemons' settings: the system's domains, networks and pools stay the system's.
    for conf in libvirt.conf qemu.conf virtlogd.conf; do
        [ -e "/etc/libvirt/$conf" ] && cp -p "/etc/libvirt/$conf" "$dir/etc/"
    done
    # The capabilities of qemu already probed by the system's libvirtd: saves seconds at each start.
    [ -d /var/cache/libvirt/qemu ] && cp -a /var/cache/libvirt/qemu "$dir/cache/"
    chown libvirt-qemu:libvirt-qemu "$dir/lib/qemu" 2>/dev/null || true
    cat >"$dir/etc/libvirtd.conf" <<EOF
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "$port"
auth_tcp = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
fi

# Started under another name, so that scripts which find, kill or wait for the system's
# daemon with `pgrep -x libvirtd` (the tests do) never mistake this one for it.
ln -sf "$(command -v libvirtd || echo /usr/sbin/libvirtd)" "$dir/libvirtd-host2"

# A pid namespace too: when the host ends, crash (SIGKILL of its libvirtd) included, the
# kernel ends every process of it (its virtlogd, a qemu), so that nothing is left behind and
# a restart begins afresh, as after a host's crash. Its init is this script's shell, not
# libvirtd: an init must reap the qemu processes that libvirtd daemonizes (libvirtd as init
# leaves them zombies, and then waits in vain for each one to die).
exec unshare --mount --propagation private --pid --fork --kill-child --mount-proc \
    sh "$(readlink -f "$0")" --in-namespace "$dir"
