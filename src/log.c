/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Logging to stderr in the foreground and to syslog once daemonized. */
#include "snapfs/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>

/* Atomic: read by every thread that logs, set by main() while libvirt's threads may already log. */
static gint log_to_syslog;
static gint log_to_stderr = 1;
static gint log_keep_debug;
static GMutex log_lock;   /* one line at a time on stderr (src/README.md, "Locks and their order") */

bool log_debug_enabled(void)
{
    return g_atomic_int_get(&log_keep_debug) != 0;
}

void log_init(bool to_syslog, bool debug)
{
    if (to_syslog)
        openlog("snapfs", LOG_PID, LOG_DAEMON);
    g_atomic_int_set(&log_keep_debug, debug);
    g_atomic_int_set(&log_to_stderr, 1);
    g_atomic_int_set(&log_to_syslog, to_syslog);
}

void log_detach(void)
{
    /* Only where syslog takes over: a line must always go somewhere. */
    if (g_atomic_int_get(&log_to_syslog))
        g_atomic_int_set(&log_to_stderr, 0);
}

void log_line(enum log_level level, const char *fmt, ...)
{
    static const int priorities[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
    static const char *const names[] = { "error", "warning", "info", "debug" };
    g_autofree char *message = NULL;
    va_list ap;

    if (level == LOG_LEVEL_DEBUG && !g_atomic_int_get(&log_keep_debug))
        return;
    va_start(ap, fmt);
    message = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (g_atomic_int_get(&log_to_syslog))
        syslog(priorities[level], "%s", message);
    if (g_atomic_int_get(&log_to_stderr)) {
        g_mutex_lock(&log_lock);
        fprintf(stderr, "snapfs: %s: %s\n", names[level], message);
        g_mutex_unlock(&log_lock);
    }
}
