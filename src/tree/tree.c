/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The tree's life: made at mount with its hosts and guest pool, hooked into the engine, freed at unmount. */
#include "tree-priv.h"

/* The engine names each image a create or delete changed: views reading it must go. */
static void tree_on_chain_changed(const char *file, void *opaque)
{
    struct snapfs_tree *tree = opaque;

    tree_forget_views(tree);
    guest_pool_forget_file(tree->guests, file);
}


/* ---- the tree ------------------------------------------------------------- */

struct snapfs_tree *tree_new(struct snapfs_host **hosts, size_t n_hosts,
                                    const struct snapfs_tree_config *config)
{
    struct snapfs_tree *tree = g_new0(struct snapfs_tree, 1);

    tree->hosts = hosts;
    tree->n_hosts = n_hosts;
    tree->config = *config;
    tree->guests = guest_pool_new(&config->guest);
    tree->mounted = time(NULL);
    g_mutex_init(&tree->lock);
    tree->inos = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    tree->next_ino = 2;   /* 1 is the root's */
    tree->last_errors = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    tree->views = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)tree_view_unref);
    tree->images = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, tree_view_image_free);
    tree->handles = g_hash_table_new(g_direct_hash, g_direct_equal);
    tree->changing = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    tree->writers = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)tree_view_unref);
    tree->written = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    tree->agentless = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    g_mutex_init(&tree->restore_lock);
    engine_set_chain_changed(tree_on_chain_changed, tree);
    engine_set_before_change(tree_before_change, tree);
    return tree;
}


void tree_abort(struct snapfs_tree *tree)
{
    if (tree)
        guest_pool_abort(tree->guests);
}


void tree_free(struct snapfs_tree *tree)
{
    if (!tree)
        return;
    engine_set_chain_changed(NULL, NULL);
    engine_set_before_change(NULL, NULL);
    tree_release_all(tree);
    g_hash_table_unref(tree->views);
    g_hash_table_unref(tree->images);
    g_hash_table_unref(tree->handles);
    g_hash_table_unref(tree->changing);
    g_hash_table_unref(tree->writers);
    g_hash_table_unref(tree->written);
    g_hash_table_unref(tree->agentless);
    g_mutex_clear(&tree->restore_lock);
    guest_pool_free(tree->guests);
    g_hash_table_unref(tree->inos);
    g_hash_table_unref(tree->last_errors);
    g_mutex_clear(&tree->lock);
    g_free(tree);
}

