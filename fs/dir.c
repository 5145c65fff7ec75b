/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Folders: opendir reads a listing once, readdir and readdirplus serve it, releasedir frees it; and the cache of libvirt's last names. */
#include "ops-priv.h"

#include <string.h>

/* One name of a listing and its attributes, as the tree gave them. */
struct fs_dirent {
    char *name;
    struct stat st;
};

/*
 * A directory's entries, read once at opendir so that offsets stay valid while it is read.  No lock:
 * filled before opendir answers, read-only until releasedir frees it (its place in open_dirs is
 * listings_lock's).
 */
struct fs_dir {
    struct snapfs_node *node;
    struct snapfs_handle *handle;   /* what it was opened on: a merge under it makes it fail */
    GArray *entries;   /* struct fs_dirent */
};

static void fs_dir_free(struct fs_context *ctx, struct fs_dir *dir)
{
    g_mutex_lock(&ctx->listings_lock);
    g_hash_table_remove(ctx->open_dirs, dir);
    g_mutex_unlock(&ctx->listings_lock);
    tree_release(ctx->tree, dir->handle);
    g_array_unref(dir->entries);
    tree_node_free(dir->node);
    g_free(dir);
}

static void fs_dirent_clear(gpointer data)
{
    g_free(((struct fs_dirent *)data)->name);
}

static int fs_dir_collect(void *opaque, const char *name, const struct stat *st)
{
    struct fs_dir *dir = opaque;
    struct fs_dirent entry = { g_strdup(name), *st };

    g_array_append_val(dir->entries, entry);
    return 0;
}

void fs_listing_forget(struct fs_context *ctx, fuse_ino_t ino)
{
    g_mutex_lock(&ctx->listings_lock);
    g_hash_table_remove(ctx->listings, GSIZE_TO_POINTER(ino));
    g_mutex_unlock(&ctx->listings_lock);
}

/*
 * The kernel keeps libvirt's names FS_NAME seconds: a name a fresh listing no longer shows
 * (a domain undefined, a snapshot deleted with virsh) must not stay reachable after it.  At
 * opendir the kernel holds no lock on the folder, so it can be told here, before the listing
 * is read.
 */
static void fs_forget_vanished(fuse_req_t req, fuse_ino_t ino, const struct fs_dir *dir)
{
    struct fs_context *ctx = fs_ctx(req);
    GHashTable *now = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autoptr(GPtrArray) vanished = g_ptr_array_new_with_free_func(g_free);
    GHashTable *before;

    for (guint i = 0; i < dir->entries->len; i++)
        g_hash_table_add(now, g_strdup(g_array_index(dir->entries, struct fs_dirent, i).name));
    g_mutex_lock(&ctx->listings_lock);
    before = g_hash_table_lookup(ctx->listings, GSIZE_TO_POINTER(ino));
    if (before) {
        GHashTableIter iter;
        gpointer name;

        g_hash_table_iter_init(&iter, before);
        while (g_hash_table_iter_next(&iter, &name, NULL)) {
            if (!g_hash_table_contains(now, name))
                g_ptr_array_add(vanished, g_strdup(name));
        }
    }
    g_hash_table_replace(ctx->listings, GSIZE_TO_POINTER(ino), now);
    g_mutex_unlock(&ctx->listings_lock);
    for (guint i = 0; i < vanished->len && ctx->session; i++) {
        const char *name = g_ptr_array_index(vanished, i);

        fuse_lowlevel_notify_inval_entry(ctx->session, ino, name, strlen(name));
    }
}

/*
 * Lists a directory once; inside a snapshot or layer the handle holds off rmdir and revert of what it
 * reads.  ENOENT (a snapshot or layer gone), EIO, libvirt's errnos, view errnos, node errnos.
 */
void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct fs_context *ctx = fs_ctx(req);   /* the request is gone once answered */
    struct snapfs_node *node = fs_node(req, ino);
    struct fs_dir *dir;

    if (!node)
        return;
    dir = g_new0(struct fs_dir, 1);
    dir->node = node;
    dir->entries = g_array_new(FALSE, TRUE, sizeof(struct fs_dirent));
    g_array_set_clear_func(dir->entries, fs_dirent_clear);
    g_mutex_lock(&ctx->listings_lock);
    g_hash_table_add(ctx->open_dirs, dir);
    g_mutex_unlock(&ctx->listings_lock);
    dir->handle = tree_open(ctx->tree, node, ino);
    if (!dir->handle || tree_readdir(ctx->tree, node, fs_dir_collect, dir) < 0) {
        fs_reply_error(req, "readdir", node);
        fs_dir_free(ctx, dir);
        return;
    }
    fi->fh = (uintptr_t)dir;
    if (tree_node_cache(node) == SNAPFS_CACHE_SHORT)
        fs_forget_vanished(req, ino, dir);
    if (tree_node_cache(node) == SNAPFS_CACHE_FOREVER) {
        fi->keep_cache = 1;
        fi->cache_readdir = 1;
    }
    if (!fs_reply_open(ctx, req, fi))
        fs_dir_free(ctx, dir);   /* the opener was interrupted: no releasedir comes */
}

/*
 * One entry of readdirplus: with its attributes and a lookup counted where the tree knows them
 * exactly (guest content, tree_listed_node()); else the kernel looks it up when it needs them.
 */
static size_t fs_add_direntry_plus(fuse_req_t req, fuse_ino_t ino, const struct fs_dir *dir,
                                   const struct fs_dirent *entry, char *buf, size_t size, off_t next)
{
    struct snapfs_node *child = tree_listed_node(dir->node, entry->name, &entry->st);
    struct fuse_entry_param param = { .attr = entry->st };

    if (child) {
        param.attr_timeout = param.entry_timeout = fs_timeout(child);
        param.ino = fs_inodes_get(fs_ctx(req)->inodes, ino, entry->name, child, S_ISDIR(entry->st.st_mode));
        tree_node_free(child);
    }
    return fuse_add_direntry_plus(req, buf, size, entry->name, &param, next);
}

/* readdir and readdirplus: entries from @offset (an index into the listing) while they fit in @size. */
static void fs_readdir_any(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                           struct fuse_file_info *fi, bool plus)
{
    struct fs_dir *dir = (struct fs_dir *)(uintptr_t)fi->fh;
    g_autofree char *buf = NULL;
    size_t used = 0;

    if (fs_refused(req))
        return;
    /* A listing of what the images no longer hold is not shown. */
    if (tree_handle_check(fs_ctx(req)->tree, dir->handle) < 0) {
        fs_reply_error(req, "readdir", dir->node);
        return;
    }
    buf = g_malloc(size);
    for (guint i = (guint)offset; i < dir->entries->len; i++) {
        struct fs_dirent *entry = &g_array_index(dir->entries, struct fs_dirent, i);
        size_t len;

        if (!plus)
            len = fuse_add_direntry(req, buf + used, size - used, entry->name, &entry->st, i + 1);
        else if (fuse_add_direntry_plus(req, NULL, 0, entry->name, NULL, 0) > size - used)
            break;   /* counts a lookup only for an entry that fits, or the kernel's count and ours part */
        else
            len = fs_add_direntry_plus(req, ino, dir, entry, buf + used, size - used, i + 1);
        if (len > size - used)
            break;
        used += len;
    }
    fuse_reply_buf(req, buf, used);
}

/*
 * Lists a directory from what opendir read: domains, snapshots, disks, layers, or the guest's own entries.
 * EIO once the images of the view it was opened on changed, EACCES to a caller not let in.
 */
void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, struct fuse_file_info *fi)
{
    fs_readdir_any(req, ino, size, offset, fi, false);
}

/* As fs_readdir(), with each guest entry's attributes where they are known: the same errnos. */
void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, struct fuse_file_info *fi)
{
    fs_readdir_any(req, ino, size, offset, fi, true);
}

void fs_free_open_dirs(struct fs_context *ctx)
{
    g_autofree gpointer *open = NULL;

    g_mutex_lock(&ctx->listings_lock);
    open = (gpointer *)g_hash_table_get_keys_as_array(ctx->open_dirs, NULL);
    g_mutex_unlock(&ctx->listings_lock);
    for (gpointer *dir = open; *dir; dir++)
        fs_dir_free(ctx, *dir);
}

/* Frees a listing and lets go of what its handle held off: always 0. */
void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    g_atomic_int_add(&fs_ctx(req)->open_handles, -1);
    fs_dir_free(fs_ctx(req), (struct fs_dir *)(uintptr_t)fi->fh);
    fuse_reply_err(req, 0);
}
