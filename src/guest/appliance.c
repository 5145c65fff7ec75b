/* SPDX-License-Identifier: GPL-2.0-or-later */
/* One appliance: its disks, libguestfs handle and launch, its calls' deadlines and errors, what its disks hold. */
#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/log.h"

#include "snapfs/chain.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define GUEST_APPLIANCE_MEMSIZE 512
/* How long a writable appliance may take to unmount and sync its filesystems when it closes. */
#define GUEST_SETTLE_S 30

char *guest_drive_key(const struct guest_drive *drive, bool live)
{
    return g_strdup_printf("%s\n%s\n%s\n%d", drive->file, drive->format ? drive->format : "",
                           drive->internal_snapshot ? drive->internal_snapshot : "", live);
}

void guest_disk_free(struct guest_disk_ext *ext)
{
    guest_nbd_stop(ext->nbd);
    g_free(ext->export);
    g_free(ext->disk.key);
    g_free(ext->disk.file);
    g_free(ext->disk.format);
    g_free(ext->disk.internal);
    g_free(ext->disk.socket);
    g_strfreev(ext->chain);
    g_free(ext);
}

int guest_appliance_find_disk(struct guest_appliance *app, const char *key)
{
    for (guint i = 0; i < app->disks->len; i++) {
        struct guest_disk *disk = g_ptr_array_index(app->disks, i);

        if (strcmp(disk->key, key) == 0)
            return (int)i;
    }
    return -1;
}

struct guest_disk_ext *guest_disk_new(struct guest_appliance *app, const struct guest_drive *drive, bool live,
                                      GPtrArray **chain_out)
{
    g_autoptr(GPtrArray) chain = NULL;
    g_autoptr(GPtrArray) files = g_ptr_array_new();
    struct guest_disk_ext *ext;

    /*
     * qemu follows the chain as the images record it and probes a backing
     * file's format where none is recorded: only a drive whose whole chain
     * snapfs can read with formats libvirt or the images name is added.
     */
    chain = chain_read(drive->file, drive->format);
    if (!chain) {
        log_debug("image '%s' is not added to an appliance: %s", drive->file, error_message());
        return NULL;
    }
    ext = g_new0(struct guest_disk_ext, 1);
    ext->disk.key = guest_drive_key(drive, live);
    ext->disk.file = g_strdup(drive->file);
    ext->disk.format = g_strdup(drive->format);
    ext->disk.internal = g_strdup(drive->internal_snapshot);
    ext->disk.force_share = live && !app->writable;
    ext->disk.writable = app->writable;
    for (guint i = 0; i < chain->len; i++)
        g_ptr_array_add(files, g_strdup(((struct snapfs_layer *)g_ptr_array_index(chain, i))->file));
    g_ptr_array_add(files, NULL);
    ext->chain = (char **)g_ptr_array_free(g_steal_pointer(&files), FALSE);
    if (chain_out)
        *chain_out = g_steal_pointer(&chain);
    return ext;
}

/* Add one image unless it is there already; @drive's own layers below come too, so that views of older snapshots find them. */
static void appliance_add_drive(struct guest_appliance *app, const struct guest_drive *drive, bool live, bool with_chain)
{
    g_autofree char *key = guest_drive_key(drive, live);
    g_autoptr(GPtrArray) chain = NULL;
    struct guest_disk_ext *ext;

    if (guest_appliance_find_disk(app, key) >= 0)
        return;
    ext = guest_disk_new(app, drive, live, &chain);
    if (!ext)
        return;
    g_ptr_array_add(app->disks, ext);

    /* Each backing layer as a drive of its own: it is the content of an older snapshot or layer. */
    if (!with_chain || app->disks->len >= app->cap)
        return;
    for (guint i = 0; i + 1 < chain->len; i++) {
        struct snapfs_layer *layer = g_ptr_array_index(chain, i);
        struct guest_drive below = { .file = layer->file, .format = layer->format, .target = drive->target };

        if (g_access(layer->file, R_OK) != 0)
            continue;
        appliance_add_drive(app, &below, false, false);
    }
}

void guest_appliance_add_view(struct guest_appliance *app, struct guest_view *view, bool neighbours)
{
    for (size_t i = 0; i < view->n_drives; i++) {
        const struct guest_drive *drive = &view->drives[i];

        if (neighbours && g_access(drive->file, R_OK) != 0)
            continue;
        appliance_add_drive(app, drive, view->live && !drive->internal_snapshot,
                            !app->own_view_key && app->background && app->disks->len < app->cap);
    }
}

bool guest_appliance_has_view(struct guest_appliance *app, struct guest_view *view)
{
    for (size_t i = 0; i < view->n_drives; i++) {
        const struct guest_drive *drive = &view->drives[i];
        g_autofree char *key = guest_drive_key(drive, view->live && !drive->internal_snapshot);

        if (guest_appliance_find_disk(app, key) < 0)
            return false;
    }
    return true;
}

void guest_appliance_unref(struct guest_appliance *app)
{
    if (!app || !g_atomic_int_dec_and_test(&app->refs))
        return;
    if (app->g)
        guestfs_close(app->g);
    /* One per device: closing empties the disk list. */
    for (guint i = 0; app->disk_fs && app->devices && app->devices[i]; i++)
        g_strfreev(app->disk_fs[i]);
    g_ptr_array_unref(app->disks);
    guest_nbd_stop(app->storage_pid);
    g_free(app->disk_fs);
    g_strfreev(app->devices);
    g_strfreev(app->partitions);
    g_strfreev(app->lvs);
    g_strfreev(app->roots);
    g_ptr_array_unref(app->mount_log);
    if (app->tmpdir) {
        g_autoptr(GDir) dir = g_dir_open(app->tmpdir, 0, NULL);
        const char *name;

        while (dir && (name = g_dir_read_name(dir))) {
            g_autofree char *path = g_build_filename(app->tmpdir, name, NULL);

            if (g_unlink(path) != 0)
                g_rmdir(path);   /* the launch directory, emptied by guestfs_close() */
        }
        g_rmdir(app->tmpdir);
    }
    g_free(app->tmpdir);
    g_free(app->launch_dir);
    g_free(app->qmp);
    g_free(app->group);
    g_free(app->own_view_key);
    g_free(app->killed);
    g_mutex_clear(&app->lock);
    g_free(app);
}

/* What appliance_settle() waits for, and the thread that kills qemu past the deadline. */
struct settle_guard {
    GMutex lock;
    GCond cond;
    bool done;
    struct guest_appliance *app;
};

static gpointer settle_guard_thread(gpointer data)
{
    struct settle_guard *guard = data;
    gint64 deadline = g_get_monotonic_time() + GUEST_SETTLE_S * G_USEC_PER_SEC;

    g_mutex_lock(&guard->lock);
    while (!guard->done && g_cond_wait_until(&guard->cond, &guard->lock, deadline))
        ;
    if (!guard->done)
        guest_appliance_kill(guard->app, g_strdup_printf("appliance %u of domain '%s' did not unmount its "
                                                         "filesystems within %d s and was killed", guard->app->serial,
                                                         guard->app->group, GUEST_SETTLE_S), true);
    g_mutex_unlock(&guard->lock);
    return NULL;
}

/*
 * Unmount a writable appliance's filesystems and sync them (app lock held), within GUEST_SETTLE_S: past it
 * qemu is killed (what close() and fsync() returned for is on disk already; the rest is the guest's journal's).
 */
static void appliance_settle(struct guest_appliance *app)
{
    struct settle_guard guard = { .app = app };
    GThread *thread;

    g_mutex_init(&guard.lock);
    g_cond_init(&guard.cond);
    thread = g_thread_new("snapfs-settle", settle_guard_thread, &guard);
    if (guestfs_umount_all(app->g) < 0 || guestfs_sync(app->g) < 0 || guestfs_shutdown(app->g) < 0)
        log_warn("appliance %u of domain '%s' did not let go of its images cleanly: %s", app->serial, app->group,
                 guestfs_last_error(app->g) ? guestfs_last_error(app->g) : "killed");
    else
        log_info("appliance %u of domain '%s' unmounted its filesystems and let go of its images", app->serial,
                 app->group);
    g_mutex_lock(&guard.lock);
    guard.done = true;
    g_cond_signal(&guard.cond);
    g_mutex_unlock(&guard.lock);
    g_thread_join(thread);
    g_mutex_clear(&guard.lock);
    g_cond_clear(&guard.cond);
}

/* Stop @app's qemu and its qemu-nbd servers.  Called with app->lock held (or the app unreachable). */
void guest_appliance_close(struct guest_appliance *app)
{
    /* A writable appliance's filesystems are unmounted cleanly and synced first, unless it was killed. */
    if (app->writable && app->g && app->launched && !g_atomic_int_get(&app->dead))
        appliance_settle(app);
    g_atomic_int_set(&app->dead, 1);
    if (app->g) {
        log_debug("closing appliance %u of domain '%s'", app->serial, app->group);
        guestfs_close(app->g);
        app->g = NULL;
    }
    /* The NBD servers go after qemu has let go of them. */
    g_ptr_array_set_size(app->disks, 0);
    guest_nbd_stop(app->storage_pid);
    app->storage_pid = 0;
}

struct guest_appliance *guest_appliance_new(struct guest_pool *pool, const char *group)
{
    struct guest_appliance *app = g_new0(struct guest_appliance, 1);

    g_mutex_init(&app->lock);
    app->refs = 1;
    app->group = g_strdup(group);
    app->serial = ++pool->serial;
    app->cap = GUEST_MAX_SHARED_DISKS;
    app->disks = g_ptr_array_new_with_free_func((GDestroyNotify)guest_disk_free);
    app->mount_log = g_ptr_array_new_with_free_func(g_free);
    app->last_used = g_get_monotonic_time();
    return app;
}

/* How an appliance boots beside libguestfs's defaults (boot.c). */
enum {
    BOOT_UNPACKED = 1,  /* the kernel unpacked */
    BOOT_TCG_CACHE = 2, /* qemu through a script that bounds its translated code */
    BOOT_MONITOR = 4,   /* qemu through a script that gives it a monitor socket (hotplug.c) */
};

/*
 * Hand @g what @prepare makes (a file of boot.c) through @apply, unless @as_shipped says that failed once; when it
 * cannot be made, say so (appliances then @without "as it is") and set @as_shipped.  Whether @g got it.
 */
static bool appliance_use_boot_file(guestfs_h *g, gint *as_shipped, char *(*prepare)(guestfs_h *),
                                    int (*apply)(guestfs_h *, const char *), const char *without)
{
    g_autofree char *made = NULL;

    if (g_atomic_int_get(as_shipped))
        return false;
    made = prepare(g);
    if (made && apply(g, made) == 0)
        return true;
    log_info("appliances %s as it is: %s", without, made ? guestfs_last_error(g) : error_message());
    g_atomic_int_set(as_shipped, 1);
    return false;
}

/* A new handle with snapfs's settings for @app (its launch directory made here); NULL with the reason. */
static guestfs_h *appliance_new_handle(struct guest_appliance *app, bool force_tcg)
{
    g_autoptr(guestfs_h) g = guestfs_create();
    g_autofree char *ident = NULL;

    if (!g) {
        error_set(EIO, "cannot create a libguestfs handle: %s", g_strerror(errno));
        return NULL;
    }
    guestfs_set_error_handler(g, NULL, NULL);
    /* libguestfs's overlays go here, so the launch watcher knows this appliance's qemu by its command line. */
    if (!app->launch_dir) {
        app->launch_dir = g_build_filename(app->tmpdir, "launch", NULL);
        if (g_mkdir(app->launch_dir, 0700) < 0) {
            error_set(EIO, "cannot make '%s': %s", app->launch_dir, g_strerror(errno));
            return NULL;
        }
    }
    guestfs_set_tmpdir(g, app->launch_dir);
    ident = g_strdup_printf("snapfs%u", app->serial);
    guestfs_set_identifier(g, ident);
    guestfs_set_autosync(g, 0);
    guestfs_set_memsize(g, GUEST_APPLIANCE_MEMSIZE);
    /* A second vCPU boots the appliance seconds sooner under TCG (udev probes the disks in parallel). */
    guestfs_set_smp(g, g_get_num_processors() >= 2 ? 2 : 1);
    /*
     * Debian's kernel zeroes every page it hands out (init_on_alloc): hardening against leaks between
     * a machine's users, which a throwaway appliance of one domain's images does not have, and under
     * TCG an emulated memset of each page: without it the appliance boots about 1 s sooner and lists
     * directories a quarter faster.  LIBGUESTFS_APPEND, read at guestfs_create(), still has the last word.
     */
    {
        const char *user = guestfs_get_append(g);
        g_autofree char *append = g_strconcat("init_on_alloc=0", user ? " " : "", user ? user : "", NULL);

        guestfs_set_append(g, append);
    }
    if (force_tcg) {
        char *settings[] = { (char *)"force_tcg", NULL };

        guestfs_set_backend_settings(g, settings);
    }
    return g_steal_pointer(&g);
}

/* What of boot.c @g uses for @app (BOOT_*): the unpacked kernel, and under TCG the script that bounds qemu. */
static unsigned appliance_choose_boot(struct guest_pool *pool, struct guest_appliance *app, guestfs_h *g,
                                      bool force_tcg)
{
    unsigned boot = 0;

    /*
     * A background launch boots what the first look's launch made seconds before: refreshing it runs supermin,
     * which does not watch for snapfs stopping, and unmount waits for background launches.
     */
    g_mutex_lock(&pool->lock);
    if (app->background && pool->boot_path && !g_atomic_int_get(&pool->kernel_as_shipped) &&
        guestfs_set_path(g, pool->boot_path) == 0)
        boot |= BOOT_UNPACKED;
    g_mutex_unlock(&pool->lock);
    if (!(boot & BOOT_UNPACKED) &&
        appliance_use_boot_file(g, &pool->kernel_as_shipped, guest_boot_appliance, guestfs_set_path,
                                "boot libguestfs's kernel"))
        boot |= BOOT_UNPACKED;
    /* Only where TCG is certain: a script that cannot run would otherwise pass for a KVM that fails. */
    if (force_tcg &&
        appliance_use_boot_file(g, &pool->qemu_as_shipped, guest_boot_qemu, guestfs_set_hv, "run libguestfs's qemu"))
        boot |= BOOT_TCG_CACHE;
    return boot;
}

/*
 * A domain's shared appliance runs qemu through a script of its own that adds a monitor socket (QMP) to what
 * libguestfs runs: through it, views that come later are added to the running appliance as disks (hotplug.c)
 * instead of booting another one.  Whether @g got it; where it cannot be, appliances take no disks once up.
 */
static bool appliance_use_monitor(struct guest_pool *pool, struct guest_appliance *app, guestfs_h *g)
{
    g_autofree char *hv = guestfs_get_hv(g), *socket = NULL, *opts = NULL, *script = NULL, *path = NULL;
    g_autoptr(GError) error = NULL;
    struct statvfs fs;

    g_clear_pointer(&app->qmp, g_free);
    if (app->writable || app->own_view_key || g_atomic_int_get(&pool->qemu_as_shipped) || !app->tmpdir)
        return false;
    socket = g_build_filename(app->tmpdir, "qmp.sock", NULL);
    path = g_build_filename(app->tmpdir, "qemu", NULL);
    if (!hv || !g_path_is_absolute(hv) || strpbrk(hv, "'\n") || strpbrk(socket, "'\n") ||
        statvfs(app->tmpdir, &fs) != 0 || (fs.f_flag & ST_NOEXEC)) {
        log_info("appliance %u of domain '%s' runs without a monitor: its qemu cannot be run through a script in %s",
                  app->serial, app->group, app->tmpdir);
        return false;
    }
    opts = guest_qemu_opts_escape(socket);
    script = g_strdup_printf("#!/bin/sh\n"
                             "# Made by snapfs: appliance %u's qemu, with a monitor to add disks to it while it runs.\n"
                             "exec '%s' \"$@\" -qmp 'unix:%s,server=on,wait=off'\n", app->serial, hv, opts);
    if (!g_file_set_contents_full(path, script, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0700, &error) ||
        guestfs_set_hv(g, path) < 0) {
        log_info("appliance %u of domain '%s' runs without a monitor: %s", app->serial, app->group,
                  error ? error->message : guestfs_last_error(g));
        return false;
    }
    app->qmp = g_steal_pointer(&socket);
    return true;
}

char *guest_disk_label(const char *kind, unsigned n)
{
    g_autofree char *letters = guest_disk_letters(n);

    return g_strconcat("snapfs", kind, letters, NULL);
}

const char *guest_labelled_device(char *const *labels, const char *label)
{
    for (size_t i = 0; labels && labels[i] && labels[i + 1]; i += 2) {
        if (strcmp(labels[i], label) == 0)
            return labels[i + 1];
    }
    return NULL;
}

/* Add @app's disks to @g, each through its NBD server where it has one; -1 with the reason. */
static int appliance_add_disks(struct guest_appliance *app, guestfs_h *g)
{
    for (guint i = 0; i < app->disks->len; i++) {
        struct guest_disk_ext *ext = g_ptr_array_index(app->disks, i);
        g_autofree char *label = guest_disk_label("boot", i);
        int r;

        if (ext->disk.socket) {
            g_autofree char *server = g_strdup_printf("unix:%s", ext->disk.socket);
            const char *servers[2] = { server, NULL };

            r = guestfs_add_drive_opts(g, ext->export ? ext->export : "", GUESTFS_ADD_DRIVE_OPTS_READONLY,
                                       !ext->disk.writable,
                                       GUESTFS_ADD_DRIVE_OPTS_FORMAT, "raw",
                                       GUESTFS_ADD_DRIVE_OPTS_PROTOCOL, "nbd",
                                       GUESTFS_ADD_DRIVE_OPTS_SERVER, servers,
                                       GUESTFS_ADD_DRIVE_OPTS_LABEL, label, -1);
        } else {
            r = guestfs_add_drive_opts(g, ext->disk.file, GUESTFS_ADD_DRIVE_OPTS_READONLY, !ext->disk.writable,
                                       GUESTFS_ADD_DRIVE_OPTS_FORMAT, ext->disk.format,
                                       GUESTFS_ADD_DRIVE_OPTS_LABEL, label, -1);
        }
        if (r < 0) {
            error_set(EIO, "cannot add image '%s' to an appliance: %s", ext->disk.file, guestfs_last_error(g));
            return -1;
        }
    }
    return 0;
}

/* A handle with @app's disks added, not launched, and what of boot.c it uses; NULL with the reason. */
static guestfs_h *appliance_handle(struct guest_pool *pool, struct guest_appliance *app, bool force_tcg,
                                   unsigned *boot)
{
    g_autoptr(guestfs_h) g = appliance_new_handle(app, force_tcg);

    *boot = 0;
    if (!g)
        return NULL;
    *boot = appliance_choose_boot(pool, app, g, force_tcg);
    if (appliance_use_monitor(pool, app, g))
        *boot |= BOOT_MONITOR;
    if (appliance_add_disks(app, g) < 0)
        return NULL;
    return g_steal_pointer(&g);
}

char *guest_disk_letters(unsigned n)
{
    GString *s = g_string_new(NULL);

    do {
        g_string_prepend_c(s, (char)('a' + n % 26));
        n = n / 26;
    } while (n-- > 0);
    return g_string_free(s, FALSE);
}

const char *guest_device_suffix(const char *device, const char *whole)
{
    size_t n = strlen(whole);

    if (strncmp(device, whole, n) != 0)
        return NULL;
    for (const char *p = device + n; *p; p++) {
        if (!g_ascii_isdigit(*p))
            return NULL;
    }
    return device + n;
}

const char *guest_fs_not_shown(const char *type)
{
    static const char *const skipped[][2] = {
        { "", "not a filesystem blkid knows" },
        { "unknown", "not a filesystem blkid knows" },
        { "swap", "swap space" },
        { "LVM2_member", "an LVM physical volume" },
        { "linux_raid_member", "a RAID member: RAID arrays are not shown by snapfs yet" },
        { "crypto_LUKS", "encrypted (LUKS): snapfs has no key" },
    };

    for (size_t i = 0; i < G_N_ELEMENTS(skipped); i++) {
        if (strcmp(type, skipped[i][0]) == 0)
            return skipped[i][1];
    }
    return NULL;
}

/* blkid's type of @device, "" when it finds none (or the call failed: the caller asks guestfs_is_ready()). */
static char *appliance_vfs_type(struct guest_appliance *app, const char *device)
{
    char *type = guestfs_vfs_type(app->g, device);

    return type ? type : g_strdup("");
}

char **guest_appliance_disk_filesystems(struct guest_appliance *app, size_t index)
{
    g_autoptr(GPtrArray) found = NULL;
    const char *whole;
    char *type;

    if (index >= app->disks->len || !app->g)
        return NULL;
    if (app->disk_fs[index])
        return app->disk_fs[index];
    whole = app->devices[index];
    found = g_ptr_array_new_with_free_func(g_free);
    type = appliance_vfs_type(app, whole);
    if (*type) {
        g_ptr_array_add(found, g_strdup(whole));
        g_ptr_array_add(found, type);
    } else {
        g_free(type);
        if (!app->partitions && guestfs_is_ready(app->g))
            app->partitions = guestfs_list_partitions(app->g);
        for (size_t i = 0; app->partitions && app->partitions[i]; i++) {
            const char *suffix = guest_device_suffix(app->partitions[i], whole);

            if (suffix && *suffix) {
                g_ptr_array_add(found, g_strdup(app->partitions[i]));
                g_ptr_array_add(found, appliance_vfs_type(app, app->partitions[i]));
            }
        }
    }
    if (!guestfs_is_ready(app->g))
        return NULL;
    g_ptr_array_set_free_func(found, NULL);
    g_ptr_array_add(found, NULL);
    app->disk_fs[index] = (char **)g_ptr_array_free(g_steal_pointer(&found), FALSE);
    return app->disk_fs[index];
}

char **guest_appliance_logical_volumes(struct guest_appliance *app)
{
    g_autoptr(GPtrArray) found = NULL;
    g_auto(GStrv) lvs = NULL;

    if (!app->g)
        return NULL;
    if (app->lvs)
        return app->lvs;
    /* The appliance's init activates what it finds; this is for a volume group it did not. */
    if (guestfs_vg_activate_all(app->g, 1) < 0 && !guestfs_is_ready(app->g))
        return NULL;
    lvs = guestfs_lvs(app->g);
    if (!lvs && !guestfs_is_ready(app->g))
        return NULL;
    found = g_ptr_array_new_with_free_func(g_free);
    for (size_t i = 0; lvs && lvs[i]; i++) {
        g_ptr_array_add(found, g_strdup(lvs[i]));
        g_ptr_array_add(found, appliance_vfs_type(app, lvs[i]));
    }
    if (!guestfs_is_ready(app->g))
        return NULL;
    g_ptr_array_set_free_func(found, NULL);
    g_ptr_array_add(found, NULL);
    app->lvs = (char **)g_ptr_array_free(g_steal_pointer(&found), FALSE);
    return app->lvs;
}

/*
 * Before the first launch (not at mount: a mount that never looks at guest files says nothing of KVM):
 * where KVM failed an appliance of an earlier snapfs of this boot, TCG at once (kvm.c).
 */
static void pool_kvm_check(struct guest_pool *pool)
{
    if (!g_once_init_enter(&pool->kvm_checked))
        return;
    if (!g_atomic_int_get(&pool->force_tcg)) {
        /* The qemu libguestfs runs (LIBGUESTFS_HV or its own): what the verdict is about. */
        guestfs_h *probe = guestfs_create_flags(0);

        if (probe) {
            pool->hv = guestfs_get_hv(probe);   /* malloc'd, the caller's */
            guestfs_close(probe);
        }
        g_autofree char *before = guest_kvm_failed_before(pool->hv);

        if (before) {
            log_info("appliances start on TCG: KVM failed an appliance of an earlier snapfs of this boot: %s", before);
            g_atomic_int_set(&pool->force_tcg, 1);
        }
    }
    g_once_init_leave(&pool->kvm_checked, 1);
}

/*
 * A launched handle of @app's disks, on KVM first where it may be tried, and what of boot.c it uses in
 * @boot; NULL with the reason.  At most: KVM fails, TCG as snapfs boots it fails, TCG as libguestfs boots it.
 */
static guestfs_h *appliance_boot(struct guest_pool *pool, struct guest_appliance *app, unsigned *boot)
{
    g_autoptr(guestfs_h) g = NULL;
    g_autofree char *kvm_failed = NULL;

    for (int attempt = 0; attempt < 3 && !g; attempt++) {
        bool tcg = g_atomic_int_get(&pool->force_tcg);

        g = appliance_handle(pool, app, tcg, boot);
        if (!g)
            return NULL;
        /* Nobody waits for a background launch: a chain change calls it off rather than wait for it. */
        if (guest_launch(g, app->launch_dir, !tcg, &pool->config.limits, app->background ? &app->stop : &pool->aborting,
                         NULL) == 0)
            break;
        g_clear_pointer(&g, guestfs_close);
        if (g_atomic_int_get(&pool->aborting) || g_atomic_int_get(&app->stop))
            return NULL;
        /*
         * A KVM that fails at start (nested, broken MSRs) or runs no guest at all, while TCG works:
         * TCG from now on, said once.
         */
        if (!tcg) {
            log_warn("appliance %u of domain '%s': %s; trying again without KVM, and every appliance from now on",
                        app->serial, app->group, error_message());
            g_atomic_int_set(&pool->force_tcg, 1);
            kvm_failed = g_strdup(error_message());
        } else if (*boot) {
            log_warn("appliance %u of domain '%s': %s; trying again with libguestfs's kernel and qemu as they are",
                        app->serial, app->group, error_message());
            g_atomic_int_set(&pool->kernel_as_shipped, 1);
            g_atomic_int_set(&pool->qemu_as_shipped, 1);
        } else {
            return NULL;
        }
    }
    if (!g)
        return NULL;
    /* KVM failed and TCG did not: that was KVM's fault, for every later snapfs of this boot too. */
    if (kvm_failed)
        guest_kvm_remember_failed(pool->hv, kvm_failed);
    return g_steal_pointer(&g);
}

/*
 * Each disk's device, by the label it was added with (its SCSI serial, which the appliance's udev links
 * under /dev/disk/guestfs/): not by the order libguestfs added them in, which the kernel keeps only as long as
 * it probes the disks one at a time (a boot of 31 disks on two vCPUs named the last one after the appliance's
 * own root).  Their filesystems are probed when a view first needs them: guestfs_list_filesystems() would wait
 * for udev and run blkid on every disk and LVM on all of them, seconds under TCG.  -1 with the reason.
 */
static int appliance_name_devices(struct guest_appliance *app, guestfs_h *g)
{
    g_auto(GStrv) labels = guestfs_list_disk_labels(g);

    app->devices = g_new0(char *, app->disks->len + 1);
    app->disk_fs = g_new0(char **, app->disks->len);
    for (guint i = 0; i < app->disks->len; i++) {
        g_autofree char *label = guest_disk_label("boot", i);
        const char *device = guest_labelled_device(labels, label);

        if (!device || !g_str_has_prefix(device, "/dev/sd")) {
            error_set(EIO, "appliance %u of domain '%s' does not show disk %u (%s) by its label: %s", app->serial,
                      app->group, i, ((struct guest_disk *)g_ptr_array_index(app->disks, i))->file,
                      labels ? "missing" : guestfs_last_error(g));
            return -1;
        }
        app->devices[i] = g_strdup(device);
    }
    return 0;
}

int guest_appliance_launch(struct guest_pool *pool, struct guest_appliance *app)
{
    g_autoptr(guestfs_h) g = NULL;
    gint64 started = g_get_monotonic_time();
    unsigned boot = 0;

    g_mutex_lock(&pool->lock);
    app->launching = true;
    app->launch_started = started;
    g_mutex_unlock(&pool->lock);
    log_info("starting appliance %u of domain '%s' with %u disks", app->serial, app->group, app->disks->len);

    pool_kvm_check(pool);
    if (guest_nbd_start_servers(pool, app) < 0)
        goto fail;
    log_debug("appliance %u of domain '%s': images served after %.2f s", app->serial, app->group,
                 (double)(g_get_monotonic_time() - started) / G_USEC_PER_SEC);
    g = appliance_boot(pool, app, &boot);
    if (!g)
        goto fail;
    app->qemu_pid = guestfs_get_pid(g);
    if (boot & BOOT_UNPACKED)
        guest_boot_release(app->qemu_pid, guestfs_get_path(g));
    log_debug("appliance %u of domain '%s': booted after %.2f s", app->serial, app->group,
                 (double)(g_get_monotonic_time() - started) / G_USEC_PER_SEC);
    if (appliance_name_devices(app, g) < 0)
        goto fail;
    if (app->qmp) {
        g_autoptr(JsonNode) status = json_from_string("{\"execute\": \"query-status\"}", NULL);
        bool answers = guest_qmp(app->qmp, status, GUEST_QMP_TIMEOUT_MS, NULL) == 0;

        if (!answers)
            log_info("appliance %u of domain '%s' takes no disks once up: %s", app->serial, app->group,
                     error_message());
        g_atomic_int_set(&app->takes_disks, answers);
    }
    app->g = g_steal_pointer(&g);
    app->launched = true;
    g_mutex_lock(&pool->lock);
    if (boot & BOOT_UNPACKED) {
        g_free(pool->boot_path);
        pool->boot_path = g_strdup(guestfs_get_path(app->g));
    }
    pool->stats.launches++;
    app->launch_started = 0;
    g_mutex_unlock(&pool->lock);
    log_info("appliance %u of domain '%s' started with %u disks in %.1f s", app->serial, app->group,
                app->disks->len, (double)(g_get_monotonic_time() - started) / G_USEC_PER_SEC);
    return 0;

fail:
    log_warn("appliance %u of domain '%s': %s", app->serial, app->group, error_message());
    g_atomic_int_set(&app->dead, 1);
    g_mutex_lock(&pool->lock);
    app->launch_started = 0;
    g_mutex_unlock(&pool->lock);
    return -1;
}

void guest_appliance_error(struct guest_appliance *app, const char *what, const char *path)
{
    int err = guestfs_last_errno(app->g);
    const char *message = guestfs_last_error(app->g);

    if (!guestfs_is_ready(app->g)) {
        const char *killed = g_atomic_pointer_get(&app->killed);

        g_atomic_int_set(&app->dead, 1);
        if (killed)
            error_set(EIO, "cannot %s '%s': %s", what, path, killed);
        else
            error_set(EIO, "cannot %s '%s': the appliance of domain '%s' stopped (%s)", what, path,
                             app->group, message ? message : "qemu exited");
        log_warn("appliance %u of domain '%s': %s", app->serial, app->group, error_message());
        return;
    }
    error_set(err > 0 ? err : EIO, "cannot %s '%s' in the guest: %s", what, path, message ? message : "unknown error");
}

/* @items names (a listing): a second more per thousand of them (a stat and its xattrs each, under TCG). */
void guest_appliance_expect(struct guest_pool *pool, struct guest_appliance *app, size_t items)
{
    guest_store64(&app->call_deadline, g_get_monotonic_time() +
                                           (gint64)pool->config.limits.call_seconds * G_USEC_PER_SEC +
                                           (gint64)(items / 1000) * G_USEC_PER_SEC);
}

void guest_appliance_busy(struct guest_pool *pool, struct guest_appliance *app)
{
    guest_appliance_expect(pool, app, 0);
    g_mutex_lock(&pool->lock);
    pool->stats.calls++;
    g_mutex_unlock(&pool->lock);
}

void guest_appliance_idle(struct guest_appliance *app)
{
    gint64 now = g_get_monotonic_time();

    guest_store64(&app->call_deadline, 0);
    guest_store64(&app->last_used, now);
}

/* Kill @app's qemu now, from any thread: the call in flight fails and says @why (taken); @warn logs it. */
void guest_appliance_kill(struct guest_appliance *app, char *why, bool warn)
{
    if (!g_atomic_pointer_compare_and_exchange(&app->killed, NULL, why))
        g_free(why);
    else if (warn)
        log_warn("%s", why);
    else
        log_debug("%s", why);
    g_atomic_int_set(&app->dead, 1);
    if (app->qemu_pid > 0)
        kill(app->qemu_pid, SIGKILL);
}

