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
struct domain_lock;
struct domain_lock *domain_lock_acquire(const char *key, const char *doing, unsigned wait_ms, const char *what);
void domain_lock_release(struct domain_lock *lock);
/* What the holder of @key's lock is doing, or NULL when nobody holds it.  Never waits.  Caller frees. */
char *domain_lock_holder(const char *key);

/*
 * With a lock directory set (once, at startup, before any operation: an fd
 * state_dir_open() checked, kept open for the process's life), each
 * lock is also a flock on the file domain_lock_file_name(@key) there, so
 * that two snapfs processes never act on one domain at once; a refusal
 * then names the other process: "@what: another snapfs process acts on it
 * (pid 1234: deleting snapshot 's2')".  The file exists only while held.
 */
void domain_lock_set_dir(int dir_fd);
/* "SHA256-OF-KEY.lock".  Caller frees. */
char *domain_lock_file_name(const char *key);

/* How long mkdir, rmdir, revert and setfattr wait for another operation on the domain before EBUSY. */
#define DOMAIN_LOCK_WAIT_MS 3000

/* The key domain_lock_acquire() uses for @domain on @conn: "URI\nNAME". Caller frees. */
char *domain_lock_key(virConnectPtr conn, const char *domain);
/* domain_lock_acquire(domain_lock_key(conn, domain), ..., DOMAIN_LOCK_WAIT_MS, ...): what operations take. */
struct domain_lock *domain_lock_acquire_conn(virConnectPtr conn, const char *domain, const char *doing,
                                            const char *what);
