/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Per-domain locks: one snapshot operation (create, delete, describe, revert) on a domain at a time, waited for within a bound. */
#include "snapfs/domain-lock.h"

#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * A lock is a flag and a condition, not a mutex held across the operation:
 * a waiter can give up at its deadline, and the thread that releases need not
 * be the one that took it.  Everything here is guarded by table_mutex, which
 * is held only for a moment, so one domain's long merge never blocks another
 * domain's lock.
 */
struct domain_lock {
    char *key;
    bool held;
    char *doing;      /* what the holder does: "deleting snapshot 's2'" */
    GCond cond;
    unsigned users;   /* holder plus waiters; the entry goes when it drops to 0 */
    int file_fd;      /* the holder's lock file, or -1; read and written by the holder only */
};

static GMutex table_mutex;
static GHashTable *table;
/* Set once at startup, before any operation: the directory of the lock files, or -1. */
static int lock_dir_fd = -1;

/*
 * Between processes (two snapfs on one host, each with its own state
 * directory), a domain's lock is also a flock on a file named after the
 * SHA-256 of its key in the lock directory, taken after the in-process lock
 * and within the same deadline.  The holder writes "pid N: what it does"
 * into it for the next one refused, and unlinks it before letting go, so
 * that the directory holds a file only while an operation runs; a taker
 * that finds the file it locked unlinked (or replaced) since it opened it
 * starts again.  A process that dies leaves its file, unlocked: the next
 * taker locks it and removes it.
 */
void domain_lock_set_dir(int dir_fd)
{
    lock_dir_fd = dir_fd;
}

char *domain_lock_file_name(const char *key)
{
    g_autofree char *sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256, key, -1);

    return g_strdup_printf("%s.lock", sum);
}

/* Whether @fd is still the file @name of the lock directory (not unlinked by its last holder). */
static bool lock_file_current(int fd, const char *name)
{
    struct stat held, now;

    return fstat(fd, &held) == 0 && fstatat(lock_dir_fd, name, &now, AT_SYMLINK_NOFOLLOW) == 0 &&
           held.st_dev == now.st_dev && held.st_ino == now.st_ino;
}

/* What the process holding @fd wrote into it ("pid 1234: deleting snapshot 's2'"), or NULL. */
static char *lock_file_holder(int fd)
{
    char buf[512];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    return g_strdup(g_strchomp(buf));
}

/* The file lock of @key, waited for until @deadline: its fd, or -1 with EBUSY (naming the holder) or EIO recorded. */
static int lock_file_take(const char *key, const char *doing, gint64 deadline, const char *what)
{
    g_autofree char *name = domain_lock_file_name(key);
    g_autofree char *text = g_strdup_printf("pid %ld: %s\n", (long)getpid(), doing ? doing : "unnamed");

    for (;;) {
        int fd = openat(lock_dir_fd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);

        if (fd < 0) {
            error_set(EIO, "%s: cannot open its lock file '%s': %s", what, name, g_strerror(errno));
            return -1;
        }
        while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            g_autofree char *holder = NULL;

            if (errno == EINTR)
                continue;
            if (errno != EWOULDBLOCK) {
                error_set(EIO, "%s: cannot lock its lock file '%s': %s", what, name, g_strerror(errno));
                close(fd);
                return -1;
            }
            if (g_get_monotonic_time() >= deadline) {
                holder = lock_file_holder(fd);
                error_set(EBUSY, "%s: another snapfs process acts on it (%s)", what,
                                 holder ? holder : "pid unknown");
                close(fd);
                return -1;
            }
            g_usleep(20 * 1000);
        }
        if (!lock_file_current(fd, name)) {
            close(fd);
            continue;
        }
        /* Without it only the next one refused misses the name: the lock is held all the same. */
        if (ftruncate(fd, 0) < 0 || pwrite(fd, text, strlen(text), 0) < 0)
            log_debug("cannot write who holds lock file '%s': %s", name, g_strerror(errno));
        return fd;
    }
}

static void lock_file_drop(int fd, const char *key)
{
    g_autofree char *name = domain_lock_file_name(key);

    if (fd < 0)
        return;
    unlinkat(lock_dir_fd, name, 0);
    close(fd);
}

static void lock_release_user(struct domain_lock *lock)
{
    if (--lock->users > 0)
        return;
    g_hash_table_remove(table, lock->key);
    g_cond_clear(&lock->cond);
    g_free(lock->doing);
    g_free(lock->key);
    g_free(lock);
}

struct domain_lock *domain_lock_acquire(const char *key, const char *doing, unsigned wait_ms, const char *what)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)wait_ms * G_TIME_SPAN_MILLISECOND;
    struct domain_lock *lock;

    g_mutex_lock(&table_mutex);
    if (!table)
        table = g_hash_table_new(g_str_hash, g_str_equal);
    lock = g_hash_table_lookup(table, key);
    if (!lock) {
        lock = g_new0(struct domain_lock, 1);
        lock->key = g_strdup(key);
        g_cond_init(&lock->cond);
        g_hash_table_insert(table, lock->key, lock);
    }
    lock->users++;
    while (lock->held) {
        if (!g_cond_wait_until(&lock->cond, &table_mutex, deadline) && lock->held) {
            error_set(EBUSY, "%s: another snapshot operation on it is under way (%s)", what,
                             lock->doing ? lock->doing : "unnamed");
            lock_release_user(lock);
            g_mutex_unlock(&table_mutex);
            return NULL;
        }
    }
    lock->held = true;
    lock->doing = g_strdup(doing);
    g_mutex_unlock(&table_mutex);
    lock->file_fd = -1;
    if (lock_dir_fd >= 0) {
        lock->file_fd = lock_file_take(key, doing, deadline, what);
        if (lock->file_fd < 0) {
            g_autofree char *reason = g_strdup(error_message());
            int errnum = error_errno();

            domain_lock_release(lock);
            error_set(errnum, "%s", reason);
            return NULL;
        }
    }
    return lock;
}

void domain_lock_release(struct domain_lock *lock)
{
    if (!lock)
        return;
    lock_file_drop(lock->file_fd, lock->key);
    lock->file_fd = -1;
    g_mutex_lock(&table_mutex);
    lock->held = false;
    g_clear_pointer(&lock->doing, g_free);
    g_cond_signal(&lock->cond);
    lock_release_user(lock);
    g_mutex_unlock(&table_mutex);
}

char *domain_lock_holder(const char *key)
{
    struct domain_lock *lock;
    char *doing = NULL;

    g_mutex_lock(&table_mutex);
    lock = table ? g_hash_table_lookup(table, key) : NULL;
    if (lock && lock->held)
        doing = g_strdup(lock->doing);
    g_mutex_unlock(&table_mutex);
    return doing;
}

char *domain_lock_key(virConnectPtr conn, const char *domain)
{
    g_autofree char *uri = conn ? virConnectGetURI(conn) : NULL;

    return g_strdup_printf("%s\n%s", uri ? uri : "", domain);
}

struct domain_lock *domain_lock_acquire_conn(virConnectPtr conn, const char *domain, const char *doing,
                                            const char *what)
{
    g_autofree char *key = domain_lock_key(conn, domain);

    return domain_lock_acquire(key, doing, DOMAIN_LOCK_WAIT_MS, what);
}
