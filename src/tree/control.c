/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The revert kind: DOMAIN/revert, the control file that reads as the current snapshot's name and takes revert requests. */
#include "tree-priv.h"

#include <string.h>

/* What cat shows: the current snapshot's name and a newline, or nothing; NULL with the reason. */
static char *revert_file_text(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    struct snapfs_domain *domain = tree_domain(tree, node);
    struct snapfs_snapshot *current = domain ? host_domain_current_snapshot(domain) : NULL;
    char *text = domain ? g_strdup_printf("%s%s", current ? current->name : "", current ? "\n" : "") : NULL;

    host_domain_unref(domain);
    return text;
}

/* A file the mounting user may write (0644, 0444 with -o ro), as long as its text. */
static int revert_file_getattr(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st)
{
    g_autofree char *text = revert_file_text(tree, node);

    if (!text)
        return -1;
    tree_stat_dir(tree, st, 0, tree->mounted);
    st->st_mode = S_IFREG | (tree->config.read_only ? 0444 : 0644);
    st->st_nlink = 1;
    st->st_size = (off_t)strlen(text);
    tree_stat_ino(tree, node, st);
    return 0;
}

static ssize_t revert_file_read(struct snapfs_tree *tree, const struct snapfs_node *node, char *buf, size_t size,
                                off_t offset)
{
    g_autofree char *text = revert_file_text(tree, node);
    size_t len = text ? strlen(text) : 0;

    if (!text)
        return -1;
    if ((size_t)offset >= len)
        return 0;
    size = MIN(size, len - (size_t)offset);
    memcpy(buf, text + offset, size);
    return (ssize_t)size;
}

const struct tree_kind tree_kind_revert = {
    .cache = SNAPFS_CACHE_NONE,
    .getattr = revert_file_getattr,
    .read = revert_file_read,
    .write = tree_revert_write,
};
