/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Restoring into live/: the changes a shut-off domain's guest files take (src/tree/restore.c carries them out). */
#include "ops-priv.h"
#include "snapfs/error.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>

/*
 * Errnos of every change here: EACCES for others than root and the mounting user inside live/;
 * EROFS inside live/ where it is read-only (a running domain, -o ro, a disk neither qcow2 nor
 * raw) and in snapshots and layers; EPERM in snapfs's own folders; the guest's errno (EEXIST,
 * ENOTEMPTY, ENOENT, ENOSPC, ...); EIO where the writer's appliance failed or ended under an open
 * file; the errnos of the pre-restore snapshot (mkdir's); node errnos.
 */

/* Whether a change inside live/ (@node is there) may be asked by this caller: if not, EACCES is answered. */
static bool live_admitted(fuse_req_t req, const struct snapfs_node *node)
{
    if (!tree_node_in_live(node) || fs_may_administer(req))
        return true;
    fuse_reply_err(req, EACCES);
    return false;
}

/* @change on entry @name of @dir (or @dir itself): 0, or -1 with the reason.  The folder's listing is dropped. */
static int live_change(fuse_req_t req, fuse_ino_t dir_ino, const struct snapfs_node *dir, const char *name,
                       struct guest_change *change)
{
    int r = tree_change(fs_ctx(req)->tree, dir, name, change);

    fs_listing_forget(fs_ctx(req), dir_ino);
    return r;
}

/* @change making entry @name of folder @parent, answered with the new entry; node errnos for @parent. */
static void live_make(fuse_req_t req, fuse_ino_t parent, const char *name, struct guest_change *change)
{
    struct snapfs_node *dir = fs_node(req, parent);
    const char *op = guest_change_name(change->op);

    if (!dir)
        return;
    if (live_admitted(req, dir)) {
        if (live_change(req, parent, dir, name, change) < 0)
            fs_reply_error(req, op, dir);
        else
            fs_reply_made(req, parent, dir, name, op);
    }
    tree_node_free(dir);
}

/* @change removing entry @name of folder @parent, answered with its status. */
static void live_remove(fuse_req_t req, fuse_ino_t parent, const char *name, struct guest_change *change)
{
    struct snapfs_node *dir = fs_node(req, parent);

    if (!dir)
        return;
    if (live_admitted(req, dir)) {
        if (live_change(req, parent, dir, name, change) < 0)
            fs_reply_error(req, guest_change_name(change->op), dir);
        else
            fuse_reply_err(req, 0);
    }
    tree_node_free(dir);
}

void fs_live_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    live_make(req, parent, name, &(struct guest_change){ .op = GUEST_MKDIR, .mode = mode });
}

void fs_live_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    live_remove(req, parent, name, &(struct guest_change){ .op = GUEST_RMDIR });
}

/* mknod: a FIFO, socket or device node in live/ (errnos above). */
void fs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    live_make(req, parent, name, &(struct guest_change){ .op = GUEST_MKNOD, .mode = mode, .rdev = rdev });
}

/* unlink of a file in live/ (errnos above); revert and everything else outside live/ refuse it. */
void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    live_remove(req, parent, name, &(struct guest_change){ .op = GUEST_UNLINK });
}

/* A symlink in live/, its target stored as given (errnos above). */
void fs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    live_make(req, parent, name, &(struct guest_change){ .op = GUEST_SYMLINK, .other = link });
}

/* A hard link in live/ to a file of live/ (EXDEV from elsewhere; errnos above). */
void fs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char *name)
{
    struct snapfs_node *node = fs_node(req, ino);
    g_autofree char *other = node ? tree_in_live_path(node, NULL) : NULL;

    if (!node)
        return;
    live_make(req, parent, name, &(struct guest_change){ .op = GUEST_LINK, .other = other });
    tree_node_free(node);
}

/* Renaming within live/ (EXDEV to or from elsewhere, EINVAL for RENAME_EXCHANGE and the like; errnos above). */
void fs_live_rename(fuse_req_t req, fuse_ino_t parent, struct snapfs_node *dir, const char *name,
                    fuse_ino_t newparent, const char *newname, unsigned int flags)
{
    struct fs_context *ctx = fs_ctx(req);
    struct snapfs_node *newdir = fs_node(req, newparent);
    g_autofree char *from = tree_in_live_path(dir, name);
    g_autofree char *to = NULL;

    if (!newdir)
        return;
    to = tree_in_live_path(newdir, newname);
    if (!to || newdir->host != dir->host || strcmp(newdir->domain, dir->domain) != 0) {
        fuse_reply_err(req, EXDEV);
    } else if (flags) {
        fuse_reply_err(req, EINVAL);
    } else if (live_admitted(req, dir)) {
        if (live_change(req, parent, dir, name, &(struct guest_change){ .op = GUEST_RENAME, .other = to }) < 0) {
            fs_reply_error(req, "rename", dir);
        } else {
            fs_listing_forget(ctx, newparent);
            fs_inodes_renamed(ctx->inodes, dir, from, to);
            fuse_reply_err(req, 0);
        }
    }
    tree_node_free(newdir);
}

/* setattr's changes, one call each, in the order chown(1), chmod(1), truncate(1) and touch(1) would make them. */
static int live_setattr_changes(struct fs_context *ctx, const struct snapfs_node *node, const struct stat *attr,
                                int to_set)
{
    struct snapfs_tree *tree = ctx->tree;

    if ((to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) &&
        tree_change(tree, node, NULL, &(struct guest_change){
            .op = GUEST_CHOWN,
            .uid = to_set & FUSE_SET_ATTR_UID ? attr->st_uid : (uid_t)-1,
            .gid = to_set & FUSE_SET_ATTR_GID ? attr->st_gid : (gid_t)-1 }) < 0)
        return -1;
    if ((to_set & FUSE_SET_ATTR_MODE) &&
        tree_change(tree, node, NULL, &(struct guest_change){ .op = GUEST_CHMOD, .mode = attr->st_mode }) < 0)
        return -1;
    if ((to_set & FUSE_SET_ATTR_SIZE) &&
        tree_change(tree, node, NULL, &(struct guest_change){ .op = GUEST_TRUNCATE, .size = attr->st_size }) < 0)
        return -1;
    if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
        struct guest_change times = { .op = GUEST_UTIMENS };

        times.times[0] = to_set & FUSE_SET_ATTR_ATIME_NOW ? (struct timespec){ 0, UTIME_NOW }
                         : to_set & FUSE_SET_ATTR_ATIME   ? attr->st_atim
                                                          : (struct timespec){ 0, UTIME_OMIT };
        times.times[1] = to_set & FUSE_SET_ATTR_MTIME_NOW ? (struct timespec){ 0, UTIME_NOW }
                         : to_set & FUSE_SET_ATTR_MTIME   ? attr->st_mtim
                                                          : (struct timespec){ 0, UTIME_OMIT };
        if (tree_change(tree, node, NULL, &times) < 0)
            return -1;
    }
    return 0;
}

void fs_live_setattr(fuse_req_t req, struct snapfs_node *node, struct stat *attr, int to_set)
{
    struct fs_context *ctx = fs_ctx(req);
    struct stat st;

    if (!live_admitted(req, node))
        return;
    if (live_setattr_changes(ctx, node, attr, to_set) < 0 || tree_getattr(ctx->tree, node, &st) < 0)
        fs_reply_error(req, "setattr", node);
    else
        fuse_reply_attr(req, &st, fs_timeout(node));
}

/* The guest's own xattrs of a file in live/: snapfs's names (user.snapfs.*) are not the guest's to set (EPERM). */
void fs_live_xattr(fuse_req_t req, struct snapfs_node *node, const char *name, const char *value, size_t size,
                   bool remove)
{
    struct guest_change change = {
        .op = remove ? GUEST_REMOVEXATTR : GUEST_SETXATTR,
        .name = name,
        .value = value,
        .size = (off_t)size,
    };

    if (!live_admitted(req, node))
        return;
    if (strncmp(name, "user.snapfs.", 12) == 0)
        fuse_reply_err(req, EPERM);
    else if (tree_change(fs_ctx(req)->tree, node, NULL, &change) < 0)
        fs_reply_error(req, remove ? "removexattr" : "setxattr", node);
    else
        fuse_reply_err(req, 0);
}

/* A file of live/ opened for writing, answered: held until its release; O_TRUNC empties it. */
void fs_live_open_write(fuse_req_t req, fuse_ino_t ino, struct snapfs_node *node, struct fuse_file_info *fi)
{
    struct fs_context *ctx = fs_ctx(req);
    struct snapfs_handle *handle;

    if (!live_admitted(req, node))
        return;
    handle = tree_open_write(ctx->tree, node, ino);
    if (!handle || ((fi->flags & O_TRUNC) &&
                    tree_change(ctx->tree, node, NULL, &(struct guest_change){ .op = GUEST_TRUNCATE }) < 0)) {
        fs_reply_error(req, "open", node);
        tree_release(ctx->tree, handle);
        return;
    }
    fi->fh = (uintptr_t)handle;
    fi->keep_cache = 0;
    if (!fs_reply_open(ctx, req, fi))
        tree_release(ctx->tree, handle);
}

/* A new file in live/, open for writing (errnos above). */
void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
    struct fs_context *ctx = fs_ctx(req);
    struct snapfs_node *dir = fs_node(req, parent);
    struct snapfs_node *child = NULL;
    struct snapfs_handle *handle = NULL;
    struct fuse_entry_param entry = { 0 };

    if (!dir)
        return;
    if (!live_admitted(req, dir))
        goto done;
    if (live_change(req, parent, dir, name, &(struct guest_change){ .op = GUEST_CREATE, .mode = mode }) < 0 ||
        tree_lookup(ctx->tree, dir, name, &child, &entry.attr) < 0) {
        fs_reply_error(req, "create a file", dir);
        goto done;
    }
    entry.ino = fs_inodes_get(ctx->inodes, parent, name, child, false);
    entry.attr_timeout = entry.entry_timeout = fs_timeout(child);
    handle = tree_open_write(ctx->tree, child, entry.ino);
    if (!handle) {
        fs_inodes_forget(ctx->inodes, entry.ino, 1);
        fs_reply_error(req, "create a file", child);
        goto done;
    }
    fi->fh = (uintptr_t)handle;
    g_atomic_int_inc(&ctx->open_handles);
    if (fuse_reply_create(req, &entry, fi) == -ENOENT) {
        g_atomic_int_add(&ctx->open_handles, -1);
        fs_inodes_forget(ctx->inodes, entry.ino, 1);
        tree_release(ctx->tree, handle);
    }
done:
    tree_node_free(child);
    tree_node_free(dir);
}

/* fsync and fdatasync of a file of live/: what it wrote is on the host's disk when it returns; 0 for others. */
void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    struct fs_context *ctx = fs_ctx(req);

    if (fs_control_of(ctx, fi->fh) || tree_handle_flush(ctx->tree, (struct snapfs_handle *)(uintptr_t)fi->fh) == 0)
        fuse_reply_err(req, 0);
    else
        fuse_reply_err(req, error_errno());
}
