/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What the command's files share: the parsed options (fs/options.c) and the steps before mounting (fs/startup.c). */
#pragma once

#include "fs.h"

#include <stdbool.h>

/* The command line as fuse_opt leaves it; every string is the command's own. */
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
    unsigned call_timeout;
    unsigned kvm_timeout;
    unsigned cache_size;
    char *quiesce;
    char *restore_keep;
    char *revert_keep;
    char *state_dir;
    char *allow_users;
    char *allow_groups;
};

/*
 * One run of the command: what main()'s steps hand each other.  main() owns
 * it, and its teardown releases whatever the steps got to.
 */
struct command_run {
    struct fuse_args args;
    struct snapfs_options options;
    struct fuse_cmdline_opts cmdline;
    struct snapfs_tree_config config;
    struct fs_context ctx;
    GPtrArray *hosts;   /* struct snapfs_host *, in the order of the URIs */
    int state_fd;       /* -1 for a read-only mount, which changes and recovers nothing */
    int lock_fd;        /* the per-domain lock files' directory; -1 likewise */
};

/* ---- fs/options.c ---- */

/*
 * The command line into @run's args, options and cmdline, as fuse_opt and
 * fuse_parse_cmdline() read it; -1 after libfuse's message.
 */
int options_parse(struct command_run *run);
void options_free(struct snapfs_options *options);
void options_usage(const char *prog);
void options_version(void);
/* The tree's configuration from the options, defaults filled in; false after a message on stderr. */
bool options_build_config(const struct snapfs_options *options, struct snapfs_tree_config *config);
/* The admission lists of @ctx, and the FUSE options they need added to @args; false after a message. */
bool options_build_admission(const struct snapfs_options *options, struct fs_context *ctx, struct fuse_args *args);

/* ---- fs/startup.c ---- */

/* 0 if @path can be mounted on, else -1 after a message on stderr. */
int startup_check_mountpoint(const char *path, bool nonempty);
/*
 * Forks before any thread exists; the parent exits once the child tells,
 * through startup_daemon_ready() or its own end, whether it mounted.
 */
int startup_daemonize(void);
/* The daemon has mounted: it lets go of the terminal and tells the parent. */
void startup_daemon_ready(void);
/* libfuse's log function once the daemon's stderr is /dev/null: its messages go to snapfs's log. */
void startup_daemon_fuse_log(enum fuse_log_level level, const char *fmt, va_list ap);
/* The state and lock directories opened (created if missing); -1 after a message on stderr. */
int startup_state_open(const struct snapfs_tree_config *config, int *state_fd, int *lock_fd);
/* The state directory's lock, waited for a while; -1 after a message on stderr. */
int startup_state_lock(const struct snapfs_tree_config *config, int state_fd);
/* libvirt's event loop, then one host per URI in @run->hosts, named; -1 after a message on stderr. */
int startup_hosts_open(struct command_run *run);
/* Reverts an earlier run left half done, finished or rolled back on every host that answers. */
void startup_hosts_recover(struct command_run *run);
/* "localhost (qemu:///system), host2 (...)": what the mount serves, for the log.  Caller frees. */
char *startup_hosts_described(GPtrArray *hosts);
