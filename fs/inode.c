/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The kernel's node ids and the tree nodes they stand for, counted as the kernel looks them up and forgets them. */

/*
 * Policy.  An id lives for as long as the kernel holds it, and the kernel holds what it looked up
 * until it runs short of memory: a walk of a million guest files would keep a million ids here,
 * whatever bound the guest caches keep.  So past @limit ids, the ones looked up least recently (a
 * lookup in a folder counts as a use of the folder too) are dropped from the kernel's cache with
 * fuse_lowlevel_notify_inval_entry(), and the kernel forgets them; it looks them up again when it
 * needs them, which the tree answers from its caches.  A thread of its own does that: the kernel
 * may wait, to invalidate a name, for a request in that folder that a FUSE thread is answering.
 * An id the kernel cannot drop (an open file, a working directory) is asked again on a later turn.
 * Directories go only when files alone are not enough: a process's working directory that the
 * kernel drops from its cache answers getcwd() with ENOENT.
 */
#include "fs.h"

#include <string.h>

struct fs_inode {
    fuse_ino_t ino;
    fuse_ino_t parent;
    char *key;                 /* parent id, "/", the name's length, ":", name, "#", identity */
    size_t name_at;            /* where the name starts in the key */
    size_t name_len;
    bool dir;
    struct snapfs_node *node;
    uint64_t nlookup;
    GList link;                /* in inodes->lru, except the root's */
};

struct fs_inodes {
    GMutex lock;               /* everything here */
    GHashTable *by_ino;        /* fuse_ino_t -> struct fs_inode * */
    GHashTable *by_key;        /* key -> struct fs_inode * */
    fuse_ino_t next;
    GQueue lru;                /* struct fs_inode *, least recently looked up first */
    unsigned limit;
    GCond wake;                /* the pruner: more than @limit ids, or stopping */
    GThread *pruner;
    struct fuse_session *session;
    bool stopping;
};

static void inode_free(gpointer data)
{
    struct fs_inode *inode = data;

    g_free(inode->key);
    tree_node_free(inode->node);
    g_free(inode);
}

struct fs_inodes *fs_inodes_new(unsigned limit)
{
    struct fs_inodes *inodes = g_new0(struct fs_inodes, 1);
    struct fs_inode *root = g_new0(struct fs_inode, 1);

    g_mutex_init(&inodes->lock);
    g_cond_init(&inodes->wake);
    g_queue_init(&inodes->lru);
    inodes->limit = limit;
    inodes->by_ino = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, inode_free);
    inodes->by_key = g_hash_table_new(g_str_hash, g_str_equal);
    root->ino = FUSE_ROOT_ID;
    root->key = g_strdup("");
    root->node = tree_node_root();
    root->nlookup = 1;
    g_hash_table_insert(inodes->by_ino, &root->ino, root);
    inodes->next = FUSE_ROOT_ID + 1;
    return inodes;
}

void fs_inodes_free(struct fs_inodes *inodes)
{
    if (!inodes)
        return;
    fs_inodes_stop_pruning(inodes);
    g_hash_table_unref(inodes->by_key);
    g_hash_table_unref(inodes->by_ino);
    g_cond_clear(&inodes->wake);
    g_mutex_clear(&inodes->lock);
    g_free(inodes);
}

/* @inode was used: last in the order (lock held). */
static void inode_touch(struct fs_inodes *inodes, struct fs_inode *inode)
{
    if (!inode->link.data)
        return;
    g_queue_unlink(&inodes->lru, &inode->link);
    g_queue_push_tail_link(&inodes->lru, &inode->link);
}

fuse_ino_t fs_inodes_get(struct fs_inodes *inodes, fuse_ino_t parent, const char *name,
                         const struct snapfs_node *node, bool dir)
{
    /*
     * The identity makes a name that now shows other content a new inode, so the kernel drops what it cached.
     * The name's length makes the key unambiguous whatever the name and identity hold ('#' is fine in both).
     */
    g_autofree char *key = g_strdup_printf("%" G_GUINT64_FORMAT "/%zu:%s#%s", (guint64)parent, strlen(name), name,
                                           node->identity ? node->identity : "");
    struct fs_inode *inode, *folder;
    guint64 parent_key = parent;
    fuse_ino_t ino;

    g_mutex_lock(&inodes->lock);
    inode = g_hash_table_lookup(inodes->by_key, key);
    if (inode) {
        /* The name may lead to a new object now (a layer renumbered): keep the freshest node. */
        tree_node_free(inode->node);
        inode->node = tree_node_copy(node);
        inode_touch(inodes, inode);
    } else {
        inode = g_new0(struct fs_inode, 1);
        inode->ino = inodes->next++;
        inode->parent = parent;
        inode->key = g_steal_pointer(&key);
        inode->name_at = (size_t)(strchr(inode->key, ':') + 1 - inode->key);
        inode->name_len = strlen(name);
        inode->dir = dir;
        inode->node = tree_node_copy(node);
        inode->link.data = inode;
        g_hash_table_insert(inodes->by_ino, &inode->ino, inode);
        g_hash_table_insert(inodes->by_key, inode->key, inode);
        g_queue_push_tail_link(&inodes->lru, &inode->link);
        if (inodes->lru.length > inodes->limit && inodes->pruner)
            g_cond_signal(&inodes->wake);
    }
    folder = g_hash_table_lookup(inodes->by_ino, &parent_key);
    if (folder)
        inode_touch(inodes, folder);
    inode->nlookup++;
    ino = inode->ino;
    g_mutex_unlock(&inodes->lock);
    return ino;
}

void fs_inodes_renamed(struct fs_inodes *inodes, const struct snapfs_node *dir, const char *from, const char *to)
{
    size_t n = strlen(from);
    GHashTableIter iter;
    gpointer value;

    g_mutex_lock(&inodes->lock);
    g_hash_table_iter_init(&iter, inodes->by_ino);
    while (g_hash_table_iter_next(&iter, NULL, &value)) {
        struct snapfs_node *node = ((struct fs_inode *)value)->node;
        char *path;

        if (!node || !node->path || !tree_node_in_live(node) || node->host != dir->host ||
            g_strcmp0(node->domain, dir->domain) != 0 || strncmp(node->path, from, n) != 0 ||
            (node->path[n] != '\0' && node->path[n] != '/'))
            continue;
        path = g_strconcat(to, node->path + n, NULL);
        g_free(node->path);
        node->path = path;
    }
    g_mutex_unlock(&inodes->lock);
}

struct snapfs_node *fs_inodes_node(struct fs_inodes *inodes, fuse_ino_t ino)
{
    struct fs_inode *inode;
    struct snapfs_node *node = NULL;
    guint64 key = ino;

    g_mutex_lock(&inodes->lock);
    inode = g_hash_table_lookup(inodes->by_ino, &key);
    if (inode)
        node = tree_node_copy(inode->node);
    g_mutex_unlock(&inodes->lock);
    return node;
}

bool fs_inodes_forget(struct fs_inodes *inodes, fuse_ino_t ino, uint64_t nlookup)
{
    struct fs_inode *inode;
    guint64 key = ino;
    bool gone = false;

    if (ino == FUSE_ROOT_ID)
        return false;
    g_mutex_lock(&inodes->lock);
    inode = g_hash_table_lookup(inodes->by_ino, &key);
    if (inode) {
        inode->nlookup = inode->nlookup > nlookup ? inode->nlookup - nlookup : 0;
        if (inode->nlookup == 0) {
            g_queue_unlink(&inodes->lru, &inode->link);
            g_hash_table_remove(inodes->by_key, inode->key);
            g_hash_table_remove(inodes->by_ino, &key);
            gone = true;
        }
    }
    g_mutex_unlock(&inodes->lock);
    return gone;
}

/* One name the kernel is asked to drop. */
struct fs_stale {
    fuse_ino_t parent;
    char *name;
    size_t len;
};

static void fs_stale_clear(gpointer data)
{
    g_free(((struct fs_stale *)data)->name);
}

static gpointer inodes_prune(gpointer data)
{
    struct fs_inodes *inodes = data;
    g_autoptr(GArray) batch = g_array_new(FALSE, FALSE, sizeof(struct fs_stale));

    g_array_set_clear_func(batch, fs_stale_clear);
    g_mutex_lock(&inodes->lock);
    while (!inodes->stopping) {
        /* Down to an eighth below the limit, so that each lookup past it does not ask again. */
        guint excess;

        if (inodes->lru.length <= inodes->limit) {
            g_cond_wait(&inodes->wake, &inodes->lock);
            continue;
        }
        excess = inodes->lru.length - inodes->limit + inodes->limit / 8;
        for (int dirs = 0; dirs < 2 && batch->len < excess; dirs++) {
            GList *l = inodes->lru.head;

            for (guint seen = 0, n = inodes->lru.length; l && seen < n && batch->len < excess; seen++) {
                struct fs_inode *inode = l->data;
                struct fs_stale stale = { inode->parent, NULL, inode->name_len };

                l = l->next;
                if (inode->dir != (dirs == 1))
                    continue;
                stale.name = g_strndup(inode->key + inode->name_at, inode->name_len);
                g_array_append_val(batch, stale);
                /* Last in the order: one the kernel keeps comes round again after all the others. */
                inode_touch(inodes, inode);
            }
        }
        g_mutex_unlock(&inodes->lock);
        for (guint i = 0; i < batch->len; i++) {
            struct fs_stale *stale = &g_array_index(batch, struct fs_stale, i);

            fuse_lowlevel_notify_inval_entry(inodes->session, stale->parent, stale->name, stale->len);
        }
        g_array_set_size(batch, 0);
        g_mutex_lock(&inodes->lock);
        /* The kernel's forgets come in batches of its own: give them a moment before counting again. */
        if (!inodes->stopping)
            g_cond_wait_until(&inodes->wake, &inodes->lock, g_get_monotonic_time() + G_USEC_PER_SEC / 10);
    }
    g_mutex_unlock(&inodes->lock);
    return NULL;
}

void fs_inodes_start_pruning(struct fs_inodes *inodes, struct fuse_session *session)
{
    g_mutex_lock(&inodes->lock);
    inodes->session = session;
    inodes->stopping = false;
    inodes->pruner = g_thread_new("snapfs-inodes", inodes_prune, inodes);
    g_mutex_unlock(&inodes->lock);
}

void fs_inodes_stop_pruning(struct fs_inodes *inodes)
{
    GThread *pruner;

    g_mutex_lock(&inodes->lock);
    inodes->stopping = true;
    pruner = g_steal_pointer(&inodes->pruner);
    g_cond_signal(&inodes->wake);
    g_mutex_unlock(&inodes->lock);
    if (pruner)
        g_thread_join(pruner);
}
