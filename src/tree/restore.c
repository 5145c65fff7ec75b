/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Restoring into live/: the changes a shut-off domain's live/ takes, its pre-restore snapshot, and files open for writing. */

/*
 * Policy.  live/ of a shut-off domain with local qcow2 or raw disks, and of a running domain whose
 * guest agent answers and allows guest-exec and guest-file-*, is read-write for those who may
 * administer (fs/ checks that, EACCES); everywhere else it is read-only (EROFS, with the reason):
 * -o ro, a running domain without such an agent, another disk format, a remote host.  A running
 * domain's changes are the guest's own, made by its agent (guest/agent.c); its pre-restore snapshot
 * is a live one, quiesced where the agent can freeze (-o quiesce).  Before the first change, an external snapshot pre-restore-YYYYmmdd-HHMMSS is
 * taken as mkdir takes one (-o restore_keep=off skips it), so that revert undoes the whole restore.
 * The changes are the guest kernel's own, in an appliance that has the domain's new top images
 * read-write and locked (views.c's writer, guest/write.c): while it runs, virsh start fails on
 * qemu's image lock.  It ends GUEST_WRITER_IDLE_S after its last call once no file is open for
 * writing, and a write through a handle whose writer ended fails with EIO: a domain started since
 * then has one writer only, itself.  Every change is logged with the domain and path, every file
 * written with its size (src/README.md, "Restoring into live").
 */
#include "tree-priv.h"
#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <string.h>

/* Whether live/ of @node's domain (@domain as libvirt says it now) takes changes: 0, or -1 with EROFS and why. */
static int restore_check(struct snapfs_tree *tree, const struct snapfs_node *node, struct snapfs_domain *domain,
                         const char *what, struct snapfs_agent **agent)
{
    g_autofree char *why = NULL;

    if (!tree_node_in_live(node))
        return tree_refuse_change(node, what);
    why = tree_live_read_only(tree, node, domain, agent);
    if (!why)
        return 0;
    error_set(EROFS, "cannot %s in live/ of domain '%s': %s", what, node->domain, why);
    return -1;
}

/* pre-restore-YYYYmmdd-HHMMSS, with -2, -3 ... where a snapshot of @domain has that name already. */
static char *restore_snapshot_name(struct snapfs_domain *domain)
{
    g_autoptr(GDateTime) now = g_date_time_new_now_local();
    g_autofree char *base = g_date_time_format(now, "pre-restore-%Y%m%d-%H%M%S");
    char *name = g_strdup(base);

    for (unsigned n = 2; host_domain_find_snapshot(domain, name); n++) {
        g_free(name);
        name = g_strdup_printf("%s-%u", base, n);
    }
    return name;
}

/*
 * Whether the pre-restore snapshot of the last writer of @domain still undoes what a new one would write: the
 * tops are the files it left, unchanged since (not started, no snapshot taken or deleted, nothing merged).
 * Pauses of a copy (its source read slowly) then cost no second snapshot.
 */
static bool restore_undone_by_last(struct snapfs_tree *tree, const struct snapfs_node *node,
                                   struct snapfs_domain *domain)
{
    g_autoptr(GPtrArray) tops = g_ptr_array_new();
    g_autofree char *group = tree_group(tree, node);
    g_autofree char *now = NULL;
    bool same;

    for (guint i = 0; i < domain->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(domain->disks, i);

        if (disk->file)
            g_ptr_array_add(tops, disk->file);
    }
    g_ptr_array_add(tops, NULL);
    now = tree_images_signature((const char *const *)tops->pdata);
    g_mutex_lock(&tree->lock);
    same = g_strcmp0(g_hash_table_lookup(tree->written, group), now) == 0;
    g_mutex_unlock(&tree->lock);
    if (same)
        log_info("domain '%s': its disks are as the last change to live/ left them: the snapshot taken before that "
                 "one undoes this one too", node->domain);
    return same;
}

/* The pre-restore snapshot, unless -o restore_keep=off: 0, and *@domain as it is after it; or -1 with the reason. */
static int restore_pre_snapshot(struct snapfs_tree *tree, const struct snapfs_node *node,
                                struct snapfs_domain **domain, const char *what)
{
    g_autofree char *name = NULL;

    if (tree->config.restore_keep_off || restore_undone_by_last(tree, node, *domain))
        return 0;
    name = restore_snapshot_name(*domain);
    if (tree_snapshot_now(tree, node, name) < 0) {
        g_autofree char *why = g_strdup(error_message());

        error_set(error_errno(), "cannot %s in live/ of domain '%s': the snapshot '%s' to undo it with could "
                  "not be taken: %s", what, node->domain, name, why);
        return -1;
    }
    log_info("domain '%s': snapshot '%s' taken before the first change to live/", node->domain, name);
    host_domain_unref(*domain);
    *domain = tree_domain(tree, node);   /* its new tops */
    return *domain ? 0 : -1;
}

/* The checks and the pre-restore snapshot before the first change through a writer that reads already: 0, or -1 with why. */
static int restore_snapshot_before(struct snapfs_tree *tree, const struct snapfs_node *node, const char *what)
{
    struct snapfs_domain *domain = tree_domain(tree, node);
    int r = -1;

    /* The writer reads through the agent already: the check asks it once more whether it answers, and lets it go. */
    if (domain && restore_check(tree, node, domain, what, NULL) == 0)
        r = restore_pre_snapshot(tree, node, &domain, what);
    if (domain)
        host_domain_unref(domain);
    return r;
}

/*
 * A writer for @node's domain: the checks, the pre-restore snapshot, a writable view of the tops, or of
 * a running domain through its guest agent (a live snapshot, quiesced when the agent can freeze: -o
 * quiesce=auto).  Restore lock held.
 */
static struct tree_view *restore_start(struct snapfs_tree *tree, const struct snapfs_node *node, const char *what)
{
    struct snapfs_domain *domain = tree_domain(tree, node);
    g_autoptr(snapfs_agent) agent = NULL;
    struct tree_view *tv = NULL;

    /* A running domain's agent comes from the check that asked it. */
    if (!domain || restore_check(tree, node, domain, what, &agent) < 0)
        goto out;
    if (restore_pre_snapshot(tree, node, &domain, what) == 0)
        tv = tree_writer_start(tree, node, domain, g_steal_pointer(&agent), true);
out:
    if (domain)
        host_domain_unref(domain);
    return tv;
}

/* The writer of @node's domain, started if none runs (a reference), or NULL with the reason. */
static struct tree_view *restore_writer(struct snapfs_tree *tree, const struct snapfs_node *node, const char *what)
{
    struct tree_view *tv;

    g_mutex_lock(&tree->restore_lock);
    tv = tree_writer_of(tree, node);
    if (!tv) {
        tv = restore_start(tree, node, what);
    } else if (!tree_writer_restorable(tv)) {
        /* A running domain's live/ read through its agent so far: its first change takes the snapshot. */
        if (restore_snapshot_before(tree, node, what) == 0)
            tree_writer_set_restorable(tv);
        else
            g_clear_pointer(&tv, tree_view_unref);
    }
    g_mutex_unlock(&tree->restore_lock);
    return tv;
}

char *tree_in_live_path(const struct snapfs_node *node, const char *name)
{
    const char *base;

    if (!tree_node_in_live(node))
        return NULL;
    base = tree_guest_path(node);
    if (!name)
        return g_strdup(base);
    return strcmp(base, "/") == 0 ? g_strconcat("/", name, NULL) : g_strconcat(base, "/", name, NULL);
}

int tree_change(struct snapfs_tree *tree, const struct snapfs_node *dir, const char *name,
                struct guest_change *change)
{
    const char *what = guest_change_name(change->op);
    g_autoptr(tree_view) tv = NULL;
    g_autofree char *path = tree_in_live_path(dir, name);

    if (!tree_node_in_live(dir))
        return tree_refuse_change(dir, what);
    if ((change->op == GUEST_LINK || change->op == GUEST_RENAME) && !change->other) {
        error_set(EXDEV, "cannot %s from outside live/ into it", what);
        return -1;
    }
    if (!name && !dir->path) {
        error_set(EPERM, "cannot %s live/ itself: it is the guest's root", what);
        return -1;
    }
    tv = restore_writer(tree, dir, what);
    if (!tv)
        return -1;
    change->path = path;
    if (guest_view_change(tree_view_guest(tv), change) < 0)
        return -1;
    /* What appears, goes or moves is logged; a mode, owner, time or xattr set (cp -a sets four a file) at debug. */
    if (change->op == GUEST_CHMOD || change->op == GUEST_CHOWN || change->op == GUEST_UTIMENS ||
        change->op == GUEST_SETXATTR || change->op == GUEST_REMOVEXATTR)
        log_debug("domain '%s': live/: %s '%s'", dir->domain, what, path);
    else
        log_info("domain '%s': live/: %s '%s'%s%s", dir->domain, what, path,
                 change->other ? (change->op == GUEST_RENAME ? " to " : " -> ") : "",
                 change->other ? change->other : "");
    return 0;
}

struct snapfs_handle *tree_open_write(struct snapfs_tree *tree, const struct snapfs_node *node, guint64 cookie)
{
    g_autoptr(tree_view) tv = NULL;
    struct snapfs_handle *handle;

    if (!tree_node_in_live(node)) {
        tree_refuse_change(node, "write");
        return NULL;
    }
    tv = restore_writer(tree, node, "write");
    if (!tv)
        return NULL;
    guest_view_hold(tree_view_guest(tv), 1);
    handle = tree_handle_new(tree, node, tv, cookie);
    handle->writing = true;
    return handle;
}

ssize_t tree_handle_write(struct snapfs_tree *tree, struct snapfs_handle *handle, const char *buf, size_t size,
                          off_t offset)
{
    ssize_t n;

    if (!handle->writing) {
        error_set(EBADF, "'%s' was not opened for writing", handle->node->path ? handle->node->path : "/");
        return -1;
    }
    n = guest_view_write(tree_view_guest(handle->tv), handle->node->path, buf, size, offset);
    if (n > 0)
        handle->written += (guint64)n;
    return n;
}

int tree_handle_flush(struct snapfs_tree *tree, struct snapfs_handle *handle)
{
    if (!handle->writing || handle->written == 0)
        return 0;
    return guest_view_flush(tree_view_guest(handle->tv));
}

void tree_restore_release(struct snapfs_tree *tree, struct snapfs_handle *handle)
{
    if (handle->written)
        log_info("domain '%s': live/: wrote '%s' (%" G_GUINT64_FORMAT " bytes)", handle->node->domain,
                 handle->node->path, handle->written);
    guest_view_hold(tree_view_guest(handle->tv), -1);
}
