/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The revert control file: what an open of it was written, gathered in order and carried out by a newline or the writer's close. */
#include "ops-priv.h"
#include "snapfs/error.h"
#include "snapfs/log.h"

#include <stdlib.h>
#include <string.h>

/*
 * What an open revert file was written: one request per open (tree_write()).  A request that
 * ends with a newline (echo) is carried out by the write that completes it; text without one is
 * gathered and carried out when the file is closed, so that a writer in pieces (dd bs=1) never
 * reverts to a prefix of the name.
 */
enum fs_control_state { FS_CONTROL_FRESH, FS_CONTROL_GATHERING, FS_CONTROL_DONE, FS_CONTROL_REFUSED };

#define FS_CONTROL_MAX 4096   /* a snapshot name (255 bytes) and " --force", with room */

struct fs_control {
    GMutex lock;
    enum fs_control_state state;   /* lock */
    GString *text;                 /* lock: what was gathered, while GATHERING */
    pid_t writer;                  /* lock: the process (thread group) that wrote it */
};

/*
 * The process a request's thread belongs to, or 0.  A close in a child that inherited the file
 * (fork, then exec or exit) flushes it too: only the writer's own close ends its request.
 */
static pid_t fs_req_process(fuse_req_t req)
{
    pid_t tid = fuse_req_ctx(req)->pid;
    g_autofree char *path = g_strdup_printf("/proc/%d/status", (int)tid);
    g_autofree char *status = NULL;
    const char *line;

    if (tid <= 0 || !g_file_get_contents(path, &status, NULL, NULL))
        return 0;
    line = strstr(status, "\nTgid:");
    return line ? (pid_t)strtol(line + 6, NULL, 10) : 0;
}

void fs_control_destroy(gpointer data)
{
    struct fs_control *control = data;

    if (control->text)
        g_string_free(control->text, TRUE);
    g_mutex_clear(&control->lock);
    g_free(control);
}

static void fs_control_free(struct fs_context *ctx, struct fs_control *control)
{
    g_mutex_lock(&ctx->listings_lock);
    g_hash_table_remove(ctx->open_controls, control);
    g_mutex_unlock(&ctx->listings_lock);
}

/* The control state behind @fh, or NULL where @fh is a guest file's handle (lock not held). */
struct fs_control *fs_control_of(struct fs_context *ctx, uint64_t fh)
{
    struct fs_control *control;

    g_mutex_lock(&ctx->listings_lock);
    control = g_hash_table_lookup(ctx->open_controls, (gpointer)(uintptr_t)fh) ? (struct fs_control *)(uintptr_t)fh
                                                                               : NULL;
    g_mutex_unlock(&ctx->listings_lock);
    return control;
}

void fs_control_open(struct fs_context *ctx, fuse_req_t req, struct fuse_file_info *fi)
{
    struct fs_control *control = g_new0(struct fs_control, 1);

    g_mutex_init(&control->lock);
    g_mutex_lock(&ctx->listings_lock);
    g_hash_table_add(ctx->open_controls, control);
    g_mutex_unlock(&ctx->listings_lock);
    fi->fh = (uintptr_t)control;
    fi->direct_io = 1;   /* its content is made at each read */
    if (!fs_reply_open(ctx, req, fi))
        fs_control_free(ctx, control);   /* the opener was interrupted: no release comes */
}

/* A request still gathering at release was written by a process that has not closed it: dropped, with a warning. */
void fs_control_release(struct fs_context *ctx, struct fs_control *control)
{
    if (control->state == FS_CONTROL_GATHERING)
        log_warn("a revert request ('%.*s') was closed by another process than its writer: not carried out",
                       (int)MIN(control->text->len, 300), control->text->str);
    fs_control_free(ctx, control);
}

/* Carries out the request gathered in @control (lock held): 0, or -1 with the error set. */
static int fs_control_carry_out(fuse_req_t req, struct snapfs_node *node, struct fs_control *control)
{
    int ret = tree_write(fs_ctx(req)->tree, node, control->text->str, control->text->len, 0, true);

    control->state = ret < 0 ? FS_CONTROL_REFUSED : FS_CONTROL_DONE;
    g_string_free(g_steal_pointer(&control->text), TRUE);
    return ret;
}

/* Whether a write of @size bytes at @offset starts a request or goes on where the last ended (lock held). */
static bool fs_control_follows_on(const struct fs_control *control, size_t size, off_t offset)
{
    if (control->state == FS_CONTROL_FRESH || control->state == FS_CONTROL_REFUSED)
        return offset == 0;
    return control->state == FS_CONTROL_GATHERING && offset >= 0 && (size_t)offset == control->text->len &&
           control->text->len + size <= FS_CONTROL_MAX;
}

/* Adds a piece to the request (lock held), and carries it out once a newline ends it. */
static int fs_control_gather(fuse_req_t req, struct snapfs_node *node, struct fs_control *control, const char *buf,
                             size_t size)
{
    if (!control->text) {
        control->text = g_string_sized_new(size + 1);
        control->writer = fs_req_process(req);
    }
    g_string_append_len(control->text, buf, (gssize)size);
    control->state = FS_CONTROL_GATHERING;
    if (size > 0 && buf[size - 1] == '\n')
        return fs_control_carry_out(req, node, control);
    return 0;
}

/* Out of order or too long: refused (tree_write() says why), and so is what was gathered (lock held). */
static int fs_control_refuse(fuse_req_t req, struct snapfs_node *node, struct fs_control *control, const char *buf,
                             size_t size, off_t offset)
{
    if (control->text)
        g_string_free(g_steal_pointer(&control->text), TRUE);
    control->state = FS_CONTROL_REFUSED;
    return tree_write(fs_ctx(req)->tree, node, buf, size, offset, false);
}

/*
 * A write to revert: the request ("NAME\n") starts at offset 0 with the first write of its open and
 * goes on with writes that follow on where the last ended; it is carried out once a newline ends it
 * (this write's status says how it went) or else at close (close(2)'s).  A refused write moved
 * nothing, so the writer may try again from the start (a buffered writer's close does).  Any other write is EINVAL
 * (tree_write()), except a lone newline after a request that was carried out (an unbuffered
 * print() writes the name and its newline apart).  Everything else is read-only.  The answer goes
 * out only once the control's lock is let go: the release it lets come frees the control.
 * Errnos: EROFS for any other file and with -o ro, EINVAL, and revert_write()'s (ENOENT, EBUSY,
 * ENOTSUP, EEXIST, EACCES, EIO); node errnos.
 */
void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t offset,
              struct fuse_file_info *fi)
{
    struct snapfs_node *node = fs_node(req, ino);
    struct fs_control *control;
    int ret = 0;

    if (!node)
        return;
    control = tree_is_control(node) ? fs_control_of(fs_ctx(req), fi->fh) : NULL;
    if (!control) {
        /* Else only a file of live/ opened for writing takes writes (fs/live.c). */
        ssize_t n = tree_handle_write(fs_ctx(req)->tree, (struct snapfs_handle *)(uintptr_t)fi->fh, buf, size, offset);

        if (n < 0)
            fs_reply_error(req, "write", node);
        else
            fuse_reply_write(req, (size_t)n);
        tree_node_free(node);
        return;
    }
    g_mutex_lock(&control->lock);
    if (control->state == FS_CONTROL_DONE && size == 1 && buf[0] == '\n')
        ret = 0;
    else if (fs_control_follows_on(control, size, offset))
        ret = fs_control_gather(req, node, control, buf, size);
    else
        ret = fs_control_refuse(req, node, control, buf, size, offset);
    g_mutex_unlock(&control->lock);
    if (ret < 0)
        fs_reply_error(req, "revert", node);
    else
        fuse_reply_write(req, size);
    tree_node_free(node);
}

/*
 * The writer's close(2) of a revert file carries out a request that no newline ended, and its
 * status says how it went (fs_write()'s errnos); the close of a child that inherited the file does
 * not.  0 for every other file; node errnos for a revert file.
 */
void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct fs_control *control = fs_control_of(fs_ctx(req), fi->fh);
    struct snapfs_node *node;
    int ret = 0;

    if (!control) {
        /* A file of live/ written through this handle: on the host's disk when close(2) returns. */
        if (tree_handle_flush(fs_ctx(req)->tree, (struct snapfs_handle *)(uintptr_t)fi->fh) < 0)
            fuse_reply_err(req, error_errno());
        else
            fuse_reply_err(req, 0);
        return;
    }
    if (!(node = fs_node(req, ino)))
        return;
    g_mutex_lock(&control->lock);
    if (control->state == FS_CONTROL_GATHERING && control->writer && fs_req_process(req) == control->writer)
        ret = fs_control_carry_out(req, node, control);
    g_mutex_unlock(&control->lock);
    if (ret < 0)
        fs_reply_error(req, "revert", node);
    else
        fuse_reply_err(req, 0);
    tree_node_free(node);
}
