/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Open files and folders of the tree, and the changes they hold off: rmdir and revert ask here before they touch an image. */
#include "tree-priv.h"
#include "snapfs/error.h"

#include <errno.h>

void tree_set_stale_fn(struct snapfs_tree *tree, void (*fn)(guint64 cookie, void *opaque), void *opaque)
{
    tree->stale_fn = fn;
    tree->stale_opaque = opaque;
}

struct snapfs_handle *tree_handle_new(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_view *tv,
                                      guint64 cookie)
{
    struct snapfs_handle *handle = g_new0(struct snapfs_handle, 1);

    handle->tv = tv ? tree_view_ref(tv) : NULL;
    handle->node = tree_node_copy(node);
    handle->cookie = cookie;
    g_mutex_lock(&tree->lock);
    g_hash_table_add(tree->handles, handle);
    g_mutex_unlock(&tree->lock);
    return handle;
}

struct snapfs_handle *tree_open(struct snapfs_tree *tree, const struct snapfs_node *node, guint64 cookie)
{
    g_autoptr(tree_view) tv = NULL;

    if (node->kind == SNAPFS_NODE_GUEST || (tree_is_content(node) && host_is_local(tree_host(tree, node)))) {
        tv = tree_view_entry(tree, node);
        if (!tv)
            return NULL;
    }
    return tree_handle_new(tree, node, tv, cookie);
}

/* Files still open when the session ended (SIGTERM, a lazy unmount): no release will come for them. */
void tree_release_all(struct snapfs_tree *tree)
{
    g_autofree gpointer *open = (gpointer *)g_hash_table_get_keys_as_array(tree->handles, NULL);

    for (gpointer *h = open; *h; h++)
        tree_release(tree, *h);
}

void tree_release(struct snapfs_tree *tree, struct snapfs_handle *handle)
{
    if (!handle)
        return;
    g_mutex_lock(&tree->lock);
    g_hash_table_remove(tree->handles, handle);
    g_mutex_unlock(&tree->lock);
    if (handle->writing)
        tree_restore_release(tree, handle);
    tree_view_unref(handle->tv);
    tree_node_free(handle->node);
    g_free(handle);
}

int tree_handle_check(struct snapfs_tree *tree, struct snapfs_handle *handle)
{
    if (!handle->tv || tree_view_current(tree, handle->tv))
        return 0;
    error_set(EIO, "the images of %s changed since '%s' was opened (merged, moved or rewritten): it "
                     "cannot be read any more; open it again", tree_view_label(handle->tv),
                     handle->node->path ? handle->node->path : "/");
    return -1;
}

ssize_t tree_handle_read(struct snapfs_tree *tree, struct snapfs_handle *handle, char *buf, size_t size,
                                off_t offset)
{
    ssize_t n;

    if (!handle->tv)
        return tree_read(tree, handle->node, buf, size, offset);
    if (tree_handle_check(tree, handle) < 0)
        return -1;
    n = guest_view_read(tree_view_guest(handle->tv), handle->node->path, buf, size, offset);
    /* Checked again: bytes read while an image changed are not the view's either. */
    if (n >= 0 && tree_handle_check(tree, handle) < 0)
        return -1;
    return n;
}

/* How many handles are open on each view that reads any of @files: view label -> guint *.  Tree lock held. */
static GHashTable *handles_open_in(struct snapfs_tree *tree, const char *const *files)
{
    GHashTable *open = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_free);
    GHashTableIter iter;
    gpointer key;

    g_hash_table_iter_init(&iter, tree->handles);
    while (g_hash_table_iter_next(&iter, &key, NULL)) {
        struct snapfs_handle *handle = key;
        guint *count;

        if (!handle->tv || !tree_view_reads(handle->tv, files))
            continue;
        count = g_hash_table_lookup(open, tree_view_label(handle->tv));
        if (!count)
            g_hash_table_insert(open, (gpointer)tree_view_label(handle->tv), (count = g_new0(guint, 1)));
        (*count)++;
    }
    return open;
}

/* A close(2) right before the rmdir: the kernel sends its release without waiting for it. */
#define TREE_RELEASE_WAIT_MS 1000

/*
 * handles_open_in(), after waiting up to TREE_RELEASE_WAIT_MS for them to be closed (tree
 * lock held, let go while waiting).
 */
static GHashTable *handles_wait_closed(struct snapfs_tree *tree, const char *const *files)
{
    GHashTable *open;

    for (int waited = 0; ; waited += 50) {
        open = handles_open_in(tree, files);
        if (g_hash_table_size(open) == 0 || waited >= TREE_RELEASE_WAIT_MS)
            return open;
        g_hash_table_unref(open);
        g_mutex_unlock(&tree->lock);
        g_usleep(50 * G_TIME_SPAN_MILLISECOND);
        g_mutex_lock(&tree->lock);
    }
}

/* "2 open in snapshot 's1' of domain 'h/web01', 1 open in ..." */
static char *handles_describe(GHashTable *open)
{
    GString *list = g_string_new(NULL);
    GHashTableIter iter;
    gpointer key, value;

    g_hash_table_iter_init(&iter, open);
    while (g_hash_table_iter_next(&iter, &key, &value))
        g_string_append_printf(list, "%s%u open in %s", list->len ? ", " : "", *(guint *)value, (const char *)key);
    return g_string_free(list, FALSE);
}

/*
 * The engine's and revert's last word before they change @files: EBUSY,
 * naming the views and how many handles, while files or directories are open
 * in views that read any of them.  A view counts when its chain holds one of
 * them, whether or not its bytes would read otherwise afterwards (a merge
 * rewrites the files, so reads through the handle would fail): for rmdir of
 * an external snapshot that is the snapshot itself, the layer it froze and
 * every layer above (the live disk), and later snapshots that froze an image
 * above; never the layers below what is merged into, nor the snapshots that
 * froze them (the engine refuses to change an image something else is built
 * on), which stay open and readable through the merge.  For a revert, the
 * live layers and internal snapshots held in the live images.  Otherwise
 * views of @files are dropped and appliances closed (their qemu holds the
 * images open), and none is made again until the operation is over.
 */
int tree_before_change(const char *label, const char *what, const char *const *files, void *opaque)
{
    struct snapfs_tree *tree = opaque;
    g_autoptr(GHashTable) open = NULL;

    if (tree_writer_end(tree, label, what) < 0)
        return -1;
    g_mutex_lock(&tree->lock);
    open = handles_wait_closed(tree, files);
    if (g_hash_table_size(open) > 0) {
        g_autofree char *list = handles_describe(open);

        g_mutex_unlock(&tree->lock);
        error_set(EBUSY, "%s: files or directories are open in views it would change (%s); close them "
                         "and try again", what, list);
        return -1;
    }
    for (guint i = 0; files[i]; i++) {
        g_hash_table_remove(tree->images, files[i]);
        g_hash_table_replace(tree->changing, g_strdup(files[i]), g_thread_self());
    }
    g_mutex_unlock(&tree->lock);
    tree_forget_views(tree);
    for (guint i = 0; files[i]; i++)
        guest_pool_forget_file(tree->guests, files[i]);
    /* qemu holds read locks on every image of the domain's appliances, not only these. */
    guest_pool_release_group(tree->guests, label);
    return 0;
}

/* The operation of this thread is over: views of what it changed may be made again. */
void tree_changes_done(struct snapfs_tree *tree)
{
    GHashTableIter iter;
    gpointer value;

    g_mutex_lock(&tree->lock);
    g_hash_table_iter_init(&iter, tree->changing);
    while (g_hash_table_iter_next(&iter, NULL, &value)) {
        if (value == g_thread_self())
            g_hash_table_iter_remove(&iter);
    }
    g_mutex_unlock(&tree->lock);
}
