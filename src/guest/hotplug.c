/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Adding a view's disks to its domain's running appliance, through qemu's monitor. */
#include "guest-priv.h"

#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/spawn.h"

#include <errno.h>
#include <string.h>

/*
 * Why: every disk an appliance boots with costs its boot (udev, blkid, LVM and mdadm look at each one), so a domain
 * with a month of snapshots would boot for half a minute before its first look.  An appliance boots with the disks of
 * the view asked for and of a few likely neighbours (pool.c); a view asked for later is plugged into the running
 * appliance as one more SCSI disk, which the appliance's kernel finds in about a second.
 *
 * How: the image is opened in the appliance's qemu as qemu-storage-daemon opens the boot disks' images (nbd.c):
 * read-only, shared with a running domain, not locked, in the format libvirt names.  Writes the appliance makes (a
 * journal replayed, which snapfs's mount options avoid) go to an overlay of its own in the appliance's directory, as
 * libguestfs gives each boot disk; its size is the image's as its header says (read with its chain, as for any disk
 * of an appliance).  The disk is known in the appliance by its SCSI serial, a label of its own, as the boot disks are
 * (appliance.c), never by the name the kernel happens to give it.
 */

/* Member @name: the string @value. */
static void add_string(JsonBuilder *b, const char *name, const char *value)
{
    json_builder_set_member_name(b, name);
    json_builder_add_string_value(b, value);
}

/* {"execute": @execute, "arguments": @arguments (taken; may be NULL)} */
static JsonNode *qmp_command(const char *execute, JsonNode *arguments)
{
    g_autoptr(JsonBuilder) b = json_builder_new();

    json_builder_begin_object(b);
    add_string(b, "execute", execute);
    if (arguments) {
        json_builder_set_member_name(b, "arguments");
        json_builder_add_value(b, arguments);
    }
    json_builder_end_object(b);
    return json_builder_get_root(b);
}

static int qmp_run(struct guest_appliance *app, const char *execute, JsonNode *arguments, JsonNode **ret)
{
    g_autoptr(JsonNode) command = qmp_command(execute, arguments);

    return guest_qmp(app->qmp, command, GUEST_QMP_TIMEOUT_MS, ret);
}

/*
 * A block node of @driver named @name over the host file @file (unlocked where @unlocked, so that a running domain
 * and a commit into the image go on), with @backing below it where not NULL, read-only and shared where @read_only.
 */
static JsonNode *block_node(const char *driver, const char *name, const char *file, bool unlocked, const char *backing,
                            bool read_only)
{
    g_autoptr(JsonBuilder) b = json_builder_new();

    json_builder_begin_object(b);
    add_string(b, "driver", driver);
    add_string(b, "node-name", name);
    if (read_only) {
        json_builder_set_member_name(b, "read-only");
        json_builder_add_boolean_value(b, TRUE);
        json_builder_set_member_name(b, "force-share");
        json_builder_add_boolean_value(b, TRUE);
    }
    json_builder_set_member_name(b, "file");
    json_builder_begin_object(b);
    add_string(b, "driver", "file");
    add_string(b, "filename", file);
    if (unlocked)
        add_string(b, "locking", "off");
    json_builder_end_object(b);
    if (backing)
        add_string(b, "backing", backing);
    json_builder_end_object(b);
    return json_builder_get_root(b);
}

/* A SCSI disk of node @drive, whose serial @label the appliance's udev links under /dev/disk/guestfs/. */
static JsonNode *device_args(const char *id, const char *drive, const char *label)
{
    g_autoptr(JsonBuilder) b = json_builder_new();

    json_builder_begin_object(b);
    add_string(b, "driver", "scsi-hd");
    add_string(b, "id", id);
    add_string(b, "drive", drive);
    add_string(b, "serial", label);
    /* libguestfs's virtio-scsi controller is "scsi": its bus is scsi.0. */
    add_string(b, "bus", "scsi.0");
    json_builder_end_object(b);
    return json_builder_get_root(b);
}

/* An empty qcow2 file of @size bytes at @path, made with qemu-img within its deadline; -1 with the reason. */
static int overlay_create(const char *path, gint64 size)
{
    g_autofree char *bytes = g_strdup_printf("%" G_GINT64_FORMAT, size);
    const char *argv[] = { "qemu-img", "create", "-q", "-f", "qcow2", path, bytes, NULL };
    g_autofree char *err = NULL;
    int status;

    if (spawn_sync(argv, SPAWN_TOOL_TIMEOUT_S, NULL, &err, &status) < 0)
        return -1;
    if (!g_spawn_check_wait_status(status, NULL)) {
        error_set(EIO, "qemu-img could not make an overlay: %s", err ? g_strstrip(err) : "");
        return -1;
    }
    return 0;
}

/*
 * Plug @ext, an image of @size bytes (its header's, read with its chain), into @app and wait for the appliance to see
 * it; its device name, or NULL with the reason.
 */
static char *hot_add_one(struct guest_pool *pool, struct guest_appliance *app, struct guest_disk_ext *ext, gint64 size)
{
    unsigned n = ++app->hot_serial;
    g_autofree char *base = g_strdup_printf("snapfs-image%u", n), *top = g_strdup_printf("snapfs-overlay%u", n);
    g_autofree char *id = g_strdup_printf("snapfs-disk%u", n);
    g_autofree char *overlay = g_strdup_printf("%s/overlay%u.qcow2", app->tmpdir, n);
    g_autofree char *label = guest_disk_label("plug", n);
    gint64 deadline, started = g_get_monotonic_time(), plugged;

    if (size <= 0) {
        error_set(EIO, "the size of image '%s' is not known", ext->disk.file);
        return NULL;
    }
    /* The image, in the format libvirt named (never probed); above it the overlay; then the disk of the overlay. */
    if (overlay_create(overlay, size) < 0 ||
        qmp_run(app, "blockdev-add", block_node(ext->disk.format, base, ext->disk.file, true, NULL, true), NULL) < 0 ||
        qmp_run(app, "blockdev-add", block_node("qcow2", top, overlay, false, base, false), NULL) < 0 ||
        qmp_run(app, "device_add", device_args(id, top, label), NULL) < 0)
        return NULL;
    plugged = g_get_monotonic_time();
    /* The kernel scans the new target, and udev links its serial: a second or so under TCG. */
    deadline = g_get_monotonic_time() + (gint64)pool->config.limits.call_seconds * G_USEC_PER_SEC;
    for (;;) {
        g_auto(GStrv) labels = guestfs_list_disk_labels(app->g);
        const char *device = guest_labelled_device(labels, label);

        if (!labels && !guestfs_is_ready(app->g)) {
            guest_appliance_error(app, "list the disks of", app->group);
            return NULL;
        }
        if (device && (!g_str_has_prefix(device, "/dev/sd") ||
                       g_strv_contains((const char *const *)app->devices, device))) {
            error_set(EIO, "appliance %u shows the disk added to it as %s, which it had", app->serial, device);
            return NULL;
        }
        if (device) {
            log_debug("appliance %u of domain '%s': image '%s' plugged in after %.2f s, seen after %.2f s more",
                      app->serial, app->group, ext->disk.file, (double)(plugged - started) / G_USEC_PER_SEC,
                      (double)(g_get_monotonic_time() - plugged) / G_USEC_PER_SEC);
            return g_strdup(device);
        }
        if (g_get_monotonic_time() > deadline || g_atomic_int_get(&app->dead)) {
            error_set(EIO, "appliance %u did not see the disk added to it within %u s", app->serial,
                      pool->config.limits.call_seconds);
            return NULL;
        }
        g_usleep(100 * 1000);
    }
}

int guest_appliance_hot_add(struct guest_pool *pool, struct guest_appliance *app, struct guest_view *view)
{
    for (size_t i = 0; i < view->n_drives; i++) {
        const struct guest_drive *drive = &view->drives[i];
        bool live = view->live && !drive->internal_snapshot;
        g_autofree char *key = guest_drive_key(drive, live), *device = NULL;
        g_autoptr(GPtrArray) chain = NULL;
        struct guest_disk_ext *ext;
        gint64 started = g_get_monotonic_time();

        if (guest_appliance_find_disk(app, key) >= 0)
            continue;
        if (!g_atomic_int_get(&app->takes_disks) || !app->g || drive->internal_snapshot) {
            error_set(ENOTSUP, "appliance %u cannot take image '%s' while it runs", app->serial, drive->file);
            return -1;
        }
        ext = guest_disk_new(app, drive, live, &chain);
        if (!ext) {
            error_set(EIO, "image '%s' cannot be read: %s", drive->file, error_message());
            return -1;
        }
        guest_appliance_expect(pool, app, 0);
        device = hot_add_one(pool, app, ext,
                             (gint64)((struct snapfs_layer *)g_ptr_array_index(chain, chain->len - 1))->virtual_size);
        if (!device) {
            /* A half-added disk may still appear: the next new device would then be taken for the wrong one. */
            log_warn("appliance %u of domain '%s' could not take image '%s' (%s): it takes no more disks",
                     app->serial, app->group, drive->file, error_message());
            g_atomic_int_set(&app->takes_disks, 0);
            guest_disk_free(ext);
            return -1;
        }
        g_mutex_lock(&pool->lock);
        g_ptr_array_add(app->disks, ext);
        app->devices = g_renew(char *, app->devices, app->disks->len + 1);
        app->devices[app->disks->len - 1] = g_steal_pointer(&device);
        app->devices[app->disks->len] = NULL;
        app->disk_fs = g_renew(char **, app->disk_fs, app->disks->len);
        app->disk_fs[app->disks->len - 1] = NULL;
        pool->stats.disks_added++;
        g_mutex_unlock(&pool->lock);
        /* What was learnt of the disks before is incomplete now. */
        g_clear_pointer(&app->partitions, g_strfreev);
        g_clear_pointer(&app->roots, g_strfreev);
        log_info("appliance %u of domain '%s' took image '%s' as %s in %.1f s (%u disks)", app->serial, app->group,
                 drive->file, app->devices[app->disks->len - 1],
                 (double)(g_get_monotonic_time() - started) / G_USEC_PER_SEC, app->disks->len);
    }
    return 0;
}
