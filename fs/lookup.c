/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Names and attributes: lookup, getattr, and forget, which lets go of the ids lookups counted. */
#include "ops-priv.h"
#include "snapfs/error.h"

#include <errno.h>

/*
 * Resolves a name in a directory: ENOENT where it names nothing (inside frozen content the kernel keeps
 * that answer too), EIO in the folder of a host that is down, libvirt's errnos, view errnos, node errnos.
 */
void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct snapfs_node *dir = fs_node(req, parent);
    struct snapfs_node *child = NULL;
    struct stat st;

    if (!dir)
        return;
    if (tree_lookup(fs_ctx(req)->tree, dir, name, &child, &st) < 0) {
        if (error_errno() == ENOENT && tree_node_cache(dir) == SNAPFS_CACHE_FOREVER) {
            struct fuse_entry_param negative = { .entry_timeout = FS_FOREVER };

            fuse_reply_entry(req, &negative);
        } else {
            fs_reply_error(req, "lookup", dir);
        }
        tree_node_free(dir);
        return;
    }
    fs_entry(req, parent, name, child, &st);
    tree_node_free(child);
    tree_node_free(dir);
}

/* The kernel let go of @ino @nlookup times: at the last, what snapfs kept for it goes too (ids are never reused). */
static void fs_forget_one(struct fs_context *ctx, fuse_ino_t ino, uint64_t nlookup)
{
    if (fs_inodes_forget(ctx->inodes, ino, nlookup))
        fs_listing_forget(ctx, ino);
}

/* The kernel forgot one id (fs_forget_one()); FORGET takes no answer, so no errno. */
void fs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    fs_forget_one(fs_ctx(req), ino, nlookup);
    fuse_reply_none(req);
}

/* The kernel forgot a batch of ids, each as fs_forget(); no answer, no errno. */
void fs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    for (size_t i = 0; i < count; i++)
        fs_forget_one(fs_ctx(req), forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
}

/*
 * Attributes: guest files as the guest has them; snapfs's own folders owned by the mounting user.  ENOENT
 * for a snapshot or layer gone, libvirt's errnos, view errnos, node errnos.
 */
void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct snapfs_node *node = fs_node(req, ino);
    struct stat st;

    if (!node)
        return;
    if (tree_getattr(fs_ctx(req)->tree, node, &st) < 0)
        fs_reply_error(req, "getattr", node);
    else if (ino == FUSE_ROOT_ID && fs_ctx(req)->admission)
        /*
         * Every path into the mount is checked against the root's attributes: kept by the kernel, they
         * would let one who may not enter walk names it has cached (default_permissions checks modes
         * alone).  Never kept, each walk asks snapfs, which answers EACCES to them.
         */
        fuse_reply_attr(req, &st, 0.0);
    else
        fuse_reply_attr(req, &st, fs_timeout(node));
    tree_node_free(node);
}
