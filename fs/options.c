/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The command line: snapfs's option table, its parsing, --help and --version, and the configuration built from it. */
#include "command.h"
#include "snapfs/state-dir.h"

#include <grp.h>
#include <guestfs.h>
#include <inttypes.h>
#include <pwd.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    OPTION("call_timeout=%u", call_timeout),
    OPTION("kvm_timeout=%u", kvm_timeout),
    OPTION("cache_size=%u", cache_size),
    OPTION("quiesce=%s", quiesce),
    OPTION("revert_keep=%s", revert_keep),
    OPTION("restore_keep=%s", restore_keep),
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
         * in the foreground: a daemon logs its debug lines to syslog.  options_parse()
         * hands it to FUSE's session in the foreground only, where FUSE's
         * request log has a terminal to go to.
         */
        options->debug = 1;
        return 0;
    default:
        return 1;
    }
}

void options_usage(const char *prog)
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
           "    -o appliance_timeout=S an appliance that takes longer than S seconds to start is\n"
           "                           killed; the request gets EIO and the next access starts a\n"
           "                           new one (default 120)\n"
           "    -o call_timeout=S      the same for one step of a request (mounting a view, one\n"
           "                           call) that takes longer (default: appliance_timeout)\n"
           "    -o kvm_timeout=S       a KVM appliance silent for S seconds while starting is\n"
           "                           stalled: snapfs uses TCG from then on (default 20)\n"
           "    -o cache_size=MIB      bound of what snapfs caches of guest files, names, attributes\n"
           "                           and data together, least recently used evicted (default %u)\n"
           "    -o quiesce=auto|on|off freeze guest filesystems through the agent for mkdir (auto)\n"
           "    -o revert_keep=on|off  keep the state a revert leaves as pre-revert-DATE (on)\n"
           "    -o restore_keep=on|off snapshot a shut-off domain as pre-restore-DATE before the\n"
           "                           first change to its live/ folder (on)\n"
           "    -o state_dir=DIR       where snapfs journals by-hand operations (" STATE_DIR_ROOT " for\n"
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

void options_version(void)
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

int options_parse(struct command_run *run)
{
    if (fuse_opt_parse(&run->args, &run->options, option_spec, option_proc) < 0)
        return -1;
    if (run->options.positional)
        fuse_opt_add_arg(&run->args, run->options.positional);
    if (fuse_parse_cmdline(&run->args, &run->cmdline) < 0)
        return -1;
    if (run->options.debug && run->cmdline.foreground)
        fuse_opt_add_arg(&run->args, "-odebug");
    return 0;
}

void options_free(struct snapfs_options *options)
{
    g_ptr_array_unref(options->uris);
    g_free(options->quiesce);
    g_free(options->restore_keep);
    g_free(options->revert_keep);
    g_free(options->state_dir);
    g_free(options->allow_users);
    g_free(options->allow_groups);
    g_free(options->positional);
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
 * snapfs checks every request itself (fs/access.c), and lets in root, the mounting user and
 * those the lists name; allow_other alone names nobody more, so that sharing a mount, which
 * shows every guest's files and the host's image paths, is always a choice made by name.
 */
bool options_build_admission(const struct snapfs_options *options, struct fs_context *ctx, struct fuse_args *args)
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

bool options_build_config(const struct snapfs_options *options, struct snapfs_tree_config *config)
{
    bool keep_restore;

    config->read_only = options->read_only;
    config->uid = getuid();
    config->gid = getgid();
    config->guest.max_appliances = options->max_appliances ? options->max_appliances : 4;
    config->guest.idle_seconds = options->appliance_idle ? options->appliance_idle : 60;
    config->guest.live_ttl_ms = 1000;
    config->guest.limits.timeout_seconds = options->appliance_timeout ? options->appliance_timeout
                                                                      : GUEST_DEFAULT_TIMEOUT_S;
    config->guest.limits.call_seconds = options->call_timeout ? options->call_timeout
                                                              : config->guest.limits.timeout_seconds;
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
    if (!parse_on_off(options->revert_keep, true, "revert_keep", &config->revert.keep) ||
        !parse_on_off(options->restore_keep, true, "restore_keep", &keep_restore))
        return false;
    config->restore_keep_off = !keep_restore;
    config->revert.state_dir = options->state_dir ? g_strdup(options->state_dir) : state_dir_default();
    return true;
}
