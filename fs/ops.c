/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The FUSE operations table, with session start and statfs; each handler is in the file of its group (fs/ops-priv.h). */
#include "ops-priv.h"

#include <sys/statvfs.h>

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
    .fsync = fs_fsync,
};
