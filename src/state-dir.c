/* SPDX-License-Identifier: GPL-2.0-or-later */
/* snapfs's own directories: checked to be the effective user's alone, opened without following links, locked by one process. */
#include "snapfs/state-dir.h"

#include "snapfs/error.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/*
 * What snapfs keeps here decides what it unlinks and redefines at its next
 * start (revert journals), so whoever may write here may make root remove
 * files: the directory must be the effective user's, writable by nobody
 * else, and reached without a symlink at its last component.  Files in it
 * are opened relative to the fd checked here (openat), so that the path
 * above it changing afterwards changes nothing.  Its parents are not
 * checked: /tmp/x or a user's home are fine places for a test's state.
 */

/* Why @st cannot be a private directory of the effective user, or NULL. */
static const char *unsafe_reason(const struct stat *st, char *buf, size_t size)
{
    if (S_ISLNK(st->st_mode))
        return "it is a symbolic link";
    if (!S_ISDIR(st->st_mode))
        return "it is not a directory";
    if (st->st_uid != geteuid()) {
        snprintf(buf, size, "it is owned by uid %u, not by uid %u that snapfs runs as", (unsigned)st->st_uid,
                 (unsigned)geteuid());
        return buf;
    }
    if (st->st_mode & (S_IWGRP | S_IWOTH)) {
        snprintf(buf, size, "its mode %04o lets others write in it (chmod go-w, or 0700)",
                 (unsigned)(st->st_mode & 07777));
        return buf;
    }
    return NULL;
}

static int refuse_unsafe_dir(const char *path, const struct stat *st)
{
    char buf[128];
    const char *why = unsafe_reason(st, buf, sizeof(buf));

    error_set(S_ISDIR(st->st_mode) || S_ISLNK(st->st_mode) ? EACCES : ENOTDIR,
                     "cannot use '%s' as snapfs's directory: %s", path, why);
    return -1;
}

static int create_private_dir(const char *path)
{
    g_autofree char *parent = g_path_get_dirname(path);

    if (g_mkdir_with_parents(parent, 0700) < 0 || (mkdir(path, 0700) < 0 && errno != EEXIST)) {
        error_set(EIO, "cannot create snapfs's directory '%s': %s", path, g_strerror(errno));
        return -1;
    }
    return 0;
}

int state_dir_open(const char *path, bool create)
{
    struct stat before, after;
    char buf[128];
    int fd;

    if (lstat(path, &before) < 0 && errno == ENOENT && create) {
        if (create_private_dir(path) < 0)
            return -1;
    }
    if (lstat(path, &before) < 0) {
        error_set(errno == ENOENT ? ENOENT : EIO, "cannot use '%s' as snapfs's directory: %s", path,
                         g_strerror(errno));
        return -1;
    }
    if (unsafe_reason(&before, buf, sizeof(buf)))
        return refuse_unsafe_dir(path, &before);
    fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        error_set(errno == ELOOP || errno == ENOTDIR ? EACCES : EIO,
                         "cannot use '%s' as snapfs's directory: %s", path, g_strerror(errno));
        return -1;
    }
    if (fstat(fd, &after) < 0) {
        error_set(EIO, "cannot use '%s' as snapfs's directory: %s", path, g_strerror(errno));
        close(fd);
        return -1;
    }
    if (unsafe_reason(&after, buf, sizeof(buf))) {
        close(fd);
        return refuse_unsafe_dir(path, &after);
    }
    if (after.st_dev != before.st_dev || after.st_ino != before.st_ino) {
        error_set(EACCES, "cannot use '%s' as snapfs's directory: it was replaced while snapfs opened it",
                         path);
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * The process holding a flock on the inode @st, from /proc/locks
 * ("1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"), described as
 * "snapfs pid 1234 (its command line)"; NULL if none is found.
 */
static char *describe_lock_holder(const struct stat *st)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;

    if (!g_file_get_contents("/proc/locks", &text, NULL, NULL))
        return NULL;
    lines = g_strsplit(text, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        char kind[16], mode[16], access[16];
        unsigned maj, min;
        unsigned long long ino;
        long pid;
        g_autofree char *cmdline_path = NULL;
        g_autofree char *cmdline = NULL;
        gsize len = 0;

        /* Waiters are listed as "1: -> FLOCK ...": the %15s then reads "->" and the match fails. */
        if (sscanf(lines[i], "%*d: %15s %15s %15s %ld %x:%x:%llu", kind, mode, access, &pid, &maj, &min, &ino) != 7 ||
            strcmp(kind, "FLOCK") != 0 || maj != major(st->st_dev) || min != minor(st->st_dev) ||
            ino != (unsigned long long)st->st_ino)
            continue;
        cmdline_path = g_strdup_printf("/proc/%ld/cmdline", pid);
        if (g_file_get_contents(cmdline_path, &cmdline, &len, NULL) && len > 0) {
            for (gsize j = 0; j + 1 < len; j++) {
                if (cmdline[j] == '\0')
                    cmdline[j] = ' ';
            }
            return g_strdup_printf("snapfs pid %ld (%s)", pid, cmdline);
        }
        return g_strdup_printf("snapfs pid %ld", pid);
    }
    return NULL;
}

int state_dir_lock(int fd, const char *path, unsigned wait_ms)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)wait_ms * G_TIME_SPAN_MILLISECOND;
    g_autofree char *holder = NULL;
    struct stat st;

    while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EINTR)
            continue;
        if (errno != EWOULDBLOCK) {
            error_set(EIO, "cannot lock the state directory '%s': %s", path, g_strerror(errno));
            return -1;
        }
        if (g_get_monotonic_time() >= deadline) {
            if (fstat(fd, &st) == 0)
                holder = describe_lock_holder(&st);
            error_set(EBUSY, "the state directory '%s' is in use by %s", path,
                             holder ? holder : "another snapfs process");
            return -1;
        }
        g_usleep(50 * 1000);
    }
    return 0;
}

char *state_dir_default(void)
{
    return getuid() == 0 ? g_strdup(STATE_DIR_ROOT) : g_build_filename(g_get_user_state_dir(), "snapfs", NULL);
}

char *state_dir_runtime(void)
{
    return getuid() == 0 ? g_strdup("/run/snapfs") : g_build_filename(g_get_user_runtime_dir(), "snapfs", NULL);
}
