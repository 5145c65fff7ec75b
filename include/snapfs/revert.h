/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Revert a domain to a snapshot, by hand where the connected libvirt cannot, with a journal for crash safety. */
#pragma once

#include <libvirt/libvirt.h>
#include <stdbool.h>
#include <stddef.h>

struct revert_options {
    bool keep;             /* -o revert_keep: keep the state left behind as pre-revert-... */
    const char *state_dir; /* where the journal lives: checked private (state_dir_open), made 0700 if missing */
};

/*
 * A write to DOMAIN/revert, parsed.  The syntax (README, --help):
 *   NAME            revert to snapshot NAME; EBUSY if the domain runs
 *   NAME --force    stop the running domain first (as `virsh destroy`), then revert
 * One trailing newline is allowed (echo adds one).  Empty writes, several
 * lines, control characters, blanks around the name and unknown --options
 * are EINVAL.
 */
struct revert_request {
    char *name;
    bool force;
};

/* 0 and @request filled (free it with revert_request_clear), or -1 with EINVAL recorded. */
int revert_parse(const char *buf, size_t len, struct revert_request *request);
void revert_request_clear(struct revert_request *request);

/*
 * What was written to DOMAIN/revert (@len bytes, not NUL-terminated).
 * Returns 0 or -1 with the errno recorded (src/README.md, "Errors"):
 * EINVAL malformed, ENOENT no such snapshot, EBUSY running (without
 * --force), holding a saved memory state, or another operation on the
 * domain under way, ENOTSUP where neither libvirt nor snapfs can, EEXIST
 * a file the revert would make is there already, EACCES where libvirt
 * refuses, EIO otherwise.
 */
int revert_write(virConnectPtr conn, const char *domain, const char *request, size_t len,
                 const struct revert_options *options);

/*
 * At start: finish or roll back every by-hand revert on @conn's URI that
 * the journal says was under way.  Returns -1 with the reason if one could
 * not be settled (its journal stays for the next start).
 */
int revert_recover(virConnectPtr conn, const struct revert_options *options);

/*
 * For tests only: with SNAPFS_FAULT=revert:STEP in the environment the
 * process ends with _exit(137) right after STEP, as a kill -9 would.
 * Steps in order: journal, keep-overlays, keep, overlays, domain, current,
 * cleanup; an internal snapshot's: journal, keep, asked, current (see
 * src/revert/external.c).
 */
#define REVERT_FAULT_STEPS "journal keep-overlays keep asked overlays domain current cleanup"
