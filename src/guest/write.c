/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Changes to a writable view: the guest's own calls made in its appliance, its caches dropped after each. */
#include "guest-priv.h"

#include "snapfs/error.h"

#include <errno.h>
#include <sys/sysmacros.h>

/*
 * Policy.  A writable view is live/ of a shut-off domain (src/tree/restore.c decides when one is
 * made): its own appliance has the domain's top images read-write and its filesystems mounted
 * read-write, and every change is the guest kernel's own call on them, never the host's.  Paths
 * come from the tree's lookups, one name at a time, so no guest symlink is followed on the way;
 * the calls that could follow one at the end (chown, utimens, xattrs) take the link itself.
 * The view's caches are dropped after every change, so the next read asks the appliance.
 */

/* utimensat(2)'s special nanoseconds as guestfs_utimens() takes them: -1 now, -2 unchanged. */
static int64_t change_nsec(const struct timespec *t)
{
    if (t->tv_nsec == UTIME_NOW)
        return -1;
    if (t->tv_nsec == UTIME_OMIT)
        return -2;
    return t->tv_nsec;
}

/* @c's call in @g, @path and @other as the appliance names them; the guest's answer. */
static int change_call(guestfs_h *g, const struct guest_change *c, const char *path, const char *other)
{
    switch (c->op) {
    case GUEST_CREATE:
        return guestfs_mknod(g, S_IFREG | (c->mode & 07777), 0, 0, path);
    case GUEST_MKDIR:
        return guestfs_mkdir_mode(g, path, c->mode & 07777);
    case GUEST_MKNOD:
        return guestfs_mknod(g, c->mode, major(c->rdev), minor(c->rdev), path);
    case GUEST_UNLINK:
        return guestfs_rm(g, path);
    case GUEST_RMDIR:
        return guestfs_rmdir(g, path);
    case GUEST_RENAME:
        return guestfs_rename(g, path, other);
    case GUEST_SYMLINK:
        return guestfs_ln_s(g, c->other, path);
    case GUEST_LINK:
        return guestfs_ln(g, other, path);
    case GUEST_CHMOD:
        return guestfs_chmod(g, c->mode & 07777, path);
    case GUEST_CHOWN:
        return guestfs_lchown(g, (int)c->uid, (int)c->gid, path);
    case GUEST_TRUNCATE:
        return guestfs_truncate_size(g, path, c->size);
    case GUEST_UTIMENS:
        return guestfs_utimens(g, path, c->times[0].tv_sec, change_nsec(&c->times[0]), c->times[1].tv_sec,
                               change_nsec(&c->times[1]));
    case GUEST_SETXATTR:
        return guestfs_lsetxattr(g, c->name, c->value, (int)c->size, path);
    case GUEST_REMOVEXATTR:
        return guestfs_lremovexattr(g, c->name, path);
    }
    return -1;
}

/* The appliance of writable @view, entered; NULL with the reason. */
static struct guest_appliance *write_enter(struct guest_view *view)
{
    if (!view->writable) {
        error_set(EROFS, "%s is read-only", view->label);
        return NULL;
    }
    return guest_view_enter(view);
}

int guest_view_change(struct guest_view *view, const struct guest_change *change)
{
    if (view->agent)
        return guest_agent_change(view, change);
    struct guest_appliance *app = write_enter(view);
    g_autofree char *path = NULL;
    g_autofree char *other = NULL;
    int r;

    if (!app)
        return -1;
    /* A view of filesystems by device has a root of its own making: nothing may be made there. */
    if (guest_view_dev_entered(view, change->path) == 0 ||
        (change->other && change->op != GUEST_SYMLINK && guest_view_dev_entered(view, change->other) == 0)) {
        error_set(EPERM, "cannot %s '%s': it is not on a guest filesystem", guest_change_name(change->op),
                  change->path);
        guest_view_leave(view, app);
        return -1;
    }
    path = guest_view_path(view, change->path);
    if (change->other && (change->op == GUEST_RENAME || change->op == GUEST_LINK))
        other = guest_view_path(view, change->other);
    r = change_call(app->g, change, path, other);
    if (r < 0)
        guest_appliance_error(app, guest_change_name(change->op), change->path);
    guest_view_leave(view, app);
    guest_cache_view_forget(view);
    return r < 0 ? -1 : 0;
}

ssize_t guest_view_write(struct guest_view *view, const char *path, const char *buf, size_t size, off_t offset)
{
    if (view->agent)
        return guest_agent_write(view, path, buf, size, offset);
    struct guest_appliance *app = write_enter(view);
    g_autofree char *apath = NULL;
    int n;

    if (!app)
        return -1;
    apath = guest_view_path(view, path);
    n = guestfs_pwrite(app->g, apath, buf, size, offset);
    if (n < 0)
        guest_appliance_error(app, "write", path);
    guest_view_leave(view, app);
    guest_cache_view_forget(view);
    return n;
}

int guest_view_flush(struct guest_view *view)
{
    if (view->agent)
        return guest_agent_flush(view);
    struct guest_appliance *app = write_enter(view);
    int r;

    if (!app)
        return -1;
    r = guestfs_sync(app->g);
    if (r < 0)
        guest_appliance_error(app, "sync", "/");
    guest_view_leave(view, app);
    return r;
}
