/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Logging: stderr in the foreground, syslog once daemonized. */
#pragma once

#include <glib.h>
#include <stdbool.h>

enum snapfs_log_level { SNAPFS_LOG_ERROR, SNAPFS_LOG_WARN, SNAPFS_LOG_INFO, SNAPFS_LOG_DEBUG };

/*
 * Lines go to stderr ("snapfs: LEVEL: ..."), and with @to_syslog to syslog
 * as well (ident "snapfs", facility daemon, the pid; journald takes them
 * from /dev/log), until snapfs_log_detach().  snapfs_debug() lines are
 * dropped unless @debug.  May be called again, e.g. after a fork.
 */
void snapfs_log_init(bool to_syslog, bool debug);
/* A daemon that let go of its terminal: syslog only from now on. */
void snapfs_log_detach(void);
void snapfs_log(enum snapfs_log_level level, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* Whether snapfs_debug() lines are kept: to skip building what they would say. */
bool snapfs_log_debug_enabled(void);

#define snapfs_error_log(...) snapfs_log(SNAPFS_LOG_ERROR, __VA_ARGS__)
#define snapfs_warn(...) snapfs_log(SNAPFS_LOG_WARN, __VA_ARGS__)
#define snapfs_info(...) snapfs_log(SNAPFS_LOG_INFO, __VA_ARGS__)
#define snapfs_debug(...) snapfs_log(SNAPFS_LOG_DEBUG, __VA_ARGS__)
