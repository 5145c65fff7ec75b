/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Changes: mkdir takes a snapshot, rmdir deletes one; inside live/ they and rename and setattr are the guest's (fs/live.c). */
#include "ops-priv.h"

#include <errno.h>

/*
 * mkdir DOMAIN/NAME takes a snapshot: EACCES for others than root and the mounting user, EEXIST a name
 * taken or reserved (or an overlay file in the way), EINVAL an unusable name, ENAMETOOLONG an overlay
 * name too long, EBUSY another operation or a block job, EROFS with -o ro or inside content, EPERM
 * elsewhere, ENOTSUP (a disk without a local image or a recorded format, or libvirt cannot), libvirt's
 * other errnos (EIO, ...), node errnos.
 */
void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    struct snapfs_node *dir = fs_node(req, parent);

    if (!dir)
        return;
    if (tree_node_in_live(dir))
        fs_live_mkdir(req, parent, name, mode);
    else if (tree_holds_snapshots(dir) && !fs_may_administer(req))
        fuse_reply_err(req, EACCES);
    else if (tree_mkdir(fs_ctx(req)->tree, dir, name) < 0)
        fs_reply_error(req, "mkdir", dir);
    else
        fs_reply_made(req, parent, dir, name, "mkdir");
    tree_node_free(dir);
}

/*
 * rmdir DOMAIN/NAME deletes a snapshot: EACCES for others than root and the mounting user, ENOENT, EBUSY
 * (another operation, a block job, files open in views it would change, an image someone else needs),
 * ENOTSUP where libvirt cannot merge safely, EIO where who needs an image cannot be read, EPERM for
 * `layers`, `live` or outside a domain, EROFS with -o ro or inside content, node errnos.
 */
void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct snapfs_node *dir = fs_node(req, parent);

    if (!dir)
        return;
    if (tree_node_in_live(dir))
        fs_live_rmdir(req, parent, name);
    else if (tree_holds_snapshots(dir) && !fs_may_administer(req))
        fuse_reply_err(req, EACCES);
    else if (tree_rmdir(fs_ctx(req)->tree, dir, name) < 0)
        fs_reply_error(req, "rmdir", dir);
    else
        fuse_reply_err(req, 0);
    tree_node_free(dir);
}

/*
 * Renaming snapshots is not supported (optional: src/README.md, "Operations"): ENOTSUP within a domain's
 * folder, EXDEV out of it (so mv copies), EROFS or EPERM elsewhere, node errnos.
 */
void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
               const char *newname, unsigned int flags)
{
    struct snapfs_node *dir = fs_node(req, parent);

    if (!dir)
        return;
    if (tree_node_in_live(dir)) {
        fs_live_rename(req, parent, dir, name, newparent, newname, flags);
    } else {
        tree_rename(dir, parent == newparent);
        fs_reply_error(req, "rename", dir);
    }
    tree_node_free(dir);
}

/*
 * Nothing's attributes can be changed: EROFS in snapshots and layers, EPERM elsewhere (revert too if its
 * attributes cannot be read); truncating revert to 0 changes nothing and succeeds.  Node errnos.
 */
void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
    struct snapfs_node *node = fs_node(req, ino);
    struct stat st;

    if (!node)
        return;
    if (tree_node_in_live(node) && node->path) {
        fs_live_setattr(req, node, attr, to_set);
    } else if (tree_is_control(node) && to_set == FUSE_SET_ATTR_SIZE && attr->st_size == 0 &&
        tree_getattr(fs_ctx(req)->tree, node, &st) == 0) {
        fuse_reply_attr(req, &st, 0.0);
    } else {
        tree_refuse_change(node, "change attributes");
        fs_reply_error(req, "setattr", node);
    }
    tree_node_free(node);
}
