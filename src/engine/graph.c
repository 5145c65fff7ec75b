/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The graph of every image the connection's domains and snapshots reach (struct engine_images), read fail-closed. */
#include "engine-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/virt.h"

#include <errno.h>
#include <libvirt/virterror.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/*
 * Fail closed: who needs an image is read from every domain's disks (live
 * and persistent) and every snapshot of every domain, down each chain by the
 * images' headers.  Whatever cannot be read (a libvirt call, a snapshot's
 * XML, a header) makes the whole answer unknown, and callers refuse to
 * unlink or merge anything rather than guess that nobody needs it.  Only a
 * domain or snapshot that vanished between listing and reading is skipped:
 * it needs nothing any more.
 */

/* A disk or a snapshot's image: where a chain that somebody reads starts. */
struct image_root {
    char *file;
    char *domain;
    char *user;     /* "disk vda of domain 'web02'", "snapshot 's1' of domain 'web02'" */
};

static void image_root_free(gpointer data)
{
    struct image_root *root = data;

    g_free(root->file);
    g_free(root->domain);
    g_free(root->user);
    g_free(root);
}

void engine_images_free(struct engine_images *images)
{
    if (!images)
        return;
    g_hash_table_unref(images->backing);
    g_hash_table_unref(images->tops);
    g_hash_table_unref(images->named);
    g_ptr_array_unref(images->roots);
    g_free(images);
}

struct engine_images *engine_images_new(void)
{
    struct engine_images *images = g_new0(struct engine_images, 1);

    images->backing = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    images->tops = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    images->named = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    images->roots = g_ptr_array_new_with_free_func(image_root_free);
    return images;
}

/* Backing names that are not local files (nbd:, json:{...}, http://...) end what can be followed here. */
static bool backing_is_protocol(const char *backing)
{
    const char *colon = strchr(backing, ':');
    const char *slash = strchr(backing, '/');

    return colon && (!slash || colon < slash);
}

/* EIO for what cannot be read, but ENOTSUP stays ENOTSUP: a format recorded nowhere is a refusal with its own reason. */
static int graph_failure_errno(void)
{
    return error_errno() == ENOTSUP ? ENOTSUP : EIO;
}

int engine_images_add_chain(struct engine_images *images, const char *file, const char *format)
{
    g_autofree char *cur = g_strdup(file);
    g_autofree char *fmt = g_strdup(format);

    /* One header at a time, so that a chain shared by many snapshots is read once. */
    for (int depth = 0; cur; depth++) {
        struct snapfs_layer *layer;
        char *below = NULL;

        if (g_hash_table_contains(images->backing, cur))
            return 0;
        if (depth >= 256) {
            error_set(EIO, "the backing chain of '%s' is deeper than 256 images", file);
            return -1;
        }
        layer = chain_read_layer(cur, fmt);
        if (!layer) {
            /* What an unreadable image stands on is unknown: nothing below it may be taken for unneeded. */
            error_set(graph_failure_errno(), "%s", error_message());
            return -1;
        }
        if (layer->backing && !backing_is_protocol(layer->backing))
            below = chain_resolve(cur, layer->backing);
        g_hash_table_insert(images->backing, g_strdup(cur), g_strdup(below ? below : ""));
        g_free(fmt);
        fmt = g_strdup(layer->backing_format);
        chain_layer_free(layer);
        g_free(cur);
        cur = below;
    }
    return 0;
}

GPtrArray *engine_chain_files(const char *top, const char *format)
{
    struct engine_images *images = engine_images_new();
    GPtrArray *files = g_ptr_array_new_with_free_func(g_free);
    const char *cur = top;

    /* What was read before an unreadable image is still the chain as far as it is known. */
    if (engine_images_add_chain(images, top, format) < 0)
        log_debug("cannot read the whole chain of '%s': %s", top, error_message());
    g_ptr_array_add(files, g_strdup(top));
    for (cur = g_hash_table_lookup(images->backing, top); cur && *cur && files->len < 256;
         cur = g_hash_table_lookup(images->backing, cur))
        g_ptr_array_add(files, g_strdup(cur));
    engine_images_free(images);
    return files;
}

/*
 * @file (of @format) and the chain below it, as the image disk @target of
 * @domain runs on (@snapshot NULL) or as one snapshot @snapshot names: a
 * root of the graph.  -1 with the reason if a header cannot be read.
 */
static int images_add_root(struct engine_images *images, const char *file, const char *format, const char *domain,
                           const char *snapshot, const char *target)
{
    struct image_root *root;
    char *user = snapshot ? g_strdup_printf("snapshot '%s' of domain '%s' (disk %s)", snapshot, domain, target)
                          : g_strdup_printf("disk %s of domain '%s'", target, domain);

    if (engine_images_add_chain(images, file, format) < 0) {
        error_set(graph_failure_errno(), "cannot tell what %s stands on: %s", user, error_message());
        g_free(user);
        return -1;
    }
    if (snapshot)
        g_hash_table_insert(images->named, g_strdup(file), g_strdup_printf("%s/%s", domain, snapshot));
    else
        g_hash_table_insert(images->tops, g_strdup(file), g_strdup_printf("%s %s", domain, target));
    root = g_new0(struct image_root, 1);
    root->file = g_strdup(file);
    root->domain = g_strdup(domain);
    root->user = user;
    g_ptr_array_add(images->roots, root);
    return 0;
}

static int images_add_disks(struct engine_images *images, GPtrArray *disks, const char *domain,
                            const char *snapshot)
{
    for (guint i = 0; i < disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(disks, i);

        if (!disk->file || strcmp(disk->type, "network") == 0)
            continue;
        if (images_add_root(images, disk->file, disk->format, domain, snapshot, disk->target) < 0)
            return -1;
    }
    return 0;
}

/* Libvirt's last error as the reason of a failed read; true where the object vanished meanwhile (nothing to read). */
static bool images_virt_failed(int gone_code, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static bool images_virt_failed(int gone_code, const char *fmt, ...)
{
    g_autofree char *what = NULL;
    va_list ap;

    if (virGetLastErrorCode() == gone_code)
        return true;
    va_start(ap, fmt);
    what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    error_set(EIO, "%s: %s", what, virGetLastErrorMessage());
    return false;
}

/*
 * libvirt's own revert (libvirt 9.9 and later) unlinks the overlays of the snapshot the domain leaves, the state
 * it discards, and keeps naming them in that snapshot's metadata.  Such an overlay is missing, and nothing can
 * stand on a file that is not there: what the snapshot froze is its <domain>'s disk, which is read as ever.  Any
 * other failure to read the overlay's chain still fails closed.
 */
static bool snapshot_overlay_discarded(const struct engine_snapshot_info *info, const struct snapfs_snapshot_disk *disk)
{
    struct snapfs_disk *then = xml_disk_find(info->domain_disks, disk->target);
    struct stat st;

    return then && then->file && strcmp(then->file, disk->file) != 0 && lstat(disk->file, &st) < 0 &&
           errno == ENOENT && lstat(then->file, &st) == 0;
}

static int images_add_snapshot(struct engine_images *images, virDomainSnapshotPtr snap, const char *domain)
{
    const char *snap_name = virDomainSnapshotGetName(snap);
    g_autofree char *xml = virDomainSnapshotGetXMLDesc(snap, 0);
    struct engine_snapshot_info *info;
    int ret = -1;

    if (!xml)
        return images_virt_failed(VIR_ERR_NO_DOMAIN_SNAPSHOT, "cannot read snapshot '%s' of domain '%s'",
                                  snap_name, domain) ? 0 : -1;
    info = engine_parse_snapshot(xml);
    if (!info || !info->domain_disks) {
        error_set(EIO, "cannot parse snapshot '%s' of domain '%s'", snap_name, domain);
        goto cleanup;
    }
    for (guint d = 0; d < info->disks->len; d++) {
        struct snapfs_snapshot_disk *disk = g_ptr_array_index(info->disks, d);

        if (!disk->file || strcmp(disk->kind, "external") != 0)
            continue;
        if (snapshot_overlay_discarded(info, disk)) {
            log_debug("snapshot '%s' of domain '%s' (disk %s): its overlay '%s' was discarded by a revert; what "
                         "it froze is read from the snapshot's domain", snap_name, domain, disk->target, disk->file);
            continue;
        }
        if (images_add_root(images, disk->file, disk->format, domain, snap_name, disk->target) < 0)
            goto cleanup;
    }
    /* The domain as it was: for an internal snapshot, the images that hold it. */
    ret = images_add_disks(images, info->domain_disks, domain, snap_name);

cleanup:
    engine_snapshot_info_free(info);
    return ret;
}

static int images_add_domain(struct engine_images *images, virDomainPtr dom, const char *skip_domain,
                             const char *skip_snapshot)
{
    const char *name = virDomainGetName(dom);
    virDomainSnapshotPtr *snaps = NULL;
    int n, ret = 0;

    /* Live (the same as persistent when shut off) and persistent: a domain that starts or stops meanwhile is seen. */
    for (int inactive = 0; inactive < 2; inactive++) {
        g_autofree char *xml = virDomainGetXMLDesc(dom, inactive ? VIR_DOMAIN_XML_INACTIVE : 0);
        GPtrArray *disks;

        if (!xml)
            return images_virt_failed(VIR_ERR_NO_DOMAIN, "cannot read the XML of domain '%s'", name) ? 0 : -1;
        disks = engine_parse_disks(xml, false);
        if (!disks) {
            error_set(EIO, "cannot parse the XML of domain '%s'", name);
            return -1;
        }
        ret = images_add_disks(images, disks, name, NULL);
        g_ptr_array_unref(disks);
        if (ret < 0)
            return -1;
    }
    n = virDomainListAllSnapshots(dom, &snaps, 0);
    if (n < 0)
        return images_virt_failed(VIR_ERR_NO_DOMAIN, "cannot list the snapshots of domain '%s'", name) ? 0 : -1;
    for (int i = 0; i < n; i++) {
        g_autoptr(virDomainSnapshot) snap = snaps[i];
        const char *snap_name = virDomainSnapshotGetName(snap);

        if (ret == 0 && !(skip_snapshot && strcmp(name, skip_domain) == 0 && strcmp(snap_name, skip_snapshot) == 0))
            ret = images_add_snapshot(images, snap, name);
    }
    free(snaps);
    return ret;
}

struct engine_images *engine_images_collect(virConnectPtr conn, const char *domain, const char *skip_snapshot,
                                            const char *what)
{
    struct engine_images *images = engine_images_new();
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(conn, &doms, 0);
    int ret = 0;

    if (n < 0) {
        error_set(EIO, "%s: cannot list the domains to see which images they use: %s", what,
                         virGetLastErrorMessage());
        engine_images_free(images);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        g_autoptr(virDomain) dom = doms[i];

        if (ret == 0 && images_add_domain(images, dom, domain, skip_snapshot) < 0)
            ret = -1;
    }
    free(doms);
    if (ret < 0) {
        error_set(graph_failure_errno(), "%s: %s; snapfs changes nothing while it cannot tell which images are needed",
                         what, error_message());
        engine_images_free(images);
        return NULL;
    }
    return images;
}

bool engine_images_reachable(struct engine_images *images, const char *file)
{
    GHashTableIter iter;
    gpointer key;
    GHashTable *roots[] = { images->tops, images->named };

    for (size_t r = 0; r < G_N_ELEMENTS(roots); r++) {
        g_hash_table_iter_init(&iter, roots[r]);
        while (g_hash_table_iter_next(&iter, &key, NULL)) {
            const char *cur = key;

            for (int depth = 0; cur && *cur && depth < 256; depth++) {
                if (strcmp(cur, file) == 0)
                    return true;
                cur = g_hash_table_lookup(images->backing, cur);
            }
        }
    }
    return false;
}

char *engine_images_user(struct engine_images *images, const char *file, const char *except_domain)
{
    for (guint i = 0; i < images->roots->len; i++) {
        struct image_root *root = g_ptr_array_index(images->roots, i);
        const char *cur = root->file;

        if (except_domain && strcmp(root->domain, except_domain) == 0)
            continue;
        for (int depth = 0; cur && *cur && depth < 256; depth++) {
            if (strcmp(cur, file) == 0)
                return g_strdup(root->user);
            cur = g_hash_table_lookup(images->backing, cur);
        }
    }
    return NULL;
}

const char **engine_images_dependents(struct engine_images *images, const char *file)
{
    GPtrArray *out = g_ptr_array_new();
    GHashTableIter iter;
    gpointer key, value;

    g_hash_table_iter_init(&iter, images->backing);
    while (g_hash_table_iter_next(&iter, &key, &value))
        if (strcmp(value, file) == 0)
            g_ptr_array_add(out, key);
    g_ptr_array_add(out, NULL);
    return (const char **)g_ptr_array_free(out, FALSE);
}
