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
static void spawn_in_own_group(gpointer data)
{
    setpgid(0, 0);
}

/* Append what @fd has to @buf; false at its end. */
static bool spawn_drain_pipe(int fd, GString *buf)
{
    char chunk[4096];
    ssize_t n = read(fd, chunk, sizeof(chunk));

    if (n < 0)
        return errno == EINTR || errno == EAGAIN;
    g_string_append_len(buf, chunk, n);
    return n > 0;
}

/* Collects what the tool writes to @fds (-1: not collected) until both close or @deadline; false at the deadline. */
static bool spawn_collect(int fds[2], GString *outbuf, GString *errbuf, gint64 deadline)
{
    bool in_time = true;

    while (fds[0] >= 0 || fds[1] >= 0) {
        struct pollfd pfd[2] = { { fds[0], POLLIN, 0 }, { fds[1], POLLIN, 0 } };
        gint64 left = deadline - g_get_monotonic_time();

        if (left <= 0) {
            in_time = false;
            break;
        }
        if (poll(pfd, 2, (int)MIN(left / 1000 + 1, 1000)) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++) {
            if (fds[i] >= 0 && pfd[i].revents && !spawn_drain_pipe(fds[i], i ? errbuf : outbuf)) {
                close(fds[i]);
                fds[i] = -1;
            }
        }
    }
    for (int i = 0; i < 2; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
    }
    return in_time;
}

/* Its pipes closed: it has ended or is about to; past the deadline it goes, group and all.  Whether it ended in time. */
static bool spawn_reap(GPid pid, bool in_time, gint64 deadline, int *status)
{
    while (in_time && waitpid(pid, status, WNOHANG) == 0) {
        if (g_get_monotonic_time() > deadline)
            in_time = false;
        else
            g_usleep(10000);
    }
    if (!in_time) {
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    g_spawn_close_pid(pid);
    return in_time;
}

int spawn_sync(const char *const *argv, unsigned timeout_s, char **out, char **err, int *status)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(GString) outbuf = g_string_new(NULL);
    g_autoptr(GString) errbuf = g_string_new(NULL);
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_s * G_USEC_PER_SEC;
    int fds[2] = { -1, -1 };
    GPid pid;
    bool in_time;

    if (!g_spawn_async_with_pipes(NULL, (char **)argv, NULL,
                                  G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_CLOEXEC_PIPES |
                                      (out ? 0 : G_SPAWN_STDOUT_TO_DEV_NULL),
                                  spawn_in_own_group, NULL, &pid, NULL, out ? &fds[0] : NULL, &fds[1], &error)) {
        error_set(EIO, "cannot run %s: %s", argv[0], error->message);
        return -1;
    }
    /* The parent sets the group too: a kill right after the fork must not miss it. */
    setpgid(pid, pid);
    in_time = spawn_collect(fds, outbuf, errbuf, deadline);
    if (!spawn_reap(pid, in_time, deadline, status)) {
        error_set(EIO, "%s did not finish within %u s: killed", argv[0], timeout_s);
        return -1;
    }
    if (out)
        *out = g_string_free(g_steal_pointer(&outbuf), FALSE);
    if (err)
        *err = g_string_free(g_steal_pointer(&errbuf), FALSE);
    return 0;
}
