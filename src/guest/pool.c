/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The pool of libguestfs appliances: which appliance serves a view, starting, idle timeout, watchdog, qemu-nbd. */
#include "guest-priv.h"

#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <malloc.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <string.h>
#include <unistd.h>

/*
 * Which appliance serves a view.  Every disk an appliance boots with costs its boot about a second under TCG
 * (udev runs blkid on it, mdadm and LVM scan it, libguestfs makes an overlay for it: measured in the README), and an
 * appliance cannot take disks after it started.  So a domain's first look starts an appliance with the disks of the
 * view asked for and of the few views likeliest to be asked next (the newest images first: the live top, the latest
 * snapshots), at most GUEST_FIRST_DISKS; as soon as that one is up, if the domain has views it does not serve, one
 * more appliance starts in the background with every view of the domain (at most GUEST_MAX_SHARED_DISKS disks).  Once
 * that one is up, the first one retires: its views move over on their next request (their caches are the views', so
 * only their mounts are made again), and the domain is back to one appliance.  A domain thus starts at most two
 * appliances for all its views (more only past GUEST_MAX_SHARED_DISKS disks, for LVM, or after an appliance stopped),
 * never more than two at a time, and the background one only where max_appliances leaves room without evicting.
 */
/* The most disks the appliance of a domain's first look takes: its boot stays that of one image's, about. */
#define GUEST_FIRST_DISKS 6
/* Beyond this many disks an appliance takes only the disks a view needs, not its neighbours'. */
#define GUEST_MAX_SHARED_DISKS 48
#define GUEST_APPLIANCE_MEMSIZE 512

struct guest_disk_ext {
    struct guest_disk disk;
    GPid nbd;         /* qemu-nbd, reaped here by its pid (never by a child watch some other thread could race) */
    char *export;     /* the NBD export name on the appliance's qemu-storage-daemon */
    char **chain;     /* every file qemu opens for this disk (the disk and its backing files) */
};

static void server_stop(GPid pid);

char *guest_drive_key(const struct guest_drive *drive, bool live)
{
    return g_strdup_printf("%s\n%s\n%s\n%d", drive->file, drive->format ? drive->format : "",
                           drive->internal_snapshot ? drive->internal_snapshot : "", live);
}

static void disk_free(struct guest_disk_ext *ext)
{
    server_stop(ext->nbd);
    g_free(ext->export);
    g_free(ext->disk.key);
    g_free(ext->disk.file);
    g_free(ext->disk.format);
    g_free(ext->disk.internal);
    g_free(ext->disk.socket);
    g_strfreev(ext->chain);
    g_free(ext);
}

int guest_appliance_find_disk(struct guest_appliance *app, const char *key)
{
    for (guint i = 0; i < app->disks->len; i++) {
        struct guest_disk *disk = g_ptr_array_index(app->disks, i);

        if (strcmp(disk->key, key) == 0)
            return (int)i;
    }
    return -1;
}

/* Add one image unless it is there already; @drive's own layers below come too, so that views of older snapshots find them. */
static void appliance_add_drive(struct guest_appliance *app, const struct guest_drive *drive, bool live, bool with_chain)
{
    g_autofree char *key = guest_drive_key(drive, live);
    g_autoptr(GPtrArray) chain = NULL;
    g_autoptr(GPtrArray) files = g_ptr_array_new();
    struct guest_disk_ext *ext;

    if (guest_appliance_find_disk(app, key) >= 0)
        return;
    /*
     * qemu follows the chain as the images record it and probes a backing
     * file's format where none is recorded: only a drive whose whole chain
     * snapfs can read with formats libvirt or the images name is added.
     */
    chain = snapfs_chain_read(drive->file, drive->format);
    if (!chain) {
        snapfs_debug("image '%s' is not added to an appliance: %s", drive->file, snapfs_error_message());
        return;
    }
    ext = g_new0(struct guest_disk_ext, 1);
    ext->disk.key = g_steal_pointer(&key);
    ext->disk.file = g_strdup(drive->file);
    ext->disk.format = g_strdup(drive->format);
    ext->disk.internal = g_strdup(drive->internal_snapshot);
    ext->disk.force_share = live;
    for (guint i = 0; i < chain->len; i++)
        g_ptr_array_add(files, g_strdup(((struct snapfs_layer *)g_ptr_array_index(chain, i))->file));
    g_ptr_array_add(files, NULL);
    ext->chain = (char **)g_ptr_array_free(g_steal_pointer(&files), FALSE);
    g_ptr_array_add(app->disks, ext);

    /* Each backing layer as a drive of its own: it is the content of an older snapshot or layer. */
    if (!with_chain || app->disks->len >= app->cap)
        return;
    for (guint i = 0; i + 1 < chain->len; i++) {
        struct snapfs_layer *layer = g_ptr_array_index(chain, i);
        struct guest_drive below = { .file = layer->file, .format = layer->format, .target = drive->target };

        if (g_access(layer->file, R_OK) != 0)
            continue;
        appliance_add_drive(app, &below, false, false);
    }
}

static void appliance_add_view(struct guest_appliance *app, struct guest_view *view, bool neighbours)
{
    for (size_t i = 0; i < guest_view_n_drives(view); i++) {
        const struct guest_drive *drive = guest_view_drive(view, i);

        if (neighbours && g_access(drive->file, R_OK) != 0)
            continue;
        appliance_add_drive(app, drive, guest_view_is_live(view) && !drive->internal_snapshot,
                            !app->alone && app->behind && app->disks->len < app->cap);
    }
}

static bool appliance_has_view(struct guest_appliance *app, struct guest_view *view)
{
    for (size_t i = 0; i < guest_view_n_drives(view); i++) {
        const struct guest_drive *drive = guest_view_drive(view, i);
        g_autofree char *key = guest_drive_key(drive, guest_view_is_live(view) && !drive->internal_snapshot);

        if (guest_appliance_find_disk(app, key) < 0)
            return false;
    }
    return true;
}

void guest_appliance_unref(struct guest_appliance *app)
{
    if (!app || !g_atomic_int_dec_and_test(&app->refs))
        return;
    if (app->g)
        guestfs_close(app->g);
    /* One per device: closing empties the disk list. */
    for (guint i = 0; app->disk_fs && app->devices && app->devices[i]; i++)
        g_strfreev(app->disk_fs[i]);
    g_ptr_array_unref(app->disks);
    server_stop(app->storage_pid);
    g_free(app->disk_fs);
    g_strfreev(app->devices);
    g_strfreev(app->partitions);
    g_strfreev(app->lvs);
    g_strfreev(app->roots);
    g_ptr_array_unref(app->mount_log);
    if (app->tmpdir) {
        g_autoptr(GDir) dir = g_dir_open(app->tmpdir, 0, NULL);
        const char *name;

        while (dir && (name = g_dir_read_name(dir))) {
            g_autofree char *path = g_build_filename(app->tmpdir, name, NULL);

            if (g_unlink(path) != 0)
                g_rmdir(path);   /* the launch directory, emptied by guestfs_close() */
        }
        g_rmdir(app->tmpdir);
    }
    g_free(app->tmpdir);
    g_free(app->launch_dir);
    g_free(app->group);
    g_free(app->alone);
    g_free(app->killed);
    g_mutex_clear(&app->lock);
    g_free(app);
}

/* Stop @app's qemu and its qemu-nbd servers.  Called with app->lock held (or the app unreachable). */
static void appliance_close(struct guest_appliance *app)
{
    g_atomic_int_set(&app->dead, 1);
    if (app->g) {
        snapfs_debug("closing appliance %u of domain '%s'", app->serial, app->group);
        guestfs_close(app->g);
        app->g = NULL;
    }
    /* The NBD servers go after qemu has let go of them. */
    g_ptr_array_set_size(app->disks, 0);
    server_stop(app->storage_pid);
    app->storage_pid = 0;
}

static struct guest_appliance *appliance_new(struct guest_pool *pool, const char *group)
{
    struct guest_appliance *app = g_new0(struct guest_appliance, 1);

    g_mutex_init(&app->lock);
    app->refs = 1;
    app->group = g_strdup(group);
    app->serial = ++pool->serial;
    app->cap = GUEST_MAX_SHARED_DISKS;
    app->disks = g_ptr_array_new_with_free_func((GDestroyNotify)disk_free);
    app->mount_log = g_ptr_array_new_with_free_func(g_free);
    app->last_used = g_get_monotonic_time();
    return app;
}

/*
 * NULL while @view may share its domain's appliance; once one of its disks is known to hold LVM,
 * the keys of its drives, which name the appliance of its own.  Pool lock held.
 */
static char *pool_alone_key(struct guest_pool *pool, struct guest_view *view)
{
    g_autoptr(GString) key = g_string_new(NULL);
    bool lvm = false;

    for (size_t i = 0; i < guest_view_n_drives(view); i++) {
        const struct guest_drive *drive = guest_view_drive(view, i);
        g_autofree char *disk = g_strconcat(guest_view_group(view), "\n", drive->target, NULL);
        g_autofree char *one = guest_drive_key(drive, guest_view_is_live(view) && !drive->internal_snapshot);

        lvm |= g_hash_table_contains(pool->lvm_disks, disk);
        g_string_append_printf(key, "%s%s", i ? "\n" : "", one);
    }
    return lvm ? g_string_free(g_steal_pointer(&key), FALSE) : NULL;
}

/*
 * Look from the host at @view's image of each of its domain's disks not looked at yet: a disk that holds LVM
 * then gets appliances of its own from the start, with no boot of the shared appliance to find that out.
 */
static void pool_look_for_lvm(struct guest_pool *pool, struct guest_view *view)
{
    for (size_t i = 0; i < guest_view_n_drives(view); i++) {
        const struct guest_drive *drive = guest_view_drive(view, i);
        g_autofree char *disk = g_strconcat(guest_view_group(view), "\n", drive->target, NULL);
        bool first;
        int lvm;

        /* qemu-io cannot open an internal snapshot: the appliance's blkid will tell. */
        if (drive->internal_snapshot)
            continue;
        g_mutex_lock(&pool->lock);
        first = g_hash_table_add(pool->looked_at, g_strdup(disk));
        g_mutex_unlock(&pool->lock);
        if (!first)
            continue;
        lvm = guest_image_holds_lvm(drive->file, drive->format);
        if (lvm < 0) {
            snapfs_debug("disk '%s' of domain '%s': no look from the host: %s", drive->target,
                         guest_view_group(view), snapfs_error_message());
        } else if (lvm) {
            snapfs_info("disk '%s' of domain '%s' holds LVM physical volumes: its views get appliances of their own",
                        drive->target, guest_view_group(view));
            guest_pool_mark_lvm(pool, guest_view_group(view), drive->target);
        }
    }
}

static gint by_last_use(gconstpointer a, gconstpointer b)
{
    gint64 x = guest_load64(&(*(struct guest_appliance *const *)a)->last_used);
    gint64 y = guest_load64(&(*(struct guest_appliance *const *)b)->last_used);

    return x < y ? -1 : x > y;
}

/* The running appliances of @pool, least recently used first.  Pool lock held. */
static GPtrArray *pool_running_by_age(struct guest_pool *pool)
{
    GPtrArray *running = g_ptr_array_new();

    for (guint i = 0; i < pool->appliances->len; i++) {
        struct guest_appliance *a = g_ptr_array_index(pool->appliances, i);

        if (!g_atomic_int_get(&a->dead))
            g_ptr_array_add(running, a);
    }
    g_ptr_array_sort(running, by_last_use);
    return running;
}

/*
 * Room for one more appliance under max_appliances: the least recently used ones not in a call
 * are locked into @evicted and taken out of the pool.  False when every one is busy (nothing
 * taken).  Pool lock held.
 */
static bool pool_make_room(struct guest_pool *pool, GPtrArray *evicted)
{
    g_autoptr(GPtrArray) running = pool_running_by_age(pool);
    guint need;

    if (!pool->config.max_appliances || running->len < pool->config.max_appliances)
        return true;
    need = running->len - pool->config.max_appliances + 1;
    for (guint i = 0; i < running->len && evicted->len < need; i++) {
        struct guest_appliance *a = g_ptr_array_index(running, i);

        if (g_mutex_trylock(&a->lock))
            g_ptr_array_add(evicted, a);
    }
    if (evicted->len < need) {
        for (guint i = 0; i < evicted->len; i++)
            g_mutex_unlock(&((struct guest_appliance *)g_ptr_array_index(evicted, i))->lock);
        g_ptr_array_set_size(evicted, 0);
        return false;
    }
    for (guint i = 0; i < evicted->len; i++) {
        struct guest_appliance *a = g_ptr_array_index(evicted, i);

        g_atomic_int_set(&a->dead, 1);
        g_ptr_array_remove(pool->appliances, a);   /* the pool's reference moves to the caller */
    }
    return true;
}

/* An appliance of @group that serves @view or can still take its disks, or NULL.  Pool lock held. */
static struct guest_appliance *pool_find_for(struct guest_pool *pool, struct guest_view *view, const char *alone)
{
    for (guint i = 0; i < pool->appliances->len; i++) {
        struct guest_appliance *a = g_ptr_array_index(pool->appliances, i);

        if (g_atomic_int_get(&a->dead) || g_atomic_int_get(&a->retire) || strcmp(a->group, guest_view_group(view)) != 0 ||
            g_strcmp0(a->alone, alone) != 0)
            continue;
        if (appliance_has_view(a, view) || !a->launching) {
            if (!a->launching)
                appliance_add_view(a, view, false);
            return a;
        }
    }
    return NULL;
}

/* A view of a domain and when its image last changed, to order them by how likely they are asked for next. */
struct view_age {
    struct guest_view *view;
    gint64 mtime;
};

static gint by_newest(gconstpointer a, gconstpointer b)
{
    const struct view_age *x = a, *y = b;

    return x->mtime > y->mtime ? -1 : x->mtime < y->mtime;
}

/*
 * The views of @group other than @except that may share an appliance, the newest image first (the live top, then
 * the latest snapshots: those most often looked at).  Pool lock held.
 */
static GArray *pool_group_views(struct guest_pool *pool, const char *group, struct guest_view *except)
{
    GArray *views = g_array_new(FALSE, FALSE, sizeof(struct view_age));
    GHashTableIter iter;
    gpointer value;

    g_hash_table_iter_init(&iter, pool->views);
    while (g_hash_table_iter_next(&iter, NULL, &value)) {
        struct view_age one = { value, 0 };
        g_autofree char *alone = NULL;
        GStatBuf st;

        if (one.view == except || strcmp(guest_view_group(one.view), group) != 0 || guest_view_n_drives(one.view) == 0)
            continue;
        alone = pool_alone_key(pool, one.view);
        if (alone)
            continue;
        if (g_stat(guest_view_drive(one.view, 0)->file, &st) == 0)
            one.mtime = (gint64)st.st_mtim.tv_sec * G_USEC_PER_SEC + st.st_mtim.tv_nsec / 1000;
        g_array_append_val(views, one);
    }
    g_array_sort(views, by_newest);
    return views;
}

/*
 * A new appliance for @view: of its drives alone for LVM (@alone), else with the few views of its domain likeliest
 * to be asked for next riding along (see the policy above).  Pool lock held.
 */
static struct guest_appliance *pool_new_for(struct guest_pool *pool, struct guest_view *view, char *alone)
{
    struct guest_appliance *app = appliance_new(pool, guest_view_group(view));

    app->alone = alone;
    app->cap = GUEST_FIRST_DISKS;
    appliance_add_view(app, view, false);
    if (!app->alone) {
        g_autoptr(GArray) others = pool_group_views(pool, app->group, view);

        for (guint i = 0; i < others->len && app->disks->len < app->cap; i++) {
            struct guest_view *other = g_array_index(others, struct view_age, i).view;

            /* A view of several disks rides along only whole. */
            if (app->disks->len + guest_view_n_drives(other) <= app->cap)
                appliance_add_view(app, other, true);
        }
    }
    g_ptr_array_add(pool->appliances, app);
    return app;
}

/* Whether every disk of @app is in @other too. */
static bool appliance_covered_by(struct guest_appliance *app, struct guest_appliance *other)
{
    for (guint i = 0; i < app->disks->len; i++) {
        if (guest_appliance_find_disk(other, ((struct guest_disk *)g_ptr_array_index(app->disks, i))->key) < 0)
            return false;
    }
    return true;
}

/* @behind is up: the appliances of its domain it covers retire (their views move to it on their next request). */
static void pool_retire_covered(struct guest_pool *pool, struct guest_appliance *behind)
{
    g_mutex_lock(&pool->lock);
    for (guint i = 0; g_ptr_array_find(pool->appliances, behind, NULL) && !g_atomic_int_get(&behind->dead) &&
                      i < pool->appliances->len; i++) {
        struct guest_appliance *a = g_ptr_array_index(pool->appliances, i);

        if (a == behind || a->behind || a->alone || !a->launched || g_atomic_int_get(&a->dead) ||
            g_atomic_int_get(&a->retire) || strcmp(a->group, behind->group) != 0 || !appliance_covered_by(a, behind))
            continue;
        snapfs_info("appliance %u of domain '%s' retires: appliance %u serves its views and every other one",
                    a->serial, a->group, behind->serial);
        g_atomic_int_set(&a->retire, 1);
    }
    g_mutex_unlock(&pool->lock);
}

struct behind_launch {
    struct guest_pool *pool;
    struct guest_appliance *app;   /* a reference */
};

static gpointer behind_thread(gpointer data)
{
    struct behind_launch *job = data;
    struct guest_pool *pool = job->pool;
    struct guest_appliance *app = job->app;
    bool up;

    g_free(job);
    g_mutex_lock(&app->lock);
    if (!app->launched && !g_atomic_int_get(&app->dead) && !g_atomic_int_get(&app->retire))
        guest_appliance_launch(pool, app);
    up = app->launched && app->g && !g_atomic_int_get(&app->dead);
    if (up)
        guest_appliance_idle(app);
    g_mutex_unlock(&app->lock);
    if (up)
        pool_retire_covered(pool, app);
    guest_appliance_unref(app);
    /* The last touch of the pool: guest_pool_free() waits for this. */
    g_mutex_lock(&pool->lock);
    pool->behind_running--;
    g_cond_broadcast(&pool->behind_cond);
    g_mutex_unlock(&pool->lock);
    return NULL;
}

void guest_pool_fill_in(struct guest_pool *pool, struct guest_appliance *app)
{
    g_autoptr(GArray) views = NULL;
    struct guest_appliance *behind = NULL;
    struct behind_launch *job;
    guint alive = 0;
    bool missing = false;

    if (app->alone || app->behind || !app->launched)
        return;
    g_mutex_lock(&pool->lock);
    if (g_atomic_int_get(&pool->aborting))
        goto cleanup;
    for (guint i = 0; i < pool->appliances->len; i++) {
        struct guest_appliance *a = g_ptr_array_index(pool->appliances, i);

        if (g_atomic_int_get(&a->dead))
            continue;
        alive++;
        if (a->behind && strcmp(a->group, app->group) == 0)
            goto cleanup;   /* one is there or on its way */
    }
    /* Only into room max_appliances leaves: a look nobody asked for evicts nothing. */
    if (pool->config.max_appliances && alive >= pool->config.max_appliances)
        goto cleanup;
    views = pool_group_views(pool, app->group, NULL);
    for (guint i = 0; i < views->len && !missing; i++)
        missing = !appliance_has_view(app, g_array_index(views, struct view_age, i).view);
    if (!missing)
        goto cleanup;
    behind = appliance_new(pool, app->group);
    behind->behind = true;
    /* The views @app serves first, so that it can retire; then the others, newest first. */
    for (int pass = 0; pass < 2; pass++) {
        for (guint i = 0; i < views->len && behind->disks->len < behind->cap; i++) {
            struct guest_view *view = g_array_index(views, struct view_age, i).view;

            if (appliance_has_view(app, view) == (pass == 0))
                appliance_add_view(behind, view, true);
        }
    }
    g_ptr_array_add(pool->appliances, behind);
    job = g_new0(struct behind_launch, 1);
    job->pool = pool;
    job->app = behind;
    g_atomic_int_inc(&behind->refs);   /* the thread's */
    pool->behind_running++;
    snapfs_info("domain '%s' has views appliance %u does not serve: appliance %u starts in the background with %u disks",
                app->group, app->serial, behind->serial, behind->disks->len);
    g_thread_unref(g_thread_new("snapfs-behind", behind_thread, job));

cleanup:
    g_mutex_unlock(&pool->lock);
}

/* How long a view waits for an appliance to come free when max_appliances are all in calls. */
#define GUEST_ROOM_WAIT_US (10 * G_USEC_PER_SEC)

struct guest_appliance *guest_pool_appliance_for(struct guest_pool *pool, struct guest_view *view)
{
    g_autoptr(GPtrArray) evicted = g_ptr_array_new();
    gint64 deadline = g_get_monotonic_time() + GUEST_ROOM_WAIT_US;
    struct guest_appliance *app = NULL;

    pool_look_for_lvm(pool, view);
    for (;;) {
        g_autofree char *alone = NULL;

        g_mutex_lock(&pool->lock);
        alone = pool_alone_key(pool, view);
        app = pool_find_for(pool, view, alone);
        if (!app && pool_make_room(pool, evicted))
            app = pool_new_for(pool, view, g_steal_pointer(&alone));
        if (app)
            break;
        g_mutex_unlock(&pool->lock);
        if (g_get_monotonic_time() > deadline || g_atomic_int_get(&pool->aborting)) {
            snapfs_error_set(EAGAIN, "%s cannot be read now: all %u appliances (-o max_appliances) are busy",
                             guest_view_group(view), pool->config.max_appliances);
            snapfs_warn("domain '%s': %s", guest_view_group(view), snapfs_error_message());
            return NULL;
        }
        g_usleep(50 * 1000);
    }
    g_atomic_int_inc(&app->refs);
    g_mutex_unlock(&pool->lock);

    for (guint i = 0; i < evicted->len; i++) {
        struct guest_appliance *a = g_ptr_array_index(evicted, i);

        snapfs_info("stopping appliance %u of domain '%s' to make room (max_appliances=%u)", a->serial, a->group,
                    pool->config.max_appliances);
        appliance_close(a);
        g_mutex_unlock(&a->lock);
        guest_appliance_unref(a);
    }
    return app;
}

void guest_pool_mark_lvm(struct guest_pool *pool, const char *group, const char *target)
{
    g_mutex_lock(&pool->lock);
    g_hash_table_add(pool->lvm_disks, g_strconcat(group, "\n", target, NULL));
    g_mutex_unlock(&pool->lock);
}

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
static gpointer pool_spawner(gpointer data)
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
        snapfs_error_set(EIO, "cannot start %s for '%s': %s", (char *)argv->pdata[0], what, error->message);
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
            snapfs_error_set(EIO, "%s could not serve %s: %s", (char *)argv->pdata[0], what,
                             why && *why ? why : "it did not start");
            return -1;
        }
        g_usleep(20000);
    }
    return 0;
}

static void server_stop(GPid pid)
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

static char *opts_escape(const char *value)
{
    g_auto(GStrv) parts = g_strsplit(value, ",", -1);

    return g_strjoinv(",,", parts);   /* QemuOpts doubles a comma inside a value */
}

char *guest_image_opts(const char *format, const char *file)
{
    g_autofree char *escaped = opts_escape(file);

    return g_strdup_printf("driver=%s,read-only=on,force-share=on,file.driver=file,file.filename=%s,"
                           "file.locking=off", format, escaped);
}

static bool appliance_tmpdir(struct guest_appliance *app)
{
    g_autoptr(GError) error = NULL;

    if (!app->tmpdir && !(app->tmpdir = g_dir_make_tmp("snapfs-nbd-XXXXXX", &error))) {
        snapfs_error_set(EIO, "cannot make a directory for NBD sockets: %s", error->message);
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
static int appliance_start_servers(struct guest_pool *pool, struct guest_appliance *app)
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
        g_autofree char *file = opts_escape(ext->disk.file);

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
        g_ptr_array_add(argv, g_strdup_printf("driver=%s,node-name=%s,read-only=on,force-share=on,file.driver=file,"
                                              "file.filename=%s,file.locking=off", ext->disk.format, ext->export, file));
        g_ptr_array_add(argv, g_strdup("--export"));
        g_ptr_array_add(argv, g_strdup_printf("type=nbd,id=e%u,node-name=%s,name=%s", i, ext->export, ext->export));
        plain++;
    }
    if (plain == 0)
        return 0;
    /* The server before its exports, as qemu-storage-daemon wants. */
    g_ptr_array_insert(argv, 1, g_strdup_printf("addr.type=unix,addr.path=%s", socket));
    g_ptr_array_insert(argv, 1, g_strdup("--nbd-server"));
    return server_start(pool, app, argv, socket, "the images", &app->storage_pid);
}

/* How an appliance boots beside libguestfs's defaults (guest-boot.c). */
enum {
    BOOT_UNPACKED = 1,  /* the kernel unpacked */
    BOOT_TCG_CACHE = 2, /* qemu through a script that bounds its translated code */
};

/*
 * Hand @g what @prepare makes (a file of guest-boot.c) through @apply, unless @plain says that failed once; when it
 * cannot be made, say so (appliances then @without "as it is") and set @plain.  Whether @g got it.
 */
static bool boot_use(guestfs_h *g, gint *plain, char *(*prepare)(guestfs_h *),
                     int (*apply)(guestfs_h *, const char *), const char *without)
{
    g_autofree char *made = NULL;

    if (g_atomic_int_get(plain))
        return false;
    made = prepare(g);
    if (made && apply(g, made) == 0)
        return true;
    snapfs_info("appliances %s as it is: %s", without, made ? guestfs_last_error(g) : snapfs_error_message());
    g_atomic_int_set(plain, 1);
    return false;
}

/* A handle with @app's disks added, not launched, and what of guest-boot.c it uses; NULL with the reason. */
static guestfs_h *appliance_handle(struct guest_pool *pool, struct guest_appliance *app, bool force_tcg,
                                   unsigned *boot)
{
    g_autoptr(guestfs_h) g = guestfs_create();
    g_autofree char *ident = NULL;

    if (!g) {
        snapfs_error_set(EIO, "cannot create a libguestfs handle: %s", g_strerror(errno));
        return NULL;
    }
    guestfs_set_error_handler(g, NULL, NULL);
    /* libguestfs's overlays go here, so the launch watcher knows this appliance's qemu by its command line. */
    if (!app->launch_dir) {
        app->launch_dir = g_build_filename(app->tmpdir, "launch", NULL);
        if (g_mkdir(app->launch_dir, 0700) < 0) {
            snapfs_error_set(EIO, "cannot make '%s': %s", app->launch_dir, g_strerror(errno));
            return NULL;
        }
    }
    guestfs_set_tmpdir(g, app->launch_dir);
    ident = g_strdup_printf("snapfs%u", app->serial);
    guestfs_set_identifier(g, ident);
    guestfs_set_autosync(g, 0);
    guestfs_set_memsize(g, GUEST_APPLIANCE_MEMSIZE);
    /* A second vCPU boots the appliance seconds sooner under TCG (udev probes the disks in parallel). */
    guestfs_set_smp(g, g_get_num_processors() >= 2 ? 2 : 1);
    /*
     * Debian's kernel zeroes every page it hands out (init_on_alloc): hardening against leaks between
     * a machine's users, which a throwaway appliance of one domain's images does not have, and under
     * TCG an emulated memset of each page: without it the appliance boots about 1 s sooner and lists
     * directories a quarter faster.  LIBGUESTFS_APPEND, read at guestfs_create(), still has the last word.
     */
    {
        const char *user = guestfs_get_append(g);
        g_autofree char *append = g_strconcat("init_on_alloc=0", user ? " " : "", user ? user : "", NULL);

        guestfs_set_append(g, append);
    }
    if (force_tcg) {
        char *settings[] = { (char *)"force_tcg", NULL };

        guestfs_set_backend_settings(g, settings);
    }
    *boot = 0;
    /*
     * A background launch boots what the first look's launch made seconds before: refreshing it runs supermin,
     * which does not watch for snapfs stopping, and unmount waits for background launches.
     */
    g_mutex_lock(&pool->lock);
    if (app->behind && pool->boot_path && !g_atomic_int_get(&pool->plain_kernel) &&
        guestfs_set_path(g, pool->boot_path) == 0)
        *boot |= BOOT_UNPACKED;
    g_mutex_unlock(&pool->lock);
    if (!(*boot & BOOT_UNPACKED) &&
        boot_use(g, &pool->plain_kernel, guest_boot_appliance, guestfs_set_path, "boot libguestfs's kernel"))
        *boot |= BOOT_UNPACKED;
    /* Only where TCG is certain: a script that cannot run would otherwise pass for a KVM that fails. */
    if (force_tcg && boot_use(g, &pool->plain_qemu, guest_boot_qemu, guestfs_set_hv, "run libguestfs's qemu"))
        *boot |= BOOT_TCG_CACHE;
    for (guint i = 0; i < app->disks->len; i++) {
        struct guest_disk_ext *ext = g_ptr_array_index(app->disks, i);
        int r;

        if (ext->disk.socket) {
            g_autofree char *server = g_strdup_printf("unix:%s", ext->disk.socket);
            const char *servers[2] = { server, NULL };

            r = guestfs_add_drive_opts(g, ext->export ? ext->export : "", GUESTFS_ADD_DRIVE_OPTS_READONLY, 1,
                                       GUESTFS_ADD_DRIVE_OPTS_FORMAT, "raw",
                                       GUESTFS_ADD_DRIVE_OPTS_PROTOCOL, "nbd",
                                       GUESTFS_ADD_DRIVE_OPTS_SERVER, servers, -1);
        } else {
            r = guestfs_add_drive_opts(g, ext->disk.file, GUESTFS_ADD_DRIVE_OPTS_READONLY, 1,
                                       GUESTFS_ADD_DRIVE_OPTS_FORMAT, ext->disk.format, -1);
        }
        if (r < 0) {
            snapfs_error_set(EIO, "cannot add image '%s' to an appliance: %s", ext->disk.file, guestfs_last_error(g));
            return NULL;
        }
    }
    return g_steal_pointer(&g);
}

char *guest_disk_letters(unsigned n)
{
    GString *s = g_string_new(NULL);

    do {
        g_string_prepend_c(s, (char)('a' + n % 26));
        n = n / 26;
    } while (n-- > 0);
    return g_string_free(s, FALSE);
}

const char *guest_device_suffix(const char *device, const char *whole)
{
    size_t n = strlen(whole);

    if (strncmp(device, whole, n) != 0)
        return NULL;
    for (const char *p = device + n; *p; p++) {
        if (!g_ascii_isdigit(*p))
            return NULL;
    }
    return device + n;
}

const char *guest_fs_not_shown(const char *type)
{
    static const char *const skipped[][2] = {
        { "", "not a filesystem blkid knows" },
        { "unknown", "not a filesystem blkid knows" },
        { "swap", "swap space" },
        { "LVM2_member", "an LVM physical volume" },
        { "linux_raid_member", "a RAID member: RAID arrays are not shown by snapfs yet" },
        { "crypto_LUKS", "encrypted (LUKS): snapfs has no key" },
    };

    for (size_t i = 0; i < G_N_ELEMENTS(skipped); i++) {
        if (strcmp(type, skipped[i][0]) == 0)
            return skipped[i][1];
    }
    return NULL;
}

/* blkid's type of @device, "" when it finds none (or the call failed: the caller asks guestfs_is_ready()). */
static char *appliance_vfs_type(struct guest_appliance *app, const char *device)
{
    char *type = guestfs_vfs_type(app->g, device);

    return type ? type : g_strdup("");
}

char **guest_appliance_disk_filesystems(struct guest_appliance *app, size_t index)
{
    g_autoptr(GPtrArray) found = NULL;
    const char *whole;
    char *type;

    if (index >= app->disks->len || !app->g)
        return NULL;
    if (app->disk_fs[index])
        return app->disk_fs[index];
    whole = app->devices[index];
    found = g_ptr_array_new_with_free_func(g_free);
    type = appliance_vfs_type(app, whole);
    if (*type) {
        g_ptr_array_add(found, g_strdup(whole));
        g_ptr_array_add(found, type);
    } else {
        g_free(type);
        if (!app->partitions && guestfs_is_ready(app->g))
            app->partitions = guestfs_list_partitions(app->g);
        for (size_t i = 0; app->partitions && app->partitions[i]; i++) {
            const char *suffix = guest_device_suffix(app->partitions[i], whole);

            if (suffix && *suffix) {
                g_ptr_array_add(found, g_strdup(app->partitions[i]));
                g_ptr_array_add(found, appliance_vfs_type(app, app->partitions[i]));
            }
        }
    }
    if (!guestfs_is_ready(app->g))
        return NULL;
    g_ptr_array_set_free_func(found, NULL);
    g_ptr_array_add(found, NULL);
    app->disk_fs[index] = (char **)g_ptr_array_free(g_steal_pointer(&found), FALSE);
    return app->disk_fs[index];
}

char **guest_appliance_logical_volumes(struct guest_appliance *app)
{
    g_autoptr(GPtrArray) found = NULL;
    g_auto(GStrv) lvs = NULL;

    if (!app->g)
        return NULL;
    if (app->lvs)
        return app->lvs;
    /* The appliance's init activates what it finds; this is for a volume group it did not. */
    if (guestfs_vg_activate_all(app->g, 1) < 0 && !guestfs_is_ready(app->g))
        return NULL;
    lvs = guestfs_lvs(app->g);
    if (!lvs && !guestfs_is_ready(app->g))
        return NULL;
    found = g_ptr_array_new_with_free_func(g_free);
    for (size_t i = 0; lvs && lvs[i]; i++) {
        g_ptr_array_add(found, g_strdup(lvs[i]));
        g_ptr_array_add(found, appliance_vfs_type(app, lvs[i]));
    }
    if (!guestfs_is_ready(app->g))
        return NULL;
    g_ptr_array_set_free_func(found, NULL);
    g_ptr_array_add(found, NULL);
    app->lvs = (char **)g_ptr_array_free(g_steal_pointer(&found), FALSE);
    return app->lvs;
}

/*
 * Before the first launch (not at mount: a mount that never looks at guest files says nothing of KVM):
 * where KVM failed an appliance of an earlier snapfs of this boot, TCG at once (guest-kvm.c).
 */
static void pool_kvm_check(struct guest_pool *pool)
{
    if (!g_once_init_enter(&pool->kvm_checked))
        return;
    if (!g_atomic_int_get(&pool->force_tcg)) {
        /* The qemu libguestfs runs (LIBGUESTFS_HV or its own): what the verdict is about. */
        guestfs_h *probe = guestfs_create_flags(0);

        if (probe) {
            pool->hv = guestfs_get_hv(probe);   /* malloc'd, the caller's */
            guestfs_close(probe);
        }
        g_autofree char *before = guest_kvm_failed_before(pool->hv);

        if (before) {
            snapfs_info("appliances start on TCG: KVM failed an appliance of an earlier snapfs of this boot: %s", before);
            g_atomic_int_set(&pool->force_tcg, 1);
        }
    }
    g_once_init_leave(&pool->kvm_checked, 1);
}

int guest_appliance_launch(struct guest_pool *pool, struct guest_appliance *app)
{
    g_autoptr(guestfs_h) g = NULL;
    g_autofree char *kvm_failed = NULL;
    gint64 started = g_get_monotonic_time();
    unsigned boot = 0;

    g_mutex_lock(&pool->lock);
    app->launching = true;
    app->launch_started = started;
    g_mutex_unlock(&pool->lock);
    snapfs_info("starting appliance %u of domain '%s' with %u disks", app->serial, app->group, app->disks->len);

    pool_kvm_check(pool);
    if (appliance_start_servers(pool, app) < 0)
        goto fail;
    snapfs_debug("appliance %u of domain '%s': images served after %.2f s", app->serial, app->group,
                 (double)(g_get_monotonic_time() - started) / G_USEC_PER_SEC);
    /* At most: KVM fails, TCG as snapfs boots it fails, TCG as libguestfs boots it. */
    for (int attempt = 0; attempt < 3 && !g; attempt++) {
        bool tcg = g_atomic_int_get(&pool->force_tcg);

        g = appliance_handle(pool, app, tcg, &boot);
        if (!g)
            goto fail;
        /* Nobody waits for a background launch: a chain change calls it off rather than wait for it. */
        if (guest_launch(g, app->launch_dir, !tcg, &pool->config.limits, app->behind ? &app->stop : &pool->aborting,
                         NULL) == 0)
            break;
        g_clear_pointer(&g, guestfs_close);
        if (g_atomic_int_get(&pool->aborting) || g_atomic_int_get(&app->stop))
            goto fail;
        /*
         * A KVM that fails at start (nested, broken MSRs) or runs no guest at all, while TCG works:
         * TCG from now on, said once.
         */
        if (!tcg) {
            snapfs_warn("appliance %u of domain '%s': %s; trying again without KVM, and every appliance from now on",
                        app->serial, app->group, snapfs_error_message());
            g_atomic_int_set(&pool->force_tcg, 1);
            kvm_failed = g_strdup(snapfs_error_message());
        } else if (boot) {
            snapfs_warn("appliance %u of domain '%s': %s; trying again with libguestfs's kernel and qemu as they are",
                        app->serial, app->group, snapfs_error_message());
            g_atomic_int_set(&pool->plain_kernel, 1);
            g_atomic_int_set(&pool->plain_qemu, 1);
        } else {
            goto fail;
        }
    }
    if (!g)
        goto fail;
    /* KVM failed and TCG did not: that was KVM's fault, for every later snapfs of this boot too. */
    if (kvm_failed)
        guest_kvm_remember_failed(pool->hv, kvm_failed);
    app->qemu_pid = guestfs_get_pid(g);
    if (boot & BOOT_UNPACKED)
        guest_boot_release(app->qemu_pid, guestfs_get_path(g));
    snapfs_debug("appliance %u of domain '%s': booted after %.2f s", app->serial, app->group,
                 (double)(g_get_monotonic_time() - started) / G_USEC_PER_SEC);
    /*
     * libguestfs names the disks /dev/sda, /dev/sdb, ... in the order they were added.  Their
     * filesystems are probed when a view first needs them: guestfs_list_filesystems() would
     * wait for udev and run blkid on every disk and LVM on all of them, seconds under TCG.
     */
    app->devices = g_new0(char *, app->disks->len + 1);
    app->disk_fs = g_new0(char **, app->disks->len);
    for (guint i = 0; i < app->disks->len; i++) {
        g_autofree char *letters = guest_disk_letters(i);

        app->devices[i] = g_strconcat("/dev/sd", letters, NULL);
    }
    app->g = g_steal_pointer(&g);
    app->launched = true;
    g_mutex_lock(&pool->lock);
    if (boot & BOOT_UNPACKED) {
        g_free(pool->boot_path);
        pool->boot_path = g_strdup(guestfs_get_path(app->g));
    }
    pool->stats.launches++;
    app->launch_started = 0;
    g_mutex_unlock(&pool->lock);
    snapfs_info("appliance %u of domain '%s' started with %u disks in %.1f s", app->serial, app->group,
                app->disks->len, (double)(g_get_monotonic_time() - started) / G_USEC_PER_SEC);
    return 0;

fail:
    snapfs_warn("appliance %u of domain '%s': %s", app->serial, app->group, snapfs_error_message());
    g_atomic_int_set(&app->dead, 1);
    g_mutex_lock(&pool->lock);
    app->launch_started = 0;
    g_mutex_unlock(&pool->lock);
    return -1;
}

char *guest_pool_progress(struct guest_pool *pool, const char *group)
{
    char *progress = NULL;

    g_mutex_lock(&pool->lock);
    for (guint i = 0; i < pool->appliances->len && !progress; i++) {
        struct guest_appliance *app = g_ptr_array_index(pool->appliances, i);

        if (app->launch_started && strcmp(app->group, group) == 0)
            progress = g_strdup_printf("starting a libguestfs appliance with %u disks: %.0f s so far",
                                       app->disks->len,
                                       (double)(g_get_monotonic_time() - app->launch_started) / G_USEC_PER_SEC);
    }
    g_mutex_unlock(&pool->lock);
    return progress;
}

void guest_appliance_error(struct guest_appliance *app, const char *what, const char *path)
{
    int err = guestfs_last_errno(app->g);
    const char *message = guestfs_last_error(app->g);

    if (!guestfs_is_ready(app->g)) {
        const char *killed = g_atomic_pointer_get(&app->killed);

        g_atomic_int_set(&app->dead, 1);
        if (killed)
            snapfs_error_set(EIO, "cannot %s '%s': %s", what, path, killed);
        else
            snapfs_error_set(EIO, "cannot %s '%s': the appliance of domain '%s' stopped (%s)", what, path,
                             app->group, message ? message : "qemu exited");
        snapfs_warn("appliance %u of domain '%s': %s", app->serial, app->group, snapfs_error_message());
        return;
    }
    snapfs_error_set(err > 0 ? err : EIO, "cannot %s '%s' in the guest: %s", what, path, message ? message : "unknown error");
}

/* @items names (a listing): a second more per thousand of them (a stat and its xattrs each, under TCG). */
void guest_appliance_expect(struct guest_pool *pool, struct guest_appliance *app, size_t items)
{
    guest_store64(&app->call_deadline, g_get_monotonic_time() +
                                           (gint64)pool->config.limits.timeout_seconds * G_USEC_PER_SEC +
                                           (gint64)(items / 1000) * G_USEC_PER_SEC);
}

void guest_appliance_busy(struct guest_pool *pool, struct guest_appliance *app)
{
    guest_appliance_expect(pool, app, 0);
    g_mutex_lock(&pool->lock);
    pool->stats.calls++;
    g_mutex_unlock(&pool->lock);
}

void guest_appliance_idle(struct guest_appliance *app)
{
    gint64 now = g_get_monotonic_time();

    guest_store64(&app->call_deadline, 0);
    guest_store64(&app->last_used, now);
}

/* Kill @app's qemu now, from any thread: the call in flight fails and says @why (taken); @warn logs it. */
static void appliance_kill(struct guest_appliance *app, char *why, bool warn)
{
    if (!g_atomic_pointer_compare_and_exchange(&app->killed, NULL, why))
        g_free(why);
    else if (warn)
        snapfs_warn("%s", why);
    else
        snapfs_debug("%s", why);
    g_atomic_int_set(&app->dead, 1);
    if (app->qemu_pid > 0)
        kill(app->qemu_pid, SIGKILL);
}

void guest_pool_abort(struct guest_pool *pool)
{
    g_atomic_int_set(&pool->aborting, 1);   /* launches under way see it within 0.2 s */
    g_mutex_lock(&pool->lock);
    for (guint i = 0; i < pool->appliances->len; i++) {
        struct guest_appliance *app = g_ptr_array_index(pool->appliances, i);

        g_atomic_int_set(&app->stop, 1);
        if (app->launched)
            appliance_kill(app, g_strdup_printf("appliance %u of domain '%s' was stopped: snapfs is stopping",
                                                app->serial, app->group), false);
    }
    g_mutex_unlock(&pool->lock);
}

/* Once a second: kill hung appliances, stop idle and retired ones. */
static gpointer pool_timer(gpointer data)
{
    struct guest_pool *pool = data;

    g_mutex_lock(&pool->timer_lock);
    while (!pool->stopping) {
        g_autoptr(GPtrArray) closing = g_ptr_array_new();
        gint64 now = g_get_monotonic_time();

        g_cond_wait_until(&pool->timer_cond, &pool->timer_lock, now + G_USEC_PER_SEC);
        if (pool->stopping)
            break;
        now = g_get_monotonic_time();
        g_mutex_lock(&pool->lock);
        for (guint i = 0; i < pool->appliances->len; i++) {
            struct guest_appliance *app = g_ptr_array_index(pool->appliances, i);
            gint64 deadline = guest_load64(&app->call_deadline);
            gint64 idle = now - guest_load64(&app->last_used);

            if (deadline && now > deadline && app->qemu_pid > 0 && !g_atomic_int_get(&app->dead)) {
                appliance_kill(app, g_strdup_printf("appliance %u of domain '%s' did not answer within %u s "
                                                    "(-o appliance_timeout) and was killed", app->serial, app->group,
                                                    pool->config.limits.timeout_seconds), true);
                continue;
            }
            if (!g_atomic_int_get(&app->dead) && !g_atomic_int_get(&app->retire) &&
                (!pool->config.idle_seconds || idle < (gint64)pool->config.idle_seconds * G_USEC_PER_SEC))
                continue;
            if (!g_mutex_trylock(&app->lock))
                continue;
            g_ptr_array_add(closing, app);
        }
        for (guint i = 0; i < closing->len; i++)
            g_ptr_array_remove(pool->appliances, g_ptr_array_index(closing, i));
        g_mutex_unlock(&pool->lock);
        g_mutex_unlock(&pool->timer_lock);
        for (guint i = 0; i < closing->len; i++) {
            struct guest_appliance *app = g_ptr_array_index(closing, i);

            if (!g_atomic_int_get(&app->dead))
                snapfs_info("appliance %u of domain '%s' idle: stopping it", app->serial, app->group);
            appliance_close(app);
            g_mutex_unlock(&app->lock);
            guest_appliance_unref(app);
        }
        g_mutex_lock(&pool->timer_lock);
    }
    g_mutex_unlock(&pool->timer_lock);
    return NULL;
}

struct guest_pool *guest_pool_new(const struct guest_pool_config *config)
{
    struct guest_pool *pool = g_new0(struct guest_pool, 1);

    pool->config = *config;
    if (!pool->config.limits.timeout_seconds)
        pool->config.limits.timeout_seconds = GUEST_DEFAULT_TIMEOUT_S;
    if (!pool->config.limits.kvm_seconds)
        pool->config.limits.kvm_seconds = GUEST_DEFAULT_KVM_TIMEOUT_S;
    pool->force_tcg = g_strrstr(g_getenv("LIBGUESTFS_BACKEND_SETTINGS") ? g_getenv("LIBGUESTFS_BACKEND_SETTINGS") : "", "force_tcg") != NULL;
    /* No KVM to open: libguestfs runs TCG anyway, and saying so lets snapfs bound its translated code. */
    if (access("/dev/kvm", R_OK | W_OK) < 0)
        pool->force_tcg = 1;
    if (!pool->config.live_ttl_ms)
        pool->config.live_ttl_ms = 1000;
    g_mutex_init(&pool->lock);
    g_mutex_init(&pool->timer_lock);
    g_cond_init(&pool->timer_cond);
    g_cond_init(&pool->behind_cond);
    pool->views = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, (GDestroyNotify)guest_view_unref);
    pool->appliances = g_ptr_array_new();
    pool->lvm_disks = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    pool->looked_at = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    guest_cache_init(pool);
    /*
     * Each chunk is a buffer of up to 2 MiB that libguestfs allocates.  With glibc's sliding
     * threshold, the first one freed moves later ones into the heaps of the FUSE threads, which
     * keep the memory after the cache lets go of it: a fixed threshold returns it at once.
     */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    pool->timer = g_thread_new("snapfs-guests", pool_timer, pool);
    pool->spawns = g_async_queue_new();
    pool->spawner = g_thread_new("snapfs-spawner", pool_spawner, pool);
    return pool;
}

static gpointer appliance_close_thread(gpointer data)
{
    struct guest_appliance *app = data;

    g_mutex_lock(&app->lock);
    appliance_close(app);
    g_mutex_unlock(&app->lock);
    guest_appliance_unref(app);
    return NULL;
}

void guest_pool_free(struct guest_pool *pool)
{
    if (!pool)
        return;
    /* qemu is killed, not asked to stop: its disks are read-only, and a wedged one would never answer. */
    guest_pool_abort(pool);
    /* Background launches see the abort within 0.2 s; none starts from now on. */
    g_mutex_lock(&pool->lock);
    while (pool->behind_running)
        g_cond_wait(&pool->behind_cond, &pool->lock);
    g_mutex_unlock(&pool->lock);
    g_mutex_lock(&pool->timer_lock);
    pool->stopping = true;
    g_cond_signal(&pool->timer_cond);
    g_mutex_unlock(&pool->timer_lock);
    g_thread_join(pool->timer);
    g_hash_table_unref(pool->views);
    /* Each qemu takes a moment to go: close them side by side, so unmounting does not wait for them in turn. */
    {
        g_autoptr(GPtrArray) threads = g_ptr_array_new();

        for (guint i = 0; i < pool->appliances->len; i++)
            g_ptr_array_add(threads, g_thread_new("snapfs-close", appliance_close_thread,
                                                  g_ptr_array_index(pool->appliances, i)));
        for (guint i = 0; i < threads->len; i++)
            g_thread_join(g_ptr_array_index(threads, i));
    }
    g_ptr_array_unref(pool->appliances);
    g_hash_table_unref(pool->lvm_disks);
    g_hash_table_unref(pool->looked_at);
    free(pool->hv);
    g_async_queue_push(pool->spawns, pool);
    g_thread_join(pool->spawner);
    g_async_queue_unref(pool->spawns);
    guest_cache_clear(pool);
    g_mutex_clear(&pool->lock);
    g_mutex_clear(&pool->timer_lock);
    g_cond_clear(&pool->timer_cond);
    g_cond_clear(&pool->behind_cond);
    g_free(pool->boot_path);
    g_free(pool);
}

static bool appliance_reads_file(struct guest_appliance *app, const char *file)
{
    for (guint i = 0; i < app->disks->len; i++) {
        struct guest_disk_ext *ext = g_ptr_array_index(app->disks, i);

        if (ext->chain && g_strv_contains((const char *const *)ext->chain, file))
            return true;
    }
    return false;
}

/* Close, now, the appliances @match selects (waiting for a call in flight): their qemu holds locks on images. */
static void pool_close_matching(struct guest_pool *pool, bool (*match)(struct guest_appliance *, const char *),
                                const char *arg)
{
    g_autoptr(GPtrArray) closing = g_ptr_array_new();

    g_mutex_lock(&pool->lock);
    for (guint i = 0; i < pool->appliances->len; i++) {
        struct guest_appliance *app = g_ptr_array_index(pool->appliances, i);

        if (match(app, arg)) {
            g_atomic_int_set(&app->retire, 1);
            g_atomic_int_set(&app->stop, 1);   /* a background launch under way is killed, not waited for */
            g_ptr_array_add(closing, app);
        }
    }
    for (guint i = 0; i < closing->len; i++)
        g_ptr_array_remove(pool->appliances, g_ptr_array_index(closing, i));   /* the reference moves here */
    g_mutex_unlock(&pool->lock);
    for (guint i = 0; i < closing->len; i++) {
        struct guest_appliance *app = g_ptr_array_index(closing, i);

        g_mutex_lock(&app->lock);
        snapfs_info("stopping appliance %u of domain '%s': its images change", app->serial, app->group);
        appliance_close(app);
        g_mutex_unlock(&app->lock);
        guest_appliance_unref(app);
    }
}

static bool match_group(struct guest_appliance *app, const char *group)
{
    return strcmp(app->group, group) == 0;
}

void guest_pool_forget_file(struct guest_pool *pool, const char *file)
{
    g_autoptr(GPtrArray) dropped = g_ptr_array_new_with_free_func(g_free);
    GHashTableIter iter;
    gpointer key, value;

    g_mutex_lock(&pool->lock);
    g_hash_table_iter_init(&iter, pool->views);
    while (g_hash_table_iter_next(&iter, &key, &value)) {
        struct guest_view *view = value;

        for (size_t i = 0; i < guest_view_n_drives(view); i++) {
            if (strcmp(guest_view_drive(view, i)->file, file) == 0) {
                g_ptr_array_add(dropped, g_strdup(key));
                g_hash_table_iter_remove(&iter);
                break;
            }
        }
    }
    g_mutex_unlock(&pool->lock);
    for (guint i = 0; i < dropped->len; i++)
        guest_data_forget(pool, g_ptr_array_index(dropped, i));
    /* qemu holds the old file open, and its backing files locked against a commit into them. */
    pool_close_matching(pool, appliance_reads_file, file);
}

void guest_pool_release_group(struct guest_pool *pool, const char *group)
{
    pool_close_matching(pool, match_group, group);
}

void guest_pool_get_stats(struct guest_pool *pool, struct guest_pool_stats *stats)
{
    g_mutex_lock(&pool->lock);
    *stats = pool->stats;
    stats->running = 0;
    for (guint i = 0; i < pool->appliances->len; i++) {
        struct guest_appliance *app = g_ptr_array_index(pool->appliances, i);

        if (app->launched && !g_atomic_int_get(&app->dead))
            stats->running++;
    }
    g_mutex_unlock(&pool->lock);
    g_mutex_lock(&pool->cache_lock);
    stats->data_cached = pool->data_bytes;
    stats->cached = pool->cache_bytes;
    stats->cache_peak = pool->cache_peak;
    stats->cache_cap = pool->cache_cap;
    g_mutex_unlock(&pool->cache_lock);
}
