/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Logging: stderr in the foreground, syslog once daemonized. */
#pragma once

#include <glib.h>
#include <stdbool.h>

enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };

/*
 * Lines go to stderr ("snapfs: LEVEL: ..."), and with @to_syslog to syslog
 * as well (ident "snapfs", facility daemon, the pid; journald takes them
 * from /dev/log), until log_detach().  log_debug() lines are
 * dropped unless @debug.  May be called again, e.g. after a fork.
 */
void log_init(bool to_syslog, bool debug);
/* A daemon that let go of its terminal: syslog only from now on. */
void log_detach(void);
void log_line(enum log_level level, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* Whether log_debug() lines are kept: to skip building what they would say. */
bool log_debug_enabled(void);

#define log_error(...) log_line(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...) log_line(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...) log_line(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_line(LOG_LEVEL_DEBUG, __VA_ARGS__)
