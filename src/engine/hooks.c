/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The engine's two calls upward, set once at startup: the chain-changed and before-change hooks (src/README.md, "Who calls whom"). */
#include "engine-priv.h"
#include "snapfs/log.h"

/* notify_mutex is a leaf: the hooks, which take the tree's and the guest reader's locks, are called after it is let go
 * (src/README.md, "Locks and their order"). */
static GMutex notify_mutex;
static void (*notify_fn)(const char *file, void *opaque);  /* guarded by notify_mutex, as are the three below */
static void *notify_opaque;
static engine_before_change_fn before_fn;
static void *before_opaque;

void engine_set_chain_changed(void (*fn)(const char *file, void *opaque), void *opaque)
{
    g_mutex_lock(&notify_mutex);
    notify_fn = fn;
    notify_opaque = opaque;
    g_mutex_unlock(&notify_mutex);
}

void engine_notify_chain_changed(const char *label, const char *file)
{
    void (*fn)(const char *file, void *opaque);
    void *opaque;

    g_mutex_lock(&notify_mutex);
    fn = notify_fn;
    opaque = notify_opaque;
    g_mutex_unlock(&notify_mutex);
    log_debug("image '%s' of domain '%s' moved or merged", file, label);
    if (fn)
        fn(file, opaque);
}

void engine_set_before_change(engine_before_change_fn fn, void *opaque)
{
    g_mutex_lock(&notify_mutex);
    before_fn = fn;
    before_opaque = opaque;
    g_mutex_unlock(&notify_mutex);
}

int engine_before_change(const char *label, const char *what, const char *const *files)
{
    engine_before_change_fn fn;
    void *opaque;

    g_mutex_lock(&notify_mutex);
    fn = before_fn;
    opaque = before_opaque;
    g_mutex_unlock(&notify_mutex);
    return fn ? fn(label, what, files, opaque) : 0;
}
