/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Nodes and what log lines call them, inode numbers, folders' attributes, xattr lists, refusals remembered: what every file of the tree uses. */
#include "tree-priv.h"
#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <string.h>
#include <time.h>

/* ---- nodes -------------------------------------------------------------- */

struct snapfs_node *tree_node_root(void)
{
    struct snapfs_node *node = g_new0(struct snapfs_node, 1);

    node->kind = SNAPFS_NODE_ROOT;
    node->layer = -1;
    return node;
}

struct snapfs_node *tree_node_copy(const struct snapfs_node *node)
{
    struct snapfs_node *copy = g_memdup2(node, sizeof(*node));

    copy->domain = g_strdup(node->domain);
    copy->snapshot = g_strdup(node->snapshot);
    copy->disk = g_strdup(node->disk);
    copy->layer_file = g_strdup(node->layer_file);
    copy->path = g_strdup(node->path);
    copy->identity = g_strdup(node->identity);
    return copy;
}

void tree_node_free(struct snapfs_node *node)
{
    if (!node)
        return;
    g_free(node->domain);
    g_free(node->snapshot);
    g_free(node->disk);
    g_free(node->layer_file);
    g_free(node->path);
    g_free(node->identity);
    g_free(node);
}

struct snapfs_node *tree_child_of_kind(const struct snapfs_node *parent, enum snapfs_node_kind kind)
{
    struct snapfs_node *child = tree_node_copy(parent);

    child->kind = kind;
    return child;
}

bool tree_node_in_live(const struct snapfs_node *node)
{
    /* A guest file names the snapshot or the disk of the layer it is in; one below live/ neither. */
    return node->kind == SNAPFS_NODE_LIVE || (node->kind == SNAPFS_NODE_GUEST && !node->snapshot && !node->disk);
}

int tree_no_such_entry(const char *name)
{
    error_set(ENOENT, "'%s' does not exist here", name);
    return -1;
}

struct snapfs_host *tree_host(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    return tree->hosts[node->host];
}

struct snapfs_domain *tree_domain(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    return host_get_domain(tree_host(tree, node), node->domain);
}

int tree_check_local(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    struct snapfs_host *host = tree_host(tree, node);

    if (host_is_local(host))
        return 0;
    error_set(ENOTSUP, "the images of '%s' are not files on this machine: its layers and guest files "
                     "can only be browsed where they are (mount snapfs on that host)", host_name(host));
    return -1;
}

/* What a node below a domain is, in a log line: "snapshot 's1' of domain 'h/web01'". */
static char *tree_describe_in_domain(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    g_autofree char *domain = g_strdup_printf("domain '%s/%s'", host_name(tree_host(tree, node)),
                                              node->domain);

    if (node->snapshot)
        return g_strdup_printf("snapshot '%s' of %s", node->snapshot, domain);
    if (node->layer >= 0)
        return g_strdup_printf("layer %d of disk '%s' of %s", node->layer, node->disk, domain);
    if (tree_node_in_live(node))
        return g_strdup_printf("live of %s", domain);
    if (node->kind == SNAPFS_NODE_REVERT || node->kind == SNAPFS_NODE_LAYERS || node->kind == SNAPFS_NODE_DISK)
        return g_strdup_printf("%s%s%s of %s", node->kind == SNAPFS_NODE_REVERT ? "revert" : "layers",
                               node->disk ? "/" : "", node->disk ? node->disk : "", domain);
    return g_steal_pointer(&domain);
}

char *tree_node_describe(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    g_autofree char *where = NULL;

    if (node->kind == SNAPFS_NODE_ROOT)
        return g_strdup("the mount's root");
    if (!node->domain)
        return g_strdup_printf("host '%s'", host_name(tree_host(tree, node)));
    where = tree_describe_in_domain(tree, node);
    if (node->kind == SNAPFS_NODE_GUEST)
        return g_strdup_printf("'%s' in %s", node->path, where);
    return g_steal_pointer(&where);
}

/* ---- inode numbers and attributes ----------------------------------------- */

/*
 * Inode numbers: stable for as long as snapfs runs, distinct for distinct
 * objects (diff and cp -a compare them), and equal for a guest's hard links.
 */
ino_t tree_ino(struct snapfs_tree *tree, const char *key)
{
    gpointer value;
    ino_t ino;

    g_mutex_lock(&tree->lock);
    value = g_hash_table_lookup(tree->inos, key);
    if (value) {
        ino = GPOINTER_TO_SIZE(value);
    } else {
        ino = tree->next_ino++;
        g_hash_table_insert(tree->inos, g_strdup(key), GSIZE_TO_POINTER(ino));
    }
    g_mutex_unlock(&tree->lock);
    return ino;
}

/*
 * Appends @field to a key as LENGTH:FIELD.  Names hold any character ("a|b" is a fine domain
 * name, "x#y" a fine snapshot name): joined by a separator, two different sets of names could
 * make one key, and so one inode number or one view.
 */
void tree_key_add(GString *key, const char *field)
{
    g_string_append_printf(key, "%zu:%s", field ? strlen(field) : 0, field ? field : "");
}

char *tree_key_of(const struct snapfs_node *node)
{
    GString *key = g_string_new(NULL);

    g_string_append_printf(key, "%d|%d|", node->kind, node->host);
    tree_key_add(key, node->domain);
    tree_key_add(key, node->snapshot);
    tree_key_add(key, node->disk);
    g_string_append_printf(key, "%d|", node->layer);
    tree_key_add(key, node->layer_file);
    return g_string_free(key, FALSE);
}

void tree_stat_ino(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st)
{
    g_autofree char *key = tree_key_of(node);

    st->st_ino = tree_ino(tree, key);
}

void tree_stat_dir(struct snapfs_tree *tree, struct stat *st, mode_t mode, time_t when)
{
    memset(st, 0, sizeof(*st));
    st->st_mode = S_IFDIR | mode;
    st->st_nlink = 2;
    st->st_uid = tree->config.uid;
    st->st_gid = tree->config.gid;
    st->st_blksize = 4096;
    st->st_atime = st->st_mtime = st->st_ctime = when;
}

int tree_domain_folder_getattr(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st)
{
    struct snapfs_domain *domain = tree_domain(tree, node);

    if (!domain)
        return -1;
    host_domain_unref(domain);
    tree_stat_dir(tree, st, 0555, tree->mounted);
    tree_stat_ino(tree, node, st);
    return 0;
}

/* A request on a domain failed: log it, naming the domain (and the snapshot), and keep it for user.snapfs.last_error. */
void tree_remember_error(struct snapfs_tree *tree, const struct snapfs_node *node, const char *what,
                         const char *snapshot)
{
    int err = error_errno();
    g_autofree char *message = g_strdup(error_message());
    g_autofree char *label = host_domain_label(tree_host(tree, node), node->domain);

    if (snapshot)
        log_warn("domain '%s': %s of snapshot '%s' failed: %s", label, what, snapshot, message);
    else
        log_warn("domain '%s': %s failed: %s", label, what, message);
    error_set(err, "%s", message);   /* naming the domain may have asked libvirt */
    g_mutex_lock(&tree->lock);
    g_hash_table_replace(tree->last_errors, g_strdup_printf("%d/%s", node->host, node->domain),
                         g_strdup(error_message()));
    g_mutex_unlock(&tree->lock);
}

void tree_xattr_put(struct tree_xattrs *list, const char *name, char *value)
{
    g_ptr_array_add(list->names, g_strconcat(XATTR_PREFIX, name, NULL));
    g_ptr_array_add(list->values, value);
}

