/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Who may enter the mount (allow_users=, allow_groups=) and who may change things: the checks every handler starts with. */
#include "ops-priv.h"

#include <errno.h>

/*
 * With allow_other, who may enter is snapfs's to check (the kernel lets in everyone): root, the
 * mounting user, the users of allow_users= and the members of allow_groups= (the caller's gid or
 * one of its supplementary groups, as /proc says them).  Where the groups cannot be read (the
 * process is gone, or in another pid namespace), the caller is not let in.
 */
static bool fs_may_enter(fuse_req_t req)
{
    struct fs_context *ctx = fs_ctx(req);
    const struct fuse_ctx *caller = fuse_req_ctx(req);
    gid_t some[64];
    g_autofree gid_t *more = NULL;
    gid_t *groups = some;
    int n;

    if (!ctx->admission || caller->uid == 0 || caller->uid == ctx->owner)
        return true;
    for (guint i = 0; i < ctx->allowed_uids->len; i++) {
        if (g_array_index(ctx->allowed_uids, guint32, i) == caller->uid)
            return true;
    }
    if (ctx->allowed_gids->len == 0)
        return false;
    /* The count of all the groups, however many fit (negative where they cannot be read). */
    n = fuse_req_getgroups(req, G_N_ELEMENTS(some), some);
    if (n > (int)G_N_ELEMENTS(some)) {
        int size = n;

        groups = more = g_new(gid_t, size);
        n = MIN(fuse_req_getgroups(req, size, more), size);
    }
    for (guint i = 0; i < ctx->allowed_gids->len; i++) {
        guint32 gid = g_array_index(ctx->allowed_gids, guint32, i);

        if (gid == caller->gid)
            return true;
        for (int j = 0; j < n; j++) {
            if (groups[j] == gid)
                return true;
        }
    }
    return false;
}

/* Answers EACCES to a caller who may not enter (fs_may_enter()); true when it did. */
bool fs_refused(fuse_req_t req)
{
    if (fs_may_enter(req))
        return false;
    fuse_reply_err(req, EACCES);
    return true;
}

/* Finds the node of @ino, or answers ESTALE for an id the kernel should no longer hold, EACCES to one who may not enter. */
struct snapfs_node *fs_node(fuse_req_t req, fuse_ino_t ino)
{
    struct snapfs_node *node;

    if (fs_refused(req))
        return NULL;
    node = fs_inodes_node(fs_ctx(req)->inodes, ino);
    if (!node)
        fuse_reply_err(req, ESTALE);
    return node;
}

/* Only root and the mounting user may take, delete or revert snapshots. */
bool fs_may_administer(fuse_req_t req)
{
    const struct fuse_ctx *caller = fuse_req_ctx(req);

    return caller->uid == 0 || caller->uid == fs_ctx(req)->owner;
}
