/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit test of the per-domain locks: one holder per domain at a time, waiting within a bound, domains independent. */
#include "snapfs/domain-lock.h"
#include "snapfs/error.h"
#include "snapfs/state-dir.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#define THREADS 8
#define ROUNDS 2000

static int inside;        /* holders of "dom-a" at this moment */
static int max_inside;
static int counter;       /* incremented non-atomically under the lock */

static gpointer worker(gpointer data)
{
    for (int i = 0; i < ROUNDS; i++) {
        struct domain_lock *lock = domain_lock_acquire("qemu:///system\ndom-a", "testing", 60000, "cannot test");
        int now = g_atomic_int_add(&inside, 1) + 1;

        if (now > g_atomic_int_get(&max_inside))
            g_atomic_int_set(&max_inside, now);
        counter = counter + 1;
        g_atomic_int_add(&inside, -1);
        domain_lock_release(lock);
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
    struct domain_lock *lock = domain_lock_acquire("qemu:///system\ndom-b", "testing", 60000, "cannot test");

    domain_lock_release(lock);
    return GINT_TO_POINTER(1);
}

/* Holding one domain's lock must not keep another domain waiting. */
static void test_independent(void)
{
    struct domain_lock *a = domain_lock_acquire("qemu:///system\ndom-a", "testing", 60000, "cannot test");
    GThread *t = g_thread_new("b", take_b, NULL);

    g_assert_cmpint(GPOINTER_TO_INT(g_thread_join(t)), ==, 1);
    domain_lock_release(a);
}

static gpointer take_a_late(gpointer data)
{
    gint *got = data;
    struct domain_lock *lock = domain_lock_acquire("qemu:///system\ndom-a", "testing", 60000, "cannot test");

    g_atomic_int_set(got, 1);
    domain_lock_release(lock);
    return NULL;
}

/* A second caller waits for the first rather than failing. */
static void test_waits(void)
{
    gint got = 0;
    struct domain_lock *a = domain_lock_acquire("qemu:///system\ndom-a", "testing", 60000, "cannot test");
    GThread *t = g_thread_new("late", take_a_late, &got);

    g_usleep(100 * 1000);
    g_assert_cmpint(g_atomic_int_get(&got), ==, 0);
    domain_lock_release(a);
    g_thread_join(t);
    g_assert_cmpint(g_atomic_int_get(&got), ==, 1);
}

/* A holder that does not let go: the next caller gives up after its wait with EBUSY naming what runs, and nothing leaks. */
static void test_bounded(void)
{
    struct domain_lock *a = domain_lock_acquire("qemu:///system\ndom-c", "deleting snapshot 's2'", 60000, "x");
    gint64 started = g_get_monotonic_time();
    struct domain_lock *b = domain_lock_acquire("qemu:///system\ndom-c", "creating snapshot 's3'", 300,
                                               "cannot create snapshot 's3' of 'dom-c'");
    gint64 waited = g_get_monotonic_time() - started;
    g_autofree char *holder = domain_lock_holder("qemu:///system\ndom-c");

    g_assert_null(b);
    g_assert_cmpint(error_errno(), ==, EBUSY);
    g_assert_cmpstr(error_message(), ==, "cannot create snapshot 's3' of 'dom-c': another snapshot operation "
                                                "on it is under way (deleting snapshot 's2')");
    g_assert_cmpint(waited, >=, 300 * 1000);
    g_assert_cmpint(waited, <, 5 * G_USEC_PER_SEC);
    g_assert_cmpstr(holder, ==, "deleting snapshot 's2'");
    domain_lock_release(a);
    g_assert_null(domain_lock_holder("qemu:///system\ndom-c"));
}

static gpointer unlock_later(gpointer data)
{
    g_usleep(100 * 1000);
    domain_lock_release(data);
    return NULL;
}

/* Another thread may release (revert hands its lock over no thread of its own any more). */
static void test_release_elsewhere(void)
{
    struct domain_lock *a = domain_lock_acquire("qemu:///system\ndom-d", "one", 60000, "x");
    GThread *t = g_thread_new("unlock", unlock_later, a);
    struct domain_lock *b = domain_lock_acquire("qemu:///system\ndom-d", "two", 10000, "x");

    g_assert_nonnull(b);
    g_thread_join(t);
    domain_lock_release(b);
}

static void test_key(void)
{
    g_autofree char *key = domain_lock_key(NULL, "web01");

    g_assert_cmpstr(key, ==, "\nweb01");
}

/*
 * Between processes: a child holds dom-f's lock (file lock included); the
 * parent's attempt waits its bound, then EBUSY naming the child's pid and
 * what it does; once the child lets go the parent gets it, and no lock file
 * is left after.
 */
static void test_between_processes(void)
{
    g_autofree char *dir = g_dir_make_tmp("snapfs-lock-XXXXXX", NULL);
    g_autofree char *name = domain_lock_file_name("qemu:///system\ndom-f");
    g_autofree char *expect = NULL;
    int fd = state_dir_open(dir, false);
    int to_child[2], to_parent[2];
    struct domain_lock *lock;
    char c = 0;
    pid_t pid;
    int status;

    g_assert_cmpint(fd, >=, 0);
    domain_lock_set_dir(fd);
    g_assert_cmpint(pipe(to_child), ==, 0);
    g_assert_cmpint(pipe(to_parent), ==, 0);
    pid = fork();
    g_assert_cmpint(pid, >=, 0);
    if (pid == 0) {
        lock = domain_lock_acquire("qemu:///system\ndom-f", "deleting snapshot 's2'", 1000, "x");
        if (!lock || write(to_parent[1], &c, 1) != 1 || read(to_child[0], &c, 1) != 1)
            _exit(1);
        domain_lock_release(lock);
        _exit(0);
    }
    g_assert_cmpint(read(to_parent[0], &c, 1), ==, 1);
    g_assert_true(faccessat(fd, name, F_OK, 0) == 0);

    lock = domain_lock_acquire("qemu:///system\ndom-f", "creating snapshot 's3'", 300, "cannot create 's3'");
    g_assert_null(lock);
    g_assert_cmpint(error_errno(), ==, EBUSY);
    expect = g_strdup_printf("cannot create 's3': another snapfs process acts on it (pid %ld: deleting snapshot 's2')",
                             (long)pid);
    g_assert_cmpstr(error_message(), ==, expect);

    g_assert_cmpint(write(to_child[1], &c, 1), ==, 1);
    lock = domain_lock_acquire("qemu:///system\ndom-f", "creating snapshot 's3'", 10000, "x");
    g_assert_nonnull(lock);
    g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
    g_assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    domain_lock_release(lock);
    g_assert_true(faccessat(fd, name, F_OK, 0) < 0 && errno == ENOENT);

    domain_lock_set_dir(-1);
    close(fd);
    close(to_child[0]);
    close(to_child[1]);
    close(to_parent[0]);
    close(to_parent[1]);
    g_rmdir(dir);
}

/* A directory snapfs keeps its state in must be the user's alone; a missing one is made 0700. */
static void test_state_dir_checks(void)
{
    g_autofree char *top = g_dir_make_tmp("snapfs-state-XXXXXX", NULL);
    g_autofree char *fresh = g_build_filename(top, "a", "b", NULL);
    g_autofree char *open_dir = g_build_filename(top, "open", NULL);
    g_autofree char *link = g_build_filename(top, "link", NULL);
    g_autofree char *file = g_build_filename(top, "file", NULL);
    g_autofree char *a = g_build_filename(top, "a", NULL);
    struct stat st;
    int fd;

    g_assert_cmpint(state_dir_open(fresh, false), ==, -1);
    g_assert_cmpint(error_errno(), ==, ENOENT);
    fd = state_dir_open(fresh, true);
    g_assert_cmpint(fd, >=, 0);
    close(fd);
    g_assert_cmpint(lstat(fresh, &st), ==, 0);
    g_assert_cmpint(st.st_mode & 0777, ==, 0700);

    g_assert_cmpint(g_mkdir(open_dir, 0700), ==, 0);
    g_assert_cmpint(chmod(open_dir, 0777), ==, 0);
    g_assert_cmpint(state_dir_open(open_dir, true), ==, -1);
    g_assert_cmpint(error_errno(), ==, EACCES);
    g_assert_nonnull(strstr(error_message(), "0777"));

    g_assert_cmpint(symlink(fresh, link), ==, 0);
    g_assert_cmpint(state_dir_open(link, true), ==, -1);
    g_assert_cmpint(error_errno(), ==, EACCES);
    g_assert_nonnull(strstr(error_message(), "symbolic link"));

    g_assert_true(g_file_set_contents(file, "", 0, NULL));
    g_assert_cmpint(state_dir_open(file, true), ==, -1);
    g_assert_cmpint(error_errno(), ==, ENOTDIR);

    /* Locked by one open file description: a second waits its bound, then EBUSY. */
    fd = state_dir_open(fresh, false);
    {
        int other = state_dir_open(fresh, false);

        g_assert_cmpint(state_dir_lock(fd, fresh, 0), ==, 0);
        g_assert_cmpint(state_dir_lock(other, fresh, 200), ==, -1);
        g_assert_cmpint(error_errno(), ==, EBUSY);
        g_assert_nonnull(strstr(error_message(), "in use by snapfs pid"));
        close(fd);
        g_assert_cmpint(state_dir_lock(other, fresh, 0), ==, 0);
        close(other);
    }
    unlink(file);
    unlink(link);
    g_rmdir(open_dir);
    g_rmdir(fresh);
    g_rmdir(a);
    g_rmdir(top);
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
    g_test_add_func("/engine/lock/between-processes", test_between_processes);
    g_test_add_func("/state-dir/checks", test_state_dir_checks);
    return g_test_run();
}
