/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The namespace: which node a name leads to, what each node shows, and which part acts on a change. */
#include "snapfs/tree.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>

#define XATTR_PREFIX "user.snapfs."

struct snapfs_tree {
    struct snapfs_host **hosts;
    size_t n_hosts;
    struct snapfs_tree_config config;
    struct guest_pool *guests;
    time_t mounted;
    GMutex lock;
    GHashTable *inos;          /* node key -> inode number shown in st_ino */
    guint64 next_ino;
    GHashTable *last_errors;   /* "host/domain" -> the last refusal's reason */
    GHashTable *views;         /* lock: view key -> struct tree_view *: what a node reads, found once */
    GHashTable *images;        /* lock: file -> struct view_image: the state views were last made on */
    GHashTable *handles;       /* lock: the set of struct snapfs_handle * open now */
    GHashTable *changing;      /* lock: file -> GThread * of the rmdir or revert changing it now */
    void (*stale_fn)(guint64 cookie, void *opaque);   /* set once, before the first open */
    void *stale_opaque;
};

/*
 * Locks: tree->lock is never held while calling libvirt, the engine or the guest reader,
 * with one exception: a view reference dropped under it (a table entry replaced or removed)
 * may free a guest view, which takes the pool's cache lock, the last lock of all
 * (src/README.md, "Locks and their order").
 */

struct tree_view;
static void tree_view_unref(struct tree_view *tv);
static void view_image_free(gpointer data);
static int tree_before_change(const char *label, const char *what, const char *const *files, void *opaque);

/* ---- nodes -------------------------------------------------------------- */

struct snapfs_node *snapfs_node_root(void)
{
    struct snapfs_node *node = g_new0(struct snapfs_node, 1);

    node->kind = SNAPFS_NODE_ROOT;
    node->layer = -1;
    return node;
}

struct snapfs_node *snapfs_node_copy(const struct snapfs_node *node)
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

void snapfs_node_free(struct snapfs_node *node)
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

static bool node_has_content(const struct snapfs_node *node)
{
    return node->kind == SNAPFS_NODE_SNAPSHOT || node->kind == SNAPFS_NODE_LAYER ||
           node->kind == SNAPFS_NODE_GUEST;
}

enum snapfs_cache snapfs_node_cache(const struct snapfs_node *node)
{
    switch (node->kind) {
    case SNAPFS_NODE_REVERT:
        return SNAPFS_CACHE_NONE;
    case SNAPFS_NODE_GUEST:
        return node->live ? SNAPFS_CACHE_LIVE : SNAPFS_CACHE_FOREVER;
    default:
        return SNAPFS_CACHE_SHORT;
    }
}

bool snapfs_tree_is_control(const struct snapfs_node *node)
{
    return node->kind == SNAPFS_NODE_REVERT;
}

/* ---- the tree ------------------------------------------------------------- */

/* A chain changed: which images a snapshot or layer reads must be found again. */
static void tree_forget_views(struct snapfs_tree *tree)
{
    g_mutex_lock(&tree->lock);
    g_hash_table_remove_all(tree->views);
    g_mutex_unlock(&tree->lock);
}

/* The engine names each image a create or delete changed: views reading it must go. */
static void tree_chain_changed(const char *file, void *opaque)
{
    struct snapfs_tree *tree = opaque;

    tree_forget_views(tree);
    guest_pool_forget_file(tree->guests, file);
}

struct snapfs_tree *snapfs_tree_new(struct snapfs_host **hosts, size_t n_hosts,
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
    tree->images = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, view_image_free);
    tree->handles = g_hash_table_new(g_direct_hash, g_direct_equal);
    tree->changing = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    engine_set_chain_changed(tree_chain_changed, tree);
    engine_set_before_change(tree_before_change, tree);
    return tree;
}

void snapfs_tree_abort(struct snapfs_tree *tree)
{
    if (tree)
        guest_pool_abort(tree->guests);
}

void snapfs_tree_free(struct snapfs_tree *tree)
{
    if (!tree)
        return;
    engine_set_chain_changed(NULL, NULL);
    engine_set_before_change(NULL, NULL);
    /* Files still open when the session ended (SIGTERM, a lazy unmount): no release will come for them. */
    {
        g_autofree gpointer *open = (gpointer *)g_hash_table_get_keys_as_array(tree->handles, NULL);

        for (gpointer *h = open; *h; h++)
            snapfs_tree_release(tree, *h);
    }
    g_hash_table_unref(tree->views);
    g_hash_table_unref(tree->images);
    g_hash_table_unref(tree->handles);
    g_hash_table_unref(tree->changing);
    guest_pool_free(tree->guests);
    g_hash_table_unref(tree->inos);
    g_hash_table_unref(tree->last_errors);
    g_mutex_clear(&tree->lock);
    g_free(tree);
}

static struct snapfs_host *tree_host(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    return tree->hosts[node->host];
}

char *snapfs_node_describe(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    g_autofree char *domain = NULL;
    g_autofree char *where = NULL;

    if (node->kind == SNAPFS_NODE_ROOT)
        return g_strdup("the mount's root");
    if (!node->domain)
        return g_strdup_printf("host '%s'", snapfs_host_name(tree_host(tree, node)));
    domain = g_strdup_printf("domain '%s/%s'", snapfs_host_name(tree_host(tree, node)), node->domain);
    if (node->snapshot)
        where = g_strdup_printf("snapshot '%s' of %s", node->snapshot, domain);
    else if (node->layer >= 0)
        where = g_strdup_printf("layer %d of disk '%s' of %s", node->layer, node->disk, domain);
    else if (node->kind == SNAPFS_NODE_REVERT || node->kind == SNAPFS_NODE_LAYERS || node->kind == SNAPFS_NODE_DISK)
        where = g_strdup_printf("%s%s%s of %s", node->kind == SNAPFS_NODE_REVERT ? "revert" : "layers",
                                node->disk ? "/" : "", node->disk ? node->disk : "", domain);
    else
        where = g_steal_pointer(&domain);
    if (node->kind == SNAPFS_NODE_GUEST)
        return g_strdup_printf("'%s' in %s", node->path, where);
    return g_steal_pointer(&where);
}

/* The root lists hosts only when there are several; with one, it is that host's folder. */
static bool node_lists_domains(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    return node->kind == SNAPFS_NODE_HOST || (node->kind == SNAPFS_NODE_ROOT && tree->n_hosts == 1);
}

/*
 * A host's folder, when there are several, is empty while the host is down
 * (src/README.md, "The tree and its names"); with one host, what is cached is
 * served until it is back.
 * Records the reason when it is down.
 */
static bool tree_host_folder_down(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    g_autofree char *down = NULL;

    if (node->kind != SNAPFS_NODE_HOST)
        return false;
    down = snapfs_host_error(tree_host(tree, node));
    if (down)
        snapfs_error_set(EIO, "%s is not reachable: %s", snapfs_host_name(tree_host(tree, node)), down);
    return down != NULL;
}

/*
 * Inode numbers: stable for as long as snapfs runs, distinct for distinct
 * objects (diff and cp -a compare them), and equal for a guest's hard links.
 */
static ino_t tree_ino(struct snapfs_tree *tree, const char *key)
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
static void key_add(GString *key, const char *field)
{
    g_string_append_printf(key, "%zu:%s", field ? strlen(field) : 0, field ? field : "");
}

static char *node_key(const struct snapfs_node *node)
{
    GString *key = g_string_new(NULL);

    g_string_append_printf(key, "%d|%d|", node->kind, node->host);
    key_add(key, node->domain);
    key_add(key, node->snapshot);
    key_add(key, node->disk);
    g_string_append_printf(key, "%d|", node->layer);
    key_add(key, node->layer_file);
    return g_string_free(key, FALSE);
}

static void tree_stat_dir(struct snapfs_tree *tree, struct stat *st, mode_t mode, time_t when)
{
    memset(st, 0, sizeof(*st));
    st->st_mode = S_IFDIR | mode;
    st->st_nlink = 2;
    st->st_uid = tree->config.uid;
    st->st_gid = tree->config.gid;
    st->st_blksize = 4096;
    st->st_atime = st->st_mtime = st->st_ctime = when;
}

/* A request on a domain failed: log it, naming the domain (and the snapshot), and keep it for user.snapfs.last_error. */
static void tree_remember_error(struct snapfs_tree *tree, const struct snapfs_node *node, const char *what,
                                const char *snapshot)
{
    int err = snapfs_error_errno();
    g_autofree char *message = g_strdup(snapfs_error_message());
    g_autofree char *label = snapfs_host_domain_label(tree_host(tree, node), node->domain);

    if (snapshot)
        snapfs_warn("domain '%s': %s of snapshot '%s' failed: %s", label, what, snapshot, message);
    else
        snapfs_warn("domain '%s': %s failed: %s", label, what, message);
    snapfs_error_set(err, "%s", message);   /* naming the domain may have asked libvirt */
    g_mutex_lock(&tree->lock);
    g_hash_table_replace(tree->last_errors, g_strdup_printf("%d/%s", node->host, node->domain),
                         g_strdup(snapfs_error_message()));
    g_mutex_unlock(&tree->lock);
}

/* ---- domains, snapshots and layers --------------------------------------------- */

static struct snapfs_domain *tree_domain(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    return snapfs_host_get_domain(tree_host(tree, node), node->domain);
}

/* Layers and guest files are read from the image files: only a local host's are files here. */
static int tree_check_local(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    struct snapfs_host *host = tree_host(tree, node);

    if (snapfs_host_is_local(host))
        return 0;
    snapfs_error_set(ENOTSUP, "the images of '%s' are not files on this machine: its layers and guest files "
                     "can only be browsed where they are (mount snapfs on that host)", snapfs_host_name(host));
    return -1;
}

static GPtrArray *tree_chain(struct snapfs_domain *domain, const char *target)
{
    struct snapfs_disk *disk = snapfs_domain_find_disk(domain, target);

    if (!disk || !disk->file) {
        snapfs_error_set(ENOENT, "domain '%s' has no disk image for '%s'", domain->name, target);
        return NULL;
    }
    return snapfs_chain_read(disk->file, disk->format);
}

static char *layer_dir_name(guint index, const struct snapfs_layer *layer)
{
    g_autofree char *base = g_path_get_basename(layer->file);

    return g_strdup_printf("%u-%s", index, base);
}

/*
 * The layer a LAYER or GUEST-below-a-layer node stands for, checked against
 * the chain as it is now; it lives in *@chain_out, which the caller releases.
 */
static struct snapfs_layer *tree_layer(struct snapfs_domain *domain, const struct snapfs_node *node,
                                       GPtrArray **chain_out)
{
    g_autoptr(GPtrArray) chain = tree_chain(domain, node->disk);
    struct snapfs_layer *layer;

    if (!chain)
        return NULL;
    if (node->layer < 0 || (guint)node->layer >= chain->len) {
        snapfs_error_set(ENOENT, "disk '%s' of domain '%s' has no layer %d", node->disk, domain->name, node->layer);
        return NULL;
    }
    layer = g_ptr_array_index(chain, node->layer);
    if (strcmp(layer->file, node->layer_file) != 0) {
        snapfs_error_set(ENOENT, "layer %d of disk '%s' of domain '%s' is no longer '%s'",
                         node->layer, node->disk, domain->name, node->layer_file);
        return NULL;
    }
    *chain_out = g_ptr_array_ref(chain);
    return layer;
}

/*
 * What a layer's content depends on: a merge (rmdir, revert) rewrites a
 * frozen image in place, so its modification time is part of it.  The live
 * top changes all the time and is cached only briefly anyway.
 */
static char *layer_identity(const struct snapfs_layer *layer, bool live)
{
    struct stat st;

    if (live || stat(layer->file, &st) < 0)
        return g_strdup(layer->file);
    return g_strdup_printf("%s@%lld.%09ld:%lld", layer->file, (long long)st.st_mtim.tv_sec,
                           st.st_mtim.tv_nsec, (long long)st.st_size);
}

/*
 * The snapshot that froze layer @index: the one whose overlay is the layer
 * above it or, after a revert made new overlays, the one whose overlay
 * stands on this layer's image.
 */
static struct snapfs_snapshot *layer_frozen_by(struct snapfs_domain *domain, const char *target,
                                               GPtrArray *chain, guint index)
{
    struct snapfs_layer *layer = g_ptr_array_index(chain, index);
    struct snapfs_layer *above = index + 1 < chain->len ? g_ptr_array_index(chain, index + 1) : NULL;
    struct snapfs_snapshot *standing_on = NULL;

    if (!above)
        return NULL;
    for (guint i = 0; i < domain->snapshots->len; i++) {
        struct snapfs_snapshot *snap = g_ptr_array_index(domain->snapshots, i);

        for (guint j = 0; j < snap->disks->len; j++) {
            struct snapfs_snapshot_disk *disk = g_ptr_array_index(snap->disks, j);
            struct snapfs_layer *overlay;

            if (!disk->file || strcmp(disk->target, target) != 0)
                continue;
            if (strcmp(disk->file, above->file) == 0)
                return snap;
            overlay = standing_on ? NULL : snapfs_chain_read_layer(disk->file, disk->format);
            if (overlay && overlay->backing) {
                g_autofree char *frozen = snapfs_chain_resolve(overlay->file, overlay->backing);

                if (strcmp(frozen, layer->file) == 0)
                    standing_on = snap;
            }
            snapfs_layer_free(overlay);
        }
    }
    snapfs_error_clear();
    return standing_on;
}

/* ---- guest views ------------------------------------------------------------ */

/*
 * What a view reads must be what it read when it was made: a merge (rmdir,
 * revert, or virsh and others behind snapfs's back) rewrites frozen images in
 * place.  So every view knows each image file of its chains as it found it
 * (device, inode, size, mtime; of the live top only which file it is, since
 * a running guest writes it), and is checked against them before and after
 * every read: once one differs, everything opened on the view answers EIO
 * and the kernel is told to drop what it cached of those files; a fresh
 * lookup makes a new view.  snapfs's own rmdir and revert never get there:
 * they refuse (EBUSY) while anything is open in a view of what they change
 * (tree_before_change()).
 */
struct view_image {
    char *file;
    bool moving;      /* the top of a disk's chain: only which file it is counts */
    bool missing;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

/* A view and the images behind it, shared by the tree's cache and the handles opened on it. */
struct tree_view {
    gint refs;
    struct guest_view *view;
    char *label;      /* "snapshot 's2' of domain 'localhost/web'" */
    GArray *images;   /* struct view_image */
    gint stale;       /* atomic: an image changed since it was made */
};

/* A file or directory of a view, open: it reads through the view it was opened on, or fails. */
struct snapfs_handle {
    struct snapfs_node *node;
    struct tree_view *tv;   /* NULL where no guest content is behind it (a remote host's snapshot) */
    guint64 cookie;
};

static void view_image_clear(gpointer data)
{
    g_free(((struct view_image *)data)->file);
}

static void view_image_free(gpointer data)
{
    view_image_clear(data);
    g_free(data);
}

static void view_image_stat(struct view_image *img)
{
    struct stat st;

    img->missing = stat(img->file, &st) < 0;
    if (img->missing)
        return;
    img->dev = st.st_dev;
    img->ino = st.st_ino;
    img->size = st.st_size;
    img->mtime = st.st_mtim;
}

static bool view_image_same(const struct view_image *a, const struct view_image *b, bool moving)
{
    if (a->missing || b->missing)
        return a->missing == b->missing;
    return a->dev == b->dev && a->ino == b->ino &&
           (moving || (a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec));
}

static struct tree_view *tree_view_ref(struct tree_view *tv)
{
    g_atomic_int_inc(&tv->refs);
    return tv;
}

static void tree_view_unref(struct tree_view *tv)
{
    if (!tv || !g_atomic_int_dec_and_test(&tv->refs))
        return;
    guest_view_unref(tv->view);
    g_array_unref(tv->images);
    g_free(tv->label);
    g_free(tv);
}

static bool tree_view_reads(const struct tree_view *tv, const char *const *files)
{
    for (guint i = 0; i < tv->images->len; i++) {
        if (g_strv_contains(files, g_array_index(tv->images, struct view_image, i).file))
            return true;
    }
    return false;
}

/*
 * Whether @img, as seen now, is news: another state of the file than the one
 * views were last made on.  Records it.  Tree lock held.
 */
static bool tree_image_news(struct snapfs_tree *tree, const struct view_image *img)
{
    struct view_image *known = g_hash_table_lookup(tree->images, img->file);
    /* A frozen image that became a top (merged into behind snapfs's back) counts its mtime still. */
    bool news = known && !view_image_same(known, img, known->moving && img->moving);

    if (!known || news || known->moving != img->moving) {
        known = g_memdup2(img, sizeof(*img));
        known->file = g_strdup(img->file);
        g_hash_table_replace(tree->images, known->file, known);
    }
    return news;
}

/*
 * @files (NULL-terminated) changed behind the views that read them: those
 * views are stale, what was opened on them fails from now on, the kernel
 * drops its cache of those files, and the guest reader lets go of them.
 */
static void tree_files_changed(struct snapfs_tree *tree, const char *const *files)
{
    g_autoptr(GArray) cookies = g_array_new(FALSE, FALSE, sizeof(guint64));
    GHashTableIter iter;
    gpointer value;

    g_mutex_lock(&tree->lock);
    g_hash_table_iter_init(&iter, tree->views);
    while (g_hash_table_iter_next(&iter, NULL, &value)) {
        if (tree_view_reads(value, files)) {
            g_atomic_int_set(&((struct tree_view *)value)->stale, 1);
            g_hash_table_iter_remove(&iter);
        }
    }
    g_hash_table_iter_init(&iter, tree->handles);
    while (g_hash_table_iter_next(&iter, &value, NULL)) {
        struct snapfs_handle *handle = value;

        if (handle->tv && tree_view_reads(handle->tv, files)) {
            g_atomic_int_set(&handle->tv->stale, 1);
            g_array_append_val(cookies, handle->cookie);
        }
    }
    g_mutex_unlock(&tree->lock);
    for (guint i = 0; files[i]; i++) {
        snapfs_warn("image '%s' changed behind snapfs (merged, moved or rewritten): what is open in views of it "
                    "answers EIO from now on", files[i]);
        guest_pool_forget_file(tree->guests, files[i]);
    }
    for (guint i = 0; tree->stale_fn && i < cookies->len; i++)
        tree->stale_fn(g_array_index(cookies, guint64, i), tree->stale_opaque);
}

/* Whether @tv still reads what it was made on; if not, it and everything of its changed images is stale. */
static bool tree_view_current(struct snapfs_tree *tree, struct tree_view *tv)
{
    g_autoptr(GPtrArray) news = g_ptr_array_new_with_free_func(g_free);

    if (g_atomic_int_get(&tv->stale))
        return false;
    for (guint i = 0; i < tv->images->len; i++) {
        struct view_image *then = &g_array_index(tv->images, struct view_image, i);
        struct view_image now = *then;

        view_image_stat(&now);
        if (view_image_same(then, &now, then->moving))
            continue;
        g_atomic_int_set(&tv->stale, 1);
        g_mutex_lock(&tree->lock);
        if (tree_image_news(tree, &now))
            g_ptr_array_add(news, g_strdup(now.file));
        g_mutex_unlock(&tree->lock);
    }
    if (news->len > 0) {
        g_ptr_array_add(news, NULL);
        tree_files_changed(tree, (const char *const *)news->pdata);
    }
    return !g_atomic_int_get(&tv->stale);
}

struct view_drives {
    GPtrArray *strings;   /* owns what the drives point to */
    GArray *drives;       /* struct guest_drive */
    GArray *images;       /* struct view_image: every file of the drives' chains */
    GString *id;
};

static void view_drives_init(struct view_drives *v)
{
    v->strings = g_ptr_array_new_with_free_func(g_free);
    v->drives = g_array_new(FALSE, TRUE, sizeof(struct guest_drive));
    v->images = g_array_new(FALSE, TRUE, sizeof(struct view_image));
    g_array_set_clear_func(v->images, view_image_clear);
    v->id = g_string_new(NULL);
}

static void view_drives_clear(struct view_drives *v)
{
    g_ptr_array_unref(v->strings);
    g_array_unref(v->drives);
    if (v->images)
        g_array_unref(v->images);
    g_string_free(v->id, TRUE);
}

static const char *view_keep(struct view_drives *v, char *s)
{
    if (s)
        g_ptr_array_add(v->strings, s);
    return s;
}

/* Layer @index of @chain (from the base) as a drive, and every image it reads through. */
static void view_add(struct view_drives *v, const char *target, GPtrArray *chain, guint index, char *internal)
{
    struct snapfs_layer *layer = g_ptr_array_index(chain, index);
    struct guest_drive drive = {
        .target = view_keep(v, g_strdup(target)),
        .file = view_keep(v, g_strdup(layer->file)),
        .format = view_keep(v, g_strdup(layer->format)),
        .internal_snapshot = view_keep(v, internal),
    };

    g_string_append_printf(v->id, "|%s:%s:%s", target, layer->file, internal ? internal : "");
    g_array_append_val(v->drives, drive);
    for (guint i = 0; i <= index; i++) {
        struct view_image img = {
            .file = g_strdup(((struct snapfs_layer *)g_ptr_array_index(chain, i))->file),
            .moving = i == chain->len - 1,
        };

        view_image_stat(&img);
        g_array_append_val(v->images, img);
    }
}

/* The index in @chain of the image holding internal snapshot @name: the lowest layer that has it; -1 if none. */
static int internal_holder(GPtrArray *chain, const char *name)
{
    for (guint i = 0; i < chain->len; i++) {
        struct snapfs_layer *layer = g_ptr_array_index(chain, i);
        g_autoptr(GPtrArray) names = snapfs_chain_internal_snapshots(layer->file);

        for (guint j = 0; names && j < names->len; j++) {
            if (strcmp(g_ptr_array_index(names, j), name) == 0)
                return (int)i;
        }
    }
    return -1;
}

/* The drives of snapshot @snap: for each disk, the image it froze (external) or holds it (internal). */
static int snapshot_drives(struct snapfs_domain *domain, struct snapfs_snapshot *snap, struct view_drives *v)
{
    for (guint i = 0; i < snap->disks->len; i++) {
        struct snapfs_snapshot_disk *sd = g_ptr_array_index(snap->disks, i);

        if (strcmp(sd->kind, "external") == 0 && sd->file) {
            g_autoptr(GPtrArray) chain = snapfs_chain_read(sd->file, sd->format);

            if (!chain || chain->len < 2) {
                if (chain)
                    snapfs_error_set(EIO, "the overlay '%s' of snapshot '%s' has no backing image", sd->file, snap->name);
                return -1;
            }
            view_add(v, sd->target, chain, chain->len - 2, NULL);
        } else if (strcmp(sd->kind, "internal") == 0) {
            g_autoptr(GPtrArray) chain = tree_chain(domain, sd->target);
            int holder = chain ? internal_holder(chain, snap->name) : -1;

            if (holder < 0) {
                if (chain)
                    snapfs_error_set(EIO, "no image of disk '%s' holds internal snapshot '%s'", sd->target, snap->name);
                return -1;
            }
            view_add(v, sd->target, chain, (guint)holder, g_strdup(snap->name));
        }
    }
    return 0;
}

/* The guest reader's group of a domain: views of one group share appliances; it names the domain in log lines. */
static char *tree_group(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    return g_strdup_printf("%s/%s", snapfs_host_name(tree_host(tree, node)), node->domain);
}

/*
 * The images of @v as they are now go into the view's id, so that other
 * content never shares a view (and its caches) with the old; an image seen
 * in another state than views were made on is news to everything of it.
 * EBUSY while a snapshot operation is changing one of them.
 */
static int view_stamp(struct snapfs_tree *tree, struct view_drives *v, const char *label)
{
    g_autoptr(GPtrArray) news = g_ptr_array_new_with_free_func(g_free);

    g_mutex_lock(&tree->lock);
    for (guint i = 0; i < v->images->len; i++) {
        struct view_image *img = &g_array_index(v->images, struct view_image, i);

        if (g_hash_table_contains(tree->changing, img->file)) {
            g_mutex_unlock(&tree->lock);
            snapfs_error_set(EBUSY, "%s cannot be read now: a snapshot operation is changing its image '%s'",
                             label, img->file);
            return -1;
        }
        if (!img->moving && !img->missing)
            g_string_append_printf(v->id, "#%llx:%llx:%lld:%lld.%09ld", (unsigned long long)img->dev,
                                   (unsigned long long)img->ino, (long long)img->size,
                                   (long long)img->mtime.tv_sec, img->mtime.tv_nsec);
        if (tree_image_news(tree, img))
            g_ptr_array_add(news, g_strdup(img->file));
    }
    g_mutex_unlock(&tree->lock);
    if (news->len > 0) {
        g_ptr_array_add(news, NULL);
        tree_files_changed(tree, (const char *const *)news->pdata);
    }
    return 0;
}

/* The view of snapshot @snap, or of layer @index of @chain (of disk @target) when @snap is NULL. */
static struct tree_view *tree_make_view(struct snapfs_tree *tree, const char *group, struct snapfs_domain *domain,
                                        struct snapfs_snapshot *snap, const char *target, GPtrArray *chain,
                                        guint index)
{
    struct tree_view *tv = NULL;
    struct view_drives v;
    bool live = false;

    g_autofree char *label = NULL;

    view_drives_init(&v);
    if (snap) {
        label = g_strdup_printf("snapshot '%s' of domain '%s'", snap->name, group);
        key_add(v.id, group);
        g_string_append(v.id, "/snapshot/");
        key_add(v.id, snap->name);
        g_string_append_printf(v.id, "@%lld", snap->created);
        if (snapshot_drives(domain, snap, &v) < 0)
            goto cleanup;
    } else {
        struct snapfs_layer *layer = g_ptr_array_index(chain, index);
        g_autofree char *identity = NULL;

        live = index == chain->len - 1;
        label = g_strdup_printf("layer %u (%s) of disk '%s' of domain '%s'", index, layer->file, target, group);
        identity = layer_identity(layer, live);
        key_add(v.id, group);
        g_string_append(v.id, "/layer/");
        key_add(v.id, identity);
        view_add(&v, target, chain, index, NULL);
    }
    if (view_stamp(tree, &v, label) < 0)
        goto cleanup;
    {
        struct guest_view_spec spec = {
            .group = group,
            .id = v.id->str,
            .label = label,
            .live = live,
            .n_drives = v.drives->len,
            .drives = (const struct guest_drive *)v.drives->data,
        };

        tv = g_new0(struct tree_view, 1);
        tv->refs = 1;
        tv->view = guest_pool_view(tree->guests, &spec);
        tv->label = g_steal_pointer(&label);
        tv->images = g_steal_pointer(&v.images);
    }

cleanup:
    view_drives_clear(&v);
    return tv;
}

/*
 * An appliance takes its disks when it starts: on the first view of a
 * domain, make the views of all its snapshots and layers known (this starts
 * nothing), so that one appliance serves every one of them.
 */
static void tree_register_group(struct snapfs_tree *tree, const char *group, struct snapfs_domain *domain)
{
    for (guint i = 0; i < domain->snapshots->len; i++)
        tree_view_unref(tree_make_view(tree, group, domain, g_ptr_array_index(domain->snapshots, i), NULL, NULL, 0));
    for (guint i = 0; i < domain->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(domain->disks, i);
        g_autoptr(GPtrArray) chain = disk->file ? snapfs_chain_read(disk->file, disk->format) : NULL;

        for (guint j = 0; chain && j < chain->len; j++)
            tree_view_unref(tree_make_view(tree, group, domain, NULL, disk->target, chain, j));
    }
    snapfs_error_clear();
}

static char *snapshot_identity(const struct snapfs_snapshot *snap)
{
    return g_strdup_printf("%s@%lld", snap->name, snap->created);
}

/*
 * The view behind a SNAPSHOT, LAYER or GUEST node, found from libvirt and the
 * images; NULL with the reason.  A node stands for what it showed when it was
 * looked up: inside a snapshot deleted or a layer changed since (a shell's
 * working directory, which holds no handle), EIO.
 */
static struct tree_view *tree_find_view(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    g_autoptr(GPtrArray) chain = NULL;
    struct snapfs_domain *domain = tree_domain(tree, node);
    struct tree_view *view = NULL;
    g_autofree char *group = NULL;
    g_autofree char *now = NULL;
    int gone = node->kind == SNAPFS_NODE_GUEST ? EIO : ENOENT;

    if (!domain)
        return NULL;
    if (tree_check_local(tree, node) < 0)
        goto cleanup;
    group = tree_group(tree, node);
    if (!guest_pool_has_group(tree->guests, group))
        tree_register_group(tree, group, domain);
    if (node->snapshot) {
        struct snapfs_snapshot *snap = snapfs_domain_find_snapshot(domain, node->snapshot);

        now = snap ? snapshot_identity(snap) : NULL;
        if (!snap || (node->identity && strcmp(now, node->identity) != 0))
            snapfs_error_set(gone, "snapshot '%s' of domain '%s' was deleted since '%s' was looked up",
                             node->snapshot, group, node->path ? node->path : "/");
        else
            view = tree_make_view(tree, group, domain, snap, NULL, NULL, 0);
    } else if (tree_layer(domain, node, &chain)) {
        struct snapfs_layer *layer = g_ptr_array_index(chain, node->layer);

        now = layer_identity(layer, (guint)node->layer == chain->len - 1);
        if (node->identity && strcmp(now, node->identity) != 0)
            snapfs_error_set(gone, "layer %d of disk '%s' of domain '%s' changed since '%s' was looked up",
                             node->layer, node->disk, group, node->path ? node->path : "/");
        else
            view = tree_make_view(tree, group, domain, NULL, node->disk, chain, (guint)node->layer);
    } else if (gone == EIO) {
        snapfs_error_set(EIO, "%s", snapfs_error_message());
    }

cleanup:
    snapfs_domain_unref(domain);
    return view;
}

/*
 * The view behind a content node.  A node's identity says what it shows
 * (a snapshot's name and creation time, a layer's image and its mtime), so
 * its view is found once and kept until a chain changes or its images do:
 * reading a file or its xattrs then asks neither libvirt nor the image
 * headers again, only stat(2) of the images.
 */
static struct tree_view *tree_view_entry(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    g_autofree char *key = NULL;
    struct tree_view *tv;

    if (!node->identity)
        return tree_find_view(tree, node);
    {
        GString *k = g_string_new(NULL);

        g_string_append_printf(k, "%d/", node->host);
        key_add(k, node->domain);
        key_add(k, node->snapshot);
        key_add(k, node->disk);
        key_add(k, node->identity);
        key = g_string_free(k, FALSE);
    }
    g_mutex_lock(&tree->lock);
    tv = g_hash_table_lookup(tree->views, key);
    if (tv)
        tree_view_ref(tv);
    g_mutex_unlock(&tree->lock);
    if (tv && tree_view_current(tree, tv))
        return tv;
    tree_view_unref(tv);
    tv = tree_find_view(tree, node);
    if (tv) {
        g_mutex_lock(&tree->lock);
        g_hash_table_replace(tree->views, g_steal_pointer(&key), tree_view_ref(tv));
        g_mutex_unlock(&tree->lock);
    }
    return tv;
}

static struct guest_view *tree_view(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    struct tree_view *tv = tree_view_entry(tree, node);
    struct guest_view *view = tv ? guest_view_ref(tv->view) : NULL;

    tree_view_unref(tv);
    return view;
}

/* ---- open files and directories, and what they stop --------------------------------- */

void snapfs_tree_set_stale_fn(struct snapfs_tree *tree, void (*fn)(guint64 cookie, void *opaque), void *opaque)
{
    tree->stale_fn = fn;
    tree->stale_opaque = opaque;
}

struct snapfs_handle *snapfs_tree_open(struct snapfs_tree *tree, const struct snapfs_node *node, guint64 cookie)
{
    struct snapfs_handle *handle = g_new0(struct snapfs_handle, 1);

    if (node->kind == SNAPFS_NODE_GUEST || (node_has_content(node) && snapfs_host_is_local(tree_host(tree, node)))) {
        handle->tv = tree_view_entry(tree, node);
        if (!handle->tv) {
            g_free(handle);
            return NULL;
        }
    }
    handle->node = snapfs_node_copy(node);
    handle->cookie = cookie;
    g_mutex_lock(&tree->lock);
    g_hash_table_add(tree->handles, handle);
    g_mutex_unlock(&tree->lock);
    return handle;
}

void snapfs_tree_release(struct snapfs_tree *tree, struct snapfs_handle *handle)
{
    if (!handle)
        return;
    g_mutex_lock(&tree->lock);
    g_hash_table_remove(tree->handles, handle);
    g_mutex_unlock(&tree->lock);
    tree_view_unref(handle->tv);
    snapfs_node_free(handle->node);
    g_free(handle);
}

int snapfs_tree_handle_check(struct snapfs_tree *tree, struct snapfs_handle *handle)
{
    if (!handle->tv || tree_view_current(tree, handle->tv))
        return 0;
    snapfs_error_set(EIO, "the images of %s changed since '%s' was opened (merged, moved or rewritten): it "
                     "cannot be read any more; open it again", handle->tv->label,
                     handle->node->path ? handle->node->path : "/");
    return -1;
}

ssize_t snapfs_tree_handle_read(struct snapfs_tree *tree, struct snapfs_handle *handle, char *buf, size_t size,
                                off_t offset)
{
    ssize_t n;

    if (!handle->tv)
        return snapfs_tree_read(tree, handle->node, buf, size, offset);
    if (snapfs_tree_handle_check(tree, handle) < 0)
        return -1;
    n = guest_view_read(handle->tv->view, handle->node->path, buf, size, offset);
    /* Checked again: bytes read while an image changed are not the view's either. */
    if (n >= 0 && snapfs_tree_handle_check(tree, handle) < 0)
        return -1;
    return n;
}

/*
 * The engine's and revert's last word before they change @files: EBUSY,
 * naming the views and how many handles, while files or directories are open
 * in views that read any of them.  A view counts when its chain holds one of
 * them, whether or not its bytes would read otherwise afterwards (a merge
 * rewrites the files, so reads through the handle would fail): for rmdir of
 * an external snapshot that is the snapshot itself, the layer it froze and
 * every layer above (the live disk), and later snapshots that froze an image
 * above; never the layers below what is merged into, nor the snapshots that
 * froze them (the engine refuses to change an image something else is built
 * on), which stay open and readable through the merge.  For a revert, the
 * live layers and internal snapshots held in the live images.  Otherwise
 * views of @files are dropped and appliances closed (their qemu holds the
 * images open), and none is made again until the operation is over.
 */
/* How many handles are open on each view that reads any of @files: view label -> guint *.  Tree lock held. */
static GHashTable *tree_open_in(struct snapfs_tree *tree, const char *const *files)
{
    GHashTable *open = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_free);
    GHashTableIter iter;
    gpointer key;

    g_hash_table_iter_init(&iter, tree->handles);
    while (g_hash_table_iter_next(&iter, &key, NULL)) {
        struct snapfs_handle *handle = key;
        guint *count;

        if (!handle->tv || !tree_view_reads(handle->tv, files))
            continue;
        count = g_hash_table_lookup(open, handle->tv->label);
        if (!count)
            g_hash_table_insert(open, handle->tv->label, (count = g_new0(guint, 1)));
        (*count)++;
    }
    return open;
}

/* A close(2) right before the rmdir: the kernel sends its release without waiting for it. */
#define TREE_RELEASE_WAIT_MS 1000

static int tree_before_change(const char *label, const char *what, const char *const *files, void *opaque)
{
    struct snapfs_tree *tree = opaque;
    g_autoptr(GHashTable) open = NULL;
    GHashTableIter iter;
    gpointer key, value;

    g_mutex_lock(&tree->lock);
    for (int waited = 0; ; waited += 50) {
        open = tree_open_in(tree, files);
        if (g_hash_table_size(open) == 0 || waited >= TREE_RELEASE_WAIT_MS)
            break;
        g_clear_pointer(&open, g_hash_table_unref);
        g_mutex_unlock(&tree->lock);
        g_usleep(50 * G_TIME_SPAN_MILLISECOND);
        g_mutex_lock(&tree->lock);
    }
    if (g_hash_table_size(open) > 0) {
        g_autoptr(GString) list = g_string_new(NULL);

        g_hash_table_iter_init(&iter, open);
        while (g_hash_table_iter_next(&iter, &key, &value))
            g_string_append_printf(list, "%s%u open in %s", list->len ? ", " : "", *(guint *)value,
                                   (const char *)key);
        g_mutex_unlock(&tree->lock);
        snapfs_error_set(EBUSY, "%s: files or directories are open in views it would change (%s); close them "
                         "and try again", what, list->str);
        return -1;
    }
    for (guint i = 0; files[i]; i++) {
        g_hash_table_remove(tree->images, files[i]);
        g_hash_table_replace(tree->changing, g_strdup(files[i]), g_thread_self());
    }
    g_mutex_unlock(&tree->lock);
    tree_forget_views(tree);
    for (guint i = 0; files[i]; i++)
        guest_pool_forget_file(tree->guests, files[i]);
    /* qemu holds read locks on every image of the domain's appliances, not only these. */
    guest_pool_release_group(tree->guests, label);
    return 0;
}

/* The operation of this thread is over: views of what it changed may be made again. */
static void tree_changes_done(struct snapfs_tree *tree)
{
    GHashTableIter iter;
    gpointer value;

    g_mutex_lock(&tree->lock);
    g_hash_table_iter_init(&iter, tree->changing);
    while (g_hash_table_iter_next(&iter, NULL, &value)) {
        if (value == g_thread_self())
            g_hash_table_iter_remove(&iter);
    }
    g_mutex_unlock(&tree->lock);
}

static const char *guest_path(const struct snapfs_node *node)
{
    return node->kind == SNAPFS_NODE_GUEST ? node->path : "/";
}

/*
 * A guest file's inode number, made of its view's number, its filesystem's index and its guest inode
 * (the top bit keeps these apart from tree_ino()'s): a table of every guest file ever seen would grow
 * without bound.  Only numbers too large for the fields take a place in the table.
 */
static void tree_guest_ino(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st)
{
    g_autofree char *key = node_key(node);
    guint64 view = tree_ino(tree, key), dev = st->st_dev, ino = st->st_ino;

    if (view < (1u << 15) && dev < (1u << 8) && ino < ((guint64)1 << 40)) {
        st->st_ino = (ino_t)((guint64)1 << 63 | view << 48 | dev << 40 | ino);
    } else {
        g_autofree char *full = g_strdup_printf("%s#%llu#%llu", key, (unsigned long long)dev,
                                                (unsigned long long)ino);

        st->st_ino = tree_ino(tree, full);
    }
    st->st_dev = 0;
}

/* ---- getattr ------------------------------------------------------------------ */

static int snapshot_stat(struct snapfs_tree *tree, struct snapfs_snapshot *snap, struct stat *st)
{
    tree_stat_dir(tree, st, 0555, (time_t)snap->created);
    return 0;
}

int snapfs_tree_getattr(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st)
{
    struct snapfs_domain *domain = NULL;
    g_autofree char *key = NULL;
    mode_t writable = tree->config.read_only ? 0555 : 0755;
    int ret = 0;

    switch (node->kind) {
    case SNAPFS_NODE_ROOT:
    case SNAPFS_NODE_HOST:
        tree_stat_dir(tree, st, 0555, tree->mounted);
        if (node->kind == SNAPFS_NODE_ROOT) {
            st->st_ino = 1;
            return 0;
        }
        break;
    case SNAPFS_NODE_GUEST: {
        struct guest_view *view = tree_view(tree, node);

        if (!view)
            return -1;
        ret = guest_view_getattr(view, node->path, st);
        guest_view_unref(view);
        if (ret == 0)
            tree_guest_ino(tree, node, st);
        return ret;
    }
    default:
        domain = tree_domain(tree, node);
        if (!domain)
            return -1;
        if (node->kind == SNAPFS_NODE_DOMAIN) {
            tree_stat_dir(tree, st, writable, tree->mounted);
            st->st_nlink = 3 + domain->snapshots->len;
        } else if (node->kind == SNAPFS_NODE_REVERT) {
            struct snapfs_snapshot *current = snapfs_domain_current(domain);

            tree_stat_dir(tree, st, 0, tree->mounted);
            st->st_mode = S_IFREG | (tree->config.read_only ? 0444 : 0644);
            st->st_nlink = 1;
            st->st_size = current ? strlen(current->name) + 1 : 0;
        } else if (node->kind == SNAPFS_NODE_LAYERS || node->kind == SNAPFS_NODE_DISK) {
            tree_stat_dir(tree, st, 0555, tree->mounted);
        } else if (node->kind == SNAPFS_NODE_LAYER) {
            g_autoptr(GPtrArray) chain = NULL;
            struct snapfs_layer *layer = tree_layer(domain, node, &chain);
            struct stat image;

            if (!layer) {
                ret = -1;
            } else {
                tree_stat_dir(tree, st, 0555, tree->mounted);
                if (stat(layer->file, &image) == 0) {
                    st->st_mtim = image.st_mtim;
                    st->st_ctim = image.st_ctim;
                    st->st_atim = image.st_mtim;
                }
            }
        } else if (node->kind == SNAPFS_NODE_SNAPSHOT) {
            struct snapfs_snapshot *snap = snapfs_domain_find_snapshot(domain, node->snapshot);

            if (snap) {
                ret = snapshot_stat(tree, snap, st);
            } else {
                snapfs_error_set(ENOENT, "domain '%s' has no snapshot '%s'", domain->name, node->snapshot);
                ret = -1;
            }
        }
        snapfs_domain_unref(domain);
        break;
    }
    if (ret == 0) {
        key = node_key(node);
        st->st_ino = tree_ino(tree, key);
    }
    return ret;
}

/* ---- lookup ------------------------------------------------------------------ */

static struct snapfs_node *node_child(const struct snapfs_node *parent, enum snapfs_node_kind kind)
{
    struct snapfs_node *child = snapfs_node_copy(parent);

    child->kind = kind;
    return child;
}

static bool name_reserved(const char *name)
{
    return engine_name_reserved(name);
}

int snapfs_tree_lookup(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name,
                       struct snapfs_node **child_out, struct stat *st)
{
    g_autoptr(GPtrArray) chain = NULL;
    struct snapfs_node *child = NULL;
    struct snapfs_domain *domain = NULL;

    if (tree_host_folder_down(tree, parent)) {
        goto error;
    } else if (node_lists_domains(tree, parent)) {
        child = node_child(parent, SNAPFS_NODE_DOMAIN);
        child->domain = g_strdup(name);
    } else if (parent->kind == SNAPFS_NODE_ROOT) {
        for (size_t i = 0; i < tree->n_hosts && !child; i++) {
            if (strcmp(snapfs_host_name(tree->hosts[i]), name) == 0) {
                child = node_child(parent, SNAPFS_NODE_HOST);
                child->host = (int)i;
            }
        }
    } else if (parent->kind == SNAPFS_NODE_DOMAIN) {
        if (strcmp(name, "revert") == 0) {
            child = node_child(parent, SNAPFS_NODE_REVERT);
        } else if (strcmp(name, "layers") == 0) {
            child = node_child(parent, SNAPFS_NODE_LAYERS);
        } else {
            struct snapfs_snapshot *snap;

            child = node_child(parent, SNAPFS_NODE_SNAPSHOT);
            child->snapshot = g_strdup(name);
            domain = tree_domain(tree, parent);
            if (!domain)
                goto error;
            snap = snapfs_domain_find_snapshot(domain, name);
            if (!snap)
                goto enoent;
            /* A snapshot deleted and made again under the same name is another directory. */
            child->identity = snapshot_identity(snap);
        }
    } else if (parent->kind == SNAPFS_NODE_LAYERS) {
        child = node_child(parent, SNAPFS_NODE_DISK);
        child->disk = g_strdup(name);
        domain = tree_domain(tree, parent);
        if (!domain)
            goto error;
        if (!snapfs_domain_find_disk(domain, name) || !snapfs_domain_find_disk(domain, name)->file)
            goto enoent;
    } else if (parent->kind == SNAPFS_NODE_DISK) {
        char *end = NULL;
        guint64 index = g_ascii_strtoull(name, &end, 10);

        if (end == name || *end != '-')
            goto enoent;
        domain = tree_domain(tree, parent);
        if (!domain || !(chain = tree_chain(domain, parent->disk)))
            goto error;
        if (index >= chain->len)
            goto enoent;
        {
            struct snapfs_layer *layer = g_ptr_array_index(chain, index);
            g_autofree char *expected = layer_dir_name(index, layer);

            if (strcmp(expected, name) != 0)
                goto enoent;
            child = node_child(parent, SNAPFS_NODE_LAYER);
            child->layer = (int)index;
            child->layer_file = g_strdup(layer->file);
            child->live = index == chain->len - 1;
            child->identity = layer_identity(layer, child->live);
        }
    } else if (node_has_content(parent)) {
        child = node_child(parent, SNAPFS_NODE_GUEST);
        g_free(child->path);
        child->path = g_build_filename(guest_path(parent), name, NULL);
    }
    if (!child)
        goto enoent;
    if (snapfs_tree_getattr(tree, child, st) < 0)
        goto error;
    snapfs_domain_unref(domain);
    *child_out = child;
    return 0;

enoent:
    snapfs_error_set(ENOENT, "'%s' does not exist here", name);
error:
    snapfs_domain_unref(domain);
    snapfs_node_free(child);
    return -1;
}

/* ---- readdir -------------------------------------------------------------------- */

static int dirent_dir(struct snapfs_tree *tree, const struct snapfs_node *child,
                      const char *name, snapfs_dirent_fn fn, void *opaque)
{
    g_autofree char *key = node_key(child);
    struct stat st;

    memset(&st, 0, sizeof(st));
    st.st_mode = child->kind == SNAPFS_NODE_REVERT ? S_IFREG : S_IFDIR;
    st.st_ino = tree_ino(tree, key);
    return fn(opaque, name, &st);
}

struct guest_readdir_ctx {
    struct snapfs_tree *tree;
    const struct snapfs_node *node;
    snapfs_dirent_fn fn;
    void *opaque;
};

static int guest_readdir_entry(void *opaque, const char *name, const struct stat *st)
{
    struct guest_readdir_ctx *ctx = opaque;
    struct snapfs_node child = *ctx->node;
    g_autofree char *path = g_build_filename(guest_path(ctx->node), name, NULL);
    struct stat copy = *st;

    child.kind = SNAPFS_NODE_GUEST;
    child.path = path;
    tree_guest_ino(ctx->tree, &child, &copy);
    return ctx->fn(ctx->opaque, name, &copy);
}

int snapfs_tree_readdir(struct snapfs_tree *tree, const struct snapfs_node *node,
                        snapfs_dirent_fn fn, void *opaque)
{
    g_autoptr(GPtrArray) chain = NULL;
    struct snapfs_domain *domain = NULL;
    struct snapfs_node child = *node;
    int ret = 0;

    if (node_lists_domains(tree, node)) {
        g_autoptr(GPtrArray) names = NULL;

        /* One of several hosts that is down is an empty folder; user.snapfs.error says why. */
        if (tree_host_folder_down(tree, node))
            return 0;
        names = snapfs_host_list_domains(tree_host(tree, node));
        if (!names)
            return -1;
        child.kind = SNAPFS_NODE_DOMAIN;
        for (guint i = 0; i < names->len && ret == 0; i++) {
            child.domain = g_ptr_array_index(names, i);
            ret = dirent_dir(tree, &child, child.domain, fn, opaque);
        }
        return 0;
    }
    if (node->kind == SNAPFS_NODE_ROOT) {
        child.kind = SNAPFS_NODE_HOST;
        for (size_t i = 0; i < tree->n_hosts && ret == 0; i++) {
            child.host = (int)i;
            ret = dirent_dir(tree, &child, snapfs_host_name(tree->hosts[i]), fn, opaque);
        }
        return 0;
    }
    if (node_has_content(node)) {
        struct guest_readdir_ctx ctx = { tree, node, fn, opaque };
        struct guest_view *view;

        /* A remote host's snapshot or layer is an empty directory; user.snapfs.error says why. */
        if (node->kind != SNAPFS_NODE_GUEST && tree_check_local(tree, node) < 0)
            return 0;
        view = tree_view(tree, node);
        if (!view)
            return -1;
        ret = guest_view_readdir(view, guest_path(node), guest_readdir_entry, &ctx);
        guest_view_unref(view);
        return ret < 0 ? -1 : 0;
    }

    domain = tree_domain(tree, node);
    if (!domain)
        return -1;
    if (node->kind == SNAPFS_NODE_DOMAIN) {
        child.kind = SNAPFS_NODE_REVERT;
        ret = dirent_dir(tree, &child, "revert", fn, opaque);
        child.kind = SNAPFS_NODE_LAYERS;
        if (ret == 0)
            ret = dirent_dir(tree, &child, "layers", fn, opaque);
        child.kind = SNAPFS_NODE_SNAPSHOT;
        for (guint i = 0; i < domain->snapshots->len && ret == 0; i++) {
            struct snapfs_snapshot *snap = g_ptr_array_index(domain->snapshots, i);

            /* A snapshot named like a control file cannot be shown; see README. */
            if (name_reserved(snap->name) || strcmp(snap->name, ".") == 0 || strcmp(snap->name, "..") == 0)
                continue;
            child.snapshot = snap->name;
            ret = dirent_dir(tree, &child, snap->name, fn, opaque);
        }
    } else if (node->kind == SNAPFS_NODE_LAYERS) {
        child.kind = SNAPFS_NODE_DISK;
        for (guint i = 0; i < domain->disks->len && ret == 0; i++) {
            struct snapfs_disk *disk = g_ptr_array_index(domain->disks, i);

            if (!disk->file)
                continue;
            child.disk = disk->target;
            ret = dirent_dir(tree, &child, disk->target, fn, opaque);
        }
    } else if (node->kind == SNAPFS_NODE_DISK && tree_check_local(tree, node) == 0) {
        chain = tree_chain(domain, node->disk);
        if (!chain) {
            /* A chain snapfs will not read (a format nobody recorded) is a refusal: logged, kept. */
            if (snapfs_error_errno() == ENOTSUP)
                tree_remember_error(tree, node, "listing the layers", NULL);
            snapfs_domain_unref(domain);
            return -1;
        }
        child.kind = SNAPFS_NODE_LAYER;
        for (guint i = 0; i < chain->len && ret == 0; i++) {
            struct snapfs_layer *layer = g_ptr_array_index(chain, i);
            g_autofree char *name = layer_dir_name(i, layer);

            child.layer = (int)i;
            child.layer_file = layer->file;
            ret = dirent_dir(tree, &child, name, fn, opaque);
        }
    }
    snapfs_domain_unref(domain);
    return 0;
}

/* ---- content ---------------------------------------------------------------------- */

int snapfs_tree_readlink(struct snapfs_tree *tree, const struct snapfs_node *node, char **target)
{
    struct guest_view *view;
    int ret;

    if (node->kind != SNAPFS_NODE_GUEST) {
        snapfs_error_set(EINVAL, "'%s' is not a symbolic link", node->domain ? node->domain : "/");
        return -1;
    }
    view = tree_view(tree, node);
    if (!view)
        return -1;
    ret = guest_view_readlink(view, node->path, target);
    guest_view_unref(view);
    return ret;
}

static char *revert_content(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    struct snapfs_domain *domain = tree_domain(tree, node);
    struct snapfs_snapshot *current;
    char *text;

    if (!domain)
        return NULL;
    current = snapfs_domain_current(domain);
    text = g_strdup_printf("%s%s", current ? current->name : "", current ? "\n" : "");
    snapfs_domain_unref(domain);
    return text;
}

ssize_t snapfs_tree_read(struct snapfs_tree *tree, const struct snapfs_node *node,
                         char *buf, size_t size, off_t offset)
{
    if (node->kind == SNAPFS_NODE_REVERT) {
        g_autofree char *text = revert_content(tree, node);
        size_t len;

        if (!text)
            return -1;
        len = strlen(text);
        if ((size_t)offset >= len)
            return 0;
        size = MIN(size, len - (size_t)offset);
        memcpy(buf, text + offset, size);
        return (ssize_t)size;
    }
    if (node->kind == SNAPFS_NODE_GUEST) {
        struct guest_view *view = tree_view(tree, node);
        ssize_t ret;

        if (!view)
            return -1;
        ret = guest_view_read(view, node->path, buf, size, offset);
        guest_view_unref(view);
        return ret;
    }
    snapfs_error_set(EISDIR, "this is a directory");
    return -1;
}

/* Drop what the guest reader holds of files a chain change moved or merged. */
static void tree_forget_chains(struct snapfs_tree *tree, struct snapfs_domain *before)
{
    tree_forget_views(tree);
    for (guint i = 0; before && i < before->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(before->disks, i);
        g_autoptr(GPtrArray) chain = disk->file ? snapfs_chain_read(disk->file, disk->format) : NULL;

        for (guint j = 0; chain && j < chain->len; j++)
            guest_pool_forget_file(tree->guests, ((struct snapfs_layer *)g_ptr_array_index(chain, j))->file);
    }
}

int snapfs_tree_write(struct snapfs_tree *tree, const struct snapfs_node *node, const char *buf, size_t size,
                      off_t offset, bool first)
{
    struct revert_request request = { 0 };
    struct snapfs_domain *before;
    virConnectPtr conn;
    int ret;

    if (node->kind != SNAPFS_NODE_REVERT) {
        snapfs_error_set(EROFS, "only DOMAIN/revert can be written");
        return -1;
    }
    if (tree->config.read_only) {
        snapfs_error_set(EROFS, "cannot revert '%s': mounted read-only", node->domain);
        return -1;
    }
    /* Refused before anything is asked or touched (libvirt, appliances, caches). */
    if (offset != 0 || !first) {
        snapfs_error_set(EINVAL, "a revert request is written from the start of the file, in order, by one open "
                         "(as echo NAME > revert makes it): a %s was refused, nothing was reverted by it",
                         offset != 0 ? "write out of order" : "second request of one open file");
        tree_remember_error(tree, node, "revert", NULL);
        return -1;
    }
    if (revert_parse(buf, size, &request) < 0) {
        tree_remember_error(tree, node, "revert", NULL);
        return -1;
    }
    revert_request_clear(&request);
    conn = snapfs_host_conn(tree_host(tree, node));
    if (!conn)
        return -1;
    before = tree_domain(tree, node);
    /* Appliances are closed, and open files refuse it, in tree_before_change(). */
    ret = revert_write(conn, node->domain, buf, size, &tree->config.revert);
    tree_changes_done(tree);
    if (ret < 0)
        tree_remember_error(tree, node, "revert", NULL);
    else
        tree_forget_chains(tree, before);
    snapfs_host_invalidate(tree_host(tree, node), node->domain);
    snapfs_domain_unref(before);
    virConnectClose(conn);
    return ret;
}

/* ---- xattrs ------------------------------------------------------------------------ */

struct xattr_list {
    GPtrArray *names;
    GPtrArray *values;
};

static void xattr_add(struct xattr_list *list, const char *name, char *value)
{
    g_ptr_array_add(list->names, g_strconcat(XATTR_PREFIX, name, NULL));
    g_ptr_array_add(list->values, value);
}

/* The xattrs snapfs itself shows on a node, in a fixed order. */
static int tree_xattrs(struct snapfs_tree *tree, const struct snapfs_node *node, struct xattr_list *list)
{
    struct snapfs_domain *domain;

    if (node->kind == SNAPFS_NODE_ROOT || node->kind == SNAPFS_NODE_HOST) {
        if (node_lists_domains(tree, node)) {
            struct snapfs_host *host = tree_host(tree, node);
            char *down = snapfs_host_error(host);

            xattr_add(list, "uri", g_strdup(snapfs_host_uri(host)));
            if (down)
                xattr_add(list, "error", down);
        }
        if (node->kind == SNAPFS_NODE_ROOT) {
            /* What the guest reader has done: a second walk of a frozen snapshot makes no appliance call. */
            struct guest_pool_stats stats;

            guest_pool_get_stats(tree->guests, &stats);
            xattr_add(list, "appliances", g_strdup_printf("%u", stats.running));
            xattr_add(list, "appliance_starts", g_strdup_printf("%u", stats.launches));
            xattr_add(list, "appliance_calls", g_strdup_printf("%u", stats.calls));
            /* Bytes the guest caches hold now and at most, within -o cache_size. */
            xattr_add(list, "cached", g_strdup_printf("%zu", stats.cached));
            xattr_add(list, "cached_peak", g_strdup_printf("%zu", stats.cache_peak));
        }
        return 0;
    }
    if (node->kind == SNAPFS_NODE_GUEST || node->kind == SNAPFS_NODE_REVERT)
        return 0;
    domain = tree_domain(tree, node);
    if (!domain)
        return -1;
    if (node->kind == SNAPFS_NODE_DOMAIN) {
        g_autofree char *key = g_strdup_printf("%d/%s", node->host, node->domain);
        char *last;

        g_mutex_lock(&tree->lock);
        last = g_strdup(g_hash_table_lookup(tree->last_errors, key));
        g_mutex_unlock(&tree->lock);
        virConnectPtr conn = snapfs_host_conn(tree_host(tree, node));
        char *progress = conn ? engine_progress(conn, node->domain) : NULL;

        if (conn)
            virConnectClose(conn);
        if (!progress) {
            g_autofree char *group = tree_group(tree, node);

            progress = guest_pool_progress(tree->guests, group);
        }
        xattr_add(list, "state", g_strdup(domain->running ? "running" : "shutoff"));
        if (domain->uuid)
            xattr_add(list, "uuid", g_strdup(domain->uuid));
        if (last)
            xattr_add(list, "last_error", last);
        if (progress)
            xattr_add(list, "progress", progress);
    } else if (node->kind == SNAPFS_NODE_SNAPSHOT) {
        struct snapfs_snapshot *snap = snapfs_domain_find_snapshot(domain, node->snapshot);

        if (!snap) {
            snapfs_error_set(ENOENT, "domain '%s' has no snapshot '%s'", domain->name, node->snapshot);
            snapfs_domain_unref(domain);
            return -1;
        }
        if (snap->parent)
            xattr_add(list, "parent", g_strdup(snap->parent));
        xattr_add(list, "created", g_strdup_printf("%lld", snap->created));
        xattr_add(list, "description", g_strdup(snap->description));
        xattr_add(list, "state", g_strdup(snap->state));
        xattr_add(list, "kind", g_strdup(snap->external ? "external" : "internal"));
        xattr_add(list, "current", g_strdup(snap->current ? "1" : "0"));
    } else if (node->kind == SNAPFS_NODE_LAYER) {
        g_autoptr(GPtrArray) chain = NULL;
        struct snapfs_layer *layer = tree_layer(domain, node, &chain);
        struct snapfs_snapshot *frozen_by;

        if (!layer) {
            snapfs_domain_unref(domain);
            return -1;
        }
        frozen_by = layer_frozen_by(domain, node->disk, chain, (guint)node->layer);
        xattr_add(list, "file", g_strdup(layer->file));
        xattr_add(list, "format", g_strdup(layer->format));
        xattr_add(list, "virtual_size", g_strdup_printf("%" G_GUINT64_FORMAT, layer->virtual_size));
        if (layer->backing)
            xattr_add(list, "backing", snapfs_chain_resolve(layer->file, layer->backing));
        if (frozen_by)
            xattr_add(list, "snapshot", g_strdup(frozen_by->name));
        xattr_add(list, "live", g_strdup((guint)node->layer == chain->len - 1 ? "1" : "0"));
    }
    if ((node->kind == SNAPFS_NODE_LAYERS || node->kind == SNAPFS_NODE_DISK) && tree_check_local(tree, node) < 0) {
        xattr_add(list, "error", g_strdup(snapfs_error_message()));
    } else if (node->kind == SNAPFS_NODE_DISK) {
        g_autoptr(GPtrArray) chain = tree_chain(domain, node->disk);

        if (!chain)
            xattr_add(list, "error", g_strdup(snapfs_error_message()));
    }
    if (node->kind == SNAPFS_NODE_SNAPSHOT || node->kind == SNAPFS_NODE_LAYER) {
        struct guest_view *view = tree_view(tree, node);
        char *why = view ? guest_view_error(view) : g_strdup(snapfs_error_message());

        if (why)
            xattr_add(list, "error", why);
        guest_view_unref(view);
    }
    snapfs_domain_unref(domain);
    return 0;
}

static ssize_t xattr_copy(const char *value, size_t len, char *buf, size_t size)
{
    if (size == 0)
        return (ssize_t)len;
    if (size < len) {
        snapfs_error_set(ERANGE, "the buffer is too small");
        return -1;
    }
    memcpy(buf, value, len);
    return (ssize_t)len;
}

ssize_t snapfs_tree_getxattr(struct snapfs_tree *tree, const struct snapfs_node *node,
                             const char *name, char *buf, size_t size)
{
    struct xattr_list list = { g_ptr_array_new_with_free_func(g_free), g_ptr_array_new_with_free_func(g_free) };
    ssize_t ret = -1;

    if (node->kind == SNAPFS_NODE_GUEST) {
        struct guest_view *view = tree_view(tree, node);

        if (view) {
            ret = guest_view_getxattr(view, node->path, name, buf, size);
            guest_view_unref(view);
        }
        goto cleanup;
    }
    if (tree_xattrs(tree, node, &list) < 0)
        goto cleanup;
    snapfs_error_set(ENODATA, "no attribute '%s'", name);
    for (guint i = 0; i < list.names->len; i++) {
        const char *value = g_ptr_array_index(list.values, i);

        if (strcmp(g_ptr_array_index(list.names, i), name) == 0) {
            ret = xattr_copy(value, strlen(value), buf, size);
            break;
        }
    }

cleanup:
    g_ptr_array_unref(list.names);
    g_ptr_array_unref(list.values);
    return ret;
}

ssize_t snapfs_tree_listxattr(struct snapfs_tree *tree, const struct snapfs_node *node, char *buf, size_t size)
{
    struct xattr_list list = { g_ptr_array_new_with_free_func(g_free), g_ptr_array_new_with_free_func(g_free) };
    GString *names = g_string_new(NULL);
    ssize_t ret = -1;

    if (node->kind == SNAPFS_NODE_GUEST) {
        struct guest_view *view = tree_view(tree, node);

        if (view) {
            ret = guest_view_listxattr(view, node->path, buf, size);
            guest_view_unref(view);
        }
        goto cleanup;
    }
    if (tree_xattrs(tree, node, &list) < 0)
        goto cleanup;
    for (guint i = 0; i < list.names->len; i++)
        g_string_append_len(names, g_ptr_array_index(list.names, i),
                            (gssize)strlen(g_ptr_array_index(list.names, i)) + 1);
    ret = xattr_copy(names->str, names->len, buf, size);

cleanup:
    g_string_free(names, TRUE);
    g_ptr_array_unref(list.names);
    g_ptr_array_unref(list.values);
    return ret;
}

int snapfs_tree_setxattr(struct snapfs_tree *tree, const struct snapfs_node *node,
                         const char *name, const char *value, size_t size)
{
    g_autofree char *text = NULL;
    virConnectPtr conn;
    int ret;

    if (node->kind != SNAPFS_NODE_SNAPSHOT || strcmp(name, XATTR_PREFIX "description") != 0) {
        snapfs_error_set(node_has_content(node) ? EROFS : EPERM,
                         "only user.snapfs.description of a snapshot can be set");
        return -1;
    }
    if (tree->config.read_only) {
        snapfs_error_set(EROFS, "cannot describe snapshot '%s': mounted read-only", node->snapshot);
        return -1;
    }
    conn = snapfs_host_conn(tree_host(tree, node));
    if (!conn)
        return -1;
    text = g_strndup(value, size);
    ret = engine_snapshot_set_description(conn, node->domain, node->snapshot, text);
    if (ret < 0)
        tree_remember_error(tree, node, "setfattr", node->snapshot);
    snapfs_host_invalidate(tree_host(tree, node), node->domain);
    virConnectClose(conn);
    return ret;
}

/* ---- mkdir and rmdir ------------------------------------------------------------------ */

static int tree_check_snapshot_parent(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *what)
{
    if (node_has_content(parent)) {
        snapfs_error_set(EROFS, "cannot %s inside a snapshot or a layer: they are read-only", what);
        return -1;
    }
    if (parent->kind != SNAPFS_NODE_DOMAIN) {
        snapfs_error_set(EPERM, "cannot %s here: only a domain's directory holds snapshots", what);
        return -1;
    }
    if (tree->config.read_only) {
        snapfs_error_set(EROFS, "cannot %s in '%s': mounted read-only", what, parent->domain);
        return -1;
    }
    return 0;
}

/*
 * A snapshot made through the mount can be reverted to through it: its name, written to revert,
 * must read back as that name (no blanks around it, no trailing " --force" or other option).
 */
static int tree_check_revertable(const char *name)
{
    struct revert_request request = { 0 };
    int ret = 0;

    if (revert_parse(name, strlen(name), &request) < 0) {
        g_autofree char *why = g_strdup(snapfs_error_message());

        snapfs_error_set(EINVAL, "'%s' cannot name a snapshot: it could not be reverted to (%s)", name, why);
        return -1;
    }
    if (request.force || strcmp(request.name, name) != 0) {
        snapfs_error_set(EINVAL, "'%s' cannot name a snapshot: written to revert, it would ask for '%s'%s", name,
                         request.name, request.force ? " with --force" : "");
        ret = -1;
    }
    revert_request_clear(&request);
    return ret;
}

int snapfs_tree_mkdir(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name)
{
    virConnectPtr conn;
    int ret;

    if (tree_check_snapshot_parent(tree, parent, "create a snapshot") < 0)
        return -1;
    if (engine_check_name(name) < 0 || tree_check_revertable(name) < 0) {
        tree_remember_error(tree, parent, "mkdir", name);
        return -1;
    }
    conn = snapfs_host_conn(tree_host(tree, parent));
    if (!conn)
        return -1;
    ret = engine_snapshot_create(conn, parent->domain, name, &tree->config.engine);
    if (ret < 0)
        tree_remember_error(tree, parent, "mkdir", name);
    snapfs_host_invalidate(tree_host(tree, parent), parent->domain);
    virConnectClose(conn);
    return ret;
}

int snapfs_tree_rmdir(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name)
{
    virConnectPtr conn;
    int ret;

    if (tree_check_snapshot_parent(tree, parent, "delete a snapshot") < 0)
        return -1;
    if (name_reserved(name)) {
        snapfs_error_set(EPERM, "'%s' is not a snapshot", name);
        return -1;
    }
    conn = snapfs_host_conn(tree_host(tree, parent));
    if (!conn)
        return -1;
    /*
     * Open files refuse it, and appliances are closed, in tree_before_change(); the engine
     * reports every image it merged or removed through tree_chain_changed().
     */
    ret = engine_snapshot_delete(conn, parent->domain, name);
    tree_changes_done(tree);
    if (ret < 0)
        tree_remember_error(tree, parent, "rmdir", name);
    snapfs_host_invalidate(tree_host(tree, parent), parent->domain);
    virConnectClose(conn);
    return ret;
}
