/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The table of node kinds, and the calls of tree.h that dispatch through it. */

/*
 * Policy.  What a node does depends on its kind alone: each kind's operations live
 * together in the file of its family (hosts.c, layers.c, snapshots.c, live.c, guest-files.c,
 * control.c) and are reached only through this table, as OpenZFS's .zfs ctldir gives each
 * kind of node its own operations.  Adding a kind is one table entry and one file's functions
 * (src/README.md, "The tree and its names").
 */
#include "tree-priv.h"
#include "snapfs/error.h"

#include <errno.h>

static const struct tree_kind *const tree_kinds[] = {
    [SNAPFS_NODE_ROOT] = &tree_kind_root,
    [SNAPFS_NODE_HOST] = &tree_kind_host,
    [SNAPFS_NODE_DOMAIN] = &tree_kind_domain,
    [SNAPFS_NODE_REVERT] = &tree_kind_revert,
    [SNAPFS_NODE_LAYERS] = &tree_kind_layers,
    [SNAPFS_NODE_DISK] = &tree_kind_disk,
    [SNAPFS_NODE_LAYER] = &tree_kind_layer,
    [SNAPFS_NODE_SNAPSHOT] = &tree_kind_snapshot,
    [SNAPFS_NODE_GUEST] = &tree_kind_guest,
    [SNAPFS_NODE_LIVE] = &tree_kind_live,
};

const struct tree_kind *tree_kind_of(const struct snapfs_node *node)
{
    g_assert((size_t)node->kind < G_N_ELEMENTS(tree_kinds));
    return tree_kinds[node->kind];
}

bool tree_is_content(const struct snapfs_node *node)
{
    return tree_kind_of(node)->content;
}

enum snapfs_cache tree_node_cache(const struct snapfs_node *node)
{
    enum snapfs_cache cache = tree_kind_of(node)->cache;

    /* Frozen content never changes; below the live top layer and live it moves. */
    return cache == SNAPFS_CACHE_FOREVER && node->live ? SNAPFS_CACHE_LIVE : cache;
}

bool tree_is_control(const struct snapfs_node *node)
{
    return tree_kind_of(node)->write != NULL;
}

bool tree_holds_snapshots(const struct snapfs_node *node)
{
    return tree_kind_of(node)->holds_snapshots;
}

bool tree_is_describable(const struct snapfs_node *node)
{
    return tree_kind_of(node)->describable;
}

struct snapfs_node *tree_listed_node(const struct snapfs_node *dir, const char *name, const struct stat *st)
{
    const struct tree_kind *kind = tree_kind_of(dir);

    return kind->listed_node ? kind->listed_node(dir, name, st) : NULL;
}

int tree_lookup(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name,
                       struct snapfs_node **child_out, struct stat *st)
{
    const struct tree_kind *kind = tree_kind_of(parent);
    struct snapfs_node *child = NULL;

    if (!kind->lookup)
        return tree_no_such_entry(name);
    if (kind->lookup(tree, parent, name, &child) < 0)
        return -1;
    if (tree_getattr(tree, child, st) < 0) {
        tree_node_free(child);
        return -1;
    }
    *child_out = child;
    return 0;
}

int tree_getattr(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st)
{
    return tree_kind_of(node)->getattr(tree, node, st);
}

int tree_readdir(struct snapfs_tree *tree, const struct snapfs_node *node,
                        snapfs_dirent_fn fn, void *opaque)
{
    const struct tree_kind *kind = tree_kind_of(node);

    return kind->readdir ? kind->readdir(tree, node, fn, opaque) : 0;
}

int tree_readlink(struct snapfs_tree *tree, const struct snapfs_node *node, char **target)
{
    const struct tree_kind *kind = tree_kind_of(node);

    if (kind->readlink)
        return kind->readlink(tree, node, target);
    error_set(EINVAL, "'%s' is not a symbolic link", node->domain ? node->domain : "/");
    return -1;
}

ssize_t tree_read(struct snapfs_tree *tree, const struct snapfs_node *node,
                         char *buf, size_t size, off_t offset)
{
    const struct tree_kind *kind = tree_kind_of(node);

    if (kind->read)
        return kind->read(tree, node, buf, size, offset);
    error_set(EISDIR, "this is a directory");
    return -1;
}

int tree_write(struct snapfs_tree *tree, const struct snapfs_node *node, const char *buf, size_t size,
                      off_t offset, bool first)
{
    const struct tree_kind *kind = tree_kind_of(node);

    if (kind->write)
        return kind->write(tree, node, buf, size, offset, first);
    error_set(EROFS, "only DOMAIN/revert can be written");
    return -1;
}

int tree_list_entry(struct snapfs_tree *tree, const struct snapfs_node *child, const char *name,
                    snapfs_dirent_fn fn, void *opaque)
{
    struct stat st;

    memset(&st, 0, sizeof(st));
    st.st_mode = tree_is_control(child) ? S_IFREG : S_IFDIR;
    tree_stat_ino(tree, child, &st);
    return fn(opaque, name, &st);
}

