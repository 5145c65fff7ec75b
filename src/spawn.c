/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Running a tool to its end or to its deadline: every wait on a request path has a bound, a tool's too. */
#include "snapfs/spawn.h"

#include "snapfs/error.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <unistd.h>

/* In the child: a group of its own, so that a timeout kills what it forked too (supermin runs helpers). */
static void spawn_child_group(gpointer data)
{
    setpgid(0, 0);
}

/* Append what @fd has to @buf; false at its end. */
static bool drain(int fd, GString *buf)
{
    char chunk[4096];
    ssize_t n = read(fd, chunk, sizeof(chunk));

    if (n < 0)
        return errno == EINTR || errno == EAGAIN;
    g_string_append_len(buf, chunk, n);
    return n > 0;
}

int snapfs_spawn_sync(const char *const *argv, unsigned timeout_s, char **out, char **err, int *status)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(GString) outbuf = g_string_new(NULL);
    g_autoptr(GString) errbuf = g_string_new(NULL);
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_s * G_USEC_PER_SEC;
    int fds[2] = { -1, -1 };
    GPid pid;
    bool timed_out = false;

    if (!g_spawn_async_with_pipes(NULL, (char **)argv, NULL,
                                  G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_CLOEXEC_PIPES |
                                      (out ? 0 : G_SPAWN_STDOUT_TO_DEV_NULL),
                                  spawn_child_group, NULL, &pid, NULL, out ? &fds[0] : NULL, &fds[1], &error)) {
        snapfs_error_set(EIO, "cannot run %s: %s", argv[0], error->message);
        return -1;
    }
    /* The parent sets the group too: a kill right after the fork must not miss it. */
    setpgid(pid, pid);
    while (fds[0] >= 0 || fds[1] >= 0) {
        struct pollfd pfd[2] = { { fds[0], POLLIN, 0 }, { fds[1], POLLIN, 0 } };
        gint64 left = deadline - g_get_monotonic_time();

        if (left <= 0) {
            timed_out = true;
            break;
        }
        if (poll(pfd, 2, (int)MIN(left / 1000 + 1, 1000)) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++) {
            if (fds[i] >= 0 && pfd[i].revents && !drain(fds[i], i ? errbuf : outbuf)) {
                close(fds[i]);
                fds[i] = -1;
            }
        }
    }
    for (int i = 0; i < 2; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
    }
    /* Its pipes closed: it has ended or is about to; past the deadline it goes, group and all. */
    while (!timed_out && waitpid(pid, status, WNOHANG) == 0) {
        if (g_get_monotonic_time() > deadline)
            timed_out = true;
        else
            g_usleep(10000);
    }
    if (timed_out) {
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        g_spawn_close_pid(pid);
        snapfs_error_set(EIO, "%s did not finish within %u s: killed", argv[0], timeout_s);
        return -1;
    }
    g_spawn_close_pid(pid);
    if (out)
        *out = g_string_free(g_steal_pointer(&outbuf), FALSE);
    if (err)
        *err = g_string_free(g_steal_pointer(&errbuf), FALSE);
    return 0;
}
