/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The NBD servers (qemu-storage-daemon, qemu-nbd) that hand an appliance its images, and the thread that forks them. */
#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <string.h>
#include <unistd.h>

/* A process to start from the pool's spawner thread. */
struct spawn_request {
    char **argv;
    int errfd, nullfd;
    GPid pid;
    bool spawned;
    GError *error;
    bool done;
    GMutex lock;
    GCond cond;
};

/* In the child: die with snapfs, so a killed daemon leaves no NBD server behind. */
static void spawn_child_setup(gpointer data)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
}

/*
 * The parent-death signal fires when the thread that forked ends, and FUSE
 * worker threads come and go: servers are forked by this thread, which lives
 * as long as the pool.
 */
gpointer guest_nbd_spawner(gpointer data)
{
    struct guest_pool *pool = data;
    struct spawn_request *req;

    while ((req = g_async_queue_pop(pool->spawns)) != (gpointer)pool) {
        req->spawned = g_spawn_async_with_fds(NULL, req->argv, NULL,
                                              G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD, spawn_child_setup,
                                              NULL, &req->pid, req->nullfd, req->nullfd, req->errfd, &req->error);
        g_mutex_lock(&req->lock);
        req->done = true;
        g_cond_signal(&req->cond);
        g_mutex_unlock(&req->lock);
    }
    return NULL;
}

/* Start @argv, a server that makes @socket once it serves; -1 with the reason (its stderr) if it does not. */
static int server_start(struct guest_pool *pool, struct guest_appliance *app, GPtrArray *argv, const char *socket,
                        const char *what, GPid *pid)
{
    struct spawn_request req = { 0 };
    g_autoptr(GError) error = NULL;
    g_autofree char *errfile = NULL;
    gint64 deadline = g_get_monotonic_time() + 15 * G_USEC_PER_SEC;
    int errfd, nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
    bool spawned;

    errfile = g_strdup_printf("%s.err", socket);
    errfd = open(errfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    g_ptr_array_add(argv, NULL);
    req.argv = (char **)argv->pdata;
    req.errfd = errfd >= 0 ? errfd : nullfd;
    req.nullfd = nullfd;
    g_mutex_init(&req.lock);
    g_cond_init(&req.cond);
    g_async_queue_push(pool->spawns, &req);
    g_mutex_lock(&req.lock);
    while (!req.done)
        g_cond_wait(&req.cond, &req.lock);
    g_mutex_unlock(&req.lock);
    g_mutex_clear(&req.lock);
    g_cond_clear(&req.cond);
    spawned = req.spawned;
    *pid = req.pid;
    error = req.error;
    if (errfd >= 0)
        close(errfd);
    if (nullfd >= 0)
        close(nullfd);
    if (!spawned) {
        error_set(EIO, "cannot start %s for '%s': %s", (char *)argv->pdata[0], what, error->message);
        return -1;
    }
    while (!g_file_test(socket, G_FILE_TEST_EXISTS)) {
        g_autofree char *why = NULL;

        if (waitpid(*pid, NULL, WNOHANG) != 0 || g_get_monotonic_time() > deadline ||
            g_atomic_int_get(&pool->aborting)) {
            if (g_get_monotonic_time() > deadline || g_atomic_int_get(&pool->aborting))
                kill(*pid, SIGKILL), waitpid(*pid, NULL, 0);
            *pid = 0;
            g_file_get_contents(errfile, &why, NULL, NULL);
            if (why)
                g_strstrip(why);
            error_set(EIO, "%s could not serve %s: %s", (char *)argv->pdata[0], what,
                             why && *why ? why : "it did not start");
            return -1;
        }
        g_usleep(20000);
    }
    return 0;
}

void guest_nbd_stop(GPid pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 100 && waitpid(pid, NULL, WNOHANG) == 0; i++) {
        if (i == 50)
            kill(pid, SIGKILL);
        g_usleep(20000);
    }
}

static bool appliance_tmpdir(struct guest_appliance *app)
{
    g_autoptr(GError) error = NULL;

    if (!app->tmpdir && !(app->tmpdir = g_dir_make_tmp("snapfs-nbd-XXXXXX", &error))) {
        error_set(EIO, "cannot make a directory for NBD sockets: %s", error->message);
        return false;
    }
    return true;
}

/*
 * Every image reaches the appliance over NBD from a server that opens it with
 * force-share=on and no lock: a running domain holds its top image locked, and a
 * commit (rmdir, revert) must be able to write into a layer an appliance reads.
 * Plain images share one qemu-storage-daemon; an internal snapshot needs
 * qemu-nbd -l, one per disk.
 */
int guest_nbd_start_servers(struct guest_pool *pool, struct guest_appliance *app)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *socket = NULL;
    unsigned plain = 0;

    if (!appliance_tmpdir(app))
        return -1;
    socket = g_strdup_printf("%s/images.sock", app->tmpdir);
    g_ptr_array_add(argv, g_strdup("qemu-storage-daemon"));
    for (guint i = 0; i < app->disks->len; i++) {
        struct guest_disk_ext *ext = g_ptr_array_index(app->disks, i);
        g_autofree char *file = guest_qemu_opts_escape(ext->disk.file);

        if (ext->disk.internal) {
            g_autoptr(GPtrArray) nbd = g_ptr_array_new_with_free_func(g_free);
            g_autofree char *what = g_strdup_printf("'%s' at internal snapshot '%s'", ext->disk.file, ext->disk.internal);

            ext->disk.socket = g_strdup_printf("%s/%u.sock", app->tmpdir, i);
            g_ptr_array_add(nbd, g_strdup("qemu-nbd"));
            g_ptr_array_add(nbd, g_strdup("--read-only"));
            g_ptr_array_add(nbd, g_strdup("--persistent"));
            g_ptr_array_add(nbd, g_strdup("--shared=8"));
            g_ptr_array_add(nbd, g_strdup_printf("--socket=%s", ext->disk.socket));
            g_ptr_array_add(nbd, g_strdup_printf("--load-snapshot=snapshot.name=%s", ext->disk.internal));
            g_ptr_array_add(nbd, g_strdup("--image-opts"));
            g_ptr_array_add(nbd, guest_image_opts(ext->disk.format, ext->disk.file));
            if (server_start(pool, app, nbd, ext->disk.socket, what, &ext->nbd) < 0)
                return -1;
            continue;
        }
        ext->disk.socket = g_strdup(socket);
        ext->export = g_strdup_printf("d%u", i);
        g_ptr_array_add(argv, g_strdup("--blockdev"));
        /* A writable view's image is locked as a domain's is: the domain cannot start while it is written. */
        if (ext->disk.writable)
            g_ptr_array_add(argv, g_strdup_printf("driver=%s,node-name=%s,file.driver=file,file.filename=%s,"
                                                  "file.locking=on", ext->disk.format, ext->export, file));
        else
            g_ptr_array_add(argv, g_strdup_printf("driver=%s,node-name=%s,read-only=on,force-share=on,"
                                                  "file.driver=file,file.filename=%s,file.locking=off",
                                                  ext->disk.format, ext->export, file));
        g_ptr_array_add(argv, g_strdup("--export"));
        g_ptr_array_add(argv, g_strdup_printf("type=nbd,id=e%u,node-name=%s,name=%s%s", i, ext->export, ext->export,
                                              ext->disk.writable ? ",writable=on" : ""));
        plain++;
    }
    if (plain == 0)
        return 0;
    /* The server before its exports, as qemu-storage-daemon wants. */
    g_ptr_array_insert(argv, 1, g_strdup_printf("addr.type=unix,addr.path=%s", socket));
    g_ptr_array_insert(argv, 1, g_strdup("--nbd-server"));
    return server_start(pool, app, argv, socket, "the images", &app->storage_pid);
}

