/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The snapfs command: parse the command line, connect to libvirt, mount, serve until unmounted. */
#include "fs.h"
#include "snapfs/check.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/state-dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <guestfs.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

struct snapfs_options {
    GPtrArray *uris;
    char *positional;   /* the last non-option argument seen: the mountpoint */
    int read_only;
    int nonempty;
    int check;
    int allow_other;
    int debug;
    unsigned max_appliances;
    unsigned appliance_idle;
    unsigned appliance_timeout;
    unsigned kvm_timeout;
    unsigned cache_size;
    char *quiesce;
    char *revert_keep;
    char *state_dir;
    char *allow_users;
    char *allow_groups;
};

enum { KEY_CONNECT, KEY_CONNECT_OPTION, KEY_RO, KEY_ALLOW_OTHER, KEY_DEBUG, KEY_SUID };

#define OPTION(t, p) { t, offsetof(struct snapfs_options, p), 1 }
static const struct fuse_opt option_spec[] = {
    FUSE_OPT_KEY("-c ", KEY_CONNECT),
    FUSE_OPT_KEY("--connect=", KEY_CONNECT),
    FUSE_OPT_KEY("--connect ", KEY_CONNECT),
    FUSE_OPT_KEY("connect=", KEY_CONNECT_OPTION),
    OPTION("--check", check),
    FUSE_OPT_KEY("ro", KEY_RO),
    FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
    FUSE_OPT_KEY("debug", KEY_DEBUG),
    OPTION("nonempty", nonempty),
    OPTION("max_appliances=%u", max_appliances),
    OPTION("appliance_idle=%u", appliance_idle),
    OPTION("appliance_timeout=%u", appliance_timeout),
    OPTION("kvm_timeout=%u", kvm_timeout),
    OPTION("cache_size=%u", cache_size),
    OPTION("quiesce=%s", quiesce),
    OPTION("revert_keep=%s", revert_keep),
    OPTION("state_dir=%s", state_dir),
    OPTION("allow_users=%s", allow_users),
    OPTION("allow_groups=%s", allow_groups),
    /* Guest disks are untrusted: a setuid binary or device node in one must never act on the host. */
    FUSE_OPT_KEY("suid", KEY_SUID),
    FUSE_OPT_KEY("dev", KEY_SUID),
    FUSE_OPT_END
};

static int option_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
    struct snapfs_options *options = data;

    switch (key) {
    case FUSE_OPT_KEY_NONOPT:
        /*
         * mount -t fuse.snapfs (and so fstab and systemd mount units) runs
         * "snapfs SOURCE MOUNTPOINT": the source is a URI, or "snapfs" for
         * libvirt's default.  The last non-option is the mountpoint.
         */
        if (options->positional) {
            const char *source = options->positional;

            if (strcmp(source, "snapfs") != 0 && strcmp(source, "none") != 0)
                g_ptr_array_add(options->uris, g_strdup(source));
            g_free(options->positional);
        }
        options->positional = g_strdup(arg);
        return 0;
    case KEY_CONNECT_OPTION:
        g_ptr_array_add(options->uris, g_strdup(arg + strlen("connect=")));
        return 0;
    case KEY_CONNECT:
        /* fuse_opt hands over the option and its value run together. */
        if (g_str_has_prefix(arg, "--connect="))
            arg += strlen("--connect=");
        else if (g_str_has_prefix(arg, "--connect"))
            arg += strlen("--connect");
        else
            arg += strlen("-c");
        g_ptr_array_add(options->uris, g_strdup(arg));
        return 0;
    case KEY_RO:
        options->read_only = 1;
        return 1;   /* the kernel refuses writes too */
    case KEY_ALLOW_OTHER:
        options->allow_other = 1;
        return 1;
    case KEY_SUID:
        /* mount(8) hands "suid,dev" to every helper from fstab's defaults: refusing would refuse every fstab line. */
        fprintf(stderr, "snapfs: -o %s is ignored: guest files are untrusted, so the mount is always nosuid,nodev\n",
                arg);
        return 0;
    case KEY_DEBUG:
        /*
         * Kept from fuse_parse_cmdline(), which would take it for -d and stay
         * in the foreground: a daemon logs its debug lines to syslog.  main()
         * hands it to FUSE's session in the foreground only, where FUSE's
         * request log has a terminal to go to.
         */
        options->debug = 1;
        return 0;
    default:
        return 1;
    }
}

static void usage(const char *prog)
{
    printf("usage: %s [-c URI]... [-o OPT[,OPT...]] [-f] [-d] MOUNTPOINT\n"
           "       mount -t fuse.snapfs URI|snapfs MOUNTPOINT [-o OPT,connect=URI...]\n"
           "       fusermount3 -u MOUNTPOINT\n"
           "       %s --check [-c URI]...\n\n"
           "Shows libvirt domains, their snapshots and their disks' layers as directories.\n\n"
           "snapfs options:\n"
           "    -c URI, --connect URI  libvirt connection (as virsh -c); repeat for several hosts,\n"
           "                           each then a folder named after its host (\"localhost\" for\n"
           "                           local URIs, \"-2\", \"-3\"... added when names clash)\n"
           "    -o connect=URI         the same as -c URI, for fstab and mount -t fuse.snapfs\n"
           "    -o debug               log every libvirt and libguestfs step (to syslog unless -f;\n"
           "                           with -f, FUSE's requests too)\n"
           "    -o ro                  read-only: no mkdir, rmdir, revert (EROFS)\n"
           "    -o nonempty            allow mounting over a non-empty directory\n"
           "    -o max_appliances=N    libguestfs appliances running at once (default 4)\n"
           "    -o appliance_idle=S    stop an appliance after S idle seconds (default 60)\n"
           "    -o appliance_timeout=S an appliance that takes longer than S seconds to start or to\n"
           "                           answer one step of a request is killed; the request gets EIO\n"
           "                           and the next access starts a new one (default 120)\n"
           "    -o kvm_timeout=S       a KVM appliance silent for S seconds while starting is\n"
           "                           stalled: snapfs uses TCG from then on (default 20)\n"
           "    -o cache_size=MIB      bound of what snapfs caches of guest files, names, attributes\n"
           "                           and data together, least recently used evicted (default %u)\n"
           "    -o quiesce=auto|on|off freeze guest filesystems through the agent for mkdir (auto)\n"
           "    -o revert_keep=on|off  keep the state a revert leaves as pre-revert-DATE (on)\n"
           "    -o state_dir=DIR       where snapfs journals by-hand operations (/var/lib/snapfs for\n"
           "                           root, else $XDG_STATE_HOME/snapfs or ~/.local/state/snapfs)\n"
           "    -o allow_other         let other users in: root and those allow_users and\n"
           "                           allow_groups name (alone: nobody more); reading then follows\n"
           "                           the guest's modes (default_permissions, guest uids and gids\n"
           "                           taken as the host's), changes stay with root and you\n"
           "    -o allow_users=U[:U...]   the users (names or uids) allow_other lets in\n"
           "    -o allow_groups=G[:G...]  the groups (names or gids, supplementary ones too) it lets in\n"
           "    --check                check /dev/fuse, the connections and a libguestfs appliance,\n"
           "                           say what is wrong and how to fix it, and exit\n\n"
           "control files:\n"
           "    echo NAME > DOMAIN/revert            revert DOMAIN to snapshot NAME (EBUSY if it runs)\n"
           "    echo 'NAME --force' > DOMAIN/revert  stop the running DOMAIN first, then revert\n"
           "    cat DOMAIN/revert                    the current snapshot\n"
           "    mkdir DOMAIN/NAME, rmdir DOMAIN/NAME take and delete a snapshot\n\n",
           prog, prog, GUEST_CACHE_DEFAULT_MIB);
    printf("FUSE options:\n");
    fuse_cmdline_help();
    fuse_lowlevel_help();
}

static void version(void)
{
    unsigned long lib = 0;
    struct guestfs_version *gv = NULL;
    guestfs_h *g = guestfs_create_flags(GUESTFS_CREATE_NO_ENVIRONMENT);

    virGetVersion(&lib, NULL, NULL);
    if (g)
        gv = guestfs_version(g);
    printf("snapfs %s\nlibvirt %lu.%lu.%lu\nlibfuse %s\n", SNAPFS_VERSION,
           lib / 1000000, lib / 1000 % 1000, lib % 1000, fuse_pkgversion());
    if (gv)
        printf("libguestfs %" PRIi64 ".%" PRIi64 ".%" PRIi64 "\n", gv->major, gv->minor, gv->release);
    guestfs_free_version(gv);
    if (g)
        guestfs_close(g);
}

/* A mountpoint must be an existing directory, and empty unless -o nonempty says otherwise. */
static int check_mountpoint(const char *path, bool nonempty)
{
    struct stat st;
    DIR *dir;
    struct dirent *entry;

    if (stat(path, &st) < 0) {
        fprintf(stderr, "snapfs: cannot use mountpoint '%s': %s\n", path, g_strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "snapfs: cannot use mountpoint '%s': it is not a directory\n", path);
        return -1;
    }
    if (nonempty)
        return 0;
    dir = opendir(path);
    if (!dir) {
        fprintf(stderr, "snapfs: cannot use mountpoint '%s': %s\n", path, g_strerror(errno));
        return -1;
    }
    while ((entry = readdir(dir))) {
        if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0) {
            closedir(dir);
            fprintf(stderr, "snapfs: cannot use mountpoint '%s': it is not empty (-o nonempty allows it)\n", path);
            return -1;
        }
    }
    closedir(dir);
    return 0;
}

/*
 * Daemonizing forks before any thread exists (libvirt's event loop and the
 * embedded driver start threads); the parent waits for the child to say
 * whether it mounted, so every error still reaches the terminal.
 */
static int daemon_status_fd = -1;

static int daemon_start(void)
{
    int fds[2];
    pid_t pid;
    char status = 1;

    if (pipe(fds) < 0) {
        perror("snapfs: pipe");
        return -1;
    }
    pid = fork();
    if (pid < 0) {
        perror("snapfs: fork");
        return -1;
    }
    if (pid > 0) {
        close(fds[1]);
        if (read(fds[0], &status, 1) != 1)
            status = 1;
        _exit(status ? EXIT_FAILURE : EXIT_SUCCESS);
    }
    close(fds[0]);
    daemon_status_fd = fds[1];
    setsid();
    return 0;
}

static void daemon_ready(void)
{
    char ok = 0;
    int null;

    if (daemon_status_fd < 0)
        return;
    if (chdir("/") < 0)
        snapfs_warn("cannot change to /: %s", g_strerror(errno));
    null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        dup2(null, STDERR_FILENO);
        if (null > STDERR_FILENO)
            close(null);
    }
    snapfs_log_detach();
    if (write(daemon_status_fd, &ok, 1) != 1)
        snapfs_warn("cannot tell the parent that the mount is ready");
    close(daemon_status_fd);
    daemon_status_fd = -1;
}

/* libfuse's own messages ("fuse: reading device: ..."), in a daemon whose stderr is /dev/null. */
static void daemon_fuse_log(enum fuse_log_level level, const char *fmt, va_list ap)
{
    g_autofree char *message = g_strdup_vprintf(fmt, ap);

    g_strchomp(message);
    if (level <= FUSE_LOG_ERR)
        snapfs_log(SNAPFS_LOG_ERROR, "%s", message);
    else if (level == FUSE_LOG_WARNING)
        snapfs_log(SNAPFS_LOG_WARN, "%s", message);
    else if (level < FUSE_LOG_DEBUG)
        snapfs_log(SNAPFS_LOG_INFO, "%s", message);
    else
        snapfs_log(SNAPFS_LOG_DEBUG, "%s", message);
}

/*
 * Whether this mount namespace has a FUSE mount of @device ("major:minor"), or with @mountpoint, the
 * device of the last FUSE mount there (copied to @device).  From /proc, which never waits on FUSE.
 */
static bool fs_mount_find(const char *mountpoint, char *device, size_t size)
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
static char *fs_mount_holders(const char *device)
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
static bool fs_session_severed(struct fuse_session *se)
{
    struct pollfd dev = { .fd = fuse_session_fd(se) };

    return poll(&dev, 1, 0) == 1 && (dev.revents & POLLERR);
}

/* How long a mount gone from this namespace may keep the session before snapfs ends it. */
#define FS_GONE_USEC (1000 * 1000)

struct fuse_session *fs_session_left;

struct fs_exit_watch {
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
static gpointer exit_watcher(gpointer data)
{
    struct fs_exit_watch *watch = data;
    struct fs_context *ctx = watch->ctx;
    int fd = watch->device[0] ? open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC) : -1;
    gint64 gone_at = 0, idle_at = 0;

    /* Read once after the open: a change before it would never be told. */
    if (fd >= 0 && !fs_mount_find(NULL, watch->device, 0))
        gone_at = g_get_monotonic_time();
    while (!g_atomic_int_get(&ctx->stopped) && !fuse_session_exited(ctx->session)) {
        struct pollfd change = { .fd = fd, .events = POLLPRI };

        if (fd < 0 || gone_at) {
            g_usleep(100 * 1000);
        } else if (poll(&change, 1, 100) > 0 && (change.revents & (POLLPRI | POLLERR)) &&
                   !fs_mount_find(NULL, watch->device, 0)) {
            gone_at = g_get_monotonic_time();
        }
        if (gone_at && !g_atomic_int_get(&watch->gone)) {
            snapfs_debug("the mount on %s has gone from this mount namespace", watch->mountpoint);
            g_atomic_int_set(&watch->gone, 1);
        }
        /* The last close of a lazy unmount ends the session by itself: idle for a while first. */
        if (!gone_at || g_atomic_int_get(&ctx->open_handles) > 0)
            idle_at = 0;
        else if (!idle_at)
            idle_at = g_get_monotonic_time();
        if (idle_at && g_get_monotonic_time() - gone_at >= FS_GONE_USEC &&
            g_get_monotonic_time() - idle_at >= FS_GONE_USEC / 2 && !fs_session_severed(ctx->session) &&
            !fuse_session_exited(ctx->session)) {
            g_autofree char *holders = fs_mount_holders(watch->device);

            snapfs_info("%s was unmounted, but copies of the mount in other mount namespaces keep it alive (%s): "
                        "ending the session", watch->mountpoint, holders);
            fuse_session_exit(ctx->session);
            pthread_kill(watch->main_thread, SIGTERM);   /* libfuse's handler: the loop ends as on SIGTERM */
            break;
        }
    }
    if (fd >= 0)
        close(fd);
    if (!g_atomic_int_get(&ctx->stopped))
        snapfs_debug("the session ends: stopping every appliance");
    snapfs_tree_abort(ctx->tree);
    return NULL;
}

/* "localhost (qemu:///system), host2 (qemu+ssh://host2/system)": what a mount serves, for the log. */
static char *hosts_described(GPtrArray *hosts)
{
    GString *text = g_string_new(NULL);

    for (guint i = 0; i < hosts->len; i++) {
        struct snapfs_host *host = g_ptr_array_index(hosts, i);

        g_string_append_printf(text, "%s%s (%s)", i ? ", " : "", snapfs_host_name(host),
                               snapfs_host_uri(host) ? snapfs_host_uri(host) : "libvirt's default URI");
    }
    return g_string_free(text, FALSE);
}

static bool parse_on_off(const char *value, bool fallback, const char *name, bool *out)
{
    if (!value) {
        *out = fallback;
        return true;
    }
    if (strcmp(value, "on") == 0 || strcmp(value, "off") == 0) {
        *out = strcmp(value, "on") == 0;
        return true;
    }
    fprintf(stderr, "snapfs: -o %s takes on or off, not '%s'\n", name, value);
    return false;
}

/*
 * allow_users=alice:1001, allow_groups=vmadmins:2000: names or numeric ids, ':' between them (a
 * comma would end the option, in fstab as on the command line; ':' is never part of a user or
 * group name).  Every name is resolved now: a typo must refuse to start, not let nobody in later.
 */
static bool parse_ids(const char *list, bool groups, GArray *ids)
{
    g_auto(GStrv) names = g_strsplit(list, ":", -1);
    const char *option = groups ? "allow_groups" : "allow_users";

    for (char **name = names; *name; name++) {
        char *end = NULL;
        guint64 number;
        guint32 id;

        if (!**name) {
            fprintf(stderr, "snapfs: -o %s=%s holds an empty name\n", option, list);
            return false;
        }
        number = g_ascii_strtoull(*name, &end, 10);
        if (*end == '\0' && number < G_MAXUINT32) {
            id = (guint32)number;
        } else if (groups) {
            struct group *gr = getgrnam(*name);

            if (!gr) {
                fprintf(stderr, "snapfs: -o allow_groups: there is no group '%s'\n", *name);
                return false;
            }
            id = gr->gr_gid;
        } else {
            struct passwd *pw = getpwnam(*name);

            if (!pw) {
                fprintf(stderr, "snapfs: -o allow_users: there is no user '%s'\n", *name);
                return false;
            }
            id = pw->pw_uid;
        }
        g_array_append_val(ids, id);
    }
    return true;
}

/*
 * Who may enter: without allow_other the kernel lets in the mounting user alone.  With it,
 * snapfs checks every request itself (fs/ops.c), and lets in root, the mounting user and
 * those the lists name; allow_other alone names nobody more, so that sharing a mount, which
 * shows every guest's files and the host's image paths, is always a choice made by name.
 */
static bool build_admission(const struct snapfs_options *options, struct fs_context *ctx, struct fuse_args *args)
{
    ctx->allowed_uids = g_array_new(FALSE, FALSE, sizeof(guint32));
    ctx->allowed_gids = g_array_new(FALSE, FALSE, sizeof(guint32));
    if ((options->allow_users && !parse_ids(options->allow_users, false, ctx->allowed_uids)) ||
        (options->allow_groups && !parse_ids(options->allow_groups, true, ctx->allowed_gids)))
        return false;
    /* Naming whom to let in asks for other users to come in. */
    if ((options->allow_users || options->allow_groups) && !options->allow_other)
        fuse_opt_add_arg(args, "-oallow_other");
    ctx->admission = options->allow_other || options->allow_users || options->allow_groups;
    return true;
}

static bool build_config(const struct snapfs_options *options, struct snapfs_tree_config *config)
{
    config->read_only = options->read_only;
    config->uid = getuid();
    config->gid = getgid();
    config->guest.max_appliances = options->max_appliances ? options->max_appliances : 4;
    config->guest.idle_seconds = options->appliance_idle ? options->appliance_idle : 60;
    config->guest.live_ttl_ms = 1000;
    config->guest.limits.timeout_seconds = options->appliance_timeout ? options->appliance_timeout
                                                                      : GUEST_DEFAULT_TIMEOUT_S;
    config->guest.limits.kvm_seconds = options->kvm_timeout ? options->kvm_timeout : GUEST_DEFAULT_KVM_TIMEOUT_S;
    config->guest.cache_bytes = (size_t)(options->cache_size ? options->cache_size : GUEST_CACHE_DEFAULT_MIB) << 20;
    if (!options->quiesce || strcmp(options->quiesce, "auto") == 0) {
        config->engine.quiesce = ENGINE_QUIESCE_AUTO;
    } else if (strcmp(options->quiesce, "on") == 0) {
        config->engine.quiesce = ENGINE_QUIESCE_ON;
    } else if (strcmp(options->quiesce, "off") == 0) {
        config->engine.quiesce = ENGINE_QUIESCE_OFF;
    } else {
        fprintf(stderr, "snapfs: -o quiesce takes auto, on or off, not '%s'\n", options->quiesce);
        return false;
    }
    if (!parse_on_off(options->revert_keep, true, "revert_keep", &config->revert.keep))
        return false;
    if (options->state_dir)
        config->revert.state_dir = g_strdup(options->state_dir);
    else if (getuid() == 0)
        config->revert.state_dir = g_strdup("/var/lib/snapfs");
    else
        config->revert.state_dir = g_build_filename(g_get_user_state_dir(), "snapfs", NULL);
    return true;
}

/*
 * A second snapfs on a state directory waits this long for the first to end
 * (a restart right after an unmount: the old process may still stop its
 * appliances, 10 s at most), then refuses naming it (fstab and a hand-run
 * one, or a lazily unmounted one still serving open files: that may take
 * any time, and a mount that waits without end tells nobody why).
 */
#define STATE_LOCK_WAIT_MS 10000

/* Where the per-domain lock files of every snapfs of this user on this host go (a tmpfs: none survives a boot). */
static char *lock_dir_default(void)
{
    return snapfs_runtime_dir();
}

/*
 * Before anything is mounted, for a mount that may change domains: the
 * state directory and the lock directory checked (created if missing) and
 * opened.  -1 after a message on stderr.  A read-only mount changes nothing
 * and recovers nothing, and so leaves both alone (it may run beside the
 * read-write one on the same state directory).
 */
static int state_open(const struct snapfs_tree_config *config, int *state_fd, int *lock_fd)
{
    g_autofree char *lock_dir = lock_dir_default();

    *state_fd = snapfs_state_dir_open(config->revert.state_dir, true);
    if (*state_fd >= 0)
        *lock_fd = snapfs_state_dir_open(lock_dir, true);
    if (*state_fd < 0 || *lock_fd < 0) {
        fprintf(stderr, "snapfs: %s\n", snapfs_error_message());
        return -1;
    }
    return 0;
}

/* The state directory's lock, for the process's life (after daemonizing: the daemon holds it); -1 after a message. */
static int state_lock(const struct snapfs_tree_config *config, int state_fd)
{
    if (snapfs_state_dir_lock(state_fd, config->revert.state_dir, 0) == 0)
        return 0;
    if (snapfs_error_errno() == EBUSY) {
        snapfs_warn("%s; waiting up to %d s for it to end", snapfs_error_message(), STATE_LOCK_WAIT_MS / 1000);
        if (snapfs_state_dir_lock(state_fd, config->revert.state_dir, STATE_LOCK_WAIT_MS) == 0)
            return 0;
    }
    fprintf(stderr, "snapfs: %s (one snapfs at a time acts on a state directory: stop it, or give this one "
            "another -o state_dir)\n", snapfs_error_message());
    return -1;
}

int main(int argc, char **argv)
{
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct snapfs_options options = { .uris = g_ptr_array_new_with_free_func(g_free) };
    struct fuse_cmdline_opts cmdline = { 0 };
    struct snapfs_tree_config config = { 0 };
    struct fs_context ctx = { 0 };
    g_autoptr(GPtrArray) hosts = g_ptr_array_new();
    struct fuse_session *se = NULL;
    struct fuse_loop_config *loop = NULL;
    GThread *exit_watch = NULL;
    struct fs_exit_watch watch = { .ctx = &ctx };
    g_autofree char *described = NULL;
    int state_fd = -1, lock_fd = -1;
    int ret = EXIT_FAILURE;

    if (fuse_opt_parse(&args, &options, option_spec, option_proc) < 0)
        goto out;
    if (options.positional)
        fuse_opt_add_arg(&args, options.positional);
    if (fuse_parse_cmdline(&args, &cmdline) < 0)
        goto out;
    if (options.debug && cmdline.foreground)
        fuse_opt_add_arg(&args, "-odebug");
    if (cmdline.show_help) {
        usage(argv[0]);
        ret = EXIT_SUCCESS;
        goto out;
    }
    if (cmdline.show_version) {
        version();
        ret = EXIT_SUCCESS;
        goto out;
    }
    if (options.check) {
        if (options.uris->len == 0)
            g_ptr_array_add(options.uris, NULL);
        ret = snapfs_check((const char *const *)options.uris->pdata, options.uris->len, stdout) ? EXIT_FAILURE
                                                                                              : EXIT_SUCCESS;
        snapfs_virt_stop_events();
        goto out;
    }
    if (!cmdline.mountpoint) {
        fprintf(stderr, "snapfs: no mountpoint given (see %s --help)\n", argv[0]);
        goto out;
    }
    if (!build_config(&options, &config) || check_mountpoint(cmdline.mountpoint, options.nonempty) < 0)
        goto out;
    if (!options.read_only && state_open(&config, &state_fd, &lock_fd) < 0)
        goto out;
    if (access("/dev/fuse", R_OK | W_OK) < 0) {
        fprintf(stderr, "snapfs: cannot use /dev/fuse: %s (load the fuse module, or run where it exists)\n",
                g_strerror(errno));
        goto out;
    }
    if (!build_admission(&options, &ctx, &args))
        goto out;
    if (ctx.admission)
        fuse_opt_add_arg(&args, "-odefault_permissions");
    /*
     * libfuse's default too, said here so that no later default can change it (asking for suid
     * or dev is ignored above, with a message).
     */
    fuse_opt_add_arg(&args, "-onosuid");
    fuse_opt_add_arg(&args, "-onodev");
    if (!cmdline.foreground && daemon_start() < 0)
        goto out;
    /* A daemon logs to syslog from the start, and to the terminal too until it has mounted. */
    snapfs_log_init(!cmdline.foreground, cmdline.debug || options.debug);
    if (state_fd >= 0 && state_lock(&config, state_fd) < 0)
        goto out;
    engine_lock_set_dir(lock_fd);

    if (snapfs_virt_start_events() < 0) {
        fprintf(stderr, "snapfs: %s\n", snapfs_error_message());
        goto out;
    }
    if (options.uris->len == 0)
        g_ptr_array_add(options.uris, NULL);   /* libvirt's default */
    for (guint i = 0; i < options.uris->len; i++) {
        /* With several hosts, one that is down now must not keep the others from being mounted. */
        struct snapfs_host *host = snapfs_host_open(g_ptr_array_index(options.uris, i), options.uris->len > 1);

        if (!host) {
            fprintf(stderr, "snapfs: %s\n", snapfs_error_message());
            goto out;
        }
        g_ptr_array_add(hosts, host);
    }
    snapfs_hosts_name((struct snapfs_host **)hosts->pdata, hosts->len);
    for (guint i = 0; i < hosts->len; i++) {
        virConnectPtr conn = snapfs_host_conn(g_ptr_array_index(hosts, i));

        /* Finish or roll back what an earlier run left half done, before anyone looks. */
        if (conn && state_fd >= 0 && revert_recover(conn, &config.revert) < 0)
            snapfs_warn("cannot recover every interrupted revert on %s: %s",
                        snapfs_host_uri(g_ptr_array_index(hosts, i)), snapfs_error_message());
        if (conn)
            virConnectClose(conn);
    }

    if (options.allow_other && !options.allow_users && !options.allow_groups)
        snapfs_warn("-o allow_other without allow_users= or allow_groups= lets in root and the mounting user "
                    "only: name the others who may enter");
    ctx.owner = getuid();
    ctx.kernel_permissions = ctx.admission || ctx.owner == 0;
    /* About 600 bytes each: an id per 4 KiB of the cache bound (65,536 by default), 4,096 at least. */
    ctx.inodes = fs_inodes_new((unsigned)MAX(config.guest.cache_bytes >> 12, 4096));
    g_mutex_init(&ctx.listings_lock);
    ctx.listings = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, (GDestroyNotify)g_hash_table_unref);
    ctx.open_dirs = g_hash_table_new(g_direct_hash, g_direct_equal);
    ctx.open_controls = g_hash_table_new_full(g_direct_hash, g_direct_equal, fs_control_destroy, NULL);
    ctx.tree = snapfs_tree_new((struct snapfs_host **)hosts->pdata, hosts->len, &config);
    fuse_opt_add_arg(&args, "-osubtype=snapfs");
    fuse_opt_add_arg(&args, "-ofsname=snapfs");
    se = fuse_session_new(&args, &fs_operations, sizeof(fs_operations), &ctx);
    ctx.session = se;
    if (!se)
        goto out;   /* libfuse said why, e.g. an unknown option */
    fs_watch_stale(&ctx);
    if (fuse_set_signal_handlers(se) < 0)
        goto out;
    if (fuse_session_mount(se, cmdline.mountpoint) < 0) {
        fuse_remove_signal_handlers(se);
        goto out;
    }
    if (!cmdline.foreground) {
        daemon_ready();
        fuse_set_log_func(daemon_fuse_log);
    }
    described = hosts_described(hosts);
    snapfs_info("mounted %s on %s", described, cmdline.mountpoint);
    fs_inodes_start_pruning(ctx.inodes, se);
    watch.mountpoint = cmdline.mountpoint;
    watch.main_thread = pthread_self();
    if (!fs_mount_find(cmdline.mountpoint, watch.device, sizeof(watch.device)))
        snapfs_debug("the mount on %s is not in /proc/self/mountinfo: its unmount is left to the kernel to tell",
                     cmdline.mountpoint);
    exit_watch = g_thread_new("snapfs-exit", exit_watcher, &watch);
    if (cmdline.singlethread) {
        ret = fuse_session_loop(se);
    } else {
        /* More threads than libfuse's 10: requests wedged in a domain's appliance must leave some for the tree. */
        loop = fuse_loop_cfg_create();
        fuse_loop_cfg_set_clone_fd(loop, 0);
        fuse_loop_cfg_set_idle_threads(loop, 10);
        fuse_loop_cfg_set_max_threads(loop, cmdline.max_threads > FS_MAX_THREADS ? cmdline.max_threads
                                                                                 : FS_MAX_THREADS);
        ret = fuse_session_loop_mt(se, loop);
        fuse_loop_cfg_destroy(loop);
    }
    fs_inodes_stop_pruning(ctx.inodes);
    /* Stopped by SIGTERM or SIGINT (systemd, ^C) is a clean end too: libfuse returns the signal. */
    ret = ret == 0 || ret == SIGTERM || ret == SIGINT ? EXIT_SUCCESS : EXIT_FAILURE;
    g_atomic_int_set(&ctx.stopped, 1);
    g_thread_join(exit_watch);
    if (g_atomic_int_get(&watch.gone) && !fs_session_severed(se)) {
        /*
         * Gone from here but still mounted elsewhere: libfuse would unmount whatever is on that path
         * now (a new mount there, say), so the session, with its fd whose close ends the copies, is
         * left to the exit.
         */
        fs_session_left = g_steal_pointer(&se);
        fuse_remove_signal_handlers(fs_session_left);
    } else {
        fuse_session_unmount(se);
        fuse_remove_signal_handlers(se);
    }
    snapfs_info("unmounted %s from %s", described, cmdline.mountpoint);

out:
    fs_unwatch_stale(&ctx);
    if (se)
        fuse_session_destroy(se);
    /* Folders still open hold tree handles: before the tree goes. */
    if (ctx.open_dirs) {
        fs_free_open_dirs(&ctx);
        g_hash_table_unref(ctx.open_dirs);
    }
    if (ctx.open_controls)
        g_hash_table_unref(ctx.open_controls);
    snapfs_tree_free(ctx.tree);
    fs_inodes_free(ctx.inodes);
    if (ctx.listings) {
        g_hash_table_unref(ctx.listings);
        g_mutex_clear(&ctx.listings_lock);
    }
    snapfs_hosts_close((struct snapfs_host **)hosts->pdata, hosts->len);
    snapfs_virt_stop_events();
    free(cmdline.mountpoint);
    fuse_opt_free_args(&args);
    g_ptr_array_unref(options.uris);
    g_free(options.quiesce);
    g_free(options.revert_keep);
    g_free(options.state_dir);
    g_free(options.allow_users);
    g_free(options.allow_groups);
    if (ctx.allowed_uids)
        g_array_unref(ctx.allowed_uids);
    if (ctx.allowed_gids)
        g_array_unref(ctx.allowed_gids);
    g_free(options.positional);
    g_free((char *)config.revert.state_dir);
    if (lock_fd >= 0)
        close(lock_fd);
    if (state_fd >= 0)
        close(state_fd);
    return ret;
}
