/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Revert a domain to a snapshot, by hand where the connected libvirt cannot, with a journal for crash safety. */
#pragma once

#include <libvirt/libvirt.h>
#include <stdbool.h>
#include <stddef.h>

struct revert_options {
    bool keep;             /* -o revert_keep: keep the state left behind as pre-revert-... */
    const char *state_dir; /* where the journal lives */
};

/*
 * What was written to DOMAIN/revert (@len bytes, not NUL-terminated).
 * Returns 0 or -1 with the errno of DESIGN.md recorded.
 */
int revert_write(virConnectPtr conn, const char *domain, const char *request, size_t len,
                 const struct revert_options *options);

/* At start: finish or roll back every by-hand operation the journal says was under way. */
int revert_recover(virConnectPtr conn, const struct revert_options *options);
