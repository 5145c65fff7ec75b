/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Why the last call of src/ failed: an errno value and a sentence, kept per thread. */
#pragma once

#include <glib.h>

/*
 * Functions in src/ return -1 on failure after recording the reason here;
 * fs/ turns it into -errno with error_errno() and nothing else.
 */
void error_set(int errnum, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* Record libvirt's last error, mapped to errno in this one place, after a prefix. */
void error_from_virt(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

/* The recorded errno (EIO if nothing was recorded) and message (never NULL). */
int error_errno(void);
const char *error_message(void);
void error_clear(void);

/* Map a libvirt error code (virErrorNumber) to an errno value. */
int error_errno_from_virt_code(int code);
