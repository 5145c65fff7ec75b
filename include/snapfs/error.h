/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Why the last call of src/ failed: an errno value and a sentence, kept per thread. */
#pragma once

#include <glib.h>

/*
 * Functions in src/ return -1 on failure after recording the reason here;
 * fs/ turns it into -errno with snapfs_error_errno() and nothing else.
 */
void snapfs_error_set(int errnum, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* Record libvirt's last error, mapped to errno in this one place, after a prefix. */
void snapfs_error_from_virt(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

/* The recorded errno (EIO if nothing was recorded) and message (never NULL). */
int snapfs_error_errno(void);
const char *snapfs_error_message(void);
void snapfs_error_clear(void);

/* Map a libvirt error code (virErrorNumber) to an errno value. */
int snapfs_errno_from_virt_code(int code);
