/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What the tree changes: mkdir, rmdir, revert and setfattr handed to the engine and revert, and the changes refused by kind. */

/*
 * Policy.  Snapshots, layers, live and guest files are read-only (EROFS); snapfs's own folders take
 * only mkdir and rmdir of snapshots in a domain's folder, a description set on a snapshot
 * and a request written to revert (EPERM for anything else); -o ro refuses those too
 * (EROFS).  A change that fails past these first checks is logged and kept as the domain's
 * user.snapfs.last_error; either way the host's cache of the domain is dropped, so that what
 * was done shows at once (src/README.md, "Extended attributes" and "Errors").
 */
#include "tree-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"

#include <errno.h>
#include <string.h>

/* ---- refusals ---------------------------------------------------------------- */

int tree_refuse_change(const struct snapfs_node *node, const char *what)
{
    if (tree_is_content(node))
        error_set(EROFS, "cannot %s inside a snapshot, a layer or live: they are read-only", what);
    else
        error_set(EPERM, "cannot %s here: snapfs's own folders take only snapshots, made and deleted in "
                         "a domain's folder", what);
    return -1;
}

int tree_rename(const struct snapfs_node *parent, bool same_folder)
{
    if (!tree_holds_snapshots(parent))
        return tree_refuse_change(parent, "rename");
    if (same_folder)
        error_set(ENOTSUP, "snapshots cannot be renamed");
    else
        error_set(EXDEV, "snapshots cannot be moved out of their domain's folder");
    return -1;
}

int tree_check_open(const struct snapfs_node *node, bool writing)
{
    const struct tree_kind *kind = tree_kind_of(node);

    if (!kind->read) {
        error_set(EISDIR, "this is a directory");
        return -1;
    }
    if (writing && !kind->write) {
        error_set(EROFS, "guest files are read-only");
        return -1;
    }
    return 0;
}

/* mkdir and rmdir: only in a domain's folder, not with -o ro. */
static int changes_check_domain_folder(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *what)
{
    if (!tree_holds_snapshots(parent))
        return tree_refuse_change(parent, what);
    if (tree->config.read_only) {
        error_set(EROFS, "cannot %s in '%s': mounted read-only", what, parent->domain);
        return -1;
    }
    return 0;
}

/*
 * A snapshot made through the mount can be reverted to through it: its name, written to revert,
 * must read back as that name (no blanks around it, no trailing " --force" or other option).
 */
static int changes_check_revertable(const char *name)
{
    struct revert_request request = { 0 };
    int ret = 0;

    if (revert_parse(name, strlen(name), &request) < 0) {
        g_autofree char *why = g_strdup(error_message());

        error_set(EINVAL, "'%s' cannot name a snapshot: it could not be reverted to (%s)", name, why);
        return -1;
    }
    if (request.force || strcmp(request.name, name) != 0) {
        error_set(EINVAL, "'%s' cannot name a snapshot: written to revert, it would ask for '%s'%s", name,
                         request.name, request.force ? " with --force" : "");
        ret = -1;
    }
    revert_request_clear(&request);
    return ret;
}

/* ---- carrying a change out ----------------------------------------------------- */

/* One change, once libvirt is reached: 0, or -1 with the reason. */
typedef int (*changes_fn)(struct snapfs_tree *tree, virConnectPtr conn, const struct snapfs_node *node,
                          const void *arg);

/*
 * Carries out @fn on @node's domain through a connection of its own; a failure is remembered as
 * "@what of snapshot @snapshot" (last_error), and the host's cache of the domain is dropped either way.
 */
static int changes_carry_out(struct snapfs_tree *tree, const struct snapfs_node *node, const char *what,
                             const char *snapshot, changes_fn fn, const void *arg)
{
    g_autoptr(virConnect) conn = host_conn(tree_host(tree, node));
    int ret;

    if (!conn)
        return -1;
    ret = fn(tree, conn, node, arg);
    if (ret < 0)
        tree_remember_error(tree, node, what, snapshot);
    host_invalidate(tree_host(tree, node), node->domain);
    return ret;
}

static int changes_create_snapshot(struct snapfs_tree *tree, virConnectPtr conn, const struct snapfs_node *node,
                                   const void *name)
{
    return engine_snapshot_create(conn, node->domain, name, &tree->config.engine);
}

/*
 * Open files refuse it, and appliances are closed, in tree_before_change(); the engine
 * reports every image it merged or removed through the chain-changed hook (core.c).
 */
static int changes_delete_snapshot(struct snapfs_tree *tree, virConnectPtr conn, const struct snapfs_node *node,
                                   const void *name)
{
    int ret = engine_snapshot_delete(conn, node->domain, name);

    tree_changes_done(tree);
    return ret;
}

static int changes_describe_snapshot(struct snapfs_tree *tree, virConnectPtr conn, const struct snapfs_node *node,
                                     const void *text)
{
    return engine_snapshot_set_description(conn, node->domain, node->snapshot, text);
}

/* Drop what the guest reader holds of files a chain change moved or merged. */
static void changes_forget_chains(struct snapfs_tree *tree, struct snapfs_domain *before)
{
    tree_forget_views(tree);
    for (guint i = 0; before && i < before->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(before->disks, i);
        g_autoptr(GPtrArray) chain = disk->file ? chain_read(disk->file, disk->format) : NULL;

        for (guint j = 0; chain && j < chain->len; j++)
            guest_pool_forget_file(tree->guests, ((struct snapfs_layer *)g_ptr_array_index(chain, j))->file);
    }
}

struct changes_revert_request {
    const char *text;
    size_t size;
};

/* Appliances are closed, and open files refuse it, in tree_before_change(). */
static int changes_revert_domain(struct snapfs_tree *tree, virConnectPtr conn, const struct snapfs_node *node,
                                 const void *arg)
{
    const struct changes_revert_request *request = arg;
    struct snapfs_domain *before = tree_domain(tree, node);
    int ret = revert_write(conn, node->domain, request->text, request->size, &tree->config.revert);

    tree_changes_done(tree);
    if (ret == 0)
        changes_forget_chains(tree, before);
    host_domain_unref(before);
    return ret;
}

/* ---- the changes ------------------------------------------------------------------ */

int tree_snapshot_now(struct snapfs_tree *tree, const struct snapfs_node *node, const char *name)
{
    return changes_carry_out(tree, node, "mkdir", name, changes_create_snapshot, name);
}

int tree_mkdir(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name)
{
    g_autofree char *group = NULL;

    if (changes_check_domain_folder(tree, parent, "create a snapshot") < 0)
        return -1;
    /* A snapshot freezes the top images: a writer of live/ must have let go of them first. */
    group = tree_group(tree, parent);
    if (tree_writer_end(tree, group, "cannot create a snapshot") < 0)
        return -1;
    if (engine_check_name(name) < 0 || changes_check_revertable(name) < 0) {
        tree_remember_error(tree, parent, "mkdir", name);
        return -1;
    }
    return changes_carry_out(tree, parent, "mkdir", name, changes_create_snapshot, name);
}

int tree_rmdir(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name)
{
    if (changes_check_domain_folder(tree, parent, "delete a snapshot") < 0)
        return -1;
    if (engine_name_reserved(name)) {
        error_set(EPERM, "'%s' is not a snapshot", name);
        return -1;
    }
    return changes_carry_out(tree, parent, "rmdir", name, changes_delete_snapshot, name);
}

int tree_setxattr(struct snapfs_tree *tree, const struct snapfs_node *node,
                         const char *name, const char *value, size_t size)
{
    g_autofree char *text = NULL;

    if (!tree_is_describable(node) || strcmp(name, XATTR_PREFIX "description") != 0)
        return tree_refuse_change(node, "set an attribute other than user.snapfs.description of a snapshot");
    if (tree->config.read_only) {
        error_set(EROFS, "cannot describe snapshot '%s': mounted read-only", node->snapshot);
        return -1;
    }
    text = g_strndup(value, size);
    return changes_carry_out(tree, node, "setfattr", node->snapshot, changes_describe_snapshot, text);
}

/*
 * The revert kind's write (tree_write() in tree.h says what a request is).  Refused
 * before anything is asked or touched (libvirt, appliances, caches) when out of order or malformed.
 */
int tree_revert_write(struct snapfs_tree *tree, const struct snapfs_node *node, const char *buf, size_t size,
                      off_t offset, bool first)
{
    struct revert_request request = { 0 };
    struct changes_revert_request whole = { buf, size };

    if (tree->config.read_only) {
        error_set(EROFS, "cannot revert '%s': mounted read-only", node->domain);
        return -1;
    }
    if (offset != 0 || !first) {
        error_set(EINVAL, "a revert request is written from the start of the file, in order, by one open "
                         "(as echo NAME > revert makes it): a %s was refused, nothing was reverted by it",
                         offset != 0 ? "write out of order" : "second request of one open file");
        tree_remember_error(tree, node, "revert", NULL);
        return -1;
    }
    if (revert_parse(buf, size, &request) < 0) {
        tree_remember_error(tree, node, "revert", NULL);
        return -1;
    }
    revert_request_clear(&request);
    return changes_carry_out(tree, node, "revert", NULL, changes_revert_domain, &whole);
}
