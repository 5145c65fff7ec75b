/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The guest kind: files and folders below a snapshot or a layer, read through the view behind them; what content kinds share. */

/*
 * Policy.  Guest files are the guest's: attributes, listings, links, data and xattrs are the
 * guest reader's answers, never followed or changed by snapfs.  Inode numbers pack the view's
 * number, the filesystem's index and the guest inode, so the guest's hard links keep one
 * number (src/README.md, "The tree and its names").
 */
#include "tree-priv.h"
#include "snapfs/error.h"

const char *tree_guest_path(const struct snapfs_node *node)
{
    return node->kind == SNAPFS_NODE_GUEST ? node->path : "/";
}

struct snapfs_node *tree_guest_child(const struct snapfs_node *dir, const char *name)
{
    struct snapfs_node *child = tree_child_of_kind(dir, SNAPFS_NODE_GUEST);
    char *path = g_build_filename(tree_guest_path(dir), name, NULL);

    g_free(child->path);
    child->path = path;
    return child;
}

/* An entry of a guest folder; one listed without its attributes yet (st_nlink 0) is looked up when they are needed. */
static struct snapfs_node *content_listed_node(const struct snapfs_node *dir, const char *name,
                                                  const struct stat *st)
{
    return st->st_nlink == 0 ? NULL : tree_guest_child(dir, name);
}

/*
 * A guest file's inode number, made of its view's number, its filesystem's index and its guest inode
 * (the top bit keeps these apart from tree_ino()'s): a table of every guest file ever seen would grow
 * without bound.  Only numbers too large for the fields take a place in the table.
 */
static void content_stat_ino(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st)
{
    g_autofree char *key = tree_key_of(node);
    guint64 view = tree_ino(tree, key), dev = st->st_dev, ino = st->st_ino;

    if (view < (1u << 15) && dev < (1u << 8) && ino < ((guint64)1 << 40)) {
        st->st_ino = (ino_t)((guint64)1 << 63 | view << 48 | dev << 40 | ino);
    } else {
        g_autofree char *full = g_strdup_printf("%s#%llu#%llu", key, (unsigned long long)dev,
                                                (unsigned long long)ino);

        st->st_ino = tree_ino(tree, full);
    }
    st->st_dev = 0;
}

int tree_content_lookup(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name,
                        struct snapfs_node **child)
{
    *child = tree_guest_child(parent, name);
    return 0;
}

struct content_listing {
    struct snapfs_tree *tree;
    const struct snapfs_node *dir;
    snapfs_dirent_fn fn;
    void *opaque;
};

/* One entry of a guest listing, numbered as its lookup would number it. */
static int content_listing_entry(void *opaque, const char *name, const struct stat *st)
{
    struct content_listing *listing = opaque;
    struct snapfs_node child = *listing->dir;
    g_autofree char *path = g_build_filename(tree_guest_path(listing->dir), name, NULL);
    struct stat copy = *st;

    child.kind = SNAPFS_NODE_GUEST;
    child.path = path;
    content_stat_ino(listing->tree, &child, &copy);
    return listing->fn(listing->opaque, name, &copy);
}

int tree_content_readdir(struct snapfs_tree *tree, const struct snapfs_node *node, snapfs_dirent_fn fn,
                         void *opaque)
{
    struct content_listing listing = { tree, node, fn, opaque };
    struct guest_view *view = tree_guest_view(tree, node);
    int ret;

    if (!view)
        return -1;
    ret = guest_view_readdir(view, tree_guest_path(node), content_listing_entry, &listing);
    guest_view_unref(view);
    return ret < 0 ? -1 : 0;
}

int tree_content_root_readdir(struct snapfs_tree *tree, const struct snapfs_node *node, snapfs_dirent_fn fn,
                              void *opaque)
{
    if (tree_check_local(tree, node) < 0)
        return 0;
    return tree_content_readdir(tree, node, fn, opaque);
}

void tree_content_put_error(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list)
{
    struct guest_view *view = tree_guest_view(tree, node);
    char *why = view ? guest_view_error(view) : g_strdup(error_message());

    if (why)
        tree_xattr_put(list, "error", why);
    guest_view_unref(view);
}

/* ---- the guest kind: each asks the guest reader's view behind the node ---- */

static int content_getattr(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st)
{
    struct guest_view *view = tree_guest_view(tree, node);
    int ret;

    if (!view)
        return -1;
    ret = guest_view_getattr(view, node->path, st);
    guest_view_unref(view);
    if (ret == 0)
        content_stat_ino(tree, node, st);
    return ret;
}

static int content_readlink(struct snapfs_tree *tree, const struct snapfs_node *node, char **target)
{
    struct guest_view *view = tree_guest_view(tree, node);
    int ret;

    if (!view)
        return -1;
    ret = guest_view_readlink(view, node->path, target);
    guest_view_unref(view);
    return ret;
}

static ssize_t content_read(struct snapfs_tree *tree, const struct snapfs_node *node, char *buf, size_t size,
                               off_t offset)
{
    struct guest_view *view = tree_guest_view(tree, node);
    ssize_t ret;

    if (!view)
        return -1;
    ret = guest_view_read(view, node->path, buf, size, offset);
    guest_view_unref(view);
    return ret;
}

static ssize_t content_getxattr(struct snapfs_tree *tree, const struct snapfs_node *node, const char *name,
                                   char *buf, size_t size)
{
    struct guest_view *view = tree_guest_view(tree, node);
    ssize_t ret;

    if (!view)
        return -1;
    ret = guest_view_getxattr(view, node->path, name, buf, size);
    guest_view_unref(view);
    return ret;
}

static ssize_t content_listxattr(struct snapfs_tree *tree, const struct snapfs_node *node, char *buf,
                                    size_t size)
{
    struct guest_view *view = tree_guest_view(tree, node);
    ssize_t ret;

    if (!view)
        return -1;
    ret = guest_view_listxattr(view, node->path, buf, size);
    guest_view_unref(view);
    return ret;
}

const struct tree_kind tree_kind_guest = {
    .content = true,
    .cache = SNAPFS_CACHE_FOREVER,
    .lookup = tree_content_lookup,
    .getattr = content_getattr,
    .readdir = tree_content_readdir,
    .getxattr = content_getxattr,
    .listxattr = content_listxattr,
    .read = content_read,
    .readlink = content_readlink,
    .listed_node = content_listed_node,
};
