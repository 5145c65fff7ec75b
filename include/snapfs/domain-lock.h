/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The per-domain operation lock: one create, delete, describe or revert per domain at a time, across processes,
 * waited for within a bound (src/README.md, "Locks and their order"). */
#pragma once

#include <libvirt/libvirt.h>

/*
 * Operations on one domain run one at a time: callers take the domain's
 * lock, which waits for the operation under way at most @wait_ms, then
 * gives up: NULL with EBUSY recorded as "@what: another snapshot operation
 * on it is under way (deleting snapshot 's2')".  @doing names the caller's
 * operation for the next one refused.  @key identifies the domain across
 * connections (e.g. "URI\nNAME").
 */
struct engine_lock;
struct engine_lock *engine_lock_domain(const char *key, const char *doing, unsigned wait_ms, const char *what);
void engine_unlock_domain(struct engine_lock *lock);
/* What the holder of @key's lock is doing, or NULL when nobody holds it.  Never waits.  Caller frees. */
char *engine_lock_holder(const char *key);

/*
 * With a lock directory set (once, at startup, before any operation: an fd
 * snapfs_state_dir_open() checked, kept open for the process's life), each
 * lock is also a flock on the file engine_lock_file_name(@key) there, so
 * that two snapfs processes never act on one domain at once; a refusal
 * then names the other process: "@what: another snapfs process acts on it
 * (pid 1234: deleting snapshot 's2')".  The file exists only while held.
 */
void engine_lock_set_dir(int dir_fd);
/* "SHA256-OF-KEY.lock".  Caller frees. */
char *engine_lock_file_name(const char *key);

/* How long mkdir, rmdir, revert and setfattr wait for another operation on the domain before EBUSY. */
#define ENGINE_LOCK_WAIT_MS 3000

/* The key engine_lock_domain() uses for @domain on @conn: "URI\nNAME". Caller frees. */
char *engine_domain_key(virConnectPtr conn, const char *domain);
/* engine_lock_domain(engine_domain_key(conn, domain), ..., ENGINE_LOCK_WAIT_MS, ...): what operations take. */
struct engine_lock *engine_lock_domain_conn(virConnectPtr conn, const char *domain, const char *doing,
                                            const char *what);
