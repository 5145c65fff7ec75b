/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Running a tool (qemu-img, qemu-io, supermin) to its end or to its deadline, whichever comes first. */
#pragma once

#include <glib.h>

/*
 * Run @argv (searched in PATH) with stdin from /dev/null, collecting its
 * stdout (unless @out is NULL: then it goes to /dev/null) and stderr.  The
 * tool and everything it forked runs in a process group of its own, killed
 * whole once @timeout_s seconds have passed: then -1 with EIO recorded
 * ("qemu-img did not finish within 60 s: killed").  -1 with EIO if it
 * cannot be started.  Otherwise 0 and its wait status in @status, which the
 * caller judges (g_spawn_check_wait_status).
 */
int spawn_sync(const char *const *argv, unsigned timeout_s, char **out, char **err, int *status);

/* How long the tools snapfs runs may take: a qemu-img or qemu-io on a local image, supermin's build. */
#define SPAWN_TOOL_TIMEOUT_S 60
#define SPAWN_BUILD_TIMEOUT_S 300
