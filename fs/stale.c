/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Telling the kernel to drop what it cached of an open file or folder whose images changed under its handle. */
#include "fs.h"

/*
 * The kernel keeps the pages of frozen files (keep_cache): when their images change under an open handle,
 * it must drop them, or reads it serves itself would not fail.  Told from a thread of its own: the
 * notification waits for the inode's page locks, which a read being answered may hold.
 */
static void fs_invalidate(gpointer data, gpointer user_data)
{
    struct fs_context *ctx = user_data;

    fuse_lowlevel_notify_inval_inode(ctx->session, (fuse_ino_t)GPOINTER_TO_SIZE(data), 0, 0);
}

/* The tree's stale function, called from any thread: the id waits for fs_invalidate()'s thread. */
static void fs_stale(guint64 cookie, void *opaque)
{
    struct fs_context *ctx = opaque;

    g_thread_pool_push(ctx->invalidations, GSIZE_TO_POINTER((gsize)cookie), NULL);
}

void fs_watch_stale(struct fs_context *ctx)
{
    ctx->invalidations = g_thread_pool_new(fs_invalidate, ctx, 1, FALSE, NULL);
    tree_set_stale_fn(ctx->tree, fs_stale, ctx);
}

void fs_unwatch_stale(struct fs_context *ctx)
{
    if (!ctx->invalidations)
        return;
    tree_set_stale_fn(ctx->tree, NULL, NULL);
    g_thread_pool_free(g_steal_pointer(&ctx->invalidations), TRUE, TRUE);
}
