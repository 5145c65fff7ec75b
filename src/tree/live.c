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
#include "snapfs/error.h"

#include <string.h>

/* Why a disk of @domain keeps live/ read-only (neither qcow2 nor raw), or NULL. */
static char *live_disks_read_only(struct snapfs_domain *domain)
{
    unsigned images = 0;

    for (guint i = 0; i < domain->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(domain->disks, i);

        if (!disk->file)
            continue;
        images++;
        if (!disk->format || (strcmp(disk->format, "qcow2") != 0 && strcmp(disk->format, "raw") != 0))
            return g_strdup_printf("read-only: disk '%s' is %s, and only qcow2 and raw disks are written",
                                   disk->target, disk->format ? disk->format : "of no recorded format");
    }
    return images ? NULL : g_strdup("read-only: the domain has no disk with an image");
}

char *tree_live_read_only(struct snapfs_tree *tree, const struct snapfs_node *node, struct snapfs_domain *domain,
                          struct snapfs_agent **agent)
{
    if (tree->config.read_only)
        return g_strdup("read-only: mounted with -o ro");
    if (tree_check_local(tree, node) < 0)
        return g_strdup_printf("read-only: %s", error_message());
    if (domain->running) {
        /* Written through the guest's own agent, whatever its disks' formats; the caller may keep the one asked. */
        struct snapfs_agent *found = tree_live_agent(tree, node);

        if (!found)
            return g_strdup_printf("read-only while the domain runs: %s; shut it down to restore files into it",
                                   error_message());
        if (agent)
            *agent = found;
        else
            agent_free(found);
        return NULL;
    }
    return live_disks_read_only(domain);
}

/* live = 1, as on the live top layer; then why it shows nothing, if it does not, else why it is read-only, if it is. */
static int live_xattrs(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list)
{
    guint shown = list->names->len;
    struct snapfs_domain *domain;
    char *why = NULL;

    tree_xattr_put(list, "live", g_strdup("1"));
    tree_content_put_error(tree, node, list);
    if (list->names->len == shown + 1 && (domain = tree_domain(tree, node))) {
        why = tree_live_read_only(tree, node, domain, NULL);
        host_domain_unref(domain);
    }
    if (why)
        tree_xattr_put(list, "error", why);
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
