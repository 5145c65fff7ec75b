/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A view's extended attributes: fetched a directory at a time, and the SELinux label question answered once. */
#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/xattr.h"
#include "snapfs/log.h"

#include <errno.h>
#include <string.h>

/* Every entry of @path's xattrs in one round trip (lxattrlist), once its attributes are known. */
static int view_xattr_dir(struct guest_view *view, const char *path)
{
    g_auto(GStrv) names = NULL;
    g_autofree char *apath = NULL;
    g_autoptr(guest_xattr_list) xl = NULL;
    struct guest_appliance *app;
    GPtrArray **xattrs;
    bool have_stats, have_xattrs;
    size_t n;

    if (guest_cache_dir_has(view, path, true))
        return 0;
    if (guest_view_stat_dir(view, path) < 0)
        return -1;
    names = guest_view_dir_names(view, path, &have_stats, &have_xattrs, NULL, NULL);
    if (!names)
        return -1;
    if (have_xattrs)
        return 0;
    n = g_strv_length(names);
    if (n > 0) {
        app = guest_view_enter(view);
        if (!app)
            return -1;
        guest_appliance_expect(view->pool, app, n);
        apath = guest_view_path(view, path);
        xl = guestfs_lxattrlist(app->g, apath, names);
        if (!xl && !guestfs_is_ready(app->g)) {
            guest_appliance_error(app, "list the attributes in", path);
            guest_view_leave(view, app);
            return -1;
        }
        guest_view_leave(view, app);
    }
    /* A batch that failed (a damaged filesystem) is not tried again: each file's xattrs are asked alone. */
    xattrs = xl ? guest_xattrs_split(xl, n) : NULL;
    g_mutex_lock(&view->pool->cache_lock);
    guest_cache_mark_dir(view, path, false, true);
    for (size_t i = 0; xattrs && i < n; i++) {
        g_autofree char *child = guest_child_path(path, names[i]);

        guest_cache_set_xattrs(g_hash_table_lookup(view->nodes, child), xattrs[i]);
    }
    g_mutex_unlock(&view->pool->cache_lock);
    for (size_t i = 0; xattrs && i < n; i++) {
        if (xattrs[i])
            g_ptr_array_unref(xattrs[i]);
    }
    g_free(xattrs);
    return 0;
}

#define SNAPFS_SELINUX_XATTR "security.selinux"

/* The guest's xattrs of @path, fetched alone when its directory's batch did not bring them. */
static GPtrArray *view_xattrs(struct guest_view *view, const char *path)
{
    struct guest_appliance *app;
    g_autoptr(guest_xattr_list) xl = NULL;
    g_autofree char *apath = NULL;
    GPtrArray *xattrs = NULL;

    if (guest_view_resolve(view, path, NULL, NULL, &xattrs) < 0)
        return NULL;
    if (xattrs)
        return xattrs;
    if (strcmp(path, "/") != 0) {
        /* The first file of a directory asked for its xattrs: `ls -l` will ask for every one of them. */
        g_autofree char *parent = g_path_get_dirname(path);

        if (view_xattr_dir(view, parent) < 0)
            return NULL;
        if (guest_view_resolve(view, path, NULL, NULL, &xattrs) < 0)
            return NULL;
        if (xattrs)
            return xattrs;
    }
    app = guest_view_enter(view);
    if (!app)
        return NULL;
    apath = guest_view_path(view, path);
    xl = guestfs_lgetxattrs(app->g, apath);
    if (!xl)
        guest_appliance_error(app, "list the attributes of", path);
    guest_view_leave(view, app);
    if (!xl)
        return NULL;
    xattrs = guest_xattrs_from_list(xl);
    g_mutex_lock(&view->pool->cache_lock);
    guest_cache_set_xattrs(g_hash_table_lookup(view->nodes, path), xattrs);
    g_mutex_unlock(&view->pool->cache_lock);
    return xattrs;
}

static bool xattrs_have(GPtrArray *xattrs, const char *name)
{
    for (guint i = 0; xattrs && i < xattrs->len; i++) {
        if (strcmp(((struct guest_xattr *)g_ptr_array_index(xattrs, i))->name, name) == 0)
            return true;
    }
    return false;
}

/*
 * Whether the view's filesystems carry SELinux labels: a labelled filesystem
 * labels every inode, its root first, so a look at the root of each of them
 * tells.  Not known (false) if that look fails.
 */
static bool view_unlabelled(struct guest_view *view)
{
    int labels = g_atomic_int_get(&view->labels);
    g_autoptr(GPtrArray) roots = g_ptr_array_new_with_free_func(g_free);

    if (labels != 0)
        return labels < 0;
    g_mutex_lock(&view->setup_lock);
    for (guint i = 0; i < view->mounts->len; i++)
        g_ptr_array_add(roots, g_strdup(((struct guest_mount *)g_ptr_array_index(view->mounts, i))->mountpoint));
    g_mutex_unlock(&view->setup_lock);
    labels = -1;
    for (guint i = 0; i < roots->len && labels < 0; i++) {
        g_autoptr(GPtrArray) xattrs = view_xattrs(view, g_ptr_array_index(roots, i));

        if (!xattrs)
            return false;
        if (xattrs_have(xattrs, SNAPFS_SELINUX_XATTR))
            labels = 1;
    }
    g_atomic_int_set(&view->labels, labels);
    return labels < 0;
}

ssize_t guest_view_getxattr(struct guest_view *view, const char *path, const char *name, char *buf, size_t size)
{
    if (view->agent)
        return guest_agent_getxattr(view, path, name, buf, size);
    g_autoptr(GPtrArray) xattrs = view_xattrs(view, path);

    if (!xattrs)
        return -1;
    for (guint i = 0; i < xattrs->len; i++) {
        struct guest_xattr *x = g_ptr_array_index(xattrs, i);

        if (strcmp(x->name, name) == 0) {
            gsize len;
            const void *value = g_bytes_get_data(x->value, &len);

            return xattr_copy_out(value, len, buf, size);
        }
    }
    /*
     * ls -l asks every file for its SELinux label, a round trip each that the kernel never
     * caches for FUSE.  Where the guest's filesystems carry no labels at all, say so as a
     * filesystem without them does (ENOTSUP): ls then stops asking for the rest of its run.
     * A label a file does have is always given.
     */
    if (strcmp(name, SNAPFS_SELINUX_XATTR) == 0 && view_unlabelled(view)) {
        error_set(ENOTSUP, "the guest's filesystems carry no SELinux labels");
        return -1;
    }
    error_set(ENODATA, "'%s' has no attribute '%s' in the guest", path, name);
    return -1;
}

ssize_t guest_view_listxattr(struct guest_view *view, const char *path, char *buf, size_t size)
{
    if (view->agent)
        return guest_agent_listxattr(view, path, buf, size);
    g_autoptr(GPtrArray) xattrs = view_xattrs(view, path);
    g_autoptr(GString) names = g_string_new(NULL);

    if (!xattrs)
        return -1;
    for (guint i = 0; i < xattrs->len; i++) {
        struct guest_xattr *x = g_ptr_array_index(xattrs, i);

        g_string_append_len(names, x->name, (gssize)strlen(x->name) + 1);
    }
    return xattr_copy_out(names->str, names->len, buf, size);
}

