/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A view's life cycle: made once per snapshot or layer, shared, freed with its caches; its error text. */
#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/log.h"

#include <string.h>

static void mount_free(struct guest_mount *m)
{
    g_free(m->mountpoint);
    g_free(m->device);
    g_free(m);
}

static const char *view_keep_string(struct guest_view *view, const char *s)
{
    char *copy = g_strdup(s);

    if (copy)
        g_ptr_array_add(view->strings, copy);
    return copy;
}

struct guest_view *guest_pool_view(struct guest_pool *pool, const struct guest_view_spec *spec)
{
    struct guest_view *view;

    g_mutex_lock(&pool->lock);
    view = g_hash_table_lookup(pool->views, spec->id);
    if (view) {
        g_atomic_int_inc(&view->refs);
        g_mutex_unlock(&pool->lock);
        return view;
    }
    view = g_new0(struct guest_view, 1);
    view->refs = 2;   /* the pool's and the caller's */
    view->pool = pool;
    view->id = g_strdup(spec->id);
    view->label = g_strdup(spec->label ? spec->label : spec->id);
    view->group = g_strdup(spec->group ? spec->group : spec->id);
    view->live = spec->live || spec->writable;
    view->writable = spec->writable;
    view->strings = g_ptr_array_new_with_free_func(g_free);
    view->n_drives = spec->n_drives;
    view->drives = g_new0(struct guest_drive, spec->n_drives ? spec->n_drives : 1);
    for (size_t i = 0; i < spec->n_drives; i++) {
        view->drives[i].file = view_keep_string(view, spec->drives[i].file);
        view->drives[i].format = view_keep_string(view, spec->drives[i].format);
        view->drives[i].internal_snapshot = view_keep_string(view, spec->drives[i].internal_snapshot);
        view->drives[i].target = view_keep_string(view, spec->drives[i].target);
    }
    g_mutex_init(&view->setup_lock);
    g_mutex_init(&view->fetch_lock);
    g_mutex_init(&view->lock);
    view->mounts = g_ptr_array_new_with_free_func((GDestroyNotify)mount_free);
    guest_cache_view_init(view);
    g_hash_table_insert(pool->views, view->id, view);
    g_mutex_unlock(&pool->lock);
    return view;
}

bool guest_pool_has_group(struct guest_pool *pool, const char *group)
{
    GHashTableIter iter;
    gpointer value;
    bool found = false;

    g_mutex_lock(&pool->lock);
    g_hash_table_iter_init(&iter, pool->views);
    while (!found && g_hash_table_iter_next(&iter, NULL, &value))
        found = strcmp(((struct guest_view *)value)->group, group) == 0;
    g_mutex_unlock(&pool->lock);
    return found;
}

void guest_view_free(struct guest_view *view)
{
    if (view->agent) {
        guest_agent_view_free(view);
        return;
    }
    guest_appliance_unref(view->app);
    g_free(view->prefix);
    g_ptr_array_unref(view->mounts);
    guest_cache_view_clear(view);
    g_free(view->error);
    g_free(view->drives);
    g_ptr_array_unref(view->strings);
    g_free(view->id);
    g_free(view->label);
    g_free(view->group);
    g_mutex_clear(&view->setup_lock);
    g_mutex_clear(&view->fetch_lock);
    g_mutex_clear(&view->lock);
    g_free(view);
}

struct guest_view *guest_view_ref(struct guest_view *view)
{
    g_atomic_int_inc(&view->refs);
    return view;
}

void guest_view_unref(struct guest_view *view)
{
    if (view && g_atomic_int_dec_and_test(&view->refs))
        guest_view_free(view);
}

void guest_view_set_error(struct guest_view *view, const char *message)
{
    g_mutex_lock(&view->lock);
    g_free(view->error);
    view->error = g_strdup(message);
    g_mutex_unlock(&view->lock);
}

char *guest_view_error(struct guest_view *view)
{
    char *error;

    g_mutex_lock(&view->lock);
    error = g_strdup(view->error);
    g_mutex_unlock(&view->lock);
    return error;
}

pid_t guest_view_qemu_pid(struct guest_view *view)
{
    pid_t pid = 0;

    g_mutex_lock(&view->setup_lock);
    if (view->app && !g_atomic_int_get(&view->app->dead))
        pid = view->app->qemu_pid;
    g_mutex_unlock(&view->setup_lock);
    return pid;
}
