/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Files: open, read and release of guest files and the revert file, and guest symlinks' targets. */
#include "ops-priv.h"

#include <errno.h>
#include <fcntl.h>

/*
 * Opens a guest file read-only (EROFS for writing; EIO where its view's images changed since it was
 * looked up) or the revert control file (EACCES to a writer other than root and the mounting user).  A
 * guest file's handle holds off rmdir and revert of what it reads.  EISDIR for snapfs's own folders,
 * ENOENT, libvirt's errnos, view errnos, node errnos.
 */
void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct fs_context *ctx = fs_ctx(req);   /* the request is gone once answered */
    struct snapfs_node *node = fs_node(req, ino);
    bool writing = (fi->flags & O_ACCMODE) != O_RDONLY;
    struct snapfs_handle *handle;

    if (!node)
        return;
    if (tree_is_control(node)) {
        if (writing && !fs_may_administer(req)) {
            fuse_reply_err(req, EACCES);
        } else {
            fs_control_open(ctx, req, fi);
        }
    } else if (writing && tree_node_in_live(node) && node->path) {
        fs_live_open_write(req, ino, node, fi);
    } else if (tree_check_open(node, writing) < 0 || !(handle = tree_open(ctx->tree, node, ino))) {
        fs_reply_error(req, "open", node);
    } else {
        fi->fh = (uintptr_t)handle;
        fi->keep_cache = tree_node_cache(node) == SNAPFS_CACHE_FOREVER;
        if (!fs_reply_open(ctx, req, fi))
            tree_release(ctx->tree, handle);   /* the opener was interrupted: no release comes */
    }
    tree_node_free(node);
}

/* Ends an open: a revert request still gathering is dropped, with a warning; always 0. */
void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct fs_control *control = fs_control_of(fs_ctx(req), fi->fh);

    g_atomic_int_add(&fs_ctx(req)->open_handles, -1);
    if (control)
        fs_control_release(fs_ctx(req), control);
    else
        tree_release(fs_ctx(req)->tree, (struct snapfs_handle *)(uintptr_t)fi->fh);
    fuse_reply_err(req, 0);
}

/*
 * Reads a guest file through the view it was opened on (EIO once its images changed), or revert's content
 * (the current snapshot's name).  EISDIR, EINVAL (not a regular file), libvirt's errnos, view errnos, node errnos.
 */
void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, struct fuse_file_info *fi)
{
    struct snapfs_handle *handle = (struct snapfs_handle *)(uintptr_t)fi->fh;
    struct snapfs_node *node = fs_node(req, ino);
    g_autofree char *buf = NULL;
    ssize_t n;

    if (!node)
        return;
    buf = g_malloc(size ? size : 1);
    if (!tree_is_control(node) && handle)
        n = tree_handle_read(fs_ctx(req)->tree, handle, buf, size, offset);
    else
        n = tree_read(fs_ctx(req)->tree, node, buf, size, offset);
    if (n < 0)
        fs_reply_error(req, "read", node);
    else
        fuse_reply_buf(req, buf, (size_t)n);
    tree_node_free(node);
}

/* A guest symlink's target as the guest has it, never followed: EINVAL for anything else, view errnos, node errnos. */
void fs_readlink(fuse_req_t req, fuse_ino_t ino)
{
    struct snapfs_node *node = fs_node(req, ino);
    g_autofree char *target = NULL;

    if (!node)
        return;
    if (tree_readlink(fs_ctx(req)->tree, node, &target) < 0)
        fs_reply_error(req, "readlink", node);
    else
        fuse_reply_readlink(req, target);
    tree_node_free(node);
}
