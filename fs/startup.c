/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The command's steps before it serves: the mountpoint, daemonizing, the state and lock directories, the hosts and the recovery of interrupted reverts. */
#include "command.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/state-dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A mountpoint must be an existing directory, and empty unless -o nonempty says otherwise. */
int startup_check_mountpoint(const char *path, bool nonempty)
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

int startup_daemonize(void)
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

void startup_daemon_ready(void)
{
    char ok = 0;
    int null;

    if (daemon_status_fd < 0)
        return;
    if (chdir("/") < 0)
        log_warn("cannot change to /: %s", g_strerror(errno));
    null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        dup2(null, STDERR_FILENO);
        if (null > STDERR_FILENO)
            close(null);
    }
    log_detach();
    if (write(daemon_status_fd, &ok, 1) != 1)
        log_warn("cannot tell the parent that the mount is ready");
    close(daemon_status_fd);
    daemon_status_fd = -1;
}

/* libfuse's own messages ("fuse: reading device: ..."), in a daemon whose stderr is /dev/null. */
void startup_daemon_fuse_log(enum fuse_log_level level, const char *fmt, va_list ap)
{
    g_autofree char *message = g_strdup_vprintf(fmt, ap);

    g_strchomp(message);
    if (level <= FUSE_LOG_ERR)
        log_line(LOG_LEVEL_ERROR, "%s", message);
    else if (level == FUSE_LOG_WARNING)
        log_line(LOG_LEVEL_WARN, "%s", message);
    else if (level < FUSE_LOG_DEBUG)
        log_line(LOG_LEVEL_INFO, "%s", message);
    else
        log_line(LOG_LEVEL_DEBUG, "%s", message);
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
    return state_dir_runtime();
}

/*
 * Before anything is mounted, for a mount that may change domains: the
 * state directory and the lock directory checked (created if missing) and
 * opened.  -1 after a message on stderr.  A read-only mount changes nothing
 * and recovers nothing, and so leaves both alone (it may run beside the
 * read-write one on the same state directory).
 */
int startup_state_open(const struct snapfs_tree_config *config, int *state_fd, int *lock_fd)
{
    g_autofree char *lock_dir = lock_dir_default();

    *state_fd = state_dir_open(config->revert.state_dir, true);
    if (*state_fd >= 0)
        *lock_fd = state_dir_open(lock_dir, true);
    if (*state_fd < 0 || *lock_fd < 0) {
        fprintf(stderr, "snapfs: %s\n", error_message());
        return -1;
    }
    return 0;
}

/* The state directory's lock, for the process's life (after daemonizing: the daemon holds it); -1 after a message. */
int startup_state_lock(const struct snapfs_tree_config *config, int state_fd)
{
    if (state_dir_lock(state_fd, config->revert.state_dir, 0) == 0)
        return 0;
    if (error_errno() == EBUSY) {
        log_warn("%s; waiting up to %d s for it to end", error_message(), STATE_LOCK_WAIT_MS / 1000);
        if (state_dir_lock(state_fd, config->revert.state_dir, STATE_LOCK_WAIT_MS) == 0)
            return 0;
    }
    fprintf(stderr, "snapfs: %s (one snapfs at a time acts on a state directory: stop it, or give this one "
            "another -o state_dir)\n", error_message());
    return -1;
}

int startup_hosts_open(struct command_run *run)
{
    GPtrArray *uris = run->options.uris;

    if (host_start_events() < 0) {
        fprintf(stderr, "snapfs: %s\n", error_message());
        return -1;
    }
    if (uris->len == 0)
        g_ptr_array_add(uris, NULL);   /* libvirt's default */
    for (guint i = 0; i < uris->len; i++) {
        /* With several hosts, one that is down now must not keep the others from being mounted. */
        struct snapfs_host *host = host_open(g_ptr_array_index(uris, i), uris->len > 1);

        if (!host) {
            fprintf(stderr, "snapfs: %s\n", error_message());
            return -1;
        }
        g_ptr_array_add(run->hosts, host);
    }
    host_name_all((struct snapfs_host **)run->hosts->pdata, run->hosts->len);
    return 0;
}

/* Finish or roll back what an earlier run left half done, before anyone looks. */
void startup_hosts_recover(struct command_run *run)
{
    for (guint i = 0; i < run->hosts->len; i++) {
        struct snapfs_host *host = g_ptr_array_index(run->hosts, i);
        g_autoptr(virConnect) conn = host_conn(host);

        if (conn && run->state_fd >= 0 && revert_recover(conn, &run->config.revert) < 0)
            log_warn("cannot recover every interrupted revert on %s: %s", host_uri(host),
                        error_message());
    }
}

/* "localhost (qemu:///system), host2 (qemu+ssh://host2/system)": what a mount serves, for the log. */
char *startup_hosts_described(GPtrArray *hosts)
{
    GString *text = g_string_new(NULL);

    for (guint i = 0; i < hosts->len; i++) {
        struct snapfs_host *host = g_ptr_array_index(hosts, i);

        g_string_append_printf(text, "%s%s (%s)", i ? ", " : "", host_name(host),
                               host_uri(host) ? host_uri(host) : "libvirt's default URI");
    }
    return g_string_free(text, FALSE);
}
