/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit test of the per-domain locks: one holder per domain at a time, waiting not failing, domains independent. */
#include "snapfs/engine.h"

#include <glib.h>

#define THREADS 8
#define ROUNDS 2000

static int inside;        /* holders of "dom-a" at this moment */
static int max_inside;
static int counter;       /* incremented non-atomically under the lock */

static gpointer worker(gpointer data)
{
    for (int i = 0; i < ROUNDS; i++) {
        struct engine_lock *lock = engine_lock_domain("qemu:///system\ndom-a");
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
    struct engine_lock *lock = engine_lock_domain("qemu:///system\ndom-b");

    engine_unlock_domain(lock);
    return GINT_TO_POINTER(1);
}

/* Holding one domain's lock must not keep another domain waiting. */
static void test_independent(void)
{
    struct engine_lock *a = engine_lock_domain("qemu:///system\ndom-a");
    GThread *t = g_thread_new("b", take_b, NULL);

    g_assert_cmpint(GPOINTER_TO_INT(g_thread_join(t)), ==, 1);
    engine_unlock_domain(a);
}

static gpointer take_a_late(gpointer data)
{
    gint *got = data;
    struct engine_lock *lock = engine_lock_domain("qemu:///system\ndom-a");

    g_atomic_int_set(got, 1);
    engine_unlock_domain(lock);
    return NULL;
}

/* A second caller waits for the first rather than failing. */
static void test_waits(void)
{
    gint got = 0;
    struct engine_lock *a = engine_lock_domain("qemu:///system\ndom-a");
    GThread *t = g_thread_new("late", take_a_late, &got);

    g_usleep(100 * 1000);
    g_assert_cmpint(g_atomic_int_get(&got), ==, 0);
    engine_unlock_domain(a);
    g_thread_join(t);
    g_assert_cmpint(g_atomic_int_get(&got), ==, 1);
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
    g_test_add_func("/engine/lock/key", test_key);
    return g_test_run();
}
