/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The root, host and domain kinds: what libvirt's connections and domains show as folders. */

/*
 * Policy.  With one host the root is that host's folder of domains; with several it holds a
 * folder per host, and a host that is down is an empty folder whose user.snapfs.error says
 * why, a lookup in it EIO; with one host, what is cached is served until it is back
 * (src/README.md, "The tree and its names").
 */
#include "tree-priv.h"
#include "snapfs/error.h"

#include <errno.h>
#include <string.h>

/* The root lists hosts only when there are several; with one, it is that host's folder. */
static bool root_is_host_folder(struct snapfs_tree *tree)
{
    return tree->n_hosts == 1;
}

/* Whether the host of one of several hosts' folders is down; records the reason when it is. */
static bool host_folder_down(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    g_autofree char *down = host_error(tree_host(tree, node));

    if (down)
        error_set(EIO, "%s is not reachable: %s", host_name(tree_host(tree, node)), down);
    return down != NULL;
}

/* ---- lookup ------------------------------------------------------------------ */

/* A domain's folder: whether the domain exists, getattr finds out. */
static int hosts_lookup_domain(const struct snapfs_node *parent, const char *name, struct snapfs_node **child)
{
    *child = tree_child_of_kind(parent, SNAPFS_NODE_DOMAIN);
    (*child)->domain = g_strdup(name);
    return 0;
}

static int root_lookup(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name,
                       struct snapfs_node **child)
{
    if (root_is_host_folder(tree))
        return hosts_lookup_domain(parent, name, child);
    for (size_t i = 0; i < tree->n_hosts; i++) {
        if (strcmp(host_name(tree->hosts[i]), name) == 0) {
            *child = tree_child_of_kind(parent, SNAPFS_NODE_HOST);
            (*child)->host = (int)i;
            return 0;
        }
    }
    return tree_no_such_entry(name);
}

static int host_lookup(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name,
                       struct snapfs_node **child)
{
    if (host_folder_down(tree, parent))
        return -1;
    return hosts_lookup_domain(parent, name, child);
}

/*
 * revert, layers, live, or a snapshot: a snapshot deleted and made again under the same name is
 * another directory, and so is live once a chain change gave the disks other top images.
 */
static int domain_lookup(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name,
                         struct snapfs_node **child)
{
    struct snapfs_domain *domain;
    struct snapfs_snapshot *snap = NULL;

    if (strcmp(name, "revert") == 0) {
        *child = tree_child_of_kind(parent, SNAPFS_NODE_REVERT);
        return 0;
    }
    if (strcmp(name, "layers") == 0) {
        *child = tree_child_of_kind(parent, SNAPFS_NODE_LAYERS);
        return 0;
    }
    domain = tree_domain(tree, parent);
    if (!domain)
        return -1;
    if (strcmp(name, "live") == 0) {
        *child = tree_child_of_kind(parent, SNAPFS_NODE_LIVE);
        (*child)->live = true;
        (*child)->identity = tree_live_identity(domain);
    } else if ((snap = host_domain_find_snapshot(domain, name))) {
        *child = tree_child_of_kind(parent, SNAPFS_NODE_SNAPSHOT);
        (*child)->snapshot = g_strdup(name);
        (*child)->identity = tree_snapshot_identity(snap);
    }
    host_domain_unref(domain);
    return *child ? 0 : tree_no_such_entry(name);
}

/* ---- getattr ------------------------------------------------------------------ */

static int root_getattr(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st)
{
    tree_stat_dir(tree, st, 0555, tree->mounted);
    st->st_ino = 1;
    return 0;
}

static int host_getattr(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st)
{
    tree_stat_dir(tree, st, 0555, tree->mounted);
    tree_stat_ino(tree, node, st);
    return 0;
}

/* Writable (mkdir, rmdir) unless mounted ro; a link for each snapshot folder, layers and live. */
static int domain_getattr(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st)
{
    struct snapfs_domain *domain = tree_domain(tree, node);

    if (!domain)
        return -1;
    tree_stat_dir(tree, st, tree->config.read_only ? 0555 : 0755, tree->mounted);
    st->st_nlink = 4 + domain->snapshots->len;
    host_domain_unref(domain);
    tree_stat_ino(tree, node, st);
    return 0;
}

/* ---- readdir -------------------------------------------------------------------- */

/* A host's domains. */
static int hosts_list_domains(struct snapfs_tree *tree, const struct snapfs_node *node, snapfs_dirent_fn fn,
                              void *opaque)
{
    g_autoptr(GPtrArray) names = host_list_domains(tree_host(tree, node));
    struct snapfs_node child = *node;
    int ret = 0;

    if (!names)
        return -1;
    child.kind = SNAPFS_NODE_DOMAIN;
    for (guint i = 0; i < names->len && ret == 0; i++) {
        child.domain = g_ptr_array_index(names, i);
        ret = tree_list_entry(tree, &child, child.domain, fn, opaque);
    }
    return 0;
}

static int root_readdir(struct snapfs_tree *tree, const struct snapfs_node *node, snapfs_dirent_fn fn,
                        void *opaque)
{
    struct snapfs_node child = *node;
    int ret = 0;

    if (root_is_host_folder(tree))
        return hosts_list_domains(tree, node, fn, opaque);
    child.kind = SNAPFS_NODE_HOST;
    for (size_t i = 0; i < tree->n_hosts && ret == 0; i++) {
        child.host = (int)i;
        ret = tree_list_entry(tree, &child, host_name(tree->hosts[i]), fn, opaque);
    }
    return 0;
}

/* One of several hosts that is down is an empty folder (user.snapfs.error says why). */
static int host_readdir(struct snapfs_tree *tree, const struct snapfs_node *node, snapfs_dirent_fn fn,
                        void *opaque)
{
    if (host_folder_down(tree, node))
        return 0;
    return hosts_list_domains(tree, node, fn, opaque);
}

/* A snapshot named like a control file, "." or ".." cannot be shown (src/README.md, "The tree and its names"). */
static bool domain_shows_snapshot(const char *name)
{
    return !engine_name_reserved(name) && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static int domain_readdir(struct snapfs_tree *tree, const struct snapfs_node *node, snapfs_dirent_fn fn,
                          void *opaque)
{
    struct snapfs_domain *domain = tree_domain(tree, node);
    struct snapfs_node child = *node;
    int ret;

    if (!domain)
        return -1;
    child.kind = SNAPFS_NODE_REVERT;
    ret = tree_list_entry(tree, &child, "revert", fn, opaque);
    child.kind = SNAPFS_NODE_LAYERS;
    if (ret == 0)
        ret = tree_list_entry(tree, &child, "layers", fn, opaque);
    child.kind = SNAPFS_NODE_LIVE;
    if (ret == 0)
        ret = tree_list_entry(tree, &child, "live", fn, opaque);
    child.kind = SNAPFS_NODE_SNAPSHOT;
    for (guint i = 0; i < domain->snapshots->len && ret == 0; i++) {
        struct snapfs_snapshot *snap = g_ptr_array_index(domain->snapshots, i);

        if (!domain_shows_snapshot(snap->name))
            continue;
        child.snapshot = snap->name;
        ret = tree_list_entry(tree, &child, snap->name, fn, opaque);
    }
    host_domain_unref(domain);
    return 0;
}

/* ---- xattrs ------------------------------------------------------------------------ */

/* The connection's URI, and why it is down. */
static void hosts_put_xattrs(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list)
{
    struct snapfs_host *host = tree_host(tree, node);
    char *down = host_error(host);

    tree_xattr_put(list, "uri", g_strdup(host_uri(host)));
    if (down)
        tree_xattr_put(list, "error", down);
}

/* With one host, the host's; and what the guest reader has done: a second walk of a frozen snapshot makes no appliance call. */
static int root_xattrs(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list)
{
    struct guest_pool_stats stats;

    if (root_is_host_folder(tree))
        hosts_put_xattrs(tree, node, list);
    guest_pool_get_stats(tree->guests, &stats);
    tree_xattr_put(list, "appliances", g_strdup_printf("%u", stats.running));
    tree_xattr_put(list, "appliance_starts", g_strdup_printf("%u", stats.launches));
    tree_xattr_put(list, "appliance_disks_added", g_strdup_printf("%u", stats.disks_added));
    tree_xattr_put(list, "appliance_calls", g_strdup_printf("%u", stats.calls));
    tree_xattr_put(list, "inspections", g_strdup_printf("%u", stats.inspections));
    /* Bytes the guest caches hold now and at most, within -o cache_size. */
    tree_xattr_put(list, "cached", g_strdup_printf("%zu", stats.cached));
    tree_xattr_put(list, "cached_peak", g_strdup_printf("%zu", stats.cache_peak));
    return 0;
}

static int host_xattrs(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list)
{
    hosts_put_xattrs(tree, node, list);
    return 0;
}

/* What the domain is doing: an operation of the engine, else an appliance starting; NULL for nothing. */
static char *domain_progress(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    g_autoptr(virConnect) conn = host_conn(tree_host(tree, node));
    g_autofree char *group = NULL;
    char *progress = conn ? engine_progress(conn, node->domain) : NULL;

    if (progress)
        return progress;
    group = tree_group(tree, node);
    return guest_pool_progress(tree->guests, group);
}

static int domain_xattrs(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list)
{
    struct snapfs_domain *domain = tree_domain(tree, node);
    g_autofree char *key = g_strdup_printf("%d/%s", node->host, node->domain);
    char *last, *progress;

    if (!domain)
        return -1;
    g_mutex_lock(&tree->lock);
    last = g_strdup(g_hash_table_lookup(tree->last_errors, key));
    g_mutex_unlock(&tree->lock);
    progress = domain_progress(tree, node);
    tree_xattr_put(list, "state", g_strdup(domain->running ? "running" : "shutoff"));
    if (domain->uuid)
        tree_xattr_put(list, "uuid", g_strdup(domain->uuid));
    if (last)
        tree_xattr_put(list, "last_error", last);
    if (progress)
        tree_xattr_put(list, "progress", progress);
    host_domain_unref(domain);
    return 0;
}

const struct tree_kind tree_kind_root = {
    .cache = SNAPFS_CACHE_SHORT,
    .lookup = root_lookup,
    .getattr = root_getattr,
    .readdir = root_readdir,
    .xattrs = root_xattrs,
};

const struct tree_kind tree_kind_host = {
    .cache = SNAPFS_CACHE_SHORT,
    .lookup = host_lookup,
    .getattr = host_getattr,
    .readdir = host_readdir,
    .xattrs = host_xattrs,
};

const struct tree_kind tree_kind_domain = {
    .cache = SNAPFS_CACHE_SHORT,
    .holds_snapshots = true,
    .lookup = domain_lookup,
    .getattr = domain_getattr,
    .readdir = domain_readdir,
    .xattrs = domain_xattrs,
};
