/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The kernel's node ids and the tree nodes they stand for, counted as the kernel looks them up and forgets them. */
#include "fs.h"

#include <string.h>

struct fs_inode {
    fuse_ino_t ino;
    char *key;                 /* parent id and name */
    struct snapfs_node *node;
    uint64_t nlookup;
};

struct fs_inodes {
    GMutex lock;
    GHashTable *by_ino;        /* fuse_ino_t -> struct fs_inode * */
    GHashTable *by_key;        /* key -> struct fs_inode * */
    fuse_ino_t next;
};

static void inode_free(gpointer data)
{
    struct fs_inode *inode = data;

    g_free(inode->key);
    snapfs_node_free(inode->node);
    g_free(inode);
}

struct fs_inodes *fs_inodes_new(void)
{
    struct fs_inodes *inodes = g_new0(struct fs_inodes, 1);
    struct fs_inode *root = g_new0(struct fs_inode, 1);

    g_mutex_init(&inodes->lock);
    inodes->by_ino = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, inode_free);
    inodes->by_key = g_hash_table_new(g_str_hash, g_str_equal);
    root->ino = FUSE_ROOT_ID;
    root->key = g_strdup("");
    root->node = snapfs_node_root();
    root->nlookup = 1;
    g_hash_table_insert(inodes->by_ino, &root->ino, root);
    inodes->next = FUSE_ROOT_ID + 1;
    return inodes;
}

void fs_inodes_free(struct fs_inodes *inodes)
{
    if (!inodes)
        return;
    g_hash_table_unref(inodes->by_key);
    g_hash_table_unref(inodes->by_ino);
    g_mutex_clear(&inodes->lock);
    g_free(inodes);
}

fuse_ino_t fs_inodes_get(struct fs_inodes *inodes, fuse_ino_t parent, const char *name,
                         const struct snapfs_node *node)
{
    /* The identity makes a name that now shows other content a new inode, so the kernel drops what it cached. */
    g_autofree char *key = g_strdup_printf("%" G_GUINT64_FORMAT "/%s#%s", (guint64)parent, name,
                                           node->identity ? node->identity : "");
    struct fs_inode *inode;
    fuse_ino_t ino;

    g_mutex_lock(&inodes->lock);
    inode = g_hash_table_lookup(inodes->by_key, key);
    if (inode) {
        /* The name may lead to a new object now (a layer renumbered): keep the freshest node. */
        snapfs_node_free(inode->node);
        inode->node = snapfs_node_copy(node);
    } else {
        inode = g_new0(struct fs_inode, 1);
        inode->ino = inodes->next++;
        inode->key = g_steal_pointer(&key);
        inode->node = snapfs_node_copy(node);
        g_hash_table_insert(inodes->by_ino, &inode->ino, inode);
        g_hash_table_insert(inodes->by_key, inode->key, inode);
    }
    inode->nlookup++;
    ino = inode->ino;
    g_mutex_unlock(&inodes->lock);
    return ino;
}

struct snapfs_node *fs_inodes_node(struct fs_inodes *inodes, fuse_ino_t ino)
{
    struct fs_inode *inode;
    struct snapfs_node *node = NULL;
    guint64 key = ino;

    g_mutex_lock(&inodes->lock);
    inode = g_hash_table_lookup(inodes->by_ino, &key);
    if (inode)
        node = snapfs_node_copy(inode->node);
    g_mutex_unlock(&inodes->lock);
    return node;
}

void fs_inodes_forget(struct fs_inodes *inodes, fuse_ino_t ino, uint64_t nlookup)
{
    struct fs_inode *inode;
    guint64 key = ino;

    if (ino == FUSE_ROOT_ID)
        return;
    g_mutex_lock(&inodes->lock);
    inode = g_hash_table_lookup(inodes->by_ino, &key);
    if (inode) {
        inode->nlookup = inode->nlookup > nlookup ? inode->nlookup - nlookup : 0;
        if (inode->nlookup == 0) {
            g_hash_table_remove(inodes->by_key, inode->key);
            g_hash_table_remove(inodes->by_ino, &key);
        }
    }
    g_mutex_unlock(&inodes->lock);
}
