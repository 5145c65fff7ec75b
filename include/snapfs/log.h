/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Logging: stderr in the foreground, syslog once daemonized. */
#pragma once

#include <glib.h>
#include <stdbool.h>

enum snapfs_log_level { SNAPFS_LOG_ERROR, SNAPFS_LOG_WARN, SNAPFS_LOG_INFO, SNAPFS_LOG_DEBUG };

void snapfs_log_init(bool to_syslog, bool debug);
void snapfs_log(enum snapfs_log_level level, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

#define snapfs_error_log(...) snapfs_log(SNAPFS_LOG_ERROR, __VA_ARGS__)
#define snapfs_warn(...) snapfs_log(SNAPFS_LOG_WARN, __VA_ARGS__)
#define snapfs_info(...) snapfs_log(SNAPFS_LOG_INFO, __VA_ARGS__)
#define snapfs_debug(...) snapfs_log(SNAPFS_LOG_DEBUG, __VA_ARGS__)
