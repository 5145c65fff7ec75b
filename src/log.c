/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Logging to stderr in the foreground and to syslog once daemonized. */
#include "snapfs/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>
#include <time.h>

static bool log_syslog;
static bool log_debug;
static GMutex log_lock;

void snapfs_log_init(bool to_syslog, bool debug)
{
    log_syslog = to_syslog;
    log_debug = debug;
    if (to_syslog)
        openlog("snapfs", LOG_PID, LOG_DAEMON);
}

void snapfs_log(enum snapfs_log_level level, const char *fmt, ...)
{
    static const int priorities[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
    static const char *const names[] = { "error", "warning", "info", "debug" };
    g_autofree char *message = NULL;
    va_list ap;

    if (level == SNAPFS_LOG_DEBUG && !log_debug)
        return;
    va_start(ap, fmt);
    message = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (log_syslog) {
        syslog(priorities[level], "%s", message);
        return;
    }
    g_mutex_lock(&log_lock);
    fprintf(stderr, "snapfs: %s: %s\n", names[level], message);
    g_mutex_unlock(&log_lock);
}
