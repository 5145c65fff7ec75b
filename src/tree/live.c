/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The live kind: DOMAIN/live, the guest as the domain's disks read now (written while shut off: restore.c). */

/*
 * Policy.  live is a snapshot folder of the present: every disk of the domain, read through its
 * whole chain from its top image, shown as a snapshot's guest files are (the guest kind below
 * it).  Its content moves, so the kernel and the guest reader keep it briefly, as the live top
 * layer's; its identity is the disks' top images, so a chain change makes it another folder
 * with another view.  A remote host's is an empty folder whose user.snapfs.error says why.
 * Changes below it are restore.c's (src/README.md, "Restoring into live").
 */
#include "tree-priv.h"

/* live = 1, as on the live top layer; then why it shows nothing, if it does not. */
static int live_xattrs(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list)
{
    tree_xattr_put(list, "live", g_strdup("1"));
    tree_content_put_error(tree, node, list);
    return 0;
}

const struct tree_kind tree_kind_live = {
    .content = true,
    .cache = SNAPFS_CACHE_LIVE,
    .lookup = tree_content_lookup,
    .getattr = tree_domain_folder_getattr,
    .readdir = tree_content_root_readdir,
    .xattrs = live_xattrs,
};
