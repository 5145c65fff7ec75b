/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The layers, disk and layer kinds: a domain's disks and their backing chains as folders, DOMAIN/layers/DISK/N-FILE. */

/*
 * Policy.  Layers are numbered from the base (0), so a new overlay renumbers nothing; a
 * layer node remembers its image, and its identity includes the image's mtime and size
 * (except on the live top), so a merge that rewrites it in place makes it another folder.
 * A remote host's layers are empty folders whose user.snapfs.error says why
 * (src/README.md, "The tree and its names").
 */
#include "tree-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"

#include <errno.h>
#include <string.h>

static char *layer_folder_name(guint index, const struct snapfs_layer *layer)
{
    g_autofree char *base = g_path_get_basename(layer->file);

    return g_strdup_printf("%u-%s", index, base);
}

/* Whether @disk of a snapshot, an overlay, stands on @layer's image (read from the overlay's header). */
static bool layer_stands_on(const struct snapfs_snapshot_disk *disk, const struct snapfs_layer *layer)
{
    struct snapfs_layer *overlay = chain_read_layer(disk->file, disk->format);
    bool on = false;

    if (overlay && overlay->backing) {
        g_autofree char *frozen = chain_resolve(overlay->file, overlay->backing);

        on = strcmp(frozen, layer->file) == 0;
    }
    chain_layer_free(overlay);
    return on;
}

/*
 * The snapshot that froze layer @index: the one whose overlay is the layer
 * above it or, after a revert made new overlays, the one whose overlay
 * stands on this layer's image.
 */
static struct snapfs_snapshot *layer_frozen_by(struct snapfs_domain *domain, const char *target,
                                               GPtrArray *chain, guint index)
{
    struct snapfs_layer *layer = g_ptr_array_index(chain, index);
    struct snapfs_layer *above = index + 1 < chain->len ? g_ptr_array_index(chain, index + 1) : NULL;
    struct snapfs_snapshot *standing_on = NULL;

    if (!above)
        return NULL;
    for (guint i = 0; i < domain->snapshots->len; i++) {
        struct snapfs_snapshot *snap = g_ptr_array_index(domain->snapshots, i);

        for (guint j = 0; j < snap->disks->len; j++) {
            struct snapfs_snapshot_disk *disk = g_ptr_array_index(snap->disks, j);

            if (!disk->file || strcmp(disk->target, target) != 0)
                continue;
            if (strcmp(disk->file, above->file) == 0)
                return snap;
            if (!standing_on && layer_stands_on(disk, layer))
                standing_on = snap;
        }
    }
    error_clear();
    return standing_on;
}

/* ---- lookup ------------------------------------------------------------------ */

/* A disk with an image of its own (not a cdrom without one). */
static int layers_lookup(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name,
                         struct snapfs_node **child)
{
    struct snapfs_domain *domain = tree_domain(tree, parent);
    struct snapfs_disk *disk;

    if (!domain)
        return -1;
    disk = host_domain_find_disk(domain, name);
    if (disk && disk->file) {
        *child = tree_child_of_kind(parent, SNAPFS_NODE_DISK);
        (*child)->disk = g_strdup(name);
    }
    host_domain_unref(domain);
    return *child ? 0 : tree_no_such_entry(name);
}

/* N-FILE, N counted from the base: the name must be the one the chain gives layer N now. */
static int disk_lookup(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name,
                       struct snapfs_node **child)
{
    g_autoptr(GPtrArray) chain = NULL;
    struct snapfs_domain *domain;
    struct snapfs_layer *layer;
    g_autofree char *expected = NULL;
    char *end = NULL;
    guint64 index = g_ascii_strtoull(name, &end, 10);

    if (end == name || *end != '-')
        return tree_no_such_entry(name);
    domain = tree_domain(tree, parent);
    chain = domain ? tree_disk_chain(domain, parent->disk) : NULL;
    host_domain_unref(domain);
    if (!chain)
        return -1;
    if (index >= chain->len)
        return tree_no_such_entry(name);
    layer = g_ptr_array_index(chain, index);
    expected = layer_folder_name(index, layer);
    if (strcmp(expected, name) != 0)
        return tree_no_such_entry(name);
    *child = tree_child_of_kind(parent, SNAPFS_NODE_LAYER);
    (*child)->layer = (int)index;
    (*child)->layer_file = g_strdup(layer->file);
    (*child)->live = index == chain->len - 1;
    (*child)->identity = tree_layer_identity(layer, (*child)->live);
    return 0;
}

/* ---- getattr ------------------------------------------------------------------ */

/* A layer's times are its image's. */
static int layer_getattr(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st)
{
    struct snapfs_domain *domain = tree_domain(tree, node);
    g_autoptr(GPtrArray) chain = NULL;
    struct snapfs_layer *layer;
    struct stat image;

    if (!domain)
        return -1;
    layer = tree_layer_of(domain, node, &chain);
    if (layer) {
        tree_stat_dir(tree, st, 0555, tree->mounted);
        if (stat(layer->file, &image) == 0) {
            st->st_mtim = image.st_mtim;
            st->st_ctim = image.st_ctim;
            st->st_atim = image.st_mtim;
        }
        tree_stat_ino(tree, node, st);
    }
    host_domain_unref(domain);
    return layer ? 0 : -1;
}

/* ---- readdir -------------------------------------------------------------------- */

/* The disks that have an image. */
static int layers_readdir(struct snapfs_tree *tree, const struct snapfs_node *node, snapfs_dirent_fn fn,
                          void *opaque)
{
    struct snapfs_domain *domain = tree_domain(tree, node);
    struct snapfs_node child = *node;
    int ret = 0;

    if (!domain)
        return -1;
    child.kind = SNAPFS_NODE_DISK;
    for (guint i = 0; i < domain->disks->len && ret == 0; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(domain->disks, i);

        if (!disk->file)
            continue;
        child.disk = disk->target;
        ret = tree_list_entry(tree, &child, disk->target, fn, opaque);
    }
    host_domain_unref(domain);
    return 0;
}

/* A disk's layers, base first; a remote host's disk is an empty folder. */
static int disk_readdir(struct snapfs_tree *tree, const struct snapfs_node *node, snapfs_dirent_fn fn,
                        void *opaque)
{
    struct snapfs_domain *domain = tree_domain(tree, node);
    g_autoptr(GPtrArray) chain = NULL;
    struct snapfs_node child = *node;
    int ret = 0;

    if (!domain)
        return -1;
    if (tree_check_local(tree, node) < 0)
        goto done;
    chain = tree_disk_chain(domain, node->disk);
    if (!chain) {
        /* A chain snapfs will not read (a format nobody recorded) is a refusal: logged, kept. */
        if (error_errno() == ENOTSUP)
            tree_remember_error(tree, node, "listing the layers", NULL);
        host_domain_unref(domain);
        return -1;
    }
    child.kind = SNAPFS_NODE_LAYER;
    for (guint i = 0; i < chain->len && ret == 0; i++) {
        struct snapfs_layer *layer = g_ptr_array_index(chain, i);
        g_autofree char *name = layer_folder_name(i, layer);

        child.layer = (int)i;
        child.layer_file = layer->file;
        ret = tree_list_entry(tree, &child, name, fn, opaque);
    }

done:
    host_domain_unref(domain);
    return 0;
}

/* ---- xattrs ------------------------------------------------------------------------ */

/* Only why a remote host's layers are empty. */
static int layers_xattrs(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list)
{
    struct snapfs_domain *domain = tree_domain(tree, node);

    if (!domain)
        return -1;
    if (tree_check_local(tree, node) < 0)
        tree_xattr_put(list, "error", g_strdup(error_message()));
    host_domain_unref(domain);
    return 0;
}

/* Why its layers are not shown: a remote host, or a chain that cannot be read. */
static int disk_xattrs(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list)
{
    struct snapfs_domain *domain = tree_domain(tree, node);
    g_autoptr(GPtrArray) chain = NULL;

    if (!domain)
        return -1;
    if (tree_check_local(tree, node) < 0 || !(chain = tree_disk_chain(domain, node->disk)))
        tree_xattr_put(list, "error", g_strdup(error_message()));
    host_domain_unref(domain);
    return 0;
}

/* The image, its format, size and backing file, the snapshot that froze it, and why its content is not shown. */
static int layer_xattrs(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list)
{
    struct snapfs_domain *domain = tree_domain(tree, node);
    g_autoptr(GPtrArray) chain = NULL;
    struct snapfs_layer *layer;
    struct snapfs_snapshot *frozen_by;

    if (!domain)
        return -1;
    layer = tree_layer_of(domain, node, &chain);
    if (!layer) {
        host_domain_unref(domain);
        return -1;
    }
    frozen_by = layer_frozen_by(domain, node->disk, chain, (guint)node->layer);
    tree_xattr_put(list, "file", g_strdup(layer->file));
    tree_xattr_put(list, "format", g_strdup(layer->format));
    tree_xattr_put(list, "virtual_size", g_strdup_printf("%" G_GUINT64_FORMAT, layer->virtual_size));
    if (layer->backing)
        tree_xattr_put(list, "backing", chain_resolve(layer->file, layer->backing));
    if (frozen_by)
        tree_xattr_put(list, "snapshot", g_strdup(frozen_by->name));
    tree_xattr_put(list, "live", g_strdup((guint)node->layer == chain->len - 1 ? "1" : "0"));
    host_domain_unref(domain);
    tree_content_put_error(tree, node, list);
    return 0;
}

const struct tree_kind tree_kind_layers = {
    .cache = SNAPFS_CACHE_SHORT,
    .lookup = layers_lookup,
    .getattr = tree_domain_folder_getattr,
    .readdir = layers_readdir,
    .xattrs = layers_xattrs,
};

const struct tree_kind tree_kind_disk = {
    .cache = SNAPFS_CACHE_SHORT,
    .lookup = disk_lookup,
    .getattr = tree_domain_folder_getattr,
    .readdir = disk_readdir,
    .xattrs = disk_xattrs,
};

/* A layer's name changes when its chain does: the kernel keeps nothing of it. */
const struct tree_kind tree_kind_layer = {
    .content = true,
    .cache = SNAPFS_CACHE_NONE,
    .lookup = tree_content_lookup,
    .getattr = layer_getattr,
    .readdir = tree_content_root_readdir,
    .xattrs = layer_xattrs,
};
