/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Per-domain locks: one snapshot operation (create, delete, revert) on a domain at a time. */
#include "snapfs/engine.h"

#include <glib.h>

struct engine_lock {
    char *key;
    GMutex mutex;
    unsigned users;   /* holders plus waiters; the entry goes when it drops to 0 */
};

/*
 * The table only maps keys to locks; it is held for a moment, never while
 * waiting for a domain's own mutex, so one slow domain never blocks another.
 */
static GMutex table_mutex;
static GHashTable *table;

struct engine_lock *engine_lock_domain(const char *key)
{
    struct engine_lock *lock;

    g_mutex_lock(&table_mutex);
    if (!table)
        table = g_hash_table_new(g_str_hash, g_str_equal);
    lock = g_hash_table_lookup(table, key);
    if (!lock) {
        lock = g_new0(struct engine_lock, 1);
        lock->key = g_strdup(key);
        g_mutex_init(&lock->mutex);
        g_hash_table_insert(table, lock->key, lock);
    }
    lock->users++;
    g_mutex_unlock(&table_mutex);

    g_mutex_lock(&lock->mutex);
    return lock;
}

void engine_unlock_domain(struct engine_lock *lock)
{
    if (!lock)
        return;
    g_mutex_unlock(&lock->mutex);

    g_mutex_lock(&table_mutex);
    if (--lock->users == 0) {
        g_hash_table_remove(table, lock->key);
        g_mutex_clear(&lock->mutex);
        g_free(lock->key);
        g_free(lock);
    }
    g_mutex_unlock(&table_mutex);
}

char *engine_domain_key(virConnectPtr conn, const char *domain)
{
    g_autofree char *uri = conn ? virConnectGetURI(conn) : NULL;

    return g_strdup_printf("%s\n%s", uri ? uri : "", domain);
}

struct engine_lock *engine_lock_domain_conn(virConnectPtr conn, const char *domain)
{
    g_autofree char *key = engine_domain_key(conn, domain);

    return engine_lock_domain(key);
}
