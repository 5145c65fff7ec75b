/* SPDX-License-Identifier: GPL-2.0-or-later */
/* snapfs --check: /dev/fuse, the libvirt connections and one libguestfs appliance, each reported with how to fix it. */
#include "snapfs/check.h"
#include "snapfs/error.h"
#include "snapfs/guest.h"
#include "snapfs/virt.h"

#include <glib.h>
#include <guestfs.h>
#include <libvirt/virterror.h>
#include <stdlib.h>
#include <unistd.h>

static int check_report(FILE *out, bool ok, const char *what, const char *fix)
{
    fprintf(out, "%-8s %s\n", ok ? "ok" : "PROBLEM", what);
    if (!ok && fix)
        fprintf(out, "         fix: %s\n", fix);
    fflush(out);
    return ok ? 0 : 1;
}

static int check_fuse(FILE *out)
{
    g_autofree char *fusermount = g_find_program_in_path("fusermount3");
    int problems = 0;

    problems += check_report(out, access("/dev/fuse", R_OK | W_OK) == 0, "/dev/fuse can be opened",
                             "load the fuse module (modprobe fuse) or, in a container, pass /dev/fuse in");
    problems += check_report(out, fusermount != NULL, "fusermount3 is installed (to unmount)",
                             "apt-get install fuse3");
    return problems;
}

static int check_connection(FILE *out, const char *uri)
{
    struct snapfs_host *host = host_open(uri, false);
    g_autofree char *what = NULL;
    g_autoptr(GPtrArray) names = NULL;

    if (!host) {
        what = g_strdup_printf("libvirt connection %s: %s", uri ? uri : "(default)", error_message());
        return check_report(out, false, what,
                            "start libvirtd (systemctl start libvirtd, or virtlogd -d && libvirtd -d), "
                            "check the URI with virsh -c URI list --all");
    }
    names = host_list_domains(host);
    what = g_strdup_printf("libvirt connection %s: %u domain(s)", host_uri(host), names ? names->len : 0);
    host_close(host);
    return check_report(out, names != NULL, what, "check that this user may list domains (virsh list --all)");
}

/* Whether the appliance's kernel can be read: Debian and Ubuntu make /boot/vmlinuz-* root-only. */
static int check_kernel(FILE *out)
{
    g_autoptr(GDir) dir = g_dir_open("/boot", 0, NULL);
    const char *name;
    bool found = false, readable = false;

    while (dir && (name = g_dir_read_name(dir))) {
        g_autofree char *path = g_build_filename("/boot", name, NULL);

        if (!g_str_has_prefix(name, "vmlinuz"))
            continue;
        found = true;
        readable |= access(path, R_OK) == 0;
    }
    if (!found)
        return check_report(out, false, "a kernel in /boot for the libguestfs appliance",
                            "apt-get install linux-image-amd64");
    return check_report(out, readable, "the kernel in /boot can be read for the libguestfs appliance",
                        "chmod 0644 /boot/vmlinuz-* (or run snapfs as root)");
}

/*
 * One launch with a scratch disk, bounded as snapfs bounds its own: NULL on success, else the
 * reason.  A KVM that stalls is told apart from one that fails.
 */
static char *check_launch(bool force_tcg, double *seconds, bool *kvm_stalled)
{
    const struct guest_launch_limits limits = { .timeout_seconds = GUEST_DEFAULT_TIMEOUT_S,
                                                .kvm_seconds = GUEST_DEFAULT_KVM_TIMEOUT_S };

    if (guest_try_launch(force_tcg, &limits, seconds, kvm_stalled) == 0)
        return NULL;
    return g_strdup(error_message());
}

static int check_appliance(FILE *out)
{
    g_autofree char *why = NULL;
    g_autofree char *what = NULL;
    g_autofree char *tcg_why = NULL;
    double seconds = 0;
    bool stalled = false, tcg_stalled = false;

    why = check_launch(false, &seconds, &stalled);
    if (!why) {
        what = g_strdup_printf("a libguestfs appliance starts (%.1f s)", seconds);
        return check_report(out, true, what, NULL);
    }
    /* A /dev/kvm that exists but fails (nested virtualisation) makes QEMU abort, or run no guest; TCG still works. */
    tcg_why = check_launch(true, &seconds, &tcg_stalled);
    if (!tcg_why) {
        /* Not a problem: snapfs does the same by itself. */
        what = g_strdup_printf("a libguestfs appliance starts with TCG (%.1f s); KVM is broken here (%s): snapfs "
                               "notices that by itself and uses TCG, slower but working",
                               seconds, stalled ? "it accepts the guest but runs nothing" : why);
        return check_report(out, true, what, NULL);
    }
    what = g_strdup_printf("a libguestfs appliance starts: %s", tcg_why);
    return check_report(out, false, what,
                        "run libguestfs-test-tool for details; LIBGUESTFS_BACKEND=direct avoids libvirt's "
                        "backend, and without /dev/kvm the appliance is slow but works");
}

int check_run(const char *const *uris, size_t n_uris, FILE *out)
{
    int problems = check_fuse(out);

    if (host_start_events() < 0) {
        problems += check_report(out, false, error_message(), NULL);
    } else {
        for (size_t i = 0; i < n_uris; i++)
            problems += check_connection(out, uris[i]);
    }
    problems += check_kernel(out);
    problems += check_appliance(out);
    fprintf(out, "%s\n", problems ? "snapfs cannot work fully here until the problems above are fixed."
                                  : "snapfs can work here.");
    return problems;
}
