/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The FUSE operations: each finds its node, asks the tree, and answers the kernel with attributes, data or -errno. */
#include "ops-priv.h"
#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#define FS_LIVE 1.0
/*
 * Names libvirt gives (hosts, domains, snapshots) and snapfs's fixed folders, with their
 * attributes: the kernel may keep them this long, so that walking a path through them (every
 * lstat of `ls -lR DOMAIN/SNAPSHOT`) does not ask the daemon again each time.  With the tree's
 * own 0.4 s cache, a change made with virsh still shows within a second; what is done through
 * the mount shows at once.
 */
#define FS_NAME 0.25

double fs_timeout(const struct snapfs_node *node)
{
    switch (snapfs_node_cache(node)) {
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
    int err = snapfs_error_errno();

    if (err != ENOENT && err != ENODATA && err != ERANGE && snapfs_log_debug_enabled()) {
        g_autofree char *message = g_strdup(snapfs_error_message());
        g_autofree char *where = snapfs_node_describe(fs_ctx(req)->tree, node);

        snapfs_debug("%s of %s: %s", op, where, message);
    }
    fuse_reply_err(req, err);
}

/* Session start: readdirplus, cached symlinks, atomic O_TRUNC, and POSIX ACLs where the kernel checks permissions. */
static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
    if (conn->capable & FUSE_CAP_READDIRPLUS)
        conn->want |= FUSE_CAP_READDIRPLUS;
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
        conn->want |= FUSE_CAP_CACHE_SYMLINKS;
    /* An O_TRUNC open of revert is not a request to change anything. */
    if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
        conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
    /*
     * The guest's ACLs are the kernel's to cache (for as long as the attributes) and to
     * enforce, as on the guest: `ls -l` asks for each file's system.posix_acl_access, which
     * otherwise costs a round trip to snapfs every time.  The kernel then checks permissions
     * itself (default_permissions): only where it does anyway (allow_other) or where that
     * changes nothing (root mounted: root reads everything either way).
     */
    if ((conn->capable & FUSE_CAP_POSIX_ACL) && ((struct fs_context *)userdata)->kernel_permissions)
        conn->want |= FUSE_CAP_POSIX_ACL;
}

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

/*
 * Nothing's attributes can be changed: EROFS in snapshots and layers, EPERM elsewhere (revert too if its
 * attributes cannot be read); truncating revert to 0 changes nothing and succeeds.  Node errnos.
 */
static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
    struct snapfs_node *node = fs_node(req, ino);
    struct stat st;

    if (!node)
        return;
    if (snapfs_tree_is_control(node) && to_set == FUSE_SET_ATTR_SIZE && attr->st_size == 0 &&
        snapfs_tree_getattr(fs_ctx(req)->tree, node, &st) == 0) {
        fuse_reply_attr(req, &st, 0.0);
    } else {
        snapfs_tree_refuse_change(node, "change attributes");
        fs_reply_error(req, "setattr", node);
    }
    snapfs_node_free(node);
}

/* ---- changes -------------------------------------------------------------- */

/*
 * mkdir DOMAIN/NAME takes a snapshot: EACCES for others than root and the mounting user, EEXIST a name
 * taken or reserved (or an overlay file in the way), EINVAL an unusable name, ENAMETOOLONG an overlay
 * name too long, EBUSY another operation or a block job, EROFS with -o ro or inside content, EPERM
 * elsewhere, ENOTSUP (a disk without a local image or a recorded format, or libvirt cannot), libvirt's
 * other errnos (EIO, ...), node errnos.
 */
static void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    struct fs_context *ctx = fs_ctx(req);
    struct snapfs_node *dir = fs_node(req, parent);
    struct snapfs_node *child = NULL;
    struct stat st;

    if (!dir)
        return;
    if (snapfs_tree_holds_snapshots(dir) && !fs_may_administer(req))
        fuse_reply_err(req, EACCES);
    else if (snapfs_tree_mkdir(ctx->tree, dir, name) < 0)
        fs_reply_error(req, "mkdir", dir);
    else if (snapfs_tree_lookup(ctx->tree, dir, name, &child, &st) < 0)
        fs_reply_error(req, "mkdir", dir);
    else
        fs_entry(req, parent, name, child, &st);
    snapfs_node_free(child);
    snapfs_node_free(dir);
}

/*
 * rmdir DOMAIN/NAME deletes a snapshot: EACCES for others than root and the mounting user, ENOENT, EBUSY
 * (another operation, a block job, files open in views it would change, an image someone else needs),
 * ENOTSUP where libvirt cannot merge safely, EIO where who needs an image cannot be read, EPERM for
 * `layers` or outside a domain, EROFS with -o ro or inside content, node errnos.
 */
static void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct snapfs_node *dir = fs_node(req, parent);

    if (!dir)
        return;
    if (snapfs_tree_holds_snapshots(dir) && !fs_may_administer(req))
        fuse_reply_err(req, EACCES);
    else if (snapfs_tree_rmdir(fs_ctx(req)->tree, dir, name) < 0)
        fs_reply_error(req, "rmdir", dir);
    else
        fuse_reply_err(req, 0);
    snapfs_node_free(dir);
}

/* A change no node takes (snapfs_tree_refuse_change()): EROFS in snapshots and layers, EPERM elsewhere, node errnos. */
static void fs_refuse(fuse_req_t req, fuse_ino_t ino, const char *what)
{
    struct snapfs_node *node = fs_node(req, ino);

    if (!node)
        return;
    snapfs_tree_refuse_change(node, what);
    fs_reply_error(req, what, node);
    snapfs_node_free(node);
}

/* mknod: refused (fs_refuse()): EROFS, EPERM, node errnos. */
static void fs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    fs_refuse(req, parent, "mknod");
}

/* Creating a file: refused (fs_refuse()): EROFS, EPERM, node errnos. */
static void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
    fs_refuse(req, parent, "create a file");
}

/* unlink: refused (fs_refuse()), revert included: EROFS, EPERM, node errnos. */
static void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fs_refuse(req, parent, "unlink");
}

/* symlink: refused (fs_refuse()): EROFS, EPERM, node errnos. */
static void fs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    fs_refuse(req, parent, "make a symlink");
}

/* Hard links: refused in the new parent (fs_refuse()): EROFS, EPERM, node errnos. */
static void fs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char *name)
{
    fs_refuse(req, parent, "make a hard link");
}

/*
 * Renaming snapshots is not supported (optional: src/README.md, "Operations"): ENOTSUP within a domain's
 * folder, EXDEV out of it (so mv copies), EROFS or EPERM elsewhere, node errnos.
 */
static void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    struct snapfs_node *dir = fs_node(req, parent);

    if (!dir)
        return;
    snapfs_tree_rename(dir, parent == newparent);
    fs_reply_error(req, "rename", dir);
    snapfs_node_free(dir);
}

/* ---- xattrs ----------------------------------------------------------------- */

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
static void fs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    struct snapfs_node *node = fs_node(req, ino);
    g_autofree char *buf = g_malloc(size ? size : 1);

    if (!node)
        return;
    fs_reply_xattr(req, buf, size, snapfs_tree_getxattr(fs_ctx(req)->tree, node, name, buf, size), "getxattr", node);
    snapfs_node_free(node);
}

/* The names fs_getxattr() answers for: ERANGE, ENOENT, libvirt's errnos, view errnos, node errnos. */
static void fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    struct snapfs_node *node = fs_node(req, ino);
    g_autofree char *buf = g_malloc(size ? size : 1);

    if (!node)
        return;
    fs_reply_xattr(req, buf, size, snapfs_tree_listxattr(fs_ctx(req)->tree, node, buf, size), "listxattr", node);
    snapfs_node_free(node);
}

/*
 * Only user.snapfs.description of a snapshot can be set: EACCES for others than root and the mounting
 * user, EROFS for any other name in content and with -o ro, EPERM elsewhere, EINVAL text that is not
 * UTF-8, EBUSY another operation on the domain, libvirt's errnos (ENOENT, EIO), node errnos.
 */
static void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags)
{
    struct snapfs_node *node = fs_node(req, ino);

    if (!node)
        return;
    if (snapfs_tree_is_describable(node) && !fs_may_administer(req))
        fuse_reply_err(req, EACCES);
    else if (snapfs_tree_setxattr(fs_ctx(req)->tree, node, name, value, size) < 0)
        fs_reply_error(req, "setxattr", node);
    else
        fuse_reply_err(req, 0);
    snapfs_node_free(node);
}

/* No xattr can be removed (fs_refuse()): EROFS in snapshots and layers, EPERM elsewhere, node errnos. */
static void fs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
    fs_refuse(req, ino, "remove an attribute");
}

/* Fixed numbers (4 KiB blocks, none counted, 255-byte names): EACCES to a caller not let in. */
static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
    struct statvfs st = { .f_bsize = 4096, .f_frsize = 4096, .f_namemax = 255 };

    if (!fs_refused(req))
        fuse_reply_statfs(req, &st);
}

const struct fuse_lowlevel_ops fs_operations = {
    .init = fs_init,
    .lookup = fs_lookup,
    .forget = fs_forget,
    .forget_multi = fs_forget_multi,
    .getattr = fs_getattr,
    .setattr = fs_setattr,
    .readlink = fs_readlink,
    .mknod = fs_mknod,
    .mkdir = fs_mkdir,
    .unlink = fs_unlink,
    .rmdir = fs_rmdir,
    .symlink = fs_symlink,
    .rename = fs_rename,
    .link = fs_link,
    .open = fs_open,
    .read = fs_read,
    .flush = fs_flush,
    .release = fs_release,
    .write = fs_write,
    .opendir = fs_opendir,
    .readdir = fs_readdir,
    .readdirplus = fs_readdirplus,
    .releasedir = fs_releasedir,
    .statfs = fs_statfs,
    .setxattr = fs_setxattr,
    .getxattr = fs_getxattr,
    .listxattr = fs_listxattr,
    .removexattr = fs_removexattr,
    .create = fs_create,
};
