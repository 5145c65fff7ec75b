/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Mounting a view in an appliance, and entering it: the view's appliance, started and the view mounted if needed. */
#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

/* A view that could not be set up is not tried again before this (an appliance start is costly). */
#define GUEST_RETRY_US (10 * G_USEC_PER_SEC)

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
    /* A writable appliance mounts read-write, or not at all: a file shown must be one it can change. */
    const char *options = app->writable ? "" : mount_options(type);

    /* blkid named the type already: mount(8) need not probe the device again. */
    if (*type && guestfs_mount_vfs(app->g, options, type, device, where) == 0)
        return 0;
    if (guestfs_mount_options(app->g, options, device, where) == 0)
        return 0;
    return app->writable ? -1 : guestfs_mount_ro(app->g, device, where);
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
            log_warn("appliance %u of domain '%s': cannot mount %s on %s again after inspection: %s", app->serial,
                        app->group, device,
                        where, guestfs_last_error(app->g));
    }
}

static gint mountpoint_cmp(gconstpointer a, gconstpointer b)
{
    const char *const *x = a, *const *y = b;

    return (gint)strlen(x[0]) - (gint)strlen(y[0]);
}

/*
 * The filesystem of @fss that fstab's entry of @mountpoint, which libguestfs resolved to @device, means for
 * this view (whose inspected root is @root), or NULL.
 */
static const struct view_fs *view_fs_of_fstab_entry(struct guest_appliance *app, GArray *fss, const char *mountpoint,
                                                    const char *device, const char *root)
{
    const struct view_fs *found = NULL;
    g_autofree char *uuid = NULL;

    for (guint j = 0; j < fss->len && !found; j++) {
        if (strcmp(g_array_index(fss, struct view_fs, j).device, device) == 0)
            found = &g_array_index(fss, struct view_fs, j);
    }
    /* fstab named a UUID another image of the appliance has too (an older layer): use the view's own. */
    if (!found && (uuid = guestfs_vfs_uuid(app->g, device)) && *uuid) {
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

        if (strcmp(mountpoint, "/") == 0) {
            if (strcmp(fs->device, root) == 0)
                found = fs;
        } else {
            g_autofree char *want = guestfs_vfs_label(app->g, device);
            g_autofree char *have = want && *want ? guestfs_vfs_label(app->g, fs->device) : NULL;

            if (have && strcmp(have, want) == 0)
                found = fs;
        }
    }
    return found;
}

/* Mount @fs on @mountpoint of @view ("/": its own folder) and note it among the view's mounts; -1 if it would not. */
static int view_mount_at(struct guest_view *view, struct guest_appliance *app, const char *mountpoint,
                         const struct view_fs *fs)
{
    g_autofree char *where = strcmp(mountpoint, "/") == 0 ? g_strdup(view->prefix)
                                                          : g_strconcat(view->prefix, mountpoint, NULL);
    struct guest_mount *m;

    if (view_mount_one(app, fs->device, fs->type, where) < 0)
        return -1;
    m = g_new0(struct guest_mount, 1);
    m->mountpoint = g_strdup(mountpoint);
    m->device = g_strdup(fs->device);
    g_ptr_array_add(view->mounts, m);
    return 0;
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
        const struct view_fs *found = view_fs_of_fstab_entry(app, fss, item[0], item[1], root);

        if (!found) {
            if (i == 0)
                return false;
            log_warn("%s: %s (%s) is not on its disks: not mounted", view->label, item[0], item[1]);
            continue;
        }
        if (view_mount_at(view, app, item[0], found) < 0) {
            if (i == 0)
                return false;
            log_warn("%s: cannot mount %s on %s: %s", view->label, found->name, item[0], guestfs_last_error(app->g));
        }
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
        g_autoptr(guest_dirent_list) list = guestfs_readdir(app->g, top);

        for (uint32_t i = 0; list && !found && i < list->len; i++) {
            /* A folder, as guestfs_is_dir() would say: a symlink named bin is not one. */
            if (list->val[i].ftyp == 'd')
                found = g_strv_contains((const char *const *)markers, list->val[i].name);
        }
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

/* How fstab names a filesystem, and the name without its key: UUID, LABEL, or a device of the guest's own. */
enum spec_kind { SPEC_UUID, SPEC_LABEL, SPEC_DEVICE, SPEC_OTHER };

static enum spec_kind spec_kind(const char *spec, char **value)
{
    static const char *const devices[] = { "/dev/sd", "/dev/vd", "/dev/hd", "/dev/xvd", NULL };
    enum spec_kind kind = SPEC_OTHER;
    const char *rest = NULL;
    size_t len;

    if (g_str_has_prefix(spec, "UUID=") || g_str_has_prefix(spec, "/dev/disk/by-uuid/")) {
        kind = SPEC_UUID;
        rest = strchr(spec, '=') ? strchr(spec, '=') + 1 : spec + strlen("/dev/disk/by-uuid/");
    } else if (g_str_has_prefix(spec, "LABEL=") ||
               (g_str_has_prefix(spec, "/dev/disk/by-label/") && !strchr(spec, '\\'))) {
        kind = SPEC_LABEL;
        rest = g_str_has_prefix(spec, "LABEL=") ? spec + strlen("LABEL=") : spec + strlen("/dev/disk/by-label/");
    } else {
        for (size_t i = 0; devices[i] && kind == SPEC_OTHER; i++) {
            if (g_str_has_prefix(spec, devices[i]) && g_ascii_islower(spec[strlen(devices[i])])) {
                kind = SPEC_DEVICE;
                rest = spec + strlen(devices[i]);
            }
        }
    }
    if (kind == SPEC_OTHER)
        return SPEC_OTHER;
    len = strlen(rest);
    /* mount(8) takes UUID="..." too. */
    if (kind != SPEC_DEVICE && len >= 2 && rest[0] == '"' && rest[len - 1] == '"')
        *value = g_strndup(rest + 1, len - 2);
    else
        *value = g_strdup(rest);
    return **value ? kind : SPEC_OTHER;
}

/*
 * The filesystem of @fss that fstab's @spec names, or NULL when none does; *@understood false when
 * snapfs cannot tell (a PARTUUID, a device mapper name, two filesystems with that UUID or label, a
 * device name for anything but the root: the guest's bus and disk order decide what /dev/sdb is,
 * and the view knows neither, while the root is checked against the filesystem fstab was read from).
 */
static const struct view_fs *view_fs_of_spec(struct guest_appliance *app, GArray *fss, const char *spec,
                                             bool root, bool *understood)
{
    g_autofree char *value = NULL;
    enum spec_kind kind = spec_kind(spec, &value);
    const struct view_fs *found = NULL;

    *understood = kind != SPEC_OTHER && (kind != SPEC_DEVICE || root);
    for (guint j = 0; *understood && j < fss->len; j++) {
        struct view_fs *fs = &g_array_index(fss, struct view_fs, j);
        g_autofree char *label = NULL;
        bool match;

        if (kind == SPEC_DEVICE) {
            match = strcmp(fs->name + strlen("sd"), value) == 0 && g_str_has_prefix(fs->name, "sd");
        } else if (kind == SPEC_UUID) {
            if (!fs->uuid)
                fs->uuid = guestfs_vfs_uuid(app->g, fs->device);
            match = fs->uuid && g_ascii_strcasecmp(fs->uuid, value) == 0;
        } else {
            label = guestfs_vfs_label(app->g, fs->device);
            match = label && strcmp(label, value) == 0;
        }
        if (match && found)
            *understood = false;
        else if (match)
            found = fs;
    }
    return *understood ? found : NULL;
}

/* Whether @path in the appliance is a folder, a file or a symlink, as lstat says (a guest's link is not followed). */
static bool appliance_is(struct guest_appliance *app, const char *path, char what)
{
    switch (what) {
    case 'd':
        return guestfs_is_dir(app->g, path) > 0;
    case 'f':
        return guestfs_is_file(app->g, path) > 0;
    default:
        return guestfs_is_symlink(app->g, path) > 0;
    }
}

/*
 * The one filesystem @view mounted by device that looks like a Linux root (etc/, bin/ or usr/bin/, and
 * etc/fstab or etc/os-release), or NULL when none or more than one does.
 */
static const struct guest_mount *view_linux_root(struct guest_view *view, struct guest_appliance *app)
{
    const struct guest_mount *root = NULL;

    for (guint j = 0; j < view->mounts->len; j++) {
        const struct guest_mount *m = g_ptr_array_index(view->mounts, j);
        g_autofree char *top = g_strconcat(view->prefix, m->mountpoint, NULL);
        g_autofree char *etc = g_strconcat(top, "/etc", NULL);
        g_autofree char *bin = g_strconcat(top, "/bin", NULL);
        g_autofree char *usr_bin = g_strconcat(top, "/usr/bin", NULL);
        g_autofree char *fstab = g_strconcat(top, "/etc/fstab", NULL);
        g_autofree char *release = g_strconcat(top, "/etc/os-release", NULL);

        if (!appliance_is(app, etc, 'd') || !(appliance_is(app, usr_bin, 'd') || appliance_is(app, bin, 'd')))
            continue;
        if (!appliance_is(app, fstab, 'f') && !appliance_is(app, fstab, 'l') && !appliance_is(app, release, 'f') &&
            !appliance_is(app, release, 'l'))
            continue;
        if (root)
            return NULL;
        root = m;
    }
    return root;
}

/* A mountpoint of the guest and the view's filesystem fstab puts there. */
struct fstab_mount {
    const char *mountpoint;
    const struct view_fs *fs;
};

static gint fstab_mount_cmp(gconstpointer a, gconstpointer b)
{
    const struct fstab_mount *x = a, *y = b;

    return (gint)strlen(x->mountpoint) - (gint)strlen(y->mountpoint);
}

/*
 * The mounts of @root's fstab (@root a filesystem of @fss, its top in the appliance @top) into @out, the
 * root first; false when snapfs cannot tell from it (then full inspection decides).
 */
static bool fstab_mounts(struct guest_view *view, struct guest_appliance *app, GArray *fss, const char *root,
                         const char *top, GPtrArray *entries, GArray *out)
{
    g_autofree char *path = g_strconcat(top, "/etc/fstab", NULL);
    g_autofree char *text = NULL;
    const struct view_fs *root_fs = NULL;
    size_t size = 0;
    int64_t bytes;

    for (guint j = 0; j < fss->len && !root_fs; j++) {
        if (strcmp(g_array_index(fss, struct view_fs, j).device, root) == 0)
            root_fs = &g_array_index(fss, struct view_fs, j);
    }
    if (!root_fs)
        return false;
    g_array_append_val(out, ((struct fstab_mount){ "/", root_fs }));
    /* No fstab (os-release alone): the root alone, as inspection would have it. */
    if (!appliance_is(app, path, 'f'))
        return !appliance_is(app, path, 'l');
    bytes = guestfs_filesize(app->g, path);
    if (bytes < 0 || bytes > GUEST_FSTAB_MAX_BYTES || !(text = guestfs_read_file(app->g, path, &size)) ||
        !guest_fstab_parse(text, size, entries))
        return false;
    for (guint i = 0; i < entries->len; i++) {
        const struct guest_fstab_entry *e = g_ptr_array_index(entries, i);
        bool understood;
        const struct view_fs *fs = view_fs_of_spec(app, fss, e->spec, strcmp(e->mountpoint, "/") == 0, &understood);

        if (!understood)
            return false;
        if (strcmp(e->mountpoint, "/") == 0) {
            /* The root fstab names must be the one it was read from. */
            if (fs != root_fs)
                return false;
            continue;
        }
        if (!fs) {
            if (!guest_fstab_has_option(e->options, "noauto", false) && !guest_fstab_has_option(e->options, "nofail", false))
                log_warn("%s: %s (%s) is not on its disks: not mounted", view->label, e->mountpoint, e->spec);
            continue;
        }
        g_array_append_val(out, ((struct fstab_mount){ e->mountpoint, fs }));
    }
    g_array_sort(out, fstab_mount_cmp);
    return true;
}

/*
 * A Linux root among the filesystems @view mounted by device: mount it and what its fstab names, as
 * inspection would, but from that fstab alone (src/guest/fstab.c says why).  1 when mounted so; 0 when
 * there is none or snapfs cannot tell from its fstab (the view's mounts by device are as they were:
 * full inspection decides); -1 if the appliance died.
 */
static int view_mount_by_fstab(struct guest_view *view, struct guest_appliance *app, GArray *fss, GString *why)
{
    const struct guest_mount *root = view_linux_root(view, app);
    g_autoptr(GPtrArray) entries = g_ptr_array_new_with_free_func(guest_fstab_entry_free);
    g_autoptr(GArray) mounts = g_array_new(FALSE, FALSE, sizeof(struct fstab_mount));
    g_autofree char *top = NULL;
    g_autofree char *device = NULL;

    if (!root)
        return guestfs_is_ready(app->g) ? 0 : -1;
    top = g_strconcat(view->prefix, root->mountpoint, NULL);
    device = g_strdup(root->device);
    if (!fstab_mounts(view, app, fss, device, top, entries, mounts))
        return guestfs_is_ready(app->g) ? 0 : -1;
    view_unmount(view, app);
    for (guint i = 0; i < mounts->len; i++) {
        const struct fstab_mount *fm = &g_array_index(mounts, struct fstab_mount, i);

        /* Onto the folder the root has there, as inspection's mounts go: none is made in the guest's root. */
        if (view_mount_at(view, app, fm->mountpoint, fm->fs) == 0)
            continue;
        if (i > 0) {
            log_warn("%s: cannot mount %s on %s: %s", view->label, fm->fs->name, fm->mountpoint,
                     guestfs_last_error(app->g));
            continue;
        }
        /* The root would not mount where it goes: by device again, and inspection decides. */
        view_unmount(view, app);
        g_string_truncate(why, 0);
        return view_mount_devices(view, app, fss, why) < 0 ? -1 : 0;
    }
    view->os = true;
    log_debug("%s: a Linux root on %s, mounted as its fstab says (%u filesystems), without inspection", view->label,
              device, view->mounts->len);
    return 1;
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
 * Tests only: SNAPFS_FAULT=guest:freeze-at-mount stops the first appliance's qemu (SIGSTOP) just
 * before its first view is mounted, as an appliance that never answers a mount would be.
 */
static void view_fault_freeze(struct guest_appliance *app)
{
    static gint done;
    const char *fault = g_getenv("SNAPFS_FAULT");

    if (fault && strcmp(fault, "guest:freeze-at-mount") == 0 && app->qemu_pid > 0 &&
        g_atomic_int_compare_and_exchange(&done, 0, 1)) {
        log_warn("SNAPFS_FAULT: freezing appliance %u of domain '%s' before its first mount", app->serial,
                    app->group);
        kill(app->qemu_pid, SIGSTOP);
    }
}

/*
 * The filesystems of @view's disks into @fss, in the order of its own drives, named as they would be
 * in a guest of its own; the targets of the disks that hold LVM into @lvm_disks.  -1 with the reason.
 */
static int view_find_filesystems(struct guest_view *view, struct guest_appliance *app, GArray *fss,
                                 GPtrArray *lvm_disks)
{
    for (size_t i = 0; i < view->n_drives; i++) {
        g_autofree char *key = guest_drive_key(&view->drives[i], view->live && !view->drives[i].internal_snapshot);
        g_autofree char *letters = guest_disk_letters((unsigned)i);
        int index = guest_appliance_find_disk(app, key);

        if (index < 0 || !app->devices[index]) {
            error_set(EIO, "image '%s' is missing from its appliance", view->drives[i].file);
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
    return 0;
}

/*
 * @view's disks hold LVM (the targets @lvm_disks): in a shared appliance the view must move to one of
 * its own (1); in its own, its logical volumes join @fss (0).  -1 with the reason.
 */
static int view_add_logical_volumes(struct guest_view *view, struct guest_appliance *app, GArray *fss,
                                    GPtrArray *lvm_disks)
{
    char **lvs;

    if (!app->own_view_key) {
        for (guint i = 0; i < lvm_disks->len; i++)
            guest_pool_mark_lvm(view->pool, view->group, g_ptr_array_index(lvm_disks, i));
        log_info("%s: its disks hold LVM physical volumes: it moves to an appliance of its own", view->label);
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
    return 0;
}

/*
 * Inspect @app's disks for operating systems (once per appliance), for @view, and mount again what
 * inspection unmounted.  -1 with the reason if the appliance died.
 */
static int appliance_inspect_for(struct guest_view *view, struct guest_appliance *app)
{
    gint64 started = g_get_monotonic_time();

    g_mutex_lock(&view->pool->lock);
    view->pool->stats.inspections++;
    g_mutex_unlock(&view->pool->lock);
    app->roots = guestfs_inspect_os(app->g);
    log_debug("appliance %u of domain '%s' inspected in %.1f s: %u operating systems", app->serial, app->group,
                 (double)(g_get_monotonic_time() - started) / G_USEC_PER_SEC,
                 app->roots ? g_strv_length(app->roots) : 0);
    if (!app->roots && !guestfs_is_ready(app->g)) {
        guest_appliance_error(app, "inspect", view->label);
        return -1;
    }
    if (!app->roots)
        app->roots = g_new0(char *, 1);
    appliance_remount(app);
    return 0;
}

/*
 * Mount @view's filesystems @fss: by device first, unless an inspection already found this view's
 * operating system; an operating system's filesystems where its fstab puts them, or by device again
 * if that fails.  Why a filesystem did not mount goes to @why.  -1 if the appliance died.
 */
static int view_mount_filesystems(struct guest_view *view, struct guest_appliance *app, GArray *fss, GString *why)
{
    const char *root = view_root(app, fss);

    if (!root) {
        if (view_mount_devices(view, app, fss, why) < 0)
            return -1;
        if (!app->roots && view_may_hold_os(view, app)) {
            int read = view_mount_by_fstab(view, app, fss, why);

            if (read != 0)
                return read < 0 ? -1 : 0;
            if (appliance_inspect_for(view, app) < 0)
                return -1;
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
    return 0;
}

/* Nothing of @view mounted: say why, naming what blkid found but snapfs does not open (@why holds mount errors). */
static void view_say_nothing_mounted(struct guest_view *view, GArray *fss, GString *why)
{
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
    guest_view_set_error(view, why->str);
    log_info("%s: %s", view->label, why->str);
}

/*
 * Mount @view's filesystems under a directory of its own in @app (app lock held): 0, or -1 with
 * the reason, or 1 when the view's disks hold LVM and it must move to an appliance of its own.
 */
static int view_mount(struct guest_view *view, struct guest_appliance *app)
{
    g_autoptr(GArray) fss = g_array_new(FALSE, TRUE, sizeof(struct view_fs));
    g_autoptr(GString) why = g_string_new(NULL);
    g_autoptr(GPtrArray) lvm_disks = g_ptr_array_new();   /* targets of the view's disks that hold LVM */

    g_array_set_clear_func(fss, view_fs_clear);
    view_fault_freeze(app);
    g_ptr_array_set_size(view->mounts, 0);
    g_free(view->prefix);
    view->prefix = g_strdup_printf("/v%u", app->next_prefix++);
    if (guestfs_mkmountpoint(app->g, view->prefix) < 0) {
        guest_appliance_error(app, "make the mountpoint", view->prefix);
        return -1;
    }
    if (view_find_filesystems(view, app, fss, lvm_disks) < 0)
        return -1;
    if (lvm_disks->len) {
        int moves = view_add_logical_volumes(view, app, fss, lvm_disks);

        if (moves != 0)
            return moves;
    }
    if (view_mount_filesystems(view, app, fss, why) < 0)
        return -1;
    /* What a writer creates takes the mode it asks for, as on the host (the kernel applied the caller's umask). */
    if (app->writable && guestfs_umask(app->g, 0) < 0) {
        guest_appliance_error(app, "set the umask of", view->prefix);
        return -1;
    }
    view->empty = view->mounts->len == 0;
    if (view->mounts->len == 0) {
        view_say_nothing_mounted(view, fss, why);
    } else {
        guest_view_set_error(view, NULL);
        log_debug("%s mounted at %s in appliance %u (%s, %u filesystems)", view->label, view->prefix,
                     app->serial, view->os ? "inspected" : "by device", view->mounts->len);
    }
    return 0;
}

/* The view cannot be read now, for the reason recorded: say so, and do not try again for GUEST_RETRY_US. */
static void view_failed(struct guest_view *view)
{
    guest_store64(&view->failed_at, g_get_monotonic_time());
    g_atomic_int_set(&view->failed_errno, error_errno());
    guest_view_set_error(view, error_message());
}

/* Whether @view may ask for an appliance now: snapfs is not stopping, and the request is counted in flight. */
static bool view_admit(struct guest_view *view)
{
    if (g_atomic_int_get(&view->pool->aborting)) {
        error_set(EIO, "%s cannot be read: snapfs is stopping", view->label);
        return false;
    }
    /* A wedged domain must not take every FUSE thread: the tree and other domains keep some. */
    if (g_atomic_int_add(&view->pool->inflight, 1) >= GUEST_MAX_INFLIGHT) {
        g_atomic_int_add(&view->pool->inflight, -1);
        error_set(EAGAIN, "%s cannot be read now: %d requests already wait for appliances", view->label,
                         GUEST_MAX_INFLIGHT);
        return false;
    }
    return true;
}

/* The appliance @view is mounted in, locked, while it runs and takes views; else NULL.  Setup lock held. */
static struct guest_appliance *view_current_appliance(struct guest_view *view)
{
    struct guest_appliance *app = view->app;

    if (app && !g_atomic_int_get(&app->dead) && !g_atomic_int_get(&app->retire)) {
        g_mutex_lock(&app->lock);
        if (!g_atomic_int_get(&app->dead) && app->g)
            return app;
        g_mutex_unlock(&app->lock);
    }
    return NULL;
}

/* Whether @view failed less than GUEST_RETRY_US ago: then the error is set to why, again. */
static bool view_failed_recently(struct guest_view *view)
{
    g_autofree char *error = NULL;

    if (!g_atomic_int_get(&view->failed_errno) ||
        g_get_monotonic_time() - guest_load64(&view->failed_at) >= GUEST_RETRY_US)
        return false;
    error = guest_view_error(view);
    error_set(g_atomic_int_get(&view->failed_errno), "%s", error ? error : "the view could not be read");
    return true;
}

/* Whether every image of @view can be read; if not, the error says which. */
static bool view_images_readable(struct guest_view *view)
{
    for (size_t i = 0; i < view->n_drives; i++) {
        if (g_access(view->drives[i].file, R_OK) != 0) {
            error_set(EIO, "cannot read image '%s' of disk '%s': %s", view->drives[i].file,
                             view->drives[i].target ? view->drives[i].target : "?", g_strerror(errno));
            return false;
        }
    }
    return true;
}

/* What one try at an appliance for a view came to. */
enum view_try {
    VIEW_TRY_MOUNTED,   /* the view is mounted in it */
    VIEW_TRY_AGAIN,     /* the view moves to an appliance of its own (LVM): the next turn starts it */
    VIEW_TRY_FAILED,    /* the view failed, for the reason set */
    VIEW_TRY_GAVE_UP,   /* no failure of the view's own: every appliance busy, or one died under it */
};

/*
 * One try at an appliance for @view (setup lock held): chosen by the pool, started if needed, the view
 * mounted in it.  When mounted, *@out is the appliance, locked, with the reference the pool gave.
 */
static enum view_try view_try_appliance(struct guest_view *view, struct guest_appliance **out)
{
    struct guest_appliance *app = guest_pool_appliance_for(view->pool, view);
    int mounted = 0;

    *out = NULL;
    if (!app)
        return VIEW_TRY_GAVE_UP;   /* every appliance busy: no failure of the view's own */
    g_mutex_lock(&app->lock);
    /* Launching is bounded by its own watcher; mounting is a step the watchdog bounds like any call. */
    if (!app->launched)
        guest_appliance_launch(view->pool, app);
    guest_appliance_expect(view->pool, app, 0);
    /* Chosen to take the view's disks while it runs: when that fails, it takes none from now on and the next try starts another. */
    if (app->launched && app->g && !g_atomic_int_get(&app->dead) && !guest_appliance_has_view(app, view) &&
        guest_appliance_hot_add(view->pool, app, view) < 0 && !g_atomic_int_get(&app->takes_disks) &&
        !g_atomic_int_get(&app->dead)) {
        guest_appliance_idle(app);
        g_mutex_unlock(&app->lock);
        guest_appliance_unref(app);
        return VIEW_TRY_AGAIN;
    }
    if (!app->launched || !app->g || (mounted = view_mount(view, app)) < 0) {
        /* An appliance that died under a running view is no reason to wait before the next try. */
        bool died = app->launched && g_atomic_int_get(&app->dead);

        bool killed = g_atomic_pointer_get(&app->killed) != NULL;

        guest_appliance_idle(app);
        g_mutex_unlock(&app->lock);
        guest_appliance_unref(app);
        /* Killed past its deadline: the next try waits like any failure (the kernel retries a read at once). */
        if (died && !killed) {
            guest_view_set_error(view, error_message());
            return VIEW_TRY_GAVE_UP;
        }
        return VIEW_TRY_FAILED;
    }
    if (mounted > 0) {
        /* LVM: the next turn starts the view's own appliance. */
        guest_appliance_idle(app);
        g_mutex_unlock(&app->lock);
        guest_appliance_unref(app);
        return VIEW_TRY_AGAIN;
    }
    *out = app;
    return VIEW_TRY_MOUNTED;
}

struct guest_appliance *guest_view_enter(struct guest_view *view)
{
    struct guest_appliance *app = NULL;

    if (!view_admit(view))
        return NULL;
    g_mutex_lock(&view->setup_lock);
    for (int attempt = 0; attempt < 3; attempt++) {
        enum view_try tried;

        app = view_current_appliance(view);
        if (app)
            break;
        if (view->writable && view->app) {
            error_set(EIO, "%s: the appliance that wrote it ended (idle, or killed); open the file again",
                      view->label);
            break;
        }
        /* The appliance stopped (idle, evicted, killed): the view moves to another one. */
        guest_appliance_unref(g_steal_pointer(&view->app));
        if (view_failed_recently(view))
            break;
        if (!view_images_readable(view)) {
            view_failed(view);
            break;
        }
        tried = view_try_appliance(view, &app);
        if (tried == VIEW_TRY_AGAIN)
            continue;
        if (tried == VIEW_TRY_MOUNTED) {
            /* The reference guest_pool_appliance_for() gave is the view's; the caller's is taken below. */
            view->app = app;
            g_atomic_int_add(&app->holds, view->holds);
            g_atomic_int_set(&view->failed_errno, 0);
            guest_pool_fill_in(view->pool, app);
        } else if (tried == VIEW_TRY_FAILED) {
            view_failed(view);
        }
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

void guest_view_hold(struct guest_view *view, int delta)
{
    if (view->agent) {
        guest_agent_hold(view, delta);
        return;
    }
    g_mutex_lock(&view->setup_lock);
    view->holds += delta;
    if (view->app)
        g_atomic_int_add(&view->app->holds, delta);
    g_mutex_unlock(&view->setup_lock);
}

bool guest_view_ended(struct guest_view *view)
{
    if (view->agent)
        return guest_agent_ended(view);
    bool ended;

    g_mutex_lock(&view->setup_lock);
    ended = view->writable && view->app && (g_atomic_int_get(&view->app->dead) || g_atomic_int_get(&view->app->retire));
    g_mutex_unlock(&view->setup_lock);
    return ended;
}

void guest_view_leave(struct guest_view *view, struct guest_appliance *app)
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
char *guest_view_path(struct guest_view *view, const char *path)
{
    return strcmp(path, "/") == 0 ? g_strdup(view->prefix) : g_strconcat(view->prefix, path, NULL);
}

dev_t guest_view_dev_entered(struct guest_view *view, const char *path)
{
    dev_t best = 0;
    size_t best_len = 0;

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
    return best;
}

/* The index of the guest filesystem holding @path: st_dev that does not change when an appliance does. */
dev_t guest_view_dev(struct guest_view *view, const char *path)
{
    dev_t dev;

    g_mutex_lock(&view->setup_lock);
    dev = guest_view_dev_entered(view, path);
    g_mutex_unlock(&view->setup_lock);
    return dev;
}

