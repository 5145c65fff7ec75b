/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit test of the per-domain locks: one holder per domain at a time, waiting within a bound, domains independent. */
#include "snapfs/engine.h"
#include "snapfs/error.h"

#include <errno.h>

#include <glib.h>

#define THREADS 8
#define ROUNDS 2000

static int inside;        /* holders of "dom-a" at this moment */
static int max_inside;
static int counter;       /* incremented non-atomically under the lock */

static gpointer worker(gpointer data)
{
    for (int i = 0; i < ROUNDS; i++) {
        struct engine_lock *lock = engine_lock_domain("qemu:///system\ndom-a", "testing", 60000, "cannot test");
        int now = g_atomic_int_add(&inside, 1) + 1;

        if (now > g_atomic_int_get(&max_inside))
            g_atomic_int_set(&max_inside, now);
        counter = counter + 1;
        g_atomic_int_add(&inside, -1);
        engine_unlock_domain(lock);
    }
    return NULL;
}

static void test_exclusive(void)
{
    GThread *threads[THREADS];

    for (int i = 0; i < THREADS; i++)
        threads[i] = g_thread_new("worker", worker, NULL);
    for (int i = 0; i < THREADS; i++)
        g_thread_join(threads[i]);
    g_assert_cmpint(max_inside, ==, 1);
    g_assert_cmpint(counter, ==, THREADS * ROUNDS);
}

static gpointer take_b(gpointer data)
{
    struct engine_lock *lock = engine_lock_domain("qemu:///system\ndom-b", "testing", 60000, "cannot test");

    engine_unlock_domain(lock);
    return GINT_TO_POINTER(1);
}

/* Holding one domain's lock must not keep another domain waiting. */
static void test_independent(void)
{
    struct engine_lock *a = engine_lock_domain("qemu:///system\ndom-a", "testing", 60000, "cannot test");
    GThread *t = g_thread_new("b", take_b, NULL);

    g_assert_cmpint(GPOINTER_TO_INT(g_thread_join(t)), ==, 1);
    engine_unlock_domain(a);
}

static gpointer take_a_late(gpointer data)
{
    gint *got = data;
    struct engine_lock *lock = engine_lock_domain("qemu:///system\ndom-a", "testing", 60000, "cannot test");

    g_atomic_int_set(got, 1);
    engine_unlock_domain(lock);
    return NULL;
}

/* A second caller waits for the first rather than failing. */
static void test_waits(void)
{
    gint got = 0;
    struct engine_lock *a = engine_lock_domain("qemu:///system\ndom-a", "testing", 60000, "cannot test");
    GThread *t = g_thread_new("late", take_a_late, &got);

    g_usleep(100 * 1000);
    g_assert_cmpint(g_atomic_int_get(&got), ==, 0);
    engine_unlock_domain(a);
    g_thread_join(t);
    g_assert_cmpint(g_atomic_int_get(&got), ==, 1);
}

/* A holder that does not let go: the next caller gives up after its wait with EBUSY naming what runs, and nothing leaks. */
static void test_bounded(void)
{
    struct engine_lock *a = engine_lock_domain("qemu:///system\ndom-c", "deleting snapshot 's2'", 60000, "x");
    gint64 started = g_get_monotonic_time();
    struct engine_lock *b = engine_lock_domain("qemu:///system\ndom-c", "creating snapshot 's3'", 300,
                                               "cannot create snapshot 's3' of 'dom-c'");
    gint64 waited = g_get_monotonic_time() - started;
    g_autofree char *holder = engine_lock_holder("qemu:///system\ndom-c");

    g_assert_null(b);
    g_assert_cmpint(snapfs_error_errno(), ==, EBUSY);
    g_assert_cmpstr(snapfs_error_message(), ==, "cannot create snapshot 's3' of 'dom-c': another snapshot operation "
                                                "on it is under way (deleting snapshot 's2')");
    g_assert_cmpint(waited, >=, 300 * 1000);
    g_assert_cmpint(waited, <, 5 * G_USEC_PER_SEC);
    g_assert_cmpstr(holder, ==, "deleting snapshot 's2'");
    engine_unlock_domain(a);
    g_assert_null(engine_lock_holder("qemu:///system\ndom-c"));
}

static gpointer unlock_later(gpointer data)
{
    g_usleep(100 * 1000);
    engine_unlock_domain(data);
    return NULL;
}

/* Another thread may release (revert hands its lock over no thread of its own any more). */
static void test_release_elsewhere(void)
{
    struct engine_lock *a = engine_lock_domain("qemu:///system\ndom-d", "one", 60000, "x");
    GThread *t = g_thread_new("unlock", unlock_later, a);
    struct engine_lock *b = engine_lock_domain("qemu:///system\ndom-d", "two", 10000, "x");

    g_assert_nonnull(b);
    g_thread_join(t);
    engine_unlock_domain(b);
}

static void test_key(void)
{
    g_autofree char *key = engine_domain_key(NULL, "web01");

    g_assert_cmpstr(key, ==, "\nweb01");
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/engine/lock/exclusive", test_exclusive);
    g_test_add_func("/engine/lock/independent", test_independent);
    g_test_add_func("/engine/lock/waits", test_waits);
    g_test_add_func("/engine/lock/bounded", test_bounded);
    g_test_add_func("/engine/lock/release-elsewhere", test_release_elsewhere);
    g_test_add_func("/engine/lock/key", test_key);
    return g_test_run();
}
