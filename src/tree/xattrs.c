/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Extended attributes: the user.snapfs.* list each kind makes, read one by one or listed; the guest's own inside content. */
#include "tree-priv.h"
#include "snapfs/error.h"
#include "snapfs/xattr.h"

#include <errno.h>
#include <string.h>

static void xattrs_init(struct tree_xattrs *list)
{
    list->names = g_ptr_array_new_with_free_func(g_free);
    list->values = g_ptr_array_new_with_free_func(g_free);
}

static void xattrs_clear(struct tree_xattrs *list)
{
    g_clear_pointer(&list->names, g_ptr_array_unref);
    g_clear_pointer(&list->values, g_ptr_array_unref);
}

/* The attributes snapfs shows on @node, in its kind's order (src/README.md, "Extended attributes"). */
static int xattrs_of(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list)
{
    const struct tree_kind *kind = tree_kind_of(node);

    xattrs_init(list);
    return kind->xattrs ? kind->xattrs(tree, node, list) : 0;
}

/*
 * The value of attribute @name in @list, or NULL.  ENODATA is recorded either way: what the
 * kinds recorded while making the list (a view that failed, shown as user.snapfs.error) is
 * not the answer's reason.
 */
static const char *xattrs_find(const struct tree_xattrs *list, const char *name)
{
    error_set(ENODATA, "no attribute '%s'", name);
    for (guint i = 0; i < list->names->len; i++) {
        if (strcmp(g_ptr_array_index(list->names, i), name) == 0)
            return g_ptr_array_index(list->values, i);
    }
    return NULL;
}

ssize_t tree_getxattr(struct snapfs_tree *tree, const struct snapfs_node *node,
                             const char *name, char *buf, size_t size)
{
    const struct tree_kind *kind = tree_kind_of(node);
    struct tree_xattrs list;
    const char *value;
    ssize_t ret = -1;

    if (kind->getxattr)
        return kind->getxattr(tree, node, name, buf, size);
    if (xattrs_of(tree, node, &list) == 0 && (value = xattrs_find(&list, name)))
        ret = xattr_copy_out(value, strlen(value), buf, size);
    xattrs_clear(&list);
    return ret;
}

ssize_t tree_listxattr(struct snapfs_tree *tree, const struct snapfs_node *node, char *buf, size_t size)
{
    const struct tree_kind *kind = tree_kind_of(node);
    g_autoptr(GString) names = g_string_new(NULL);
    struct tree_xattrs list;
    ssize_t ret = -1;

    if (kind->listxattr)
        return kind->listxattr(tree, node, buf, size);
    if (xattrs_of(tree, node, &list) == 0) {
        /* Each name with its terminating NUL, as listxattr(2) gives them. */
        for (guint i = 0; i < list.names->len; i++)
            g_string_append_len(names, g_ptr_array_index(list.names, i),
                                (gssize)strlen(g_ptr_array_index(list.names, i)) + 1);
        ret = xattr_copy_out(names->str, names->len, buf, size);
    }
    xattrs_clear(&list);
    return ret;
}
