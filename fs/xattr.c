/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Extended attributes: user.snapfs.* on snapfs's own folders, the guest's own inside; only a snapshot's description can be set. */
#include "ops-priv.h"

#include <errno.h>

/* A getxattr or listxattr answer: the size alone when asked with @size 0, else the bytes. */
static void fs_reply_xattr(fuse_req_t req, const char *buf, size_t size, ssize_t n, const char *op,
                           const struct snapfs_node *node)
{
    if (n < 0)
        fs_reply_error(req, op, node);
    else if (size == 0)
        fuse_reply_xattr(req, (size_t)n);
    else
        fuse_reply_buf(req, buf, (size_t)n);
}

/*
 * user.snapfs.* on snapfs's own folders (src/README.md, "Extended attributes"), the guest's own xattrs
 * inside: ENODATA, ERANGE, ENOTSUP (security.selinux where no guest filesystem is labelled), ENOENT,
 * libvirt's errnos, view errnos, node errnos.
 */
void fs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    struct snapfs_node *node = fs_node(req, ino);
    g_autofree char *buf = g_malloc(size ? size : 1);

    if (!node)
        return;
    fs_reply_xattr(req, buf, size, tree_getxattr(fs_ctx(req)->tree, node, name, buf, size), "getxattr", node);
    tree_node_free(node);
}

/* The names fs_getxattr() answers for: ERANGE, ENOENT, libvirt's errnos, view errnos, node errnos. */
void fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    struct snapfs_node *node = fs_node(req, ino);
    g_autofree char *buf = g_malloc(size ? size : 1);

    if (!node)
        return;
    fs_reply_xattr(req, buf, size, tree_listxattr(fs_ctx(req)->tree, node, buf, size), "listxattr", node);
    tree_node_free(node);
}

/*
 * Only user.snapfs.description of a snapshot can be set: EACCES for others than root and the mounting
 * user, EROFS for any other name in content and with -o ro, EPERM elsewhere, EINVAL text that is not
 * UTF-8, EBUSY another operation on the domain, libvirt's errnos (ENOENT, EIO), node errnos.
 */
void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                 size_t size, int flags)
{
    struct snapfs_node *node = fs_node(req, ino);

    if (!node)
        return;
    if (tree_node_in_live(node) && node->path)
        fs_live_xattr(req, node, name, value, size, false);
    else if (tree_is_describable(node) && !fs_may_administer(req))
        fuse_reply_err(req, EACCES);
    else if (tree_setxattr(fs_ctx(req)->tree, node, name, value, size) < 0)
        fs_reply_error(req, "setxattr", node);
    else
        fuse_reply_err(req, 0);
    tree_node_free(node);
}

/* Only a guest xattr of a file in live/ can be removed (fs/live.c); elsewhere fs_refuse(): EROFS, EPERM, node errnos. */
void fs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
    struct snapfs_node *node = fs_node(req, ino);

    if (!node)
        return;
    if (tree_node_in_live(node) && node->path) {
        fs_live_xattr(req, node, name, NULL, 0, true);
    } else {
        tree_refuse_change(node, "remove an attribute");
        fs_reply_error(req, "removexattr", node);
    }
    tree_node_free(node);
}
