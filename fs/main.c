/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The snapfs command: parse the command line, connect to libvirt, mount, serve until unmounted, and the exit watcher. */
#include "command.h"
#include "snapfs/check.h"
#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * Whether this mount namespace has a FUSE mount of @device ("major:minor"), or with @mountpoint, the
 * device of the last FUSE mount there (copied to @device).  From /proc, which never waits on FUSE.
 */
static bool mountinfo_find_fuse(const char *mountpoint, char *device, size_t size)
{
    g_autofree char *text = NULL;
    bool found = false;

    if (!g_file_get_contents("/proc/self/mountinfo", &text, NULL, NULL))
        return !mountpoint;   /* cannot tell: still mounted */
    for (char *line = text, *next; line && *line; line = next) {
        g_auto(GStrv) fields = NULL;
        guint n, dash = 0;

        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        fields = g_strsplit(line, " ", 0);
        n = g_strv_length(fields);
        for (guint i = 6; i < n && !dash; i++)
            dash = strcmp(fields[i], "-") == 0 ? i : 0;
        if (!dash || dash + 1 >= n || !g_str_has_prefix(fields[dash + 1], "fuse"))
            continue;
        if (mountpoint) {
            g_autofree char *point = g_strcompress(fields[4]);   /* \040 and the like */

            if (strcmp(point, mountpoint) == 0) {
                g_strlcpy(device, fields[2], size);
                found = true;
            }
        } else if (strcmp(fields[2], device) == 0) {
            return true;
        }
    }
    return found;
}

/* "pid 123 (unshare), pid 456 (qemu-system-x86)": processes of other mount namespaces that have a mount of @device. */
static char *mount_holders_describe(const char *device)
{
    g_autoptr(GString) text = g_string_new(NULL);
    g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autofree char *own = g_file_read_link("/proc/self/ns/mnt", NULL);
    g_autoptr(GDir) proc = g_dir_open("/proc", 0, NULL);
    const char *pid;
    guint named = 0;

    while (proc && (pid = g_dir_read_name(proc)) && named < 3) {
        g_autofree char *ns_path = g_strdup_printf("/proc/%s/ns/mnt", pid);
        g_autofree char *ns = g_ascii_isdigit(pid[0]) ? g_file_read_link(ns_path, NULL) : NULL;
        g_autofree char *info_path = NULL, *info = NULL, *comm_path = NULL, *comm = NULL;
        g_autofree char *needle = g_strdup_printf(" %s ", device);

        if (!ns || (own && strcmp(ns, own) == 0) || g_hash_table_contains(seen, ns))
            continue;
        g_hash_table_add(seen, g_steal_pointer(&ns));
        info_path = g_strdup_printf("/proc/%s/mountinfo", pid);
        if (!g_file_get_contents(info_path, &info, NULL, NULL) || !strstr(info, needle))
            continue;
        comm_path = g_strdup_printf("/proc/%s/comm", pid);
        if (g_file_get_contents(comm_path, &comm, NULL, NULL))
            g_strchomp(comm);
        g_string_append_printf(text, "%spid %s (%s)", named++ ? ", " : "", pid, comm ? comm : "?");
    }
    return text->len ? g_strdup(text->str) : g_strdup("none found");
}

/* Whether the kernel has ended the session's connection (its last mount went), as libfuse tells it before unmounting. */
static bool session_severed(struct fuse_session *se)
{
    struct pollfd dev = { .fd = fuse_session_fd(se) };

    return poll(&dev, 1, 0) == 1 && (dev.revents & POLLERR);
}

/* How long a mount gone from this namespace may keep the session before snapfs ends it. */
#define FS_GONE_USEC (1000 * 1000)

struct fuse_session *fs_session_left;

struct exit_watch_state {
    struct fs_context *ctx;
    const char *mountpoint;
    char device[64];        /* "major:minor" of the mount; "" if it was not found */
    pthread_t main_thread;  /* in the FUSE loop: woken with SIGTERM */
    gint gone;              /* atomic: the mount has gone from snapfs's own mount namespace */
};

/*
 * The FUSE loop ends only once every worker has finished its request, and a request may sit in an
 * appliance that will never answer: as soon as the session is told to exit (unmount, SIGTERM,
 * SIGINT), the appliances are killed, so that those requests fail at once and snapfs ends.
 *
 * And the kernel ends the session only when the last mount of it goes: a mount namespace made while
 * snapfs was mounted (by unshare, a container, a sandboxed service, a qemu started where / is not
 * shared) has a copy of the mount, which an unmount here does not reach, and snapfs would wait for
 * that namespace to end.  So once the mount has gone from snapfs's own namespace (the kernel tells
 * the change through /proc/self/mountinfo) and, a second later, the session goes on with no file or
 * folder open for half a second (a lazy unmount lets those that are finish), snapfs ends the session
 * itself, as SIGTERM would.
 */
static gpointer exit_watch_run(gpointer data)
{
    struct exit_watch_state *watch = data;
    struct fs_context *ctx = watch->ctx;
    int fd = watch->device[0] ? open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC) : -1;
    gint64 gone_at = 0, idle_at = 0;

    /* Read once after the open: a change before it would never be told. */
    if (fd >= 0 && !mountinfo_find_fuse(NULL, watch->device, 0))
        gone_at = g_get_monotonic_time();
    while (!g_atomic_int_get(&ctx->stopped) && !fuse_session_exited(ctx->session)) {
        struct pollfd change = { .fd = fd, .events = POLLPRI };

        if (fd < 0 || gone_at) {
            g_usleep(100 * 1000);
        } else if (poll(&change, 1, 100) > 0 && (change.revents & (POLLPRI | POLLERR)) &&
                   !mountinfo_find_fuse(NULL, watch->device, 0)) {
            gone_at = g_get_monotonic_time();
        }
        if (gone_at && !g_atomic_int_get(&watch->gone)) {
            log_debug("the mount on %s has gone from this mount namespace", watch->mountpoint);
            g_atomic_int_set(&watch->gone, 1);
        }
        /* The last close of a lazy unmount ends the session by itself: idle for a while first. */
        if (!gone_at || g_atomic_int_get(&ctx->open_handles) > 0)
            idle_at = 0;
        else if (!idle_at)
            idle_at = g_get_monotonic_time();
        if (idle_at && g_get_monotonic_time() - gone_at >= FS_GONE_USEC &&
            g_get_monotonic_time() - idle_at >= FS_GONE_USEC / 2 && !session_severed(ctx->session) &&
            !fuse_session_exited(ctx->session)) {
            g_autofree char *holders = mount_holders_describe(watch->device);

            log_info("%s was unmounted, but copies of the mount in other mount namespaces keep it alive (%s): "
                        "ending the session", watch->mountpoint, holders);
            fuse_session_exit(ctx->session);
            pthread_kill(watch->main_thread, SIGTERM);   /* libfuse's handler: the loop ends as on SIGTERM */
            break;
        }
    }
    if (fd >= 0)
        close(fd);
    if (!g_atomic_int_get(&ctx->stopped))
        log_debug("the session ends: stopping every appliance");
    tree_abort(ctx->tree);
    return NULL;
}

/* --help, --version and --check answer and end the run: the exit status, or -1 for a run that mounts. */
static int command_answer_early(struct command_run *run, const char *prog)
{
    GPtrArray *uris = run->options.uris;
    int problems;

    if (run->cmdline.show_help) {
        options_usage(prog);
        return EXIT_SUCCESS;
    }
    if (run->cmdline.show_version) {
        options_version();
        return EXIT_SUCCESS;
    }
    if (!run->options.check)
        return -1;
    if (uris->len == 0)
        g_ptr_array_add(uris, NULL);
    problems = check_run((const char *const *)uris->pdata, uris->len, stdout);
    host_stop_events();
    return problems ? EXIT_FAILURE : EXIT_SUCCESS;
}

/*
 * What can be refused while every error still reaches the terminal, before
 * daemonizing: the options, the mountpoint, the state and lock directories,
 * /dev/fuse, the admission lists.  -1 after a message on stderr.
 */
static int command_check_before_mount(struct command_run *run, const char *prog)
{
    if (!run->cmdline.mountpoint) {
        fprintf(stderr, "snapfs: no mountpoint given (see %s --help)\n", prog);
        return -1;
    }
    if (!options_build_config(&run->options, &run->config) ||
        startup_check_mountpoint(run->cmdline.mountpoint, run->options.nonempty) < 0)
        return -1;
    if (!run->options.read_only && startup_state_open(&run->config, &run->state_fd, &run->lock_fd) < 0)
        return -1;
    if (access("/dev/fuse", R_OK | W_OK) < 0) {
        fprintf(stderr, "snapfs: cannot use /dev/fuse: %s (load the fuse module, or run where it exists)\n",
                g_strerror(errno));
        return -1;
    }
    if (!options_build_admission(&run->options, &run->ctx, &run->args))
        return -1;
    if (run->ctx.admission)
        fuse_opt_add_arg(&run->args, "-odefault_permissions");
    /*
     * libfuse's default too, said here so that no later default can change it (asking for suid
     * or dev is ignored above, with a message).
     */
    fuse_opt_add_arg(&run->args, "-onosuid");
    fuse_opt_add_arg(&run->args, "-onodev");
    return 0;
}

/* The FUSE side's tables, and the tree over the hosts. */
static void command_context_init(struct command_run *run)
{
    struct fs_context *ctx = &run->ctx;

    ctx->owner = getuid();
    ctx->kernel_permissions = ctx->admission || ctx->owner == 0;
    /* About 600 bytes each: an id per 4 KiB of the cache bound (65,536 by default), 4,096 at least. */
    ctx->inodes = fs_inodes_new((unsigned)MAX(run->config.guest.cache_bytes >> 12, 4096));
    g_mutex_init(&ctx->listings_lock);
    ctx->listings = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, (GDestroyNotify)g_hash_table_unref);
    ctx->open_dirs = g_hash_table_new(g_direct_hash, g_direct_equal);
    ctx->open_controls = g_hash_table_new_full(g_direct_hash, g_direct_equal, fs_control_destroy, NULL);
    ctx->tree = tree_new((struct snapfs_host **)run->hosts->pdata, run->hosts->len, &run->config);
}

/* The FUSE loop, until the session ends; libfuse's result. */
static int command_loop(struct command_run *run)
{
    struct fuse_session *se = run->ctx.session;
    struct fuse_loop_config *loop;
    int ret;

    if (run->cmdline.singlethread)
        return fuse_session_loop(se);
    /* More threads than libfuse's 10: requests wedged in a domain's appliance must leave some for the tree. */
    loop = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(loop, 0);
    fuse_loop_cfg_set_idle_threads(loop, 10);
    fuse_loop_cfg_set_max_threads(loop, run->cmdline.max_threads > FS_MAX_THREADS ? run->cmdline.max_threads
                                                                                  : FS_MAX_THREADS);
    ret = fuse_session_loop_mt(se, loop);
    fuse_loop_cfg_destroy(loop);
    return ret;
}

/*
 * Serves the mount from its mounting to its unmounting, the exit watcher
 * beside the loop; the exit status.  A session it leaves to the exit is
 * fs_session_left, which the teardown does not destroy.
 */
static int command_serve(struct command_run *run, const char *described)
{
    struct fuse_session *se = run->ctx.session;
    const char *mountpoint = run->cmdline.mountpoint;
    struct exit_watch_state watch = { .ctx = &run->ctx, .mountpoint = mountpoint, .main_thread = pthread_self() };
    GThread *exit_watch;
    int ret;

    fs_inodes_start_pruning(run->ctx.inodes, se);
    if (!mountinfo_find_fuse(mountpoint, watch.device, sizeof(watch.device)))
        log_debug("the mount on %s is not in /proc/self/mountinfo: its unmount is left to the kernel to tell",
                     mountpoint);
    exit_watch = g_thread_new("snapfs-exit", exit_watch_run, &watch);
    ret = command_loop(run);
    fs_inodes_stop_pruning(run->ctx.inodes);
    /* Stopped by SIGTERM or SIGINT (systemd, ^C) is a clean end too: libfuse returns the signal. */
    ret = ret == 0 || ret == SIGTERM || ret == SIGINT ? EXIT_SUCCESS : EXIT_FAILURE;
    g_atomic_int_set(&run->ctx.stopped, 1);
    g_thread_join(exit_watch);
    if (g_atomic_int_get(&watch.gone) && !session_severed(se)) {
        /*
         * Gone from here but still mounted elsewhere: libfuse would unmount whatever is on that path
         * now (a new mount there, say), so the session, with its fd whose close ends the copies, is
         * left to the exit.
         */
        fs_session_left = se;
        fuse_remove_signal_handlers(se);
    } else {
        fuse_session_unmount(se);
        fuse_remove_signal_handlers(se);
    }
    log_info("unmounted %s from %s", described, mountpoint);
    return ret;
}

/* Mounts and serves; the exit status. */
static int command_mount(struct command_run *run)
{
    g_autofree char *described = NULL;
    struct fuse_session *se;

    command_context_init(run);
    fuse_opt_add_arg(&run->args, "-osubtype=snapfs");
    fuse_opt_add_arg(&run->args, "-ofsname=snapfs");
    se = fuse_session_new(&run->args, &fs_operations, sizeof(fs_operations), &run->ctx);
    run->ctx.session = se;
    if (!se)
        return EXIT_FAILURE;   /* libfuse said why, e.g. an unknown option */
    fs_watch_stale(&run->ctx);
    if (fuse_set_signal_handlers(se) < 0)
        return EXIT_FAILURE;
    if (fuse_session_mount(se, run->cmdline.mountpoint) < 0) {
        fuse_remove_signal_handlers(se);
        return EXIT_FAILURE;
    }
    if (!run->cmdline.foreground) {
        startup_daemon_ready();
        fuse_set_log_func(startup_daemon_fuse_log);
    }
    described = startup_hosts_described(run->hosts);
    log_info("mounted %s on %s", described, run->cmdline.mountpoint);
    return command_serve(run, described);
}

/* Releases what the steps got to, in the order that lets each go before what it uses. */
static void command_teardown(struct command_run *run)
{
    struct fs_context *ctx = &run->ctx;

    /* Invalidations still queued go to the session, even one left to the exit: before it goes. */
    fs_unwatch_stale(ctx);
    if (ctx->session && ctx->session != fs_session_left)
        fuse_session_destroy(ctx->session);
    /* Folders still open hold tree handles: before the tree goes. */
    if (ctx->open_dirs) {
        fs_free_open_dirs(ctx);
        g_hash_table_unref(ctx->open_dirs);
    }
    if (ctx->open_controls)
        g_hash_table_unref(ctx->open_controls);
    tree_free(ctx->tree);
    fs_inodes_free(ctx->inodes);
    if (ctx->listings) {
        g_hash_table_unref(ctx->listings);
        g_mutex_clear(&ctx->listings_lock);
    }
    host_close_all((struct snapfs_host **)run->hosts->pdata, run->hosts->len);
    g_ptr_array_unref(run->hosts);
    host_stop_events();
    free(run->cmdline.mountpoint);
    fuse_opt_free_args(&run->args);
    options_free(&run->options);
    if (ctx->allowed_uids)
        g_array_unref(ctx->allowed_uids);
    if (ctx->allowed_gids)
        g_array_unref(ctx->allowed_gids);
    g_free((char *)run->config.revert.state_dir);
    if (run->lock_fd >= 0)
        close(run->lock_fd);
    if (run->state_fd >= 0)
        close(run->state_fd);
}

int main(int argc, char **argv)
{
    struct command_run run = {
        .args = FUSE_ARGS_INIT(argc, argv),
        .options = { .uris = g_ptr_array_new_with_free_func(g_free) },
        .hosts = g_ptr_array_new(),
        .state_fd = -1,
        .lock_fd = -1,
    };
    int ret = EXIT_FAILURE;

    if (options_parse(&run) < 0)
        goto out;
    ret = command_answer_early(&run, argv[0]);
    if (ret >= 0)
        goto out;
    ret = EXIT_FAILURE;
    if (command_check_before_mount(&run, argv[0]) < 0)
        goto out;
    if (!run.cmdline.foreground && startup_daemonize() < 0)
        goto out;
    /* A daemon logs to syslog from the start, and to the terminal too until it has mounted. */
    log_init(!run.cmdline.foreground, run.cmdline.debug || run.options.debug);
    if (run.state_fd >= 0 && startup_state_lock(&run.config, run.state_fd) < 0)
        goto out;
    domain_lock_set_dir(run.lock_fd);
    if (startup_hosts_open(&run) < 0)
        goto out;
    startup_hosts_recover(&run);
    if (run.options.allow_other && !run.options.allow_users && !run.options.allow_groups)
        log_warn("-o allow_other without allow_users= or allow_groups= lets in root and the mounting user "
                    "only: name the others who may enter");
    ret = command_mount(&run);

out:
    command_teardown(&run);
    return ret;
}
