/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The pool's caches: every view's attributes, listings and xattrs, and file data, under one byte bound with an LRU. */
#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/log.h"

#include <string.h>

/*
 * Cache policy.  A view keeps what the appliance answered: each path's attributes, link target and
 * xattrs (a guest_node), each directory's listing (a guest_dir), and file data in chunks.  Frozen
 * views never change, so none of it expires; a live view's answers are reused for live_ttl_ms only.
 *
 * All of it, of every view of the pool, counts against one byte bound (-o cache_size), with the
 * least recently used entry evicted first.  An entry's bytes are what it holds as malloc holds it:
 * its structures, its strings (names, paths, link targets, xattr names and values), its arrays and
 * its slots in the hash tables, each allocation rounded as glibc does, so that the process's memory
 * follows the count.  File data may take a share of the bound only (a quarter, or
 * SNAPFS_DATA_CACHE_MB): the kernel keeps the pages of frozen files itself, and a large copy must
 * not push out every listing.
 *
 * What is evicted is asked of the appliance again when next needed; nothing evicted is ever
 * answered from what is left.  The one promise that spans entries is a listing's stats flag (a
 * node for each of its names, so a name without one does not exist) and its xattrs flag: evicting
 * a node clears both flags of its parent's listing.  Callers copy what they need under the cache
 * lock, since an insertion may evict the very entry just inserted when the bound is smaller than it.
 */

/* What malloc takes for @n bytes: glibc adds an 8-byte header, rounds up to 16 and gives 32 at least. */

struct guest_chunk {
    struct guest_cached cached;
    char *key;
    char *view_id;
    GBytes *data;
    gint64 when;
};

static void xattr_free(gpointer data)
{
    struct guest_xattr *x = data;

    g_free(x->name);
    g_bytes_unref(x->value);
    g_free(x);
}

static void xattr_list_append(GPtrArray *xattrs, const char *name, const char *value, size_t len)
{
    struct guest_xattr *x = g_new0(struct guest_xattr, 1);

    x->name = g_strdup(name);
    x->value = g_bytes_new(value, len);
    g_ptr_array_add(xattrs, x);
}

static void cached_unlink(struct guest_cached *cached);
static void chunk_free(struct guest_chunk *chunk);

static void node_free(struct guest_node *node)
{
    cached_unlink(&node->cached);
    g_free(node->link);
    if (node->xattrs)
        g_ptr_array_unref(node->xattrs);
    g_free(node);
}

static void dir_free(struct guest_dir *dir)
{
    cached_unlink(&dir->cached);
    g_ptr_array_unref(dir->names);
    g_array_unref(dir->types);
    g_array_unref(dir->inos);
    g_hash_table_unref(dir->index);
    g_free(dir);
}

struct guest_dir *guest_dir_new(void)
{
    struct guest_dir *dir = g_new0(struct guest_dir, 1);

    dir->names = g_ptr_array_new_with_free_func(g_free);
    dir->types = g_array_new(FALSE, FALSE, sizeof(mode_t));
    dir->inos = g_array_new(FALSE, FALSE, sizeof(ino_t));
    dir->index = g_hash_table_new(g_str_hash, g_str_equal);
    dir->when = g_get_monotonic_time();
    return dir;
}

void guest_dir_add(struct guest_dir *dir, const char *name, mode_t type, ino_t ino)
{
    char *copy = g_strdup(name);

    g_ptr_array_add(dir->names, copy);
    g_array_append_val(dir->types, type);
    g_array_append_val(dir->inos, ino);
    g_hash_table_insert(dir->index, copy, GUINT_TO_POINTER(dir->names->len));
}

static size_t heap(size_t n)
{
    return MAX((n + 8 + 15) & ~(size_t)15, 32);
}

/* A GHashTable keeps a key, a value and a hash per slot, with about two slots per entry. */
#define HASH_ENTRY (2 * (2 * sizeof(gpointer) + sizeof(guint)))
/* A GHashTable itself, and a GPtrArray or GArray header. */
#define HASH_TABLE 96
#define ARRAY_HEADER 32
/* A GBytes header. */
#define BYTES_HEADER 40

/* An array of @n elements of @size bytes: GLib grows its storage to a power of two, 16 bytes at least. */
static size_t array_bytes(size_t n, size_t size)
{
    size_t storage = 16;

    while (storage < n * size)
        storage <<= 1;
    return heap(ARRAY_HEADER) + (n ? heap(storage) : 0);
}

static size_t xattrs_bytes(GPtrArray *xattrs)
{
    size_t bytes;

    if (!xattrs)
        return 0;
    bytes = array_bytes(xattrs->len, sizeof(gpointer));
    for (guint i = 0; i < xattrs->len; i++) {
        struct guest_xattr *x = g_ptr_array_index(xattrs, i);

        bytes += heap(sizeof(*x)) + heap(strlen(x->name) + 1) + heap(BYTES_HEADER) + heap(g_bytes_get_size(x->value));
    }
    return bytes;
}

static size_t node_bytes(const struct guest_node *node)
{
    return heap(sizeof(*node)) + heap(strlen(node->cached.key) + 1) + HASH_ENTRY +
           (node->link ? heap(strlen(node->link) + 1) : 0) + xattrs_bytes(node->xattrs);
}

static size_t dir_bytes(const struct guest_dir *dir)
{
    size_t n = dir->names->len, bytes;

    bytes = heap(sizeof(*dir)) + heap(strlen(dir->cached.key) + 1) + HASH_ENTRY + array_bytes(n, sizeof(gpointer)) +
            array_bytes(n, sizeof(mode_t)) + array_bytes(n, sizeof(ino_t)) + heap(HASH_TABLE) + n * HASH_ENTRY;
    for (guint i = 0; i < n; i++)
        bytes += heap(strlen(g_ptr_array_index(dir->names, i)) + 1);
    return bytes;
}

static size_t chunk_bytes(const struct guest_chunk *chunk)
{
    return heap(sizeof(*chunk)) + heap(strlen(chunk->key) + 1) + heap(strlen(chunk->view_id) + 1) +
           heap(BYTES_HEADER) + heap(g_bytes_get_size(chunk->data)) + HASH_ENTRY;
}

static GQueue *cached_list(struct guest_pool *pool, const struct guest_cached *cached)
{
    return cached->kind == CACHED_CHUNK ? &pool->data_lru : &pool->meta_lru;
}

/* Take @cached out of the order and the count, once its table lets go of it (cache lock held). */
static void cached_unlink(struct guest_cached *cached)
{
    struct guest_pool *pool = cached->pool;

    if (!cached->link.data)
        return;
    g_queue_unlink(cached_list(pool, cached), &cached->link);
    cached->link.data = NULL;
    pool->cache_bytes -= cached->bytes;
    if (cached->kind == CACHED_CHUNK)
        pool->data_bytes -= cached->bytes;
}

/* @cached was just used: it goes last in the order (cache lock held). */
static void cached_touch(struct guest_cached *cached)
{
    GQueue *list = cached_list(cached->pool, cached);

    cached->used = ++cached->pool->cache_tick;
    g_queue_unlink(list, &cached->link);
    g_queue_push_tail_link(list, &cached->link);
}

/* Remove the oldest entry of @list from its table, which frees it (cache lock held). */
static void cached_evict(struct guest_pool *pool, GQueue *list)
{
    struct guest_cached *oldest = list->head->data;
    struct guest_view *view = oldest->view;

    switch (oldest->kind) {
    case CACHED_NODE: {
        g_autofree char *parent = g_path_get_dirname(oldest->key);
        struct guest_dir *dir = g_hash_table_lookup(view->dirs, parent);

        /* The listing no longer has a node for each of its names. */
        if (dir)
            dir->stats = dir->xattrs = false;
        g_hash_table_remove(view->nodes, oldest->key);
        break;
    }
    case CACHED_DIR:
        g_hash_table_remove(view->dirs, oldest->key);
        break;
    case CACHED_CHUNK:
        g_hash_table_remove(pool->chunks, oldest->key);
        break;
    }
}

/* Evict, oldest first, until the bound and the data share hold (cache lock held). */
static void cache_shrink(struct guest_pool *pool)
{
    while (pool->data_bytes > pool->data_cap && pool->data_lru.head)
        cached_evict(pool, &pool->data_lru);
    while (pool->cache_bytes > pool->cache_cap && (pool->meta_lru.head || pool->data_lru.head)) {
        GList *meta = pool->meta_lru.head, *data = pool->data_lru.head;
        bool data_older = data && (!meta || ((struct guest_cached *)data->data)->used <
                                            ((struct guest_cached *)meta->data)->used);

        cached_evict(pool, data_older ? &pool->data_lru : &pool->meta_lru);
    }
}

/*
 * Count @cached of @view (NULL for file data), whose table holds it now under @key, last in the order;
 * then keep the bound, which may evict it at once (cache lock held).
 */
static void cached_add(struct guest_pool *pool, struct guest_view *view, struct guest_cached *cached, const char *key)
{
    cached->pool = pool;
    cached->view = view;
    cached->key = key;
    cached->bytes = cached->kind == CACHED_NODE  ? node_bytes((struct guest_node *)cached)
                    : cached->kind == CACHED_DIR ? dir_bytes((struct guest_dir *)cached)
                                                 : chunk_bytes((struct guest_chunk *)cached);
    cached->used = ++pool->cache_tick;
    cached->link.data = cached;
    g_queue_push_tail_link(cached_list(pool, cached), &cached->link);
    pool->cache_bytes += cached->bytes;
    if (cached->kind == CACHED_CHUNK)
        pool->data_bytes += cached->bytes;
    cache_shrink(pool);
    pool->cache_peak = MAX(pool->cache_peak, pool->cache_bytes);
}

/* @node grew (its xattrs came): count it again, which may evict it (cache lock held). */
static void node_recount(struct guest_node *node)
{
    struct guest_pool *pool = node->cached.pool;
    size_t bytes = node_bytes(node);

    pool->cache_bytes += bytes - node->cached.bytes;
    node->cached.bytes = bytes;
    cached_touch(&node->cached);
    cache_shrink(pool);
    pool->cache_peak = MAX(pool->cache_peak, pool->cache_bytes);
}

void guest_cache_init(struct guest_pool *pool)
{
    const char *share = g_getenv("SNAPFS_DATA_CACHE_MB");

    g_mutex_init(&pool->cache_lock);
    g_queue_init(&pool->meta_lru);
    g_queue_init(&pool->data_lru);
    pool->chunks = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, (GDestroyNotify)chunk_free);
    pool->cache_cap = pool->config.cache_bytes ? pool->config.cache_bytes : (size_t)GUEST_CACHE_DEFAULT_MIB << 20;
    /* File data only bridges the kernel's 128 KiB reads to 2 MiB calls, a few chunks per file read at once. */
    pool->data_cap = share ? (size_t)g_ascii_strtoull(share, NULL, 10) << 20 : pool->cache_cap / 4;
    pool->data_cap = MIN(pool->data_cap, pool->cache_cap);
}

void guest_cache_clear(struct guest_pool *pool)
{
    guest_data_forget(pool, NULL);
    g_hash_table_unref(pool->chunks);
    g_mutex_clear(&pool->cache_lock);
}

void guest_cache_view_init(struct guest_view *view)
{
    view->nodes = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)node_free);
    view->dirs = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)dir_free);
}

void guest_cache_view_clear(struct guest_view *view)
{
    g_mutex_lock(&view->pool->cache_lock);
    g_hash_table_unref(view->nodes);
    g_hash_table_unref(view->dirs);
    g_mutex_unlock(&view->pool->cache_lock);
}

void guest_cache_view_forget(struct guest_view *view)
{
    g_mutex_lock(&view->pool->cache_lock);
    g_hash_table_remove_all(view->nodes);
    g_hash_table_remove_all(view->dirs);
    g_mutex_unlock(&view->pool->cache_lock);
    guest_data_forget(view->pool, view->id);
}

void guest_cache_set_cap(struct guest_pool *pool, size_t bytes, size_t data_bytes)
{
    g_mutex_lock(&pool->cache_lock);
    pool->data_cap = MIN(data_bytes, bytes);
    pool->cache_cap = bytes;
    cache_shrink(pool);
    pool->cache_peak = pool->cache_bytes;
    g_mutex_unlock(&pool->cache_lock);
}

/* lxattrlist's flat answer: per name a count entry ("" = "N"), then N attributes. */
GPtrArray **guest_xattrs_split(const struct guestfs_xattr_list *list, size_t n_names)
{
    GPtrArray **out = g_new0(GPtrArray *, n_names);
    size_t k = 0;

    for (size_t i = 0; i < n_names && k < list->len; i++) {
        unsigned count = 0;

        if (list->val[k].attrname[0] == '\0') {
            g_autofree char *n = g_strndup(list->val[k].attrval, list->val[k].attrval_len);
            count = (unsigned)g_ascii_strtoull(n, NULL, 10);
            k++;
        }
        out[i] = g_ptr_array_new_with_free_func(xattr_free);
        for (unsigned c = 0; c < count && k < list->len; c++, k++)
            xattr_list_append(out[i], list->val[k].attrname, list->val[k].attrval, list->val[k].attrval_len);
    }
    return out;
}

GPtrArray *guest_xattrs_from_list(const struct guestfs_xattr_list *xl)
{
    GPtrArray *xattrs = g_ptr_array_new_with_free_func(xattr_free);

    for (size_t i = 0; i < xl->len; i++)
        xattr_list_append(xattrs, xl->val[i].attrname, xl->val[i].attrval, xl->val[i].attrval_len);
    return xattrs;
}

/* Keep what is known of @path, taking @link and @xattrs (cache lock held); it may be evicted at once. */
void guest_cache_put_node(struct guest_view *view, const char *path, const struct stat *st, char *link,
                          GPtrArray *xattrs)
{
    struct guest_node *node = g_new0(struct guest_node, 1);
    char *key = g_strdup(path);

    node->cached.kind = CACHED_NODE;
    node->st = *st;
    node->link = link;
    node->xattrs = xattrs;
    node->when = g_get_monotonic_time();
    g_hash_table_replace(view->nodes, key, node);
    cached_add(view->pool, view, &node->cached, key);
}

/* Keep the listing @dir of @path (cache lock held); it may be evicted at once. */
void guest_cache_put_dir(struct guest_view *view, const char *path, struct guest_dir *dir)
{
    char *key = g_strdup(path);

    dir->cached.kind = CACHED_DIR;
    g_hash_table_replace(view->dirs, key, dir);
    cached_add(view->pool, view, &dir->cached, key);
}

/* @node's xattrs came: keep them, if it has none yet (cache lock held). */
void guest_cache_set_xattrs(struct guest_node *node, GPtrArray *xattrs)
{
    if (!node || node->xattrs || !xattrs)
        return;
    node->xattrs = g_ptr_array_ref(xattrs);
    node_recount(node);
}

/* The fresh listing of @path, or NULL (cache lock held). */
struct guest_dir *guest_cache_get_dir(struct guest_view *view, const char *path)
{
    struct guest_dir *dir = g_hash_table_lookup(view->dirs, path);

    if (!dir || !guest_view_fresh(view, dir->when))
        return NULL;
    cached_touch(&dir->cached);
    return dir;
}

/*
 * A copy of @dir's names (and, where asked, its types and inode numbers as GArrays, and its flags),
 * made under the cache lock: the listing may be evicted once it is let go.
 */
GStrv guest_dir_copy(struct guest_dir *dir, bool *stats, bool *xattrs, GArray **types, GArray **inos)
{
    GStrv names = g_new0(char *, dir->names->len + 1);

    for (guint i = 0; i < dir->names->len; i++)
        names[i] = g_strdup(g_ptr_array_index(dir->names, i));
    *stats = dir->stats;
    *xattrs = dir->xattrs;
    if (types)
        *types = g_array_copy(dir->types);
    if (inos)
        *inos = g_array_copy(dir->inos);
    return names;
}

/* Whether @path's fresh listing already holds what is asked (stats, or xattrs too): no copy of its names. */
bool guest_cache_dir_has(struct guest_view *view, const char *path, bool xattrs)
{
    struct guest_dir *dir;
    bool has;

    g_mutex_lock(&view->pool->cache_lock);
    dir = guest_cache_get_dir(view, path);
    has = dir && (xattrs ? dir->xattrs : dir->stats);
    g_mutex_unlock(&view->pool->cache_lock);
    return has;
}

/*
 * Mark the listing of @path (if it is still cached) as holding stats or xattrs too, before the nodes
 * are put (cache lock held): evicting one of them on the way then takes the mark back.
 */
void guest_cache_mark_dir(struct guest_view *view, const char *path, bool stats, bool xattrs)
{
    struct guest_dir *dir = guest_cache_get_dir(view, path);

    if (dir) {
        dir->stats |= stats;
        dir->xattrs |= xattrs && dir->stats;
    }
}

/* Copy what the view knows of @path into @out (st, link, xattrs as asked); 1 if known, 0 if not, -1 ENOENT. */
int guest_cache_lookup(struct guest_view *view, const char *path, struct stat *st, char **link, GPtrArray **xattrs)
{
    struct guest_node *node;
    int ret = 0;

    g_mutex_lock(&view->pool->cache_lock);
    node = g_hash_table_lookup(view->nodes, path);
    if (node && guest_view_fresh(view, node->when)) {
        cached_touch(&node->cached);
        if (st)
            *st = node->st;
        if (link)
            *link = g_strdup(node->link);
        if (xattrs)
            *xattrs = node->xattrs ? g_ptr_array_ref(node->xattrs) : NULL;
        ret = 1;
    } else if (strcmp(path, "/") != 0) {
        g_autofree char *parent = g_path_get_dirname(path);
        g_autofree char *name = g_path_get_basename(path);
        struct guest_dir *dir = guest_cache_get_dir(view, parent);

        /* The parent was listed and this name was not in it (or its attributes are known and it has none). */
        if (dir && (!g_hash_table_contains(dir->index, name) || dir->stats)) {
            error_set(ENOENT, "no '%s' in the guest", path);
            ret = -1;
        }
    }
    g_mutex_unlock(&view->pool->cache_lock);
    return ret;
}

static void chunk_free(struct guest_chunk *chunk)
{
    cached_unlink(&chunk->cached);
    g_free(chunk->key);
    g_free(chunk->view_id);
    g_bytes_unref(chunk->data);
    g_free(chunk);
}

void guest_data_forget(struct guest_pool *pool, const char *id)
{
    g_mutex_lock(&pool->cache_lock);
    for (GList *l = pool->data_lru.head; l;) {
        struct guest_chunk *chunk = l->data;

        l = l->next;
        if (!id || strcmp(chunk->view_id, id) == 0)
            g_hash_table_remove(pool->chunks, chunk->key);
    }
    g_mutex_unlock(&pool->cache_lock);
}

GBytes *guest_cache_get_data(struct guest_view *view, const char *key)
{
    struct guest_pool *pool = view->pool;
    struct guest_chunk *chunk;
    GBytes *data = NULL;

    g_mutex_lock(&pool->cache_lock);
    chunk = g_hash_table_lookup(pool->chunks, key);
    if (chunk && guest_view_fresh(view, chunk->when)) {
        cached_touch(&chunk->cached);
        data = g_bytes_ref(chunk->data);
    }
    g_mutex_unlock(&pool->cache_lock);
    return data;
}

void guest_cache_put_data(struct guest_view *view, const char *key, GBytes *data)
{
    struct guest_pool *pool = view->pool;
    struct guest_chunk *chunk = g_new0(struct guest_chunk, 1);

    chunk->cached.kind = CACHED_CHUNK;
    chunk->key = g_strdup(key);
    chunk->view_id = g_strdup(view->id);
    chunk->data = g_bytes_ref(data);
    chunk->when = g_get_monotonic_time();
    g_mutex_lock(&pool->cache_lock);
    /* The key is the chunk's own: replacing frees the old chunk, key and all. */
    g_hash_table_replace(pool->chunks, chunk->key, chunk);
    cached_add(pool, NULL, &chunk->cached, chunk->key);
    g_mutex_unlock(&pool->cache_lock);
}

