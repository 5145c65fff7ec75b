/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A view's paths: resolving one, attributes, listings and link targets, fetched from the appliance in batches. */
#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <string.h>

static void stat_from_guest(struct stat *st, const struct guestfs_statns *ns, dev_t dev)
{
    memset(st, 0, sizeof(*st));
    st->st_dev = dev;
    st->st_ino = (ino_t)ns->st_ino;
    st->st_mode = (mode_t)ns->st_mode;
    st->st_nlink = (nlink_t)ns->st_nlink;
    st->st_uid = (uid_t)ns->st_uid;
    st->st_gid = (gid_t)ns->st_gid;
    st->st_rdev = (dev_t)ns->st_rdev;
    st->st_size = (off_t)ns->st_size;
    st->st_blksize = (blksize_t)ns->st_blksize;
    st->st_blocks = (blkcnt_t)ns->st_blocks;
    st->st_atim.tv_sec = (time_t)ns->st_atime_sec;
    st->st_atim.tv_nsec = (long)ns->st_atime_nsec;
    st->st_mtim.tv_sec = (time_t)ns->st_mtime_sec;
    st->st_mtim.tv_nsec = (long)ns->st_mtime_nsec;
    st->st_ctim.tv_sec = (time_t)ns->st_ctime_sec;
    st->st_ctim.tv_nsec = (long)ns->st_ctime_nsec;
}

/* The root of a view where nothing is mounted, kept as an empty read-only folder without xattrs: those, to hand on. */
static GPtrArray *view_put_empty_root(struct guest_view *view, struct stat *st)
{
    struct guest_dir *dir = guest_dir_new();
    GPtrArray *xattrs = g_ptr_array_new();

    memset(st, 0, sizeof(*st));
    st->st_mode = S_IFDIR | 0555;
    st->st_nlink = 2;
    st->st_ino = 1;
    dir->stats = dir->xattrs = true;
    g_mutex_lock(&view->pool->cache_lock);
    guest_cache_put_dir(view, "/", dir);
    guest_cache_put_node(view, "/", st, NULL, g_ptr_array_ref(xattrs));
    g_mutex_unlock(&view->pool->cache_lock);
    return xattrs;
}

/* Fetch the root of the view: one lstatns and its xattrs, handed to @st and @xattrs too where asked. */
static int view_load_root(struct guest_view *view, struct stat *out, GPtrArray **out_xattrs)
{
    struct guest_appliance *app = guest_view_enter(view);
    g_autoptr(guest_statns) ns = NULL;
    g_autoptr(guest_xattr_list) xl = NULL;
    g_autoptr(GPtrArray) xattrs = NULL;
    g_autofree char *apath = NULL;
    struct stat st;

    if (!app)
        return -1;
    if (view->empty) {
        /* libguestfs refuses file calls in an appliance where nothing is mounted at all. */
        guest_view_leave(view, app);
        xattrs = view_put_empty_root(view, &st);
    } else {
        apath = guest_view_path(view, "/");
        ns = guestfs_lstatns(app->g, apath);
        if (!ns) {
            guest_appliance_error(app, "stat", "/");
            guest_view_leave(view, app);
            return -1;
        }
        xl = guestfs_lgetxattrs(app->g, apath);
        if (xl)
            xattrs = guest_xattrs_from_list(xl);
        guest_view_leave(view, app);
        stat_from_guest(&st, ns, guest_view_dev(view, "/"));
        if (!view->os && st.st_mode & S_IWUSR)
            st.st_mode &= ~(mode_t)0222;   /* the appliance's own directory: show it as the read-only folder it is */
        g_mutex_lock(&view->pool->cache_lock);
        guest_cache_put_node(view, "/", &st, NULL, xattrs ? g_ptr_array_ref(xattrs) : NULL);
        g_mutex_unlock(&view->pool->cache_lock);
    }
    if (out)
        *out = st;
    if (out_xattrs)
        *out_xattrs = g_steal_pointer(&xattrs);
    return 0;
}

/* The type bits of guestfs_readdir's one-letter file type ('f' is a FIFO, 'r' a regular file). */
static mode_t dirent_type(char ftyp)
{
    switch (ftyp) {
    case 'b': return S_IFBLK;
    case 'c': return S_IFCHR;
    case 'd': return S_IFDIR;
    case 'f': return S_IFIFO;
    case 'l': return S_IFLNK;
    case 'r': return S_IFREG;
    case 's': return S_IFSOCK;
    default: return 0;
    }
}

/*
 * The names of directory @path in one round trip (guestfs_readdir): each entry's type and inode come
 * with it.  Kept, and copied as guest_dir_copy() does; NULL with the reason.
 */
static GStrv view_list_dir(struct guest_view *view, const char *path, bool *stats, bool *xattrs, GArray **types,
                           GArray **inos)
{
    struct guest_appliance *app = guest_view_enter(view);
    g_autoptr(guest_dirent_list) ents = NULL;
    g_autofree char *apath = NULL;
    struct guest_dir *dir;
    GStrv names;

    if (!app)
        return NULL;
    apath = guest_view_path(view, path);
    ents = guestfs_readdir(app->g, apath);
    if (!ents)
        guest_appliance_error(app, "list", path);
    guest_view_leave(view, app);
    if (!ents)
        return NULL;
    dir = guest_dir_new();
    for (uint32_t i = 0; i < ents->len; i++) {
        const char *name = ents->val[i].name;

        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || g_hash_table_contains(dir->index, name))
            continue;
        guest_dir_add(dir, name, dirent_type(ents->val[i].ftyp), (ino_t)ents->val[i].ino);
    }
    g_mutex_lock(&view->pool->cache_lock);
    names = guest_dir_copy(dir, stats, xattrs, types, inos);
    guest_cache_put_dir(view, path, dir);
    g_mutex_unlock(&view->pool->cache_lock);
    return names;
}

/* The names of @path's listing, listing it first if needed, as guest_dir_copy() gives them; NULL with the reason. */
GStrv guest_view_dir_names(struct guest_view *view, const char *path, bool *stats, bool *xattrs, GArray **types,
                            GArray **inos)
{
    struct guest_dir *dir;

    g_mutex_lock(&view->pool->cache_lock);
    dir = guest_cache_get_dir(view, path);
    if (dir) {
        GStrv names = guest_dir_copy(dir, stats, xattrs, types, inos);

        g_mutex_unlock(&view->pool->cache_lock);
        return names;
    }
    g_mutex_unlock(&view->pool->cache_lock);
    return view_list_dir(view, path, stats, xattrs, types, inos);
}

/*
 * One entry a damaged filesystem cannot stat fails the batch: stat the @n @names of @apath one by one,
 * keeping the good (st_ino -1 marks the others).  Freed by guestfs_free_statns_list().
 */
static struct guestfs_statns_list *appliance_stat_one_by_one(struct guest_appliance *app, const char *apath,
                                                            char **names, size_t n)
{
    struct guestfs_statns_list *stats = calloc(1, sizeof(*stats));

    stats->len = (uint32_t)n;
    stats->val = calloc(n, sizeof(struct guestfs_statns));
    for (size_t i = 0; i < n && guestfs_is_ready(app->g); i++) {
        g_autofree char *child = g_build_filename(apath, names[i], NULL);
        struct guestfs_statns *one = guestfs_lstatns(app->g, child);

        if (one) {
            stats->val[i] = *one;
            free(one);
        } else {
            stats->val[i].st_ino = -1;
        }
    }
    return stats;
}

/* Keep the attributes @stats and link targets @links (may be NULL) of the @n entries @names of @path. */
static void view_put_stats(struct guest_view *view, const char *path, char **names, size_t n,
                           const struct guestfs_statns_list *stats, char **links)
{
    g_autofree dev_t *devs = g_new0(dev_t, n + 1);

    /* An entry may be a mount point (/boot): st_dev per entry, found before the cache lock is taken. */
    for (size_t i = 0; i < n; i++) {
        g_autofree char *child = guest_child_path(path, names[i]);

        devs[i] = guest_view_dev(view, child);
    }
    g_mutex_lock(&view->pool->cache_lock);
    guest_cache_mark_dir(view, path, true, false);
    for (size_t i = 0; stats && i < n && i < stats->len; i++) {
        g_autofree char *child = NULL;
        struct stat st;

        if (stats->val[i].st_ino == -1)
            continue;   /* vanished between readdir and lstat (a live view), or unreadable */
        child = guest_child_path(path, names[i]);
        stat_from_guest(&st, &stats->val[i], devs[i]);
        guest_cache_put_node(view, child, &st,
                             S_ISLNK(st.st_mode) && links && links[i] && links[i][0] ? g_strdup(links[i]) : NULL, NULL);
    }
    g_mutex_unlock(&view->pool->cache_lock);
}

/* Every entry of @path's attributes and link targets, in one or two round trips (lstatnslist, readlinklist). */
int guest_view_stat_dir(struct guest_view *view, const char *path)
{
    g_auto(GStrv) names = NULL;
    g_auto(GStrv) links = NULL;
    g_autofree char *apath = NULL;
    g_autoptr(guest_statns_list) stats = NULL;
    struct guest_appliance *app;
    bool have_stats, have_xattrs, any_link = false;
    size_t n;

    if (guest_cache_dir_has(view, path, false))
        return 0;
    names = guest_view_dir_names(view, path, &have_stats, &have_xattrs, NULL, NULL);
    if (!names)
        return -1;
    if (have_stats)
        return 0;
    n = g_strv_length(names);
    app = guest_view_enter(view);
    if (!app)
        return -1;
    guest_appliance_expect(view->pool, app, n);
    apath = guest_view_path(view, path);
    if (n > 0) {
        stats = guestfs_lstatnslist(app->g, apath, names);
        if (!stats && guestfs_is_ready(app->g)) {
            log_warn("%s: cannot stat the entries of '%s' together (%s): one by one", view->label, path,
                        guestfs_last_error(app->g));
            stats = appliance_stat_one_by_one(app, apath, names, n);
        }
        if (!stats || !guestfs_is_ready(app->g)) {
            guest_appliance_error(app, "stat the entries of", path);
            guest_view_leave(view, app);
            return -1;
        }
        for (size_t i = 0; i < stats->len; i++)
            any_link |= S_ISLNK(stats->val[i].st_mode);
        if (any_link)
            links = guestfs_readlinklist(app->g, apath, names);
    }
    guest_view_leave(view, app);
    view_put_stats(view, path, names, n, stats, links);
    return 0;
}

/* A live view whose answers expired: make the appliance forget what its kernel cached too. */
static void view_refresh(struct guest_view *view)
{
    struct guest_appliance *app;

    if (!view->live)
        return;
    g_mutex_lock(&view->lock);
    if (g_get_monotonic_time() - view->dropped_at < (gint64)view->pool->config.live_ttl_ms * 1000) {
        g_mutex_unlock(&view->lock);
        return;
    }
    view->dropped_at = g_get_monotonic_time();
    g_mutex_unlock(&view->lock);
    app = guest_view_enter(view);
    if (app) {
        guestfs_drop_caches(app->g, 3);
        guest_view_leave(view, app);
        /* Counted from its end: under TCG a drop can take longer than the live TTL, and each lookup would drop again. */
        g_mutex_lock(&view->lock);
        view->dropped_at = g_get_monotonic_time();
        g_mutex_unlock(&view->lock);
    }
}

static bool path_valid(const char *path)
{
    if (!path || path[0] != '/') {
        error_set(EINVAL, "'%s' is not an absolute path", path ? path : "(null)");
        return false;
    }
    return true;
}

/*
 * @path alone, in one or two round trips: its parent's listing brought it, but the cache could not
 * keep it until it was copied (a bound smaller than that listing).
 */
static int view_stat_alone(struct guest_view *view, const char *path, struct stat *st, char **link)
{
    struct guest_appliance *app = guest_view_enter(view);
    g_autofree char *apath = NULL;
    g_autoptr(guest_statns) ns = NULL;
    char *target = NULL;
    struct stat one;

    if (!app)
        return -1;
    apath = guest_view_path(view, path);
    ns = guestfs_lstatns(app->g, apath);
    if (!ns) {
        guest_appliance_error(app, "stat", path);
        guest_view_leave(view, app);
        return -1;
    }
    /* A target that cannot be read is asked again by readlink. */
    if (S_ISLNK(ns->st_mode))
        target = guestfs_readlink(app->g, apath);
    guest_view_leave(view, app);
    stat_from_guest(&one, ns, guest_view_dev(view, path));
    g_mutex_lock(&view->pool->cache_lock);
    guest_cache_put_node(view, path, &one, g_strdup(target), NULL);
    g_mutex_unlock(&view->pool->cache_lock);
    if (st)
        *st = one;
    if (link)
        *link = target;
    else
        free(target);
    return 0;
}

/* Make sure the view knows @path: from the cache, or by listing its parent. */
int guest_view_resolve(struct guest_view *view, const char *path, struct stat *st, char **link, GPtrArray **xattrs)
{
    g_autofree char *parent = NULL;
    int r;

    if (!path_valid(path))
        return -1;
    r = guest_cache_lookup(view, path, st, link, xattrs);
    if (r != 0)
        return r < 0 ? -1 : 0;
    view_refresh(view);
    if (strcmp(path, "/") == 0) {
        /* What it fetched, in case the cache could not keep it. */
        if (link)
            *link = NULL;
        return view_load_root(view, st, xattrs);
    } else {
        struct stat pst;

        parent = g_path_get_dirname(path);
        /* The parent must be a directory that exists: resolve it first (each level is cached). */
        if (guest_view_resolve(view, parent, &pst, NULL, NULL) < 0)
            return -1;
        if (!S_ISDIR(pst.st_mode)) {
            error_set(ENOTDIR, "'%s' is not a directory in the guest", parent);
            return -1;
        }
        if (guest_view_stat_dir(view, parent) < 0)
            return -1;
    }
    r = guest_cache_lookup(view, path, st, link, xattrs);
    if (r == 0) {
        if (xattrs)
            *xattrs = NULL;
        return view_stat_alone(view, path, st, link);
    }
    return r < 0 ? -1 : 0;
}

int guest_view_getattr(struct guest_view *view, const char *path, struct stat *st)
{
    if (view->agent)
        return guest_agent_getattr(view, path, st);
    if (guest_view_resolve(view, path, st, NULL, NULL) < 0)
        return -1;
    /* find looks up folders only; ls -l, cp and diff look up files too. */
    if (!S_ISDIR(st->st_mode))
        g_atomic_int_set(&view->want_stats, 1);
    return 0;
}

/*
 * What readdir hands on for each of the @n @names of @path, whose listing gave @types and @inos: the
 * attributes known, else the type and inode readdir gave; st_nlink (nlink_t)-1 for a name a live
 * view's listing lost since.
 */
static GArray *view_listing_stats(struct guest_view *view, const char *path, char **names, size_t n, GArray *types,
                                  GArray *inos)
{
    GArray *stats = g_array_sized_new(FALSE, TRUE, sizeof(struct stat), (guint)n);
    struct guest_dir *dir;

    g_array_set_size(stats, (guint)n);
    for (size_t i = 0; i < n; i++) {
        g_autofree char *child = guest_child_path(path, names[i]);

        g_array_index(stats, struct stat, i).st_dev = guest_view_dev(view, child);
    }
    g_mutex_lock(&view->pool->cache_lock);
    /* A live view's listing may have been read again since the copy: a name it lost is gone. */
    dir = view->live ? guest_cache_get_dir(view, path) : NULL;
    for (size_t i = 0; i < n; i++) {
        g_autofree char *child = guest_child_path(path, names[i]);
        struct guest_node *node = g_hash_table_lookup(view->nodes, child);
        struct stat *out = &g_array_index(stats, struct stat, i);

        if (node && guest_view_fresh(view, node->when)) {
            *out = node->st;
        } else if (dir && !g_hash_table_contains(dir->index, names[i])) {
            out->st_mode = 0;
            out->st_ino = 0;
            out->st_nlink = (nlink_t)-1;   /* skipped by guest_view_readdir() */
        } else {
            /* Not stat'ed yet, or evicted since: the type and inode readdir gave, st_nlink 0 (see guest.h). */
            out->st_mode = g_array_index(types, mode_t, i);
            out->st_ino = g_array_index(inos, ino_t, i);
        }
    }
    g_mutex_unlock(&view->pool->cache_lock);
    return stats;
}

int guest_view_readdir(struct guest_view *view, const char *path, guest_dirent_fn fn, void *opaque)
{
    if (view->agent)
        return guest_agent_readdir(view, path, fn, opaque);
    g_auto(GStrv) names = NULL;
    g_autoptr(GArray) stats = NULL;   /* struct stat, one per name */
    g_autoptr(GArray) types = NULL;
    g_autoptr(GArray) inos = NULL;
    bool have_stats, have_xattrs;
    size_t n;
    struct stat st;

    if (guest_view_resolve(view, path, &st, NULL, NULL) < 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        error_set(ENOTDIR, "'%s' is not a directory in the guest", path);
        return -1;
    }
    /*
     * A walk that looks at files gets the attributes with the names: the kernel then has them
     * from the listing (readdirplus) instead of looking each file up.  A failure here only
     * leaves them to the lookups.
     */
    if (!view->live && g_atomic_int_get(&view->want_stats))
        guest_view_stat_dir(view, path);
    names = guest_view_dir_names(view, path, &have_stats, &have_xattrs, &types, &inos);
    if (!names)
        return -1;
    n = g_strv_length(names);
    stats = view_listing_stats(view, path, names, n, types, inos);
    for (size_t i = 0; i < n; i++) {
        const struct stat *entry = &g_array_index(stats, struct stat, i);

        if (entry->st_nlink == (nlink_t)-1)
            continue;
        if (fn(opaque, names[i], entry) != 0)
            break;
    }
    return 0;
}

int guest_view_readlink(struct guest_view *view, const char *path, char **target)
{
    if (view->agent)
        return guest_agent_readlink(view, path, target);
    struct guest_appliance *app;
    g_autofree char *apath = NULL;
    struct stat st;
    char *link = NULL;

    if (guest_view_resolve(view, path, &st, &link, NULL) < 0)
        return -1;
    if (!S_ISLNK(st.st_mode)) {
        error_set(EINVAL, "'%s' is not a symbolic link in the guest", path);
        return -1;
    }
    if (link) {
        *target = link;
        return 0;
    }
    /* readlinklist answers "" where it failed: ask for this one alone. */
    app = guest_view_enter(view);
    if (!app)
        return -1;
    apath = guest_view_path(view, path);
    link = guestfs_readlink(app->g, apath);
    if (!link)
        guest_appliance_error(app, "read the link", path);
    guest_view_leave(view, app);
    if (!link)
        return -1;
    *target = link;
    return 0;
}

