/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Per-domain locks: one snapshot operation (create, delete, describe, revert) on a domain at a time, waited for within a bound. */
#include "snapfs/engine.h"

#include "snapfs/error.h"

#include <errno.h>
#include <glib.h>

/*
 * A lock is a flag and a condition, not a mutex held across the operation:
 * a waiter can give up at its deadline, and the thread that releases need not
 * be the one that took it.  Everything here is guarded by table_mutex, which
 * is held only for a moment, so one domain's long merge never blocks another
 * domain's lock.
 */
struct engine_lock {
    char *key;
    bool held;
    char *doing;      /* what the holder does: "deleting snapshot 's2'" */
    GCond cond;
    unsigned users;   /* holder plus waiters; the entry goes when it drops to 0 */
};

static GMutex table_mutex;
static GHashTable *table;

static void lock_release_user(struct engine_lock *lock)
{
    if (--lock->users > 0)
        return;
    g_hash_table_remove(table, lock->key);
    g_cond_clear(&lock->cond);
    g_free(lock->doing);
    g_free(lock->key);
    g_free(lock);
}

struct engine_lock *engine_lock_domain(const char *key, const char *doing, unsigned wait_ms, const char *what)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)wait_ms * G_TIME_SPAN_MILLISECOND;
    struct engine_lock *lock;

    g_mutex_lock(&table_mutex);
    if (!table)
        table = g_hash_table_new(g_str_hash, g_str_equal);
    lock = g_hash_table_lookup(table, key);
    if (!lock) {
        lock = g_new0(struct engine_lock, 1);
        lock->key = g_strdup(key);
        g_cond_init(&lock->cond);
        g_hash_table_insert(table, lock->key, lock);
    }
    lock->users++;
    while (lock->held) {
        if (!g_cond_wait_until(&lock->cond, &table_mutex, deadline) && lock->held) {
            snapfs_error_set(EBUSY, "%s: another snapshot operation on it is under way (%s)", what,
                             lock->doing ? lock->doing : "unnamed");
            lock_release_user(lock);
            g_mutex_unlock(&table_mutex);
            return NULL;
        }
    }
    lock->held = true;
    lock->doing = g_strdup(doing);
    g_mutex_unlock(&table_mutex);
    return lock;
}

void engine_unlock_domain(struct engine_lock *lock)
{
    if (!lock)
        return;
    g_mutex_lock(&table_mutex);
    lock->held = false;
    g_clear_pointer(&lock->doing, g_free);
    g_cond_signal(&lock->cond);
    lock_release_user(lock);
    g_mutex_unlock(&table_mutex);
}

char *engine_lock_holder(const char *key)
{
    struct engine_lock *lock;
    char *doing = NULL;

    g_mutex_lock(&table_mutex);
    lock = table ? g_hash_table_lookup(table, key) : NULL;
    if (lock && lock->held)
        doing = g_strdup(lock->doing);
    g_mutex_unlock(&table_mutex);
    return doing;
}

char *engine_domain_key(virConnectPtr conn, const char *domain)
{
    g_autofree char *uri = conn ? virConnectGetURI(conn) : NULL;

    return g_strdup_printf("%s\n%s", uri ? uri : "", domain);
}

struct engine_lock *engine_lock_domain_conn(virConnectPtr conn, const char *domain, const char *doing,
                                            const char *what)
{
    g_autofree char *key = engine_domain_key(conn, domain);

    return engine_lock_domain(key, doing, ENGINE_LOCK_WAIT_MS, what);
}
