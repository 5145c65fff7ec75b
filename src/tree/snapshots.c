/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The snapshot kind: DOMAIN/NAME, the guest as it was at libvirt's snapshot NAME, and its xattrs. */

/*
 * Policy.  A snapshot folder is named after libvirt's snapshot; its identity is its name and
 * creation time, so a snapshot deleted and made again under the same name is another folder.
 * Its mtime is its creation time (src/README.md, "The tree and its names").
 */
#include "tree-priv.h"
#include "snapfs/error.h"

#include <errno.h>

/* The node's snapshot in @domain, or NULL with ENOENT. */
static struct snapfs_snapshot *snapshot_find(struct snapfs_domain *domain, const struct snapfs_node *node)
{
    struct snapfs_snapshot *snap = host_domain_find_snapshot(domain, node->snapshot);

    if (!snap)
        error_set(ENOENT, "domain '%s' has no snapshot '%s'", domain->name, node->snapshot);
    return snap;
}

static int snapshot_getattr(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st)
{
    struct snapfs_domain *domain = tree_domain(tree, node);
    struct snapfs_snapshot *snap;

    if (!domain)
        return -1;
    snap = snapshot_find(domain, node);
    if (snap) {
        tree_stat_dir(tree, st, 0555, (time_t)snap->created);
        tree_stat_ino(tree, node, st);
    }
    host_domain_unref(domain);
    return snap ? 0 : -1;
}

/* As libvirt recorded them: parent (absent for a root), created, description, state, kind, current; then error. */
static int snapshot_xattrs(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list)
{
    struct snapfs_domain *domain = tree_domain(tree, node);
    struct snapfs_snapshot *snap;

    if (!domain)
        return -1;
    snap = snapshot_find(domain, node);
    if (!snap) {
        host_domain_unref(domain);
        return -1;
    }
    if (snap->parent)
        tree_xattr_put(list, "parent", g_strdup(snap->parent));
    tree_xattr_put(list, "created", g_strdup_printf("%lld", snap->created));
    tree_xattr_put(list, "description", g_strdup(snap->description));
    tree_xattr_put(list, "state", g_strdup(snap->state));
    tree_xattr_put(list, "kind", g_strdup(snap->external ? "external" : "internal"));
    tree_xattr_put(list, "current", g_strdup(snap->current ? "1" : "0"));
    host_domain_unref(domain);
    tree_content_put_error(tree, node, list);
    return 0;
}

const struct tree_kind tree_kind_snapshot = {
    .content = true,
    .cache = SNAPFS_CACHE_SHORT,
    .describable = true,
    .lookup = tree_content_lookup,
    .getattr = snapshot_getattr,
    .readdir = tree_content_root_readdir,
    .xattrs = snapshot_xattrs,
};
