/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What a snapshot, a layer or live stands for: a disk's chain now, the layer a node names in it, and the identities views are keyed by. */

/*
 * Policy.  A view is made once per identity: a snapshot's is its name and creation time (one
 * deleted and made again under the same name is another); a frozen layer's includes its image's
 * mtime and size, so a merge that rewrites it in place makes another (src/README.md, "The tree
 * and its names").  The layer and snapshot kinds and the views all read them from here.
 */
#include "tree-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

GPtrArray *tree_disk_chain(struct snapfs_domain *domain, const char *target)
{
    struct snapfs_disk *disk = host_domain_find_disk(domain, target);

    if (!disk || !disk->file) {
        error_set(ENOENT, "domain '%s' has no disk image for '%s'", domain->name, target);
        return NULL;
    }
    return chain_read(disk->file, disk->format);
}


struct snapfs_layer *tree_layer_of(struct snapfs_domain *domain, const struct snapfs_node *node, GPtrArray **chain_out)
{
    g_autoptr(GPtrArray) chain = tree_disk_chain(domain, node->disk);
    struct snapfs_layer *layer;

    if (!chain)
        return NULL;
    if (node->layer < 0 || (guint)node->layer >= chain->len) {
        error_set(ENOENT, "disk '%s' of domain '%s' has no layer %d", node->disk, domain->name, node->layer);
        return NULL;
    }
    layer = g_ptr_array_index(chain, node->layer);
    if (strcmp(layer->file, node->layer_file) != 0) {
        error_set(ENOENT, "layer %d of disk '%s' of domain '%s' is no longer '%s'",
                         node->layer, node->disk, domain->name, node->layer_file);
        return NULL;
    }
    *chain_out = g_ptr_array_ref(chain);
    return layer;
}


/*
 * What a layer's content depends on: a merge (rmdir, revert) rewrites a
 * frozen image in place, so its modification time is part of it.  The live
 * top changes all the time and is cached only briefly anyway.
 */
char *tree_layer_identity(const struct snapfs_layer *layer, bool live)
{
    struct stat st;

    if (live || stat(layer->file, &st) < 0)
        return g_strdup(layer->file);
    return g_strdup_printf("%s@%lld.%09ld:%lld", layer->file, (long long)st.st_mtim.tv_sec,
                           st.st_mtim.tv_nsec, (long long)st.st_size);
}


char *tree_snapshot_identity(const struct snapfs_snapshot *snap)
{
    return g_strdup_printf("%s@%lld", snap->name, snap->created);
}


/*
 * live/ reads each disk through its whole chain from the top: mkdir puts a new top on every
 * disk, a revert new tops on another base, an rmdir of the latest snapshot pivots back to the
 * image below, so each of them makes live/ another folder with another view.  A merge below an
 * unchanged top keeps this identity: the view notices it through its images (views.c).
 */
char *tree_live_identity(const struct snapfs_domain *domain)
{
    GString *id = g_string_new("live");

    for (guint i = 0; i < domain->disks->len; i++) {
        const struct snapfs_disk *disk = g_ptr_array_index(domain->disks, i);

        if (!disk->file)
            continue;
        g_string_append_c(id, '|');
        tree_key_add(id, disk->target);
        tree_key_add(id, disk->file);
    }
    return g_string_free(id, FALSE);
}
