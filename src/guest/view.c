/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Views of a snapshot's or layer's guest files: mounting them in an appliance, and caching what they answer. */
#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <inttypes.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

/* Bytes fetched per appliance call: one round trip serves sixteen 128 KiB FUSE reads. */
#define GUEST_CHUNK (2u << 20)
/* A view that could not be set up is not tried again before this (an appliance start is costly). */
#define GUEST_RETRY_US (10 * G_USEC_PER_SEC)

/* A guest filesystem mounted for a view. */
struct guest_mount {
    char *mountpoint;   /* within the view: "/", "/boot", "/sda1" */
    char *device;       /* the appliance's device */
};

/* An entry of the pool's caches: its place in the least-recently-used order and what it costs. */
struct guest_cached {
    GList link;           /* in pool->meta_lru or pool->data_lru; data is the entry */
    enum { CACHED_NODE, CACHED_DIR, CACHED_CHUNK } kind;
    struct guest_pool *pool;
    struct guest_view *view;  /* whose node or listing; NULL for file data */
    const char *key;      /* the entry's key in its table (view->nodes, view->dirs, pool->chunks) */
    size_t bytes;         /* what it holds, as counted in pool->cache_bytes */
    guint64 used;         /* pool->cache_tick at its last use */
};

/* What a view knows of one path. */
struct guest_node {
    struct guest_cached cached;
    struct stat st;
    char *link;           /* symlink target, NULL if not known yet */
    GPtrArray *xattrs;    /* struct guest_xattr *; NULL if not fetched */
    gint64 when;
};

/* One extended attribute of a guest file. */
struct guest_xattr {
    char *name;
    GBytes *value;
};

/*
 * A listed directory.  Its entries are fetched in up to three round trips, each
 * when first needed: names and types (readdir: enough for find), then every
 * entry's attributes and link targets (ls -l, lookups), then every entry's
 * xattrs (what ls -l asks next).
 */
struct guest_dir {
    struct guest_cached cached;
    GPtrArray *names;
    GArray *types;        /* mode_t: the type bits readdir gave, 0 if unknown */
    GArray *inos;         /* ino_t readdir gave */
    GHashTable *index;    /* name -> position + 1 */
    bool stats;           /* a guest_node for each name is in view->nodes: evicting one clears this */
    bool xattrs;          /* and each one's xattrs: the same */
    gint64 when;
};

struct guest_view {
    gint refs;
    struct guest_pool *pool;
    char *id;
    char *label;                   /* for log lines: "snapshot 'S' of domain 'H/D'" */
    char *group;
    bool live;
    size_t n_drives;
    struct guest_drive *drives;
    GPtrArray *strings;

    GMutex setup_lock;             /* one thread sets the view up */
    GMutex fetch_lock;             /* one thread fetches file data: the kernel's read-ahead asks for a chunk twice */
    struct guest_appliance *app;   /* setup lock: where the view is mounted */
    char *prefix;                  /* setup lock: where, inside the appliance */
    GPtrArray *mounts;             /* struct guest_mount *, shortest mountpoint first */
    bool os;                       /* inspection found an operating system */
    gint want_stats;               /* atomic: a file was looked up, so listings bring attributes along (ls -l) */
    bool empty;                    /* nothing mounted: the root is an empty folder the appliance is not asked about */
    gint labels;                   /* atomic: 0 not known yet, 1 a filesystem root carries an SELinux label, -1 none does */
    gint64 failed_at;              /* atomic: when the view last failed */
    gint failed_errno;             /* atomic: why, 0 once it works; set also by view_leave() */

    GMutex lock;                   /* error and dropped_at */
    char *error;
    GHashTable *nodes;             /* pool->cache_lock: path -> struct guest_node * */
    GHashTable *dirs;              /* pool->cache_lock: path -> struct guest_dir * */
    gint64 dropped_at;             /* a live view: when the appliance's caches were last dropped */
};

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

static void xattr_add(GPtrArray *xattrs, const char *name, const char *value, size_t len)
{
    struct guest_xattr *x = g_new0(struct guest_xattr, 1);

    x->name = g_strdup(name);
    x->value = g_bytes_new(value, len);
    g_ptr_array_add(xattrs, x);
}

static void cached_unlink(struct guest_cached *cached);

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

static struct guest_dir *dir_new(void)
{
    struct guest_dir *dir = g_new0(struct guest_dir, 1);

    dir->names = g_ptr_array_new_with_free_func(g_free);
    dir->types = g_array_new(FALSE, FALSE, sizeof(mode_t));
    dir->inos = g_array_new(FALSE, FALSE, sizeof(ino_t));
    dir->index = g_hash_table_new(g_str_hash, g_str_equal);
    dir->when = g_get_monotonic_time();
    return dir;
}

static void dir_add(struct guest_dir *dir, const char *name, mode_t type, ino_t ino)
{
    char *copy = g_strdup(name);

    g_ptr_array_add(dir->names, copy);
    g_array_append_val(dir->types, type);
    g_array_append_val(dir->inos, ino);
    g_hash_table_insert(dir->index, copy, GUINT_TO_POINTER(dir->names->len));
}

static void mount_free(struct guest_mount *m)
{
    g_free(m->mountpoint);
    g_free(m->device);
    g_free(m);
}

const char *guest_view_group(struct guest_view *view)
{
    return view->group;
}

size_t guest_view_n_drives(struct guest_view *view)
{
    return view->n_drives;
}

const struct guest_drive *guest_view_drive(struct guest_view *view, size_t i)
{
    return &view->drives[i];
}

bool guest_view_is_live(struct guest_view *view)
{
    return view->live;
}

static const char *view_keep(struct guest_view *view, const char *s)
{
    char *copy = g_strdup(s);

    if (copy)
        g_ptr_array_add(view->strings, copy);
    return copy;
}

struct guest_view *guest_pool_view(struct guest_pool *pool, const struct guest_view_spec *spec)
{
    struct guest_view *view;

    g_mutex_lock(&pool->lock);
    view = g_hash_table_lookup(pool->views, spec->id);
    if (view) {
        g_atomic_int_inc(&view->refs);
        g_mutex_unlock(&pool->lock);
        return view;
    }
    view = g_new0(struct guest_view, 1);
    view->refs = 2;   /* the pool's and the caller's */
    view->pool = pool;
    view->id = g_strdup(spec->id);
    view->label = g_strdup(spec->label ? spec->label : spec->id);
    view->group = g_strdup(spec->group ? spec->group : spec->id);
    view->live = spec->live;
    view->strings = g_ptr_array_new_with_free_func(g_free);
    view->n_drives = spec->n_drives;
    view->drives = g_new0(struct guest_drive, spec->n_drives ? spec->n_drives : 1);
    for (size_t i = 0; i < spec->n_drives; i++) {
        view->drives[i].file = view_keep(view, spec->drives[i].file);
        view->drives[i].format = view_keep(view, spec->drives[i].format);
        view->drives[i].internal_snapshot = view_keep(view, spec->drives[i].internal_snapshot);
        view->drives[i].target = view_keep(view, spec->drives[i].target);
    }
    g_mutex_init(&view->setup_lock);
    g_mutex_init(&view->fetch_lock);
    g_mutex_init(&view->lock);
    view->mounts = g_ptr_array_new_with_free_func((GDestroyNotify)mount_free);
    view->nodes = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)node_free);
    view->dirs = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)dir_free);
    g_hash_table_insert(pool->views, view->id, view);
    g_mutex_unlock(&pool->lock);
    return view;
}

bool guest_pool_has_group(struct guest_pool *pool, const char *group)
{
    GHashTableIter iter;
    gpointer value;
    bool found = false;

    g_mutex_lock(&pool->lock);
    g_hash_table_iter_init(&iter, pool->views);
    while (!found && g_hash_table_iter_next(&iter, NULL, &value))
        found = strcmp(((struct guest_view *)value)->group, group) == 0;
    g_mutex_unlock(&pool->lock);
    return found;
}

void guest_view_free(struct guest_view *view)
{
    guest_appliance_unref(view->app);
    g_free(view->prefix);
    g_ptr_array_unref(view->mounts);
    g_mutex_lock(&view->pool->cache_lock);
    g_hash_table_unref(view->nodes);
    g_hash_table_unref(view->dirs);
    g_mutex_unlock(&view->pool->cache_lock);
    g_free(view->error);
    g_free(view->drives);
    g_ptr_array_unref(view->strings);
    g_free(view->id);
    g_free(view->label);
    g_free(view->group);
    g_mutex_clear(&view->setup_lock);
    g_mutex_clear(&view->fetch_lock);
    g_mutex_clear(&view->lock);
    g_free(view);
}

struct guest_view *guest_view_ref(struct guest_view *view)
{
    g_atomic_int_inc(&view->refs);
    return view;
}

void guest_view_unref(struct guest_view *view)
{
    if (view && g_atomic_int_dec_and_test(&view->refs))
        guest_view_free(view);
}

static void view_set_error(struct guest_view *view, const char *message)
{
    g_mutex_lock(&view->lock);
    g_free(view->error);
    view->error = g_strdup(message);
    g_mutex_unlock(&view->lock);
}

char *guest_view_error(struct guest_view *view)
{
    char *error;

    g_mutex_lock(&view->lock);
    error = g_strdup(view->error);
    g_mutex_unlock(&view->lock);
    return error;
}

/* ---- mounting a view ---------------------------------------------------- */

/* A filesystem of the view: the appliance device, its type and the name the view gives it ("sda1"). */
struct view_fs {
    const char *device;
    const char *type;
    char *name;
    char *uuid;
};

static void view_fs_clear(gpointer data)
{
    struct view_fs *fs = data;

    g_free(fs->name);
    g_free(fs->uuid);
}

/* Options that let a read-only mount of a frozen or live image succeed: no journal replay, duplicate UUIDs allowed. */
static const char *mount_options(const char *type)
{
    if (strcmp(type, "ext3") == 0 || strcmp(type, "ext4") == 0)
        return "ro,noload";
    if (strcmp(type, "xfs") == 0)
        return "ro,norecovery,nouuid";
    return "ro";
}

static int mount_one(struct guest_appliance *app, const char *device, const char *type, const char *where)
{
    /* blkid named the type already: mount(8) need not probe the device again. */
    if (*type && guestfs_mount_vfs(app->g, mount_options(type), type, device, where) == 0)
        return 0;
    if (guestfs_mount_options(app->g, mount_options(type), device, where) == 0)
        return 0;
    return guestfs_mount_ro(app->g, device, where);
}

/* Mount for a view, and remember it: a later inspection unmounts everything and this mounts it again. */
static int view_mount_one(struct guest_appliance *app, const char *device, const char *type, const char *where)
{
    if (mount_one(app, device, type, where) < 0)
        return -1;
    g_ptr_array_add(app->mount_log, g_strdup(device));
    g_ptr_array_add(app->mount_log, g_strdup(type));
    g_ptr_array_add(app->mount_log, g_strdup(where));
    return 0;
}

/* guestfs_inspect_os() unmounts every filesystem: mount again, in the same order, what views had mounted. */
static void appliance_remount(struct guest_appliance *app)
{
    for (guint i = 0; i + 2 < app->mount_log->len; i += 3) {
        const char *device = g_ptr_array_index(app->mount_log, i);
        const char *where = g_ptr_array_index(app->mount_log, i + 2);

        if (mount_one(app, device, g_ptr_array_index(app->mount_log, i + 1), where) < 0)
            snapfs_warn("appliance %u of domain '%s': cannot mount %s on %s again after inspection: %s", app->serial,
                        app->group, device,
                        where, guestfs_last_error(app->g));
    }
}

static gint mountpoint_cmp(gconstpointer a, gconstpointer b)
{
    const char *const *x = a, *const *y = b;

    return (gint)strlen(x[0]) - (gint)strlen(y[0]);
}

/* Mount what inspection found, as its fstab says; false if the root would not mount. */
static bool view_mount_os(struct guest_view *view, struct guest_appliance *app, GArray *fss, const char *root)
{
    g_auto(GStrv) pairs = guestfs_inspect_get_mountpoints(app->g, root);
    g_autoptr(GArray) list = g_array_new(FALSE, FALSE, sizeof(const char *) * 2);

    if (!pairs)
        return false;
    for (size_t i = 0; pairs[i] && pairs[i + 1]; i += 2) {
        const char *item[2] = { pairs[i], pairs[i + 1] };
        g_array_append_val(list, item);
    }
    g_array_sort(list, mountpoint_cmp);
    for (guint i = 0; i < list->len; i++) {
        const char **item = &g_array_index(list, const char *, i * 2);
        const struct view_fs *found = NULL;
        g_autofree char *where = NULL;
        g_autofree char *uuid = NULL;

        for (guint j = 0; j < fss->len && !found; j++) {
            if (strcmp(g_array_index(fss, struct view_fs, j).device, item[1]) == 0)
                found = &g_array_index(fss, struct view_fs, j);
        }
        /* fstab named a UUID another image of the appliance has too (an older layer): use the view's own. */
        if (!found && (uuid = guestfs_vfs_uuid(app->g, item[1])) && *uuid) {
            for (guint j = 0; j < fss->len && !found; j++) {
                struct view_fs *fs = &g_array_index(fss, struct view_fs, j);

                if (!fs->uuid)
                    fs->uuid = guestfs_vfs_uuid(app->g, fs->device);
                if (fs->uuid && strcmp(fs->uuid, uuid) == 0)
                    found = fs;
            }
        }
        /*
         * fstab named a LABEL (or a UUID) that an image of another view has too, and libguestfs
         * resolved it there: the inspected root itself is this view's "/", and for the others a
         * filesystem of this view with the same label.
         */
        for (guint j = 0; !found && j < fss->len; j++) {
            struct view_fs *fs = &g_array_index(fss, struct view_fs, j);

            if (strcmp(item[0], "/") == 0) {
                if (strcmp(fs->device, root) == 0)
                    found = fs;
            } else {
                g_autofree char *want = guestfs_vfs_label(app->g, item[1]);
                g_autofree char *have = want && *want ? guestfs_vfs_label(app->g, fs->device) : NULL;

                if (have && strcmp(have, want) == 0)
                    found = fs;
            }
        }
        if (!found) {
            if (i == 0)
                return false;
            snapfs_warn("%s: %s (%s) is not on its disks: not mounted", view->label, item[0], item[1]);
            continue;
        }
        where = strcmp(item[0], "/") == 0 ? g_strdup(view->prefix) : g_strconcat(view->prefix, item[0], NULL);
        if (view_mount_one(app, found->device, found->type, where) < 0) {
            if (i == 0)
                return false;
            snapfs_warn("%s: cannot mount %s on %s: %s", view->label, found->name, item[0], guestfs_last_error(app->g));
            continue;
        }
        struct guest_mount *m = g_new0(struct guest_mount, 1);
        m->mountpoint = g_strdup(item[0]);
        m->device = g_strdup(found->device);
        g_ptr_array_add(view->mounts, m);
    }
    return view->mounts->len > 0;
}

/*
 * Whether a filesystem the view mounted by device may hold an operating system,
 * by one listing of each one's top directory: full inspection (guestfs_inspect_os)
 * mounts and parses every filesystem of every disk of the appliance, so it
 * waits for the first view that may need it.
 */
static bool view_may_hold_os(struct guest_view *view, struct guest_appliance *app)
{
    static const char *const markers[] = { "etc", "bin", "windows", "Windows", "WINDOWS", "winnt", "WINNT", NULL };
    bool found = false;

    for (guint j = 0; !found && j < view->mounts->len; j++) {
        struct guest_mount *m = g_ptr_array_index(view->mounts, j);
        g_autofree char *top = g_strconcat(view->prefix, m->mountpoint, NULL);
        struct guestfs_dirent_list *list = guestfs_readdir(app->g, top);

        for (uint32_t i = 0; list && !found && i < list->len; i++) {
            /* A folder, as guestfs_is_dir() would say: a symlink named bin is not one. */
            if (list->val[i].ftyp == 'd')
                found = g_strv_contains((const char *const *)markers, list->val[i].name);
        }
        if (list)
            guestfs_free_dirent_list(list);
    }
    return found || !guestfs_is_ready(app->g);
}

/* Unmount what @view mounted, innermost first, and forget it in the appliance's mount log. */
static void view_unmount(struct guest_view *view, struct guest_appliance *app)
{
    for (guint j = view->mounts->len; j-- > 0;) {
        struct guest_mount *m = g_ptr_array_index(view->mounts, j);
        g_autofree char *where = strcmp(m->mountpoint, "/") == 0 ? g_strdup(view->prefix)
                                                                 : g_strconcat(view->prefix, m->mountpoint, NULL);

        guestfs_umount(app->g, where);
    }
    g_ptr_array_set_size(view->mounts, 0);
    for (guint i = 0; i + 2 < app->mount_log->len;) {
        if (g_str_has_prefix(g_ptr_array_index(app->mount_log, i + 2), view->prefix))
            g_ptr_array_remove_range(app->mount_log, i, 3);
        else
            i += 3;
    }
}

/* Mount each filesystem of @view on a folder named after its device; -1 if the appliance died. */
static int view_mount_devices(struct guest_view *view, struct guest_appliance *app, GArray *fss, GString *why)
{
    for (guint j = 0; j < fss->len; j++) {
        struct view_fs *fs = &g_array_index(fss, struct view_fs, j);
        g_autofree char *where = g_strdup_printf("%s/%s", view->prefix, fs->name);

        if (guest_fs_not_shown(fs->type))
            continue;
        if (guestfs_mkmountpoint(app->g, where) < 0 || view_mount_one(app, fs->device, fs->type, where) < 0) {
            g_string_append_printf(why, "%s%s (%s): %s", why->len ? "; " : "", fs->name, fs->type,
                                   guestfs_last_error(app->g));
            guestfs_rmmountpoint(app->g, where);
            if (!guestfs_is_ready(app->g)) {
                guest_appliance_error(app, "mount", fs->name);
                return -1;
            }
            continue;
        }
        struct guest_mount *m = g_new0(struct guest_mount, 1);
        m->mountpoint = g_strconcat("/", fs->name, NULL);
        m->device = g_strdup(fs->device);
        g_ptr_array_add(view->mounts, m);
    }
    return 0;
}

/* The filesystem of @fss that inspection found to be an operating system's root, or NULL. */
static const char *view_root(struct guest_appliance *app, GArray *fss)
{
    for (guint j = 0; app->roots && j < fss->len; j++) {
        const char *device = g_array_index(fss, struct view_fs, j).device;

        if (g_strv_contains((const char *const *)app->roots, device))
            return device;
    }
    return NULL;
}

/* The folder of logical volume /dev/VG/LV: "VG-LV" with each name's dashes doubled, as in /dev/mapper. */
static char *lv_folder_name(const char *device)
{
    g_auto(GStrv) parts = g_strsplit(device + strlen("/dev/"), "/", 2);
    g_autoptr(GString) name = g_string_new(NULL);

    for (size_t i = 0; parts[i]; i++) {
        if (i)
            g_string_append_c(name, '-');
        for (const char *c = parts[i]; *c; c++) {
            if (*c == '-')
                g_string_append_c(name, '-');
            g_string_append_c(name, *c);
        }
    }
    return g_string_free(g_steal_pointer(&name), FALSE);
}

/*
 * Mount @view's filesystems under a directory of its own in @app (app lock held): 0, or -1 with
 * the reason, or 1 when the view's disks hold LVM and it must move to an appliance of its own.
 */
/*
 * Tests only: SNAPFS_FAULT=guest:freeze-at-mount stops the first appliance's qemu (SIGSTOP) just
 * before its first view is mounted, as an appliance that never answers a mount would be.
 */
static void view_fault_freeze(struct guest_appliance *app)
{
    static gint done;
    const char *fault = g_getenv("SNAPFS_FAULT");

    if (fault && strcmp(fault, "guest:freeze-at-mount") == 0 && app->qemu_pid > 0 &&
        g_atomic_int_compare_and_exchange(&done, 0, 1)) {
        snapfs_warn("SNAPFS_FAULT: freezing appliance %u of domain '%s' before its first mount", app->serial,
                    app->group);
        kill(app->qemu_pid, SIGSTOP);
    }
}

static int view_mount(struct guest_view *view, struct guest_appliance *app)
{
    g_autoptr(GArray) fss = g_array_new(FALSE, TRUE, sizeof(struct view_fs));
    g_autoptr(GString) why = g_string_new(NULL);
    g_autoptr(GPtrArray) lvm_disks = g_ptr_array_new();   /* targets of the view's disks that hold LVM */
    const char *root = NULL;

    g_array_set_clear_func(fss, view_fs_clear);
    view_fault_freeze(app);
    g_ptr_array_set_size(view->mounts, 0);
    g_free(view->prefix);
    view->prefix = g_strdup_printf("/v%u", app->next_prefix++);
    if (guestfs_mkmountpoint(app->g, view->prefix) < 0) {
        guest_appliance_error(app, "make the mountpoint", view->prefix);
        return -1;
    }
    /* The view's filesystems in the order of its own drives, named as they would be in a guest of its own. */
    for (size_t i = 0; i < view->n_drives; i++) {
        g_autofree char *key = guest_drive_key(&view->drives[i], view->live && !view->drives[i].internal_snapshot);
        g_autofree char *letters = guest_disk_letters((unsigned)i);
        int index = guest_appliance_find_disk(app, key);

        if (index < 0 || !app->devices[index]) {
            snapfs_error_set(EIO, "image '%s' is missing from its appliance", view->drives[i].file);
            return -1;
        }
        char **found = guest_appliance_disk_filesystems(app, (size_t)index);

        if (!found) {
            guest_appliance_error(app, "find the filesystems of", view->drives[i].file);
            return -1;
        }
        for (size_t j = 0; found[j] && found[j + 1]; j += 2) {
            struct view_fs fs = { found[j], found[j + 1], NULL, NULL };

            if (strcmp(fs.type, "LVM2_member") == 0 && !g_ptr_array_find(lvm_disks, view->drives[i].target, NULL))
                g_ptr_array_add(lvm_disks, (gpointer)view->drives[i].target);

            fs.name = g_strdup_printf("sd%s%s", letters, guest_device_suffix(found[j], app->devices[index]));
            g_array_append_val(fss, fs);
        }
    }
    if (lvm_disks->len) {
        char **lvs;

        if (!app->alone) {
            for (guint i = 0; i < lvm_disks->len; i++)
                guest_pool_mark_lvm(view->pool, view->group, g_ptr_array_index(lvm_disks, i));
            snapfs_info("%s: its disks hold LVM physical volumes: it moves to an appliance of its own", view->label);
            return 1;
        }
        lvs = guest_appliance_logical_volumes(app);
        if (!lvs) {
            guest_appliance_error(app, "list the logical volumes of", view->label);
            return -1;
        }
        for (size_t j = 0; lvs[j] && lvs[j + 1]; j += 2) {
            struct view_fs fs = { lvs[j], lvs[j + 1], lv_folder_name(lvs[j]), NULL };

            g_array_append_val(fss, fs);
        }
    }
    /* By device first, unless an inspection already found this view's operating system. */
    root = view_root(app, fss);
    if (!root) {
        if (view_mount_devices(view, app, fss, why) < 0)
            return -1;
        if (!app->roots && view_may_hold_os(view, app)) {
            gint64 started = g_get_monotonic_time();

            app->roots = guestfs_inspect_os(app->g);
            snapfs_debug("appliance %u of domain '%s' inspected in %.1f s: %u operating systems", app->serial, app->group,
                         (double)(g_get_monotonic_time() - started) / G_USEC_PER_SEC,
                         app->roots ? g_strv_length(app->roots) : 0);
            if (!app->roots && !guestfs_is_ready(app->g)) {
                guest_appliance_error(app, "inspect", view->label);
                return -1;
            }
            if (!app->roots)
                app->roots = g_new0(char *, 1);
            appliance_remount(app);
            root = view_root(app, fss);
        }
    }
    if (root) {
        /* An operating system: its filesystems where its fstab puts them, or by device again if that fails. */
        view_unmount(view, app);
        view->os = view_mount_os(view, app, fss, root);
        if (!view->os) {
            view_unmount(view, app);
            g_string_truncate(why, 0);
            if (view_mount_devices(view, app, fss, why) < 0)
                return -1;
        }
    }
    view->empty = view->mounts->len == 0;
    if (view->mounts->len == 0) {
        g_autoptr(GString) files = g_string_new(NULL);

        for (size_t i = 0; i < view->n_drives; i++)
            g_string_append_printf(files, "%s'%s'", i ? ", " : "", view->drives[i].file);
        /* What blkid found but snapfs does not open, said by name. */
        for (guint j = 0; j < fss->len; j++) {
            const struct view_fs *fs = &g_array_index(fss, struct view_fs, j);
            const char *what = guest_fs_not_shown(fs->type);

            if (what)
                g_string_append_printf(why, "%s%s is %s", why->len ? "; " : "", fs->name, what);
        }
        if (why->len)
            g_string_prepend(why, ": ");
        g_string_prepend(why, "no filesystem that libguestfs can mount");
        g_string_append_printf(why, " (on %s)", files->str);
        view_set_error(view, why->str);
        snapfs_info("%s: %s", view->label, why->str);
    } else {
        view_set_error(view, NULL);
        snapfs_debug("%s mounted at %s in appliance %u (%s, %u filesystems)", view->label, view->prefix,
                     app->serial, view->os ? "inspected" : "by device", view->mounts->len);
    }
    return 0;
}

/* The view cannot be read now, for the reason recorded: say so, and do not try again for GUEST_RETRY_US. */
static void view_failed(struct guest_view *view)
{
    guest_store64(&view->failed_at, g_get_monotonic_time());
    g_atomic_int_set(&view->failed_errno, snapfs_error_errno());
    view_set_error(view, snapfs_error_message());
}

/*
 * The appliance serving @view, locked, with a reference for the caller;
 * started and the view mounted in it if needed.  NULL with the reason.
 */
static struct guest_appliance *view_enter(struct guest_view *view)
{
    struct guest_appliance *app = NULL;

    if (g_atomic_int_get(&view->pool->aborting)) {
        snapfs_error_set(EIO, "%s cannot be read: snapfs is stopping", view->label);
        return NULL;
    }
    /* A wedged domain must not take every FUSE thread: the tree and other domains keep some. */
    if (g_atomic_int_add(&view->pool->inflight, 1) >= GUEST_MAX_INFLIGHT) {
        g_atomic_int_add(&view->pool->inflight, -1);
        snapfs_error_set(EAGAIN, "%s cannot be read now: %d requests already wait for appliances", view->label,
                         GUEST_MAX_INFLIGHT);
        return NULL;
    }
    g_mutex_lock(&view->setup_lock);
    for (int attempt = 0; attempt < 3; attempt++) {
        int mounted = 0;

        app = view->app;
        if (app && !g_atomic_int_get(&app->dead) && !g_atomic_int_get(&app->retire)) {
            g_mutex_lock(&app->lock);
            if (!g_atomic_int_get(&app->dead) && app->g)
                break;
            g_mutex_unlock(&app->lock);
        }
        /* The appliance stopped (idle, evicted, killed): the view moves to another one. */
        guest_appliance_unref(g_steal_pointer(&view->app));
        app = NULL;
        if (g_atomic_int_get(&view->failed_errno) &&
            g_get_monotonic_time() - guest_load64(&view->failed_at) < GUEST_RETRY_US) {
            g_autofree char *error = guest_view_error(view);

            snapfs_error_set(g_atomic_int_get(&view->failed_errno), "%s", error ? error : "the view could not be read");
            break;
        }
        for (size_t i = 0; i < view->n_drives; i++) {
            if (g_access(view->drives[i].file, R_OK) != 0) {
                snapfs_error_set(EIO, "cannot read image '%s' of disk '%s': %s", view->drives[i].file,
                                 view->drives[i].target ? view->drives[i].target : "?", g_strerror(errno));
                goto failed;
            }
        }
        app = guest_pool_appliance_for(view->pool, view);
        if (!app)
            break;   /* every appliance busy: no failure of the view's own */
        g_mutex_lock(&app->lock);
        /* Launching is bounded by its own watcher; mounting is a step the watchdog bounds like any call. */
        if (!app->launched)
            guest_appliance_launch(view->pool, app);
        guest_appliance_expect(view->pool, app, 0);
        if (!app->launched || !app->g || (mounted = view_mount(view, app)) < 0) {
            /* An appliance that died under a running view is no reason to wait before the next try. */
            bool died = app->launched && g_atomic_int_get(&app->dead);

            bool killed = g_atomic_pointer_get(&app->killed) != NULL;

            guest_appliance_idle(app);
            g_mutex_unlock(&app->lock);
            guest_appliance_unref(g_steal_pointer(&app));
            /* Killed past its deadline: the next try waits like any failure (the kernel retries a read at once). */
            if (died && !killed) {
                view_set_error(view, snapfs_error_message());
                break;
            }
            goto failed;
        }
        if (mounted > 0) {
            /* LVM: the next turn starts the view's own appliance. */
            guest_appliance_idle(app);
            g_mutex_unlock(&app->lock);
            guest_appliance_unref(g_steal_pointer(&app));
            continue;
        }
        /* The reference guest_pool_appliance_for() gave is the view's; the caller's is taken below. */
        view->app = app;
        g_atomic_int_set(&view->failed_errno, 0);
        guest_pool_fill_in(view->pool, app);
        break;

failed:
        view_failed(view);
        break;
    }
    if (app) {
        g_atomic_int_inc(&app->refs);
        guest_appliance_busy(view->pool, app);
    } else {
        g_atomic_int_add(&view->pool->inflight, -1);
    }
    g_mutex_unlock(&view->setup_lock);
    return app;
}

static void view_leave(struct guest_view *view, struct guest_appliance *app)
{
    /*
     * Killed by the watchdog in this request: the view says why until it works again, and the
     * kernel's immediate retry of a failed read-ahead fails too, so the reader sees the EIO.
     */
    if (g_atomic_int_get(&app->dead) && g_atomic_pointer_get(&app->killed))
        view_failed(view);
    guest_appliance_idle(app);
    g_mutex_unlock(&app->lock);
    guest_appliance_unref(app);
    g_atomic_int_add(&view->pool->inflight, -1);
}

/* The appliance's path of view path @path. */
static char *view_path(struct guest_view *view, const char *path)
{
    return strcmp(path, "/") == 0 ? g_strdup(view->prefix) : g_strconcat(view->prefix, path, NULL);
}

static void chunk_free(struct guest_chunk *chunk);

/* ---- caches ----------------------------------------------------------------- */

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

void guest_cache_set_cap(struct guest_pool *pool, size_t bytes, size_t data_bytes)
{
    g_mutex_lock(&pool->cache_lock);
    pool->data_cap = MIN(data_bytes, bytes);
    pool->cache_cap = bytes;
    cache_shrink(pool);
    pool->cache_peak = pool->cache_bytes;
    g_mutex_unlock(&pool->cache_lock);
}

static bool view_fresh(struct guest_view *view, gint64 when)
{
    return !view->live || g_get_monotonic_time() - when < (gint64)view->pool->config.live_ttl_ms * 1000;
}

/* The index of the guest filesystem holding @path: st_dev that does not change when an appliance does. */
static dev_t view_dev(struct guest_view *view, const char *path)
{
    dev_t best = 0;
    size_t best_len = 0;

    g_mutex_lock(&view->setup_lock);
    for (guint i = 0; i < view->mounts->len; i++) {
        struct guest_mount *m = g_ptr_array_index(view->mounts, i);
        size_t n = strlen(m->mountpoint);
        bool under = strcmp(m->mountpoint, "/") == 0 ||
                     (strncmp(path, m->mountpoint, n) == 0 && (path[n] == '\0' || path[n] == '/'));

        if (under && n >= best_len) {
            best = i + 1;
            best_len = n;
        }
    }
    g_mutex_unlock(&view->setup_lock);
    return best;
}

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

/* lxattrlist's flat answer: per name a count entry ("" = "N"), then N attributes. */
static GPtrArray **xattrs_split(const struct guestfs_xattr_list *list, size_t n_names)
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
            xattr_add(out[i], list->val[k].attrname, list->val[k].attrval, list->val[k].attrval_len);
    }
    return out;
}

static GPtrArray *xattrs_from_list(const struct guestfs_xattr_list *xl)
{
    GPtrArray *xattrs = g_ptr_array_new_with_free_func(xattr_free);

    for (size_t i = 0; i < xl->len; i++)
        xattr_add(xattrs, xl->val[i].attrname, xl->val[i].attrval, xl->val[i].attrval_len);
    return xattrs;
}

/* Keep what is known of @path, taking @link and @xattrs (cache lock held); it may be evicted at once. */
static void node_put(struct guest_view *view, const char *path, const struct stat *st, char *link, GPtrArray *xattrs)
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
static void dir_put(struct guest_view *view, const char *path, struct guest_dir *dir)
{
    char *key = g_strdup(path);

    dir->cached.kind = CACHED_DIR;
    g_hash_table_replace(view->dirs, key, dir);
    cached_add(view->pool, view, &dir->cached, key);
}

/* @node's xattrs came: keep them, if it has none yet (cache lock held). */
static void node_set_xattrs(struct guest_node *node, GPtrArray *xattrs)
{
    if (!node || node->xattrs || !xattrs)
        return;
    node->xattrs = g_ptr_array_ref(xattrs);
    node_recount(node);
}

/* Fetch the root of the view: one lstatns and its xattrs, handed to @st and @xattrs too where asked. */
static int view_load_root(struct guest_view *view, struct stat *out, GPtrArray **out_xattrs)
{
    struct guest_appliance *app = view_enter(view);
    struct guestfs_statns *ns;
    struct guestfs_xattr_list *xl;
    g_autofree char *apath = NULL;
    GPtrArray *xattrs = NULL;
    struct stat st;

    if (!app)
        return -1;
    if (view->empty) {
        /* libguestfs refuses file calls in an appliance where nothing is mounted at all. */
        struct guest_dir *dir = dir_new();

        view_leave(view, app);
        memset(&st, 0, sizeof(st));
        st.st_mode = S_IFDIR | 0555;
        st.st_nlink = 2;
        st.st_ino = 1;
        dir->stats = dir->xattrs = true;
        xattrs = g_ptr_array_new();
        g_mutex_lock(&view->pool->cache_lock);
        dir_put(view, "/", dir);
        node_put(view, "/", &st, NULL, g_ptr_array_ref(xattrs));
        g_mutex_unlock(&view->pool->cache_lock);
        goto out;
    }
    apath = view_path(view, "/");
    ns = guestfs_lstatns(app->g, apath);
    if (!ns) {
        guest_appliance_error(app, "stat", "/");
        view_leave(view, app);
        return -1;
    }
    xl = guestfs_lgetxattrs(app->g, apath);
    if (xl)
        xattrs = xattrs_from_list(xl);
    guestfs_free_xattr_list(xl);
    view_leave(view, app);
    stat_from_guest(&st, ns, view_dev(view, "/"));
    if (!view->os && st.st_mode & S_IWUSR)
        st.st_mode &= ~(mode_t)0222;   /* the appliance's own directory: show it as the read-only folder it is */
    guestfs_free_statns(ns);
    g_mutex_lock(&view->pool->cache_lock);
    node_put(view, "/", &st, NULL, xattrs ? g_ptr_array_ref(xattrs) : NULL);
    g_mutex_unlock(&view->pool->cache_lock);
out:
    if (out)
        *out = st;
    if (out_xattrs)
        *out_xattrs = g_steal_pointer(&xattrs);
    if (xattrs)
        g_ptr_array_unref(xattrs);
    return 0;
}

static char *child_path(const char *dir, const char *name)
{
    return strcmp(dir, "/") == 0 ? g_strconcat("/", name, NULL) : g_strconcat(dir, "/", name, NULL);
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

/* The fresh listing of @path, or NULL (cache lock held). */
static struct guest_dir *dir_get(struct guest_view *view, const char *path)
{
    struct guest_dir *dir = g_hash_table_lookup(view->dirs, path);

    if (!dir || !view_fresh(view, dir->when))
        return NULL;
    cached_touch(&dir->cached);
    return dir;
}

/*
 * A copy of @dir's names (and, where asked, its types and inode numbers as GArrays, and its flags),
 * made under the cache lock: the listing may be evicted once it is let go.
 */
static GStrv dir_copy(struct guest_dir *dir, bool *stats, bool *xattrs, GArray **types, GArray **inos)
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

/*
 * The names of directory @path in one round trip (guestfs_readdir): each entry's type and inode come
 * with it.  Kept, and copied as dir_copy() does; NULL with the reason.
 */
static GStrv view_list_dir(struct guest_view *view, const char *path, bool *stats, bool *xattrs, GArray **types,
                           GArray **inos)
{
    struct guest_appliance *app = view_enter(view);
    struct guestfs_dirent_list *ents;
    g_autofree char *apath = NULL;
    struct guest_dir *dir;
    GStrv names;

    if (!app)
        return NULL;
    apath = view_path(view, path);
    ents = guestfs_readdir(app->g, apath);
    if (!ents)
        guest_appliance_error(app, "list", path);
    view_leave(view, app);
    if (!ents)
        return NULL;
    dir = dir_new();
    for (uint32_t i = 0; i < ents->len; i++) {
        const char *name = ents->val[i].name;

        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || g_hash_table_contains(dir->index, name))
            continue;
        dir_add(dir, name, dirent_type(ents->val[i].ftyp), (ino_t)ents->val[i].ino);
    }
    guestfs_free_dirent_list(ents);
    g_mutex_lock(&view->pool->cache_lock);
    names = dir_copy(dir, stats, xattrs, types, inos);
    dir_put(view, path, dir);
    g_mutex_unlock(&view->pool->cache_lock);
    return names;
}

/* The names of @path's listing, listing it first if needed, as dir_copy() gives them; NULL with the reason. */
static GStrv view_dir_names(struct guest_view *view, const char *path, bool *stats, bool *xattrs, GArray **types,
                            GArray **inos)
{
    struct guest_dir *dir;

    g_mutex_lock(&view->pool->cache_lock);
    dir = dir_get(view, path);
    if (dir) {
        GStrv names = dir_copy(dir, stats, xattrs, types, inos);

        g_mutex_unlock(&view->pool->cache_lock);
        return names;
    }
    g_mutex_unlock(&view->pool->cache_lock);
    return view_list_dir(view, path, stats, xattrs, types, inos);
}

/* Whether @path's fresh listing already holds what is asked (stats, or xattrs too): no copy of its names. */
static bool dir_has(struct guest_view *view, const char *path, bool xattrs)
{
    struct guest_dir *dir;
    bool has;

    g_mutex_lock(&view->pool->cache_lock);
    dir = dir_get(view, path);
    has = dir && (xattrs ? dir->xattrs : dir->stats);
    g_mutex_unlock(&view->pool->cache_lock);
    return has;
}

/*
 * Mark the listing of @path (if it is still cached) as holding stats or xattrs too, before the nodes
 * are put (cache lock held): evicting one of them on the way then takes the mark back.
 */
static void dir_mark(struct guest_view *view, const char *path, bool stats, bool xattrs)
{
    struct guest_dir *dir = dir_get(view, path);

    if (dir) {
        dir->stats |= stats;
        dir->xattrs |= xattrs && dir->stats;
    }
}

/* Every entry of @path's attributes and link targets, in one or two round trips (lstatnslist, readlinklist). */
static int view_stat_dir(struct guest_view *view, const char *path)
{
    g_auto(GStrv) names = NULL;
    g_auto(GStrv) links = NULL;
    g_autofree char *apath = NULL;
    g_autofree dev_t *devs = NULL;
    struct guestfs_statns_list *stats = NULL;
    struct guest_appliance *app;
    bool have_stats, have_xattrs, any_link = false;
    size_t n;

    if (dir_has(view, path, false))
        return 0;
    names = view_dir_names(view, path, &have_stats, &have_xattrs, NULL, NULL);
    if (!names)
        return -1;
    if (have_stats)
        return 0;
    n = g_strv_length(names);
    app = view_enter(view);
    if (!app)
        return -1;
    guest_appliance_expect(view->pool, app, n);
    apath = view_path(view, path);
    if (n > 0) {
        stats = guestfs_lstatnslist(app->g, apath, names);
        if (!stats && guestfs_is_ready(app->g)) {
            /* One entry a damaged filesystem cannot stat fails the batch: stat them one by one, keep the good. */
            snapfs_warn("%s: cannot stat the entries of '%s' together (%s): one by one", view->label, path,
                        guestfs_last_error(app->g));
            stats = calloc(1, sizeof(*stats));   /* freed by guestfs_free_statns_list() */
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
        }
        if (!stats || !guestfs_is_ready(app->g)) {
            guest_appliance_error(app, "stat the entries of", path);
            view_leave(view, app);
            if (stats)
                guestfs_free_statns_list(stats);
            return -1;
        }
        for (size_t i = 0; i < stats->len; i++)
            any_link |= S_ISLNK(stats->val[i].st_mode);
        if (any_link)
            links = guestfs_readlinklist(app->g, apath, names);
    }
    view_leave(view, app);

    /* An entry may be a mount point (/boot): st_dev per entry, found before the cache lock is taken. */
    devs = g_new0(dev_t, n + 1);
    for (size_t i = 0; i < n; i++) {
        g_autofree char *child = child_path(path, names[i]);

        devs[i] = view_dev(view, child);
    }
    g_mutex_lock(&view->pool->cache_lock);
    dir_mark(view, path, true, false);
    for (size_t i = 0; stats && i < n && i < stats->len; i++) {
        g_autofree char *child = NULL;
        struct stat st;

        if (stats->val[i].st_ino == -1)
            continue;   /* vanished between readdir and lstat (a live view), or unreadable */
        child = child_path(path, names[i]);
        stat_from_guest(&st, &stats->val[i], devs[i]);
        node_put(view, child, &st, S_ISLNK(st.st_mode) && links && links[i] && links[i][0] ? g_strdup(links[i]) : NULL,
                 NULL);
    }
    g_mutex_unlock(&view->pool->cache_lock);
    if (stats)
        guestfs_free_statns_list(stats);
    return 0;
}

/* Every entry of @path's xattrs in one round trip (lxattrlist), once its attributes are known. */
static int view_xattr_dir(struct guest_view *view, const char *path)
{
    g_auto(GStrv) names = NULL;
    g_autofree char *apath = NULL;
    struct guestfs_xattr_list *xl = NULL;
    struct guest_appliance *app;
    GPtrArray **xattrs;
    bool have_stats, have_xattrs;
    size_t n;

    if (dir_has(view, path, true))
        return 0;
    if (view_stat_dir(view, path) < 0)
        return -1;
    names = view_dir_names(view, path, &have_stats, &have_xattrs, NULL, NULL);
    if (!names)
        return -1;
    if (have_xattrs)
        return 0;
    n = g_strv_length(names);
    if (n > 0) {
        app = view_enter(view);
        if (!app)
            return -1;
        guest_appliance_expect(view->pool, app, n);
        apath = view_path(view, path);
        xl = guestfs_lxattrlist(app->g, apath, names);
        if (!xl && !guestfs_is_ready(app->g)) {
            guest_appliance_error(app, "list the attributes in", path);
            view_leave(view, app);
            return -1;
        }
        view_leave(view, app);
    }
    /* A batch that failed (a damaged filesystem) is not tried again: each file's xattrs are asked alone. */
    xattrs = xl ? xattrs_split(xl, n) : NULL;
    guestfs_free_xattr_list(xl);
    g_mutex_lock(&view->pool->cache_lock);
    dir_mark(view, path, false, true);
    for (size_t i = 0; xattrs && i < n; i++) {
        g_autofree char *child = child_path(path, names[i]);

        node_set_xattrs(g_hash_table_lookup(view->nodes, child), xattrs[i]);
    }
    g_mutex_unlock(&view->pool->cache_lock);
    for (size_t i = 0; xattrs && i < n; i++) {
        if (xattrs[i])
            g_ptr_array_unref(xattrs[i]);
    }
    g_free(xattrs);
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
    app = view_enter(view);
    if (app) {
        guestfs_drop_caches(app->g, 3);
        view_leave(view, app);
        /* Counted from its end: under TCG a drop can take longer than the live TTL, and each lookup would drop again. */
        g_mutex_lock(&view->lock);
        view->dropped_at = g_get_monotonic_time();
        g_mutex_unlock(&view->lock);
    }
}

static bool path_valid(const char *path)
{
    if (!path || path[0] != '/') {
        snapfs_error_set(EINVAL, "'%s' is not an absolute path", path ? path : "(null)");
        return false;
    }
    return true;
}

/* Copy what the view knows of @path into @out (st, link, xattrs as asked); 1 if known, 0 if not, -1 ENOENT. */
static int view_lookup(struct guest_view *view, const char *path, struct stat *st, char **link, GPtrArray **xattrs)
{
    struct guest_node *node;
    int ret = 0;

    g_mutex_lock(&view->pool->cache_lock);
    node = g_hash_table_lookup(view->nodes, path);
    if (node && view_fresh(view, node->when)) {
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
        struct guest_dir *dir = dir_get(view, parent);

        /* The parent was listed and this name was not in it (or its attributes are known and it has none). */
        if (dir && (!g_hash_table_contains(dir->index, name) || dir->stats)) {
            snapfs_error_set(ENOENT, "no '%s' in the guest", path);
            ret = -1;
        }
    }
    g_mutex_unlock(&view->pool->cache_lock);
    return ret;
}

/*
 * @path alone, in one or two round trips: its parent's listing brought it, but the cache could not
 * keep it until it was copied (a bound smaller than that listing).
 */
static int view_stat_alone(struct guest_view *view, const char *path, struct stat *st, char **link)
{
    struct guest_appliance *app = view_enter(view);
    g_autofree char *apath = NULL;
    struct guestfs_statns *ns;
    char *target = NULL;
    struct stat one;

    if (!app)
        return -1;
    apath = view_path(view, path);
    ns = guestfs_lstatns(app->g, apath);
    if (!ns) {
        guest_appliance_error(app, "stat", path);
        view_leave(view, app);
        return -1;
    }
    /* A target that cannot be read is asked again by readlink. */
    if (S_ISLNK(ns->st_mode))
        target = guestfs_readlink(app->g, apath);
    view_leave(view, app);
    stat_from_guest(&one, ns, view_dev(view, path));
    guestfs_free_statns(ns);
    g_mutex_lock(&view->pool->cache_lock);
    node_put(view, path, &one, g_strdup(target), NULL);
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
static int view_resolve(struct guest_view *view, const char *path, struct stat *st, char **link, GPtrArray **xattrs)
{
    g_autofree char *parent = NULL;
    int r;

    if (!path_valid(path))
        return -1;
    r = view_lookup(view, path, st, link, xattrs);
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
        if (view_resolve(view, parent, &pst, NULL, NULL) < 0)
            return -1;
        if (!S_ISDIR(pst.st_mode)) {
            snapfs_error_set(ENOTDIR, "'%s' is not a directory in the guest", parent);
            return -1;
        }
        if (view_stat_dir(view, parent) < 0)
            return -1;
    }
    r = view_lookup(view, path, st, link, xattrs);
    if (r == 0) {
        if (xattrs)
            *xattrs = NULL;
        return view_stat_alone(view, path, st, link);
    }
    return r < 0 ? -1 : 0;
}

int guest_view_getattr(struct guest_view *view, const char *path, struct stat *st)
{
    if (view_resolve(view, path, st, NULL, NULL) < 0)
        return -1;
    /* find looks up folders only; ls -l, cp and diff look up files too. */
    if (!S_ISDIR(st->st_mode))
        g_atomic_int_set(&view->want_stats, 1);
    return 0;
}

int guest_view_readdir(struct guest_view *view, const char *path, guest_dirent_fn fn, void *opaque)
{
    g_auto(GStrv) names = NULL;
    g_autoptr(GArray) stats = NULL;
    g_autoptr(GArray) types = NULL;
    g_autoptr(GArray) inos = NULL;
    bool have_stats, have_xattrs;
    size_t n;
    struct stat st;

    if (view_resolve(view, path, &st, NULL, NULL) < 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        snapfs_error_set(ENOTDIR, "'%s' is not a directory in the guest", path);
        return -1;
    }
    /*
     * A walk that looks at files gets the attributes with the names: the kernel then has them
     * from the listing (readdirplus) instead of looking each file up.  A failure here only
     * leaves them to the lookups.
     */
    if (!view->live && g_atomic_int_get(&view->want_stats))
        view_stat_dir(view, path);
    names = view_dir_names(view, path, &have_stats, &have_xattrs, &types, &inos);
    if (!names)
        return -1;
    n = g_strv_length(names);
    stats = g_array_sized_new(FALSE, TRUE, sizeof(struct stat), (guint)n);
    g_array_set_size(stats, (guint)n);
    for (size_t i = 0; i < n; i++) {
        g_autofree char *child = child_path(path, names[i]);

        g_array_index(stats, struct stat, i).st_dev = view_dev(view, child);
    }
    g_mutex_lock(&view->pool->cache_lock);
    {
        /* A live view's listing may have been read again since the copy: a name it lost is gone. */
        struct guest_dir *dir = view->live ? dir_get(view, path) : NULL;

        for (size_t i = 0; i < n; i++) {
            g_autofree char *child = child_path(path, names[i]);
            struct guest_node *node = g_hash_table_lookup(view->nodes, child);
            struct stat *out = &g_array_index(stats, struct stat, i);

            if (node && view_fresh(view, node->when)) {
                *out = node->st;
            } else if (dir && !g_hash_table_contains(dir->index, names[i])) {
                out->st_mode = 0;
                out->st_ino = 0;
                out->st_nlink = (nlink_t)-1;   /* skipped below */
            } else {
                /* Not stat'ed yet, or evicted since: the type and inode readdir gave, st_nlink 0 (see guest.h). */
                out->st_mode = g_array_index(types, mode_t, i);
                out->st_ino = g_array_index(inos, ino_t, i);
            }
        }
    }
    g_mutex_unlock(&view->pool->cache_lock);
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
    struct guest_appliance *app;
    g_autofree char *apath = NULL;
    struct stat st;
    char *link = NULL;

    if (view_resolve(view, path, &st, &link, NULL) < 0)
        return -1;
    if (!S_ISLNK(st.st_mode)) {
        snapfs_error_set(EINVAL, "'%s' is not a symbolic link in the guest", path);
        return -1;
    }
    if (link) {
        *target = link;
        return 0;
    }
    /* readlinklist answers "" where it failed: ask for this one alone. */
    app = view_enter(view);
    if (!app)
        return -1;
    apath = view_path(view, path);
    link = guestfs_readlink(app->g, apath);
    if (!link)
        guest_appliance_error(app, "read the link", path);
    view_leave(view, app);
    if (!link)
        return -1;
    *target = link;
    return 0;
}

/* ---- file data ---------------------------------------------------------------- */

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

static GBytes *data_get(struct guest_view *view, const char *key)
{
    struct guest_pool *pool = view->pool;
    struct guest_chunk *chunk;
    GBytes *data = NULL;

    g_mutex_lock(&pool->cache_lock);
    chunk = g_hash_table_lookup(pool->chunks, key);
    if (chunk && view_fresh(view, chunk->when)) {
        cached_touch(&chunk->cached);
        data = g_bytes_ref(chunk->data);
    }
    g_mutex_unlock(&pool->cache_lock);
    return data;
}

static void data_put(struct guest_view *view, const char *key, GBytes *data)
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

/* Chunk @index of @path (a file of @size bytes), from the cache or one pread of up to GUEST_CHUNK bytes. */
static GBytes *view_chunk(struct guest_view *view, const char *path, off_t size, uint64_t index)
{
    /* Lengths first: a guest's file names may hold newlines. */
    g_autofree char *key = g_strdup_printf("%zu:%s%zu:%s%" PRIu64, strlen(view->id), view->id, strlen(path), path,
                                           index);
    struct guest_appliance *app;
    g_autofree char *apath = NULL;
    char *bytes;
    size_t got = 0;
    GBytes *data = data_get(view, key);

    if (data)
        return data;
    /* A read the kernel makes ahead and the read itself often want the same chunk at once: fetch it once. */
    g_mutex_lock(&view->fetch_lock);
    data = data_get(view, key);
    if (data) {
        g_mutex_unlock(&view->fetch_lock);
        return data;
    }
    app = view_enter(view);
    if (!app) {
        g_mutex_unlock(&view->fetch_lock);
        return NULL;
    }
    apath = view_path(view, path);
    /* No more than the file holds: the appliance allocates what is asked. */
    bytes = guestfs_pread(app->g, apath, (int)MIN((uint64_t)GUEST_CHUNK, (uint64_t)size - index * GUEST_CHUNK),
                          (int64_t)(index * GUEST_CHUNK), &got);
    if (!bytes)
        guest_appliance_error(app, "read", path);
    view_leave(view, app);
    if (bytes) {
        data = g_bytes_new_take(bytes, got);
        data_put(view, key, data);
    }
    g_mutex_unlock(&view->fetch_lock);
    return data;
}

ssize_t guest_view_read(struct guest_view *view, const char *path, char *buf, size_t size, off_t offset)
{
    struct stat st;
    size_t done = 0;

    if (view_resolve(view, path, &st, NULL, NULL) < 0)
        return -1;
    if (S_ISDIR(st.st_mode)) {
        snapfs_error_set(EISDIR, "'%s' is a directory in the guest", path);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snapfs_error_set(EINVAL, "'%s' is not a regular file in the guest", path);
        return -1;
    }
    if (offset < 0) {
        snapfs_error_set(EINVAL, "negative offset reading '%s'", path);
        return -1;
    }
    if (offset >= st.st_size)
        return 0;
    size = MIN(size, (size_t)(st.st_size - offset));
    while (done < size) {
        uint64_t pos = (uint64_t)offset + done;
        uint64_t index = pos / GUEST_CHUNK;
        size_t within = (size_t)(pos % GUEST_CHUNK), have, n;
        g_autoptr(GBytes) data = view_chunk(view, path, st.st_size, index);
        const char *bytes;

        if (!data)
            return done > 0 ? (ssize_t)done : -1;
        bytes = g_bytes_get_data(data, &have);
        if (within >= have)
            break;   /* the file is shorter than its stat said (a live view) */
        n = MIN(have - within, size - done);
        memcpy(buf + done, bytes + within, n);
        done += n;
        if (have < GUEST_CHUNK && within + n >= have)
            break;
    }
    return (ssize_t)done;
}

/* ---- xattrs --------------------------------------------------------------- */

#define SNAPFS_SELINUX_XATTR "security.selinux"

/* The guest's xattrs of @path, fetched alone when its directory's batch did not bring them. */
static GPtrArray *view_xattrs(struct guest_view *view, const char *path)
{
    struct guest_appliance *app;
    struct guestfs_xattr_list *xl;
    g_autofree char *apath = NULL;
    GPtrArray *xattrs = NULL;

    if (view_resolve(view, path, NULL, NULL, &xattrs) < 0)
        return NULL;
    if (xattrs)
        return xattrs;
    if (strcmp(path, "/") != 0) {
        /* The first file of a directory asked for its xattrs: `ls -l` will ask for every one of them. */
        g_autofree char *parent = g_path_get_dirname(path);

        if (view_xattr_dir(view, parent) < 0)
            return NULL;
        if (view_resolve(view, path, NULL, NULL, &xattrs) < 0)
            return NULL;
        if (xattrs)
            return xattrs;
    }
    app = view_enter(view);
    if (!app)
        return NULL;
    apath = view_path(view, path);
    xl = guestfs_lgetxattrs(app->g, apath);
    if (!xl)
        guest_appliance_error(app, "list the attributes of", path);
    view_leave(view, app);
    if (!xl)
        return NULL;
    xattrs = xattrs_from_list(xl);
    guestfs_free_xattr_list(xl);
    g_mutex_lock(&view->pool->cache_lock);
    node_set_xattrs(g_hash_table_lookup(view->nodes, path), xattrs);
    g_mutex_unlock(&view->pool->cache_lock);
    return xattrs;
}

static ssize_t copy_out(const void *value, size_t len, char *buf, size_t size)
{
    if (size == 0)
        return (ssize_t)len;
    if (size < len) {
        snapfs_error_set(ERANGE, "the buffer is too small for the attribute");
        return -1;
    }
    memcpy(buf, value, len);
    return (ssize_t)len;
}

static bool xattrs_have(GPtrArray *xattrs, const char *name)
{
    for (guint i = 0; xattrs && i < xattrs->len; i++) {
        if (strcmp(((struct guest_xattr *)g_ptr_array_index(xattrs, i))->name, name) == 0)
            return true;
    }
    return false;
}

/*
 * Whether the view's filesystems carry SELinux labels: a labelled filesystem
 * labels every inode, its root first, so a look at the root of each of them
 * tells.  Not known (false) if that look fails.
 */
static bool view_unlabelled(struct guest_view *view)
{
    int labels = g_atomic_int_get(&view->labels);
    g_autoptr(GPtrArray) roots = g_ptr_array_new_with_free_func(g_free);

    if (labels != 0)
        return labels < 0;
    g_mutex_lock(&view->setup_lock);
    for (guint i = 0; i < view->mounts->len; i++)
        g_ptr_array_add(roots, g_strdup(((struct guest_mount *)g_ptr_array_index(view->mounts, i))->mountpoint));
    g_mutex_unlock(&view->setup_lock);
    labels = -1;
    for (guint i = 0; i < roots->len && labels < 0; i++) {
        g_autoptr(GPtrArray) xattrs = view_xattrs(view, g_ptr_array_index(roots, i));

        if (!xattrs)
            return false;
        if (xattrs_have(xattrs, SNAPFS_SELINUX_XATTR))
            labels = 1;
    }
    g_atomic_int_set(&view->labels, labels);
    return labels < 0;
}

ssize_t guest_view_getxattr(struct guest_view *view, const char *path, const char *name, char *buf, size_t size)
{
    g_autoptr(GPtrArray) xattrs = view_xattrs(view, path);

    if (!xattrs)
        return -1;
    for (guint i = 0; i < xattrs->len; i++) {
        struct guest_xattr *x = g_ptr_array_index(xattrs, i);

        if (strcmp(x->name, name) == 0) {
            gsize len;
            const void *value = g_bytes_get_data(x->value, &len);

            return copy_out(value, len, buf, size);
        }
    }
    /*
     * ls -l asks every file for its SELinux label, a round trip each that the kernel never
     * caches for FUSE.  Where the guest's filesystems carry no labels at all, say so as a
     * filesystem without them does (ENOTSUP): ls then stops asking for the rest of its run.
     * A label a file does have is always given.
     */
    if (strcmp(name, SNAPFS_SELINUX_XATTR) == 0 && view_unlabelled(view)) {
        snapfs_error_set(ENOTSUP, "the guest's filesystems carry no SELinux labels");
        return -1;
    }
    snapfs_error_set(ENODATA, "'%s' has no attribute '%s' in the guest", path, name);
    return -1;
}

ssize_t guest_view_listxattr(struct guest_view *view, const char *path, char *buf, size_t size)
{
    g_autoptr(GPtrArray) xattrs = view_xattrs(view, path);
    g_autoptr(GString) names = g_string_new(NULL);

    if (!xattrs)
        return -1;
    for (guint i = 0; i < xattrs->len; i++) {
        struct guest_xattr *x = g_ptr_array_index(xattrs, i);

        g_string_append_len(names, x->name, (gssize)strlen(x->name) + 1);
    }
    return copy_out(names->str, names->len, buf, size);
}

pid_t guest_view_qemu_pid(struct guest_view *view)
{
    pid_t pid = 0;

    g_mutex_lock(&view->setup_lock);
    if (view->app && !g_atomic_int_get(&view->app->dead))
        pid = view->app->qemu_pid;
    g_mutex_unlock(&view->setup_lock);
    return pid;
}
