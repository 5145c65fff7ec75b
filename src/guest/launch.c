/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Starting an appliance within a bound: a launch that stalls or overruns is killed, never waited for. */
#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/log.h"

#include <dirent.h>
#include <glib/gstdio.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

/*
 * guestfs_launch() polls without a timeout of its own that matters (libguestfs gives up after
 * 20 minutes), and it tells qemu's pid only once the appliance answered.  So a watcher thread
 * beside each launch decides, and kills qemu when:
 *   - under KVM, qemu printed nothing on the console for kvm_seconds: a KVM that accepts a guest
 *     and never runs it (the boot prints within a second or two where KVM works);
 *   - under TCG, it printed nothing for half of timeout_seconds (a healthy boot's longest silence
 *     is udev settling, seconds);
 *   - the launch ran past timeout_seconds, or the caller's stopping flag is set (unmount, SIGTERM).
 * qemu is found by the handle's temporary directory (guestfs_set_tmpdir() to a directory of ours,
 * with a random name): libguestfs puts the disks' overlays there and names them on qemu's command
 * line, and only processes that descend from snapfs count.  The watcher needs nothing from the
 * handle, which only the launching thread may touch.  Killing qemu makes guestfs_launch() return
 * at once.
 */

enum launch_verdict { LAUNCH_RUNNING, LAUNCH_KVM_STALLED, LAUNCH_SILENT, LAUNCH_OVERRAN, LAUNCH_ABORTED };

struct launch_watch {
    const char *token;      /* the handle's own temporary directory, on qemu's command line */
    bool kvm;
    const struct guest_launch_limits *limits;
    gint64 started;
    gint64 progress_at;     /* atomic: the last console output */
    GMutex lock;
    GCond cond;
    bool done;              /* lock */
    gint verdict;           /* atomic: why the watcher killed qemu */
    const gint *stopping;   /* atomic, the caller's: snapfs is stopping, kill the launch */
};

/* Whether @pid descends from snapfs (libguestfs forks qemu; a LIBGUESTFS_HV wrapper may fork it in turn). */
static bool ours(pid_t pid)
{
    for (int depth = 0; depth < 4 && pid > 1; depth++) {
        g_autofree char *path = g_strdup_printf("/proc/%d/stat", pid);
        g_autofree char *stat = NULL;
        const char *end;

        if (!g_file_get_contents(path, &stat, NULL, NULL) || !(end = strrchr(stat, ')')))
            return false;
        /* "pid (comm) state ppid ...": the name may hold anything, so read after its last ')'. */
        pid = (pid_t)g_ascii_strtoll(end + 3, NULL, 10);
        if (pid == getpid())
            return true;
    }
    return false;
}

/* SIGKILL every process of ours whose command line names @dir: the qemu (or LIBGUESTFS_HV wrapper) of one launch. */
static unsigned kill_naming(const char *dir)
{
    g_autoptr(GDir) proc = g_dir_open("/proc", 0, NULL);
    const char *name;
    unsigned killed = 0;

    while (proc && (name = g_dir_read_name(proc))) {
        g_autofree char *path = NULL;
        g_autofree char *cmdline = NULL;
        gsize len = 0;
        pid_t pid = (pid_t)g_ascii_strtoll(name, NULL, 10);

        if (pid <= 0 || pid == getpid())
            continue;
        path = g_strdup_printf("/proc/%d/cmdline", pid);
        if (!g_file_get_contents(path, &cmdline, &len, NULL))
            continue;
        for (gsize i = 0; i < len; i++) {
            if (cmdline[i] == '\0')
                cmdline[i] = ' ';
        }
        if (len && strstr(cmdline, dir) && ours(pid) && kill(pid, SIGKILL) == 0)
            killed++;
    }
    return killed;
}

static void launch_console(guestfs_h *g, void *opaque, uint64_t event, int handle, int flags, const char *buf,
                           size_t len, const uint64_t *array, size_t array_len)
{
    struct launch_watch *w = opaque;

    guest_store64(&w->progress_at, g_get_monotonic_time());
}

static enum launch_verdict launch_judge(struct launch_watch *w, gint64 now)
{
    gint64 silent = now - guest_load64(&w->progress_at);
    gint64 limit = (gint64)w->limits->timeout_seconds * G_USEC_PER_SEC;

    if (g_atomic_int_get(w->stopping))
        return LAUNCH_ABORTED;
    if (w->kvm && silent > (gint64)w->limits->kvm_seconds * G_USEC_PER_SEC)
        return LAUNCH_KVM_STALLED;
    if (!w->kvm && silent > limit / 2)
        return LAUNCH_SILENT;
    if (now - w->started > limit)
        return LAUNCH_OVERRAN;
    return LAUNCH_RUNNING;
}

static gpointer launch_watcher(gpointer data)
{
    struct launch_watch *w = data;

    g_mutex_lock(&w->lock);
    while (!w->done) {
        enum launch_verdict verdict;

        g_cond_wait_until(&w->cond, &w->lock, g_get_monotonic_time() + G_USEC_PER_SEC / 5);
        if (w->done)
            break;
        verdict = launch_judge(w, g_get_monotonic_time());
        if (verdict == LAUNCH_RUNNING)
            continue;
        /* Until qemu is there to kill (libguestfs may still be preparing), try again every turn. */
        if (kill_naming(w->token))
            g_atomic_int_set(&w->verdict, verdict);
    }
    g_mutex_unlock(&w->lock);
    return NULL;
}

static char *launch_why(const struct launch_watch *w, enum launch_verdict verdict)
{
    switch (verdict) {
    case LAUNCH_KVM_STALLED:
        return g_strdup_printf("under KVM the appliance printed nothing for %u s: this KVM accepts guests but does "
                               "not run them", w->limits->kvm_seconds);
    case LAUNCH_SILENT:
        return g_strdup_printf("the appliance printed nothing for %u s", w->limits->timeout_seconds / 2);
    case LAUNCH_OVERRAN:
        return g_strdup_printf("the appliance did not start within %u s (-o appliance_timeout)",
                               w->limits->timeout_seconds);
    case LAUNCH_ABORTED:
        return g_strdup("the launch was called off (snapfs is stopping, or the images change)");
    case LAUNCH_RUNNING:
        break;
    }
    return NULL;
}

int guest_launch(guestfs_h *g, const char *tmpdir, bool kvm, const struct guest_launch_limits *limits,
                 const gint *stopping, bool *kvm_stalled)
{
    struct launch_watch w = { .token = tmpdir, .kvm = kvm, .limits = limits, .stopping = stopping };
    g_autofree char *why = NULL;
    GThread *watcher;
    int handle, r;

    if (kvm_stalled)
        *kvm_stalled = false;
    if (g_atomic_int_get(stopping)) {
        error_set(EIO, "cannot start a libguestfs appliance: snapfs is stopping");
        return -1;
    }
    handle = guestfs_set_event_callback(g, launch_console, GUESTFS_EVENT_APPLIANCE, 0, &w);
    w.started = g_get_monotonic_time();
    w.progress_at = w.started;
    g_mutex_init(&w.lock);
    g_cond_init(&w.cond);
    watcher = g_thread_new("snapfs-launch", launch_watcher, &w);

    r = guestfs_launch(g);

    g_mutex_lock(&w.lock);
    w.done = true;
    g_cond_signal(&w.cond);
    g_mutex_unlock(&w.lock);
    g_thread_join(watcher);
    if (handle >= 0)
        guestfs_delete_event_callback(g, handle);
    why = launch_why(&w, g_atomic_int_get(&w.verdict));
    g_mutex_clear(&w.lock);
    g_cond_clear(&w.cond);
    if (r == 0 && !why)
        return 0;
    if (kvm_stalled)
        *kvm_stalled = g_atomic_int_get(&w.verdict) == LAUNCH_KVM_STALLED;
    error_set(EIO, "cannot start a libguestfs appliance: %s",
                     why ? why : guestfs_last_error(g) ? guestfs_last_error(g) : "it did not start");
    return -1;
}

int guest_try_launch(bool force_tcg, const struct guest_launch_limits *limits, double *seconds, bool *kvm_stalled)
{
    g_autoptr(GError) error = NULL;
    g_autofree char *tmpdir = g_dir_make_tmp("snapfs-check-XXXXXX", &error);
    gint64 start = g_get_monotonic_time();
    char *settings[] = { (char *)"force_tcg", NULL };
    const gint never = 0;   /* --check is ended by its deadlines alone */
    guestfs_h *g;
    int r = -1;

    *kvm_stalled = false;
    if (!tmpdir) {
        error_set(EIO, "cannot make a directory for the appliance: %s", error->message);
        return -1;
    }
    g = guestfs_create();
    if (!g) {
        error_set(EIO, "cannot create a libguestfs handle: %s", g_strerror(errno));
        goto cleanup;
    }
    guestfs_set_error_handler(g, NULL, NULL);
    guestfs_set_tmpdir(g, tmpdir);
    if (force_tcg)
        guestfs_set_backend_settings(g, settings);
    if (guestfs_add_drive_scratch(g, 16 << 20, -1) < 0) {
        error_set(EIO, "cannot add a scratch disk: %s", guestfs_last_error(g));
        goto cleanup;
    }
    r = guest_launch(g, tmpdir, !force_tcg && access("/dev/kvm", R_OK | W_OK) == 0, limits, &never, kvm_stalled);
    *seconds = (double)(g_get_monotonic_time() - start) / G_USEC_PER_SEC;

cleanup:
    if (g)
        guestfs_close(g);   /* removes what libguestfs made in @tmpdir */
    g_rmdir(tmpdir);
    return r;
}
