/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The FUSE operations table, session start and statfs, and the replies every handler shares (fs_reply_error() maps the errno). */
#include "ops-priv.h"
#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <sys/statvfs.h>

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
