/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The pool of appliances: which appliance serves a view, background starts, eviction, idle timer and watchdog. */
#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <malloc.h>
#include <string.h>
#include <unistd.h>

/*
 * Which appliance serves a view.  Every disk an appliance boots with costs its boot about half a second under TCG
 * (udev runs blkid on it, mdadm and LVM scan it, libguestfs makes an overlay for it: measured in the README).  So a
 * domain's first look starts an appliance with the disks of the view asked for and of the few views likeliest to be
 * asked next (the newest images first: the live top, the latest snapshots), at most GUEST_FIRST_DISKS.  A view asked
 * for later is added to that running appliance as one more disk through its qemu's monitor (hotplug.c), 0.1-0.3 s
 * under TCG, up to GUEST_MAX_SHARED_DISKS disks: a domain starts one appliance for all its views (more only past that
 * many disks, for LVM, for an internal snapshot, or after an appliance stopped).
 *
 * Where an appliance cannot take disks while it runs (its qemu has no monitor: a temporary directory mounted noexec,
 * or an adding failed), or the domain has views it lacks that cannot be added (an internal snapshot, an image neither
 * qcow2 nor raw), the older way stays: as soon as the first look's appliance is up, one more starts in the
 * background with every view of the domain; once that one is up, the first
 * one retires (its views move over on their next request; their caches are the views', so only their mounts are made
 * again).  Never more than two at a time, and the background one only where max_appliances leaves room.
 */
/* The most disks the appliance of a domain's first look takes: its boot stays that of one image's, about. */
#define GUEST_FIRST_DISKS 6
/* Beyond this many disks an appliance takes only the disks a view needs, not its neighbours'. */
#define GUEST_MAX_SHARED_DISKS 48

/*
 * NULL while @view may share its domain's appliance; once one of its disks is known to hold LVM,
 * the keys of its drives, which name the appliance of its own.  Pool lock held.
 */
static char *pool_own_view_key(struct guest_pool *pool, struct guest_view *view)
{
    g_autoptr(GString) key = g_string_new(NULL);
    bool lvm = false;

    for (size_t i = 0; i < view->n_drives; i++) {
        const struct guest_drive *drive = &view->drives[i];
        g_autofree char *disk = g_strconcat(view->group, "\n", drive->target, NULL);
        g_autofree char *one = guest_drive_key(drive, view->live && !drive->internal_snapshot);

        lvm |= g_hash_table_contains(pool->lvm_disks, disk);
        g_string_append_printf(key, "%s%s", i ? "\n" : "", one);
    }
    /* A writable view never shares: its images are opened read-write, and no other view may see them half-written. */
    if (view->writable)
        g_string_prepend(key, "writable\n");
    return lvm || view->writable ? g_string_free(g_steal_pointer(&key), FALSE) : NULL;
}

/*
 * Look from the host at @view's image of each of its domain's disks not looked at yet: a disk that holds LVM
 * then gets appliances of its own from the start, with no boot of the shared appliance to find that out.
 */
static void pool_look_for_lvm(struct guest_pool *pool, struct guest_view *view)
{
    for (size_t i = 0; i < view->n_drives; i++) {
        const struct guest_drive *drive = &view->drives[i];
        g_autofree char *disk = g_strconcat(view->group, "\n", drive->target, NULL);
        bool first;
        int lvm;

        /* qemu-io cannot open an internal snapshot: the appliance's blkid will tell. */
        if (drive->internal_snapshot)
            continue;
        g_mutex_lock(&pool->lock);
        first = g_hash_table_add(pool->lvm_looked_for, g_strdup(disk));
        g_mutex_unlock(&pool->lock);
        if (!first)
            continue;
        lvm = guest_image_holds_lvm(drive->file, drive->format);
        if (lvm < 0) {
            log_debug("disk '%s' of domain '%s': no look from the host: %s", drive->target,
                         view->group, error_message());
        } else if (lvm) {
            log_info("disk '%s' of domain '%s' holds LVM physical volumes: its views get appliances of their own",
                        drive->target, view->group);
            guest_pool_mark_lvm(pool, view->group, drive->target);
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

        /* A writable appliance holding open files is not evicted: they would fail with EIO. */
        if ((!a->writable || g_atomic_int_get(&a->holds) == 0) && g_mutex_trylock(&a->lock))
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

/*
 * Whether @view's images can be added to a running appliance (hotplug.c): qcow2 or raw, whose size snapfs reads as
 * qemu does; not an internal snapshot, which needs a qemu-nbd of its own.
 */
static bool view_pluggable(struct guest_view *view)
{
    for (size_t i = 0; i < view->n_drives; i++) {
        const struct guest_drive *drive = &view->drives[i];

        if (drive->internal_snapshot || !drive->format ||
            (strcmp(drive->format, "qcow2") != 0 && strcmp(drive->format, "raw") != 0))
            return false;
    }
    return true;
}

/* An appliance of @group that serves @view or can still take its disks, or NULL.  Pool lock held. */
static struct guest_appliance *pool_find_for(struct guest_pool *pool, struct guest_view *view, const char *own_key)
{
    for (guint i = 0; i < pool->appliances->len; i++) {
        struct guest_appliance *a = g_ptr_array_index(pool->appliances, i);

        if (g_atomic_int_get(&a->dead) || g_atomic_int_get(&a->retire) || strcmp(a->group, view->group) != 0 ||
            g_strcmp0(a->own_view_key, own_key) != 0)
            continue;
        if (guest_appliance_has_view(a, view) || !a->launching) {
            if (!a->launching)
                guest_appliance_add_view(a, view, false);
            return a;
        }
    }
    /* None has it: a running one of the domain that takes disks gets the view's added (hotplug.c). */
    for (guint i = 0; !own_key && !view->writable && view_pluggable(view) && i < pool->appliances->len; i++) {
        struct guest_appliance *a = g_ptr_array_index(pool->appliances, i);

        if (!g_atomic_int_get(&a->dead) && !g_atomic_int_get(&a->retire) && g_atomic_int_get(&a->takes_disks) &&
            !a->own_view_key && !a->writable && strcmp(a->group, view->group) == 0 &&
            a->disks->len + view->n_drives <= GUEST_MAX_SHARED_DISKS)
            return a;
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
        g_autofree char *own_key = NULL;
        GStatBuf st;

        if (one.view == except || strcmp(one.view->group, group) != 0 || one.view->n_drives == 0)
            continue;
        own_key = pool_own_view_key(pool, one.view);
        if (own_key)
            continue;
        if (g_stat(one.view->drives[0].file, &st) == 0)
            one.mtime = (gint64)st.st_mtim.tv_sec * G_USEC_PER_SEC + st.st_mtim.tv_nsec / 1000;
        g_array_append_val(views, one);
    }
    g_array_sort(views, by_newest);
    return views;
}

/*
 * A new appliance for @view: of its drives alone for LVM (@own_key, taken), else with the few views of its domain likeliest
 * to be asked for next riding along (see the policy above).  Pool lock held.
 */
static struct guest_appliance *pool_new_for(struct guest_pool *pool, struct guest_view *view, char *own_key)
{
    struct guest_appliance *app = guest_appliance_new(pool, view->group);

    app->own_view_key = own_key;
    app->writable = view->writable;
    app->cap = GUEST_FIRST_DISKS;
    guest_appliance_add_view(app, view, false);
    if (!app->own_view_key) {
        g_autoptr(GArray) others = pool_group_views(pool, app->group, view);

        for (guint i = 0; i < others->len && app->disks->len < app->cap; i++) {
            struct guest_view *other = g_array_index(others, struct view_age, i).view;

            /* A view of several disks rides along only whole. */
            if (app->disks->len + other->n_drives <= app->cap)
                guest_appliance_add_view(app, other, true);
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

        if (a == behind || a->background || a->own_view_key || !a->launched || g_atomic_int_get(&a->dead) ||
            g_atomic_int_get(&a->retire) || strcmp(a->group, behind->group) != 0 || !appliance_covered_by(a, behind))
            continue;
        log_info("appliance %u of domain '%s' retires: appliance %u serves its views and every other one",
                    a->serial, a->group, behind->serial);
        g_atomic_int_set(&a->retire, 1);
    }
    g_mutex_unlock(&pool->lock);
}

struct background_launch {
    struct guest_pool *pool;
    struct guest_appliance *app;   /* a reference */
};

static gpointer background_launch_thread(gpointer data)
{
    struct background_launch *job = data;
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
    pool->background_running--;
    g_cond_broadcast(&pool->background_cond);
    g_mutex_unlock(&pool->lock);
    return NULL;
}

void guest_pool_fill_in(struct guest_pool *pool, struct guest_appliance *app)
{
    g_autoptr(GArray) views = NULL;
    struct guest_appliance *behind = NULL;
    struct background_launch *job;
    guint alive = 0;
    bool missing = false;

    if (app->own_view_key || app->background || !app->launched)
        return;
    g_mutex_lock(&pool->lock);
    if (g_atomic_int_get(&pool->aborting))
        goto cleanup;
    for (guint i = 0; i < pool->appliances->len; i++) {
        struct guest_appliance *a = g_ptr_array_index(pool->appliances, i);

        if (g_atomic_int_get(&a->dead))
            continue;
        alive++;
        if (a->background && strcmp(a->group, app->group) == 0)
            goto cleanup;   /* one is there or on its way */
    }
    /* Only into room max_appliances leaves: a look nobody asked for evicts nothing. */
    if (pool->config.max_appliances && alive >= pool->config.max_appliances)
        goto cleanup;
    views = pool_group_views(pool, app->group, NULL);
    /* One that takes disks while it runs gets the views it lacks added when they are asked for, where they can be. */
    for (guint i = 0; i < views->len && !missing; i++) {
        struct guest_view *view = g_array_index(views, struct view_age, i).view;

        missing = !guest_appliance_has_view(app, view) &&
                  (!g_atomic_int_get(&app->takes_disks) || !view_pluggable(view));
    }
    if (!missing)
        goto cleanup;
    behind = guest_appliance_new(pool, app->group);
    behind->background = true;
    /* The views @app serves first, so that it can retire; then the others, newest first. */
    for (int pass = 0; pass < 2; pass++) {
        for (guint i = 0; i < views->len && behind->disks->len < behind->cap; i++) {
            struct guest_view *view = g_array_index(views, struct view_age, i).view;

            if (guest_appliance_has_view(app, view) == (pass == 0))
                guest_appliance_add_view(behind, view, true);
        }
    }
    g_ptr_array_add(pool->appliances, behind);
    job = g_new0(struct background_launch, 1);
    job->pool = pool;
    job->app = behind;
    g_atomic_int_inc(&behind->refs);   /* the thread's */
    pool->background_running++;
    log_info("domain '%s' has views appliance %u does not serve: appliance %u starts in the background with %u disks",
                app->group, app->serial, behind->serial, behind->disks->len);
    g_thread_unref(g_thread_new("snapfs-behind", background_launch_thread, job));

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
        g_autofree char *own_key = NULL;

        g_mutex_lock(&pool->lock);
        own_key = pool_own_view_key(pool, view);
        app = pool_find_for(pool, view, own_key);
        if (!app && pool_make_room(pool, evicted))
            app = pool_new_for(pool, view, g_steal_pointer(&own_key));
        if (app)
            break;
        g_mutex_unlock(&pool->lock);
        if (g_get_monotonic_time() > deadline || g_atomic_int_get(&pool->aborting)) {
            error_set(EAGAIN, "%s cannot be read now: all %u appliances (-o max_appliances) are busy",
                             view->group, pool->config.max_appliances);
            log_warn("domain '%s': %s", view->group, error_message());
            return NULL;
        }
        g_usleep(50 * 1000);
    }
    g_atomic_int_inc(&app->refs);
    g_mutex_unlock(&pool->lock);

    for (guint i = 0; i < evicted->len; i++) {
        struct guest_appliance *a = g_ptr_array_index(evicted, i);

        log_info("stopping appliance %u of domain '%s' to make room (max_appliances=%u)", a->serial, a->group,
                    pool->config.max_appliances);
        guest_appliance_close(a);
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

void guest_pool_abort(struct guest_pool *pool)
{
    g_atomic_int_set(&pool->aborting, 1);   /* launches under way see it within 0.2 s */
    g_mutex_lock(&pool->lock);
    for (guint i = 0; i < pool->appliances->len; i++) {
        struct guest_appliance *app = g_ptr_array_index(pool->appliances, i);

        g_atomic_int_set(&app->stop, 1);
        if (app->launched)
            guest_appliance_kill(app, g_strdup_printf("appliance %u of domain '%s' was stopped: snapfs is stopping",
                                                app->serial, app->group), false);
    }
    g_mutex_unlock(&pool->lock);
}

/*
 * Whether @app, @idle microseconds since its last call, is to close: after -o appliance_idle; a writable one
 * after GUEST_WRITER_IDLE_S once no file open for writing holds it (it locks the domain's images).  Pool lock held.
 */
static bool pool_idle(struct guest_pool *pool, struct guest_appliance *app, gint64 idle)
{
    if (app->writable)
        return g_atomic_int_get(&app->holds) == 0 && idle >= (gint64)GUEST_WRITER_IDLE_S * G_USEC_PER_SEC;
    return pool->config.idle_seconds && idle >= (gint64)pool->config.idle_seconds * G_USEC_PER_SEC;
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
                guest_appliance_kill(app, g_strdup_printf("appliance %u of domain '%s' did not answer within %u s "
                                                    "(-o call_timeout) and was killed", app->serial, app->group,
                                                    pool->config.limits.call_seconds), true);
                continue;
            }
            if (!g_atomic_int_get(&app->dead) && !g_atomic_int_get(&app->retire) && !pool_idle(pool, app, idle))
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
                log_info("appliance %u of domain '%s' idle: stopping it", app->serial, app->group);
            guest_appliance_close(app);
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
    if (!pool->config.limits.call_seconds)
        pool->config.limits.call_seconds = pool->config.limits.timeout_seconds;
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
    g_cond_init(&pool->background_cond);
    pool->views = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, (GDestroyNotify)guest_view_unref);
    pool->appliances = g_ptr_array_new();
    pool->lvm_disks = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    pool->lvm_looked_for = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    guest_cache_init(pool);
    /*
     * Each chunk is a buffer of up to 2 MiB that libguestfs allocates.  With glibc's sliding
     * threshold, the first one freed moves later ones into the heaps of the FUSE threads, which
     * keep the memory after the cache lets go of it: a fixed threshold returns it at once.
     */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    pool->timer = g_thread_new("snapfs-guests", pool_timer, pool);
    pool->spawns = g_async_queue_new();
    pool->spawner = g_thread_new("snapfs-spawner", guest_nbd_spawner, pool);
    return pool;
}

static gpointer appliance_close_thread(gpointer data)
{
    struct guest_appliance *app = data;

    g_mutex_lock(&app->lock);
    guest_appliance_close(app);
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
    while (pool->background_running)
        g_cond_wait(&pool->background_cond, &pool->lock);
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
    g_hash_table_unref(pool->lvm_looked_for);
    free(pool->hv);
    g_async_queue_push(pool->spawns, pool);
    g_thread_join(pool->spawner);
    g_async_queue_unref(pool->spawns);
    guest_cache_clear(pool);
    g_mutex_clear(&pool->lock);
    g_mutex_clear(&pool->timer_lock);
    g_cond_clear(&pool->timer_cond);
    g_cond_clear(&pool->background_cond);
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
        log_info("stopping appliance %u of domain '%s': its images change", app->serial, app->group);
        guest_appliance_close(app);
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

        for (size_t i = 0; i < view->n_drives; i++) {
            if (strcmp(view->drives[i].file, file) == 0) {
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
