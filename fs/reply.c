/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The replies every handler shares: how long the kernel keeps what it is told, entries, opens, and the one errno mapping (fs_reply_error()). */
#include "ops-priv.h"
#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>

/* A live disk's files change under snapfs: the kernel may keep them a second. */
#define FS_LIVE 1.0
/*
 * Names libvirt gives (hosts, domains, snapshots) and snapfs's fixed folders, with their
 * attributes: the kernel may keep them this long, so that walking a path through them (every
 * lstat of `ls -lR DOMAIN/SNAPSHOT`) does not ask the daemon again each time.  With the tree's
 * own 0.4 s cache, a change made with virsh still shows within a second; what is done through
 * the mount shows at once.
 */
#define FS_NAME 0.25

/* How long the kernel may keep a node's entry and attributes, by what the tree says of its content. */
double fs_timeout(const struct snapfs_node *node)
{
    switch (tree_node_cache(node)) {
    case SNAPFS_CACHE_FOREVER:
        return FS_FOREVER;
    case SNAPFS_CACHE_LIVE:
        return FS_LIVE;
    case SNAPFS_CACHE_SHORT:
        /* What libvirt says must show within a second: snapfs caches it briefly itself. */
        return FS_NAME;
    default:
        /* Layer names change when a chain does; control files are asked each time. */
        return 0.0;
    }
}

/* The one place where a failure of src/ becomes an errno for the kernel. */
void fs_reply_error(fuse_req_t req, const char *op, const struct snapfs_node *node)
{
    int err = error_errno();

    if (err != ENOENT && err != ENODATA && err != ERANGE && log_debug_enabled()) {
        g_autofree char *message = g_strdup(error_message());
        g_autofree char *where = tree_node_describe(fs_ctx(req)->tree, node);

        log_debug("%s of %s: %s", op, where, message);
    }
    fuse_reply_err(req, err);
}

/* An entry with its id (a lookup counted) and attributes; an interrupted lookup's count is taken back. */
void fs_entry(fuse_req_t req, fuse_ino_t parent, const char *name,
              const struct snapfs_node *node, const struct stat *st)
{
    struct fuse_entry_param entry = { 0 };

    entry.ino = fs_inodes_get(fs_ctx(req)->inodes, parent, name, node, S_ISDIR(st->st_mode));
    entry.attr = *st;
    entry.attr_timeout = entry.entry_timeout = fs_timeout(node);
    if (fuse_reply_entry(req, &entry) == -ENOENT)
        fs_inodes_forget(fs_ctx(req)->inodes, entry.ino, 1);
}

void fs_reply_made(fuse_req_t req, fuse_ino_t parent, const struct snapfs_node *dir, const char *name, const char *op)
{
    struct snapfs_node *child = NULL;
    struct stat st;

    if (tree_lookup(fs_ctx(req)->tree, dir, name, &child, &st) < 0)
        fs_reply_error(req, op, dir);
    else
        fs_entry(req, parent, name, child, &st);
    tree_node_free(child);
}

/*
 * Answers an open and counts the handle the kernel then holds, until its release: the exit watcher
 * (fs/main.c) must know whether anyone still uses a mount that has gone from its namespace.  False
 * when the opener was interrupted (no release comes).
 */
bool fs_reply_open(struct fs_context *ctx, fuse_req_t req, struct fuse_file_info *fi)
{
    g_atomic_int_inc(&ctx->open_handles);   /* before the answer, which lets the release come */
    if (fuse_reply_open(req, fi) == -ENOENT) {
        g_atomic_int_add(&ctx->open_handles, -1);
        return false;
    }
    return true;
}
