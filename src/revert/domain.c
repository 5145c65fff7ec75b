/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The domain and its snapshots as revert sees them (read from libvirt's XML), and the XML revert gives libvirt. */
#include "revert-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/virt.h"

#include <errno.h>
#include <libvirt/virterror.h>
#include <string.h>

/* ---- what libvirt says about the domain --------------------------------------- */


static void revert_snapshot_free(struct revert_snapshot *snap)
{
    g_free(snap->name);
    g_free(snap->xml);
    g_hash_table_unref(snap->overlay);
    g_hash_table_unref(snap->frozen);
    g_hash_table_unref(snap->frozen_format);
    g_hash_table_unref(snap->overlay_format);
    if (snap->domain_disks)
        g_ptr_array_unref(snap->domain_disks);
    g_free(snap);
}


void revert_state_free(struct revert_state *st)
{
    if (!st)
        return;
    if (st->dom)
        virDomainFree(st->dom);
    g_free(st->uri);
    g_free(st->name);
    g_free(st->label);
    g_free(st->uuid);
    g_free(st->xml);
    if (st->disks)
        g_ptr_array_unref(st->disks);
    if (st->snaps)
        g_ptr_array_unref(st->snaps);
    g_free(st->current);
    g_free(st);
}

/* What the external disk @node of a snapshot's <disks> made (its overlay) and froze, recorded in @snap. */
static void revert_snapshot_add_disk(struct revert_snapshot *snap, xmlXPathContextPtr ctxt, xmlNodePtr node)
{
    g_autofree char *target = xml_string(ctxt, node, "string(@name)");
    g_autofree char *kind = xml_string(ctxt, node, "string(@snapshot)");
    g_autofree char *file = xml_string(ctxt, node, "string(source/@file)");
    g_autofree char *file_format = xml_string(ctxt, node, "string(driver/@type)");
    g_autofree char *frozen = NULL;
    g_autofree char *frozen_format = NULL;
    struct snapfs_disk *then;

    if (!target || !kind || strcmp(kind, "external") != 0)
        return;
    snap->external = true;
    if (!file)
        return;
    /* What the snapshot froze: its overlay's backing, or else the disk of the domain as it was. */
    frozen = revert_image_backing(file, file_format, &frozen_format);
    then = snap->domain_disks ? xml_disk_find(snap->domain_disks, target) : NULL;
    if (!frozen && then && then->file) {
        frozen = g_strdup(then->file);
        frozen_format = g_strdup(then->format);
    }
    /* Formats only as libvirt or the overlay recorded them: the domain as it was says it for its own disk. */
    if (frozen && !frozen_format && then && then->file && strcmp(then->file, frozen) == 0)
        frozen_format = g_strdup(then->format);
    if (file_format)
        g_hash_table_insert(snap->overlay_format, g_strdup(target), g_steal_pointer(&file_format));
    g_hash_table_insert(snap->overlay, g_strdup(target), g_steal_pointer(&file));
    if (frozen) {
        if (frozen_format)
            g_hash_table_insert(snap->frozen_format, g_strdup(target), g_steal_pointer(&frozen_format));
        g_hash_table_insert(snap->frozen, g_strdup(target), g_steal_pointer(&frozen));
    }
}

static struct revert_snapshot *revert_snapshot_parse(const char *name, char *xml)
{
    struct revert_snapshot *snap = g_new0(struct revert_snapshot, 1);
    g_autoptr(xmlXPathContext) ctxt = NULL;
    g_autoptr(xmlDoc) doc = xml_read(xml, &ctxt);
    g_autoptr(GPtrArray) nodes = NULL;

    snap->name = g_strdup(name);
    snap->xml = xml;
    snap->overlay = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    snap->frozen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    snap->frozen_format = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    snap->overlay_format = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    if (!doc) {
        revert_snapshot_free(snap);
        return NULL;
    }
    snap->domain_disks = xml_disks(ctxt, "/domainsnapshot/domain");
    nodes = xml_nodes(ctxt, "/domainsnapshot/disks/disk");
    for (guint i = 0; i < nodes->len; i++)
        revert_snapshot_add_disk(snap, ctxt, g_ptr_array_index(nodes, i));
    return snap;
}

struct revert_snapshot *revert_state_snapshot(struct revert_state *st, const char *name)
{
    for (guint i = 0; name && i < st->snaps->len; i++) {
        struct revert_snapshot *snap = g_ptr_array_index(st->snaps, i);

        if (strcmp(snap->name, name) == 0)
            return snap;
    }
    return NULL;
}

/* The disks of the domain definition @xml, or NULL if it is not XML. */
static GPtrArray *revert_domain_disks_parse(const char *xml)
{
    g_autoptr(xmlXPathContext) ctxt = NULL;
    g_autoptr(xmlDoc) doc = xml_read(xml, &ctxt);

    return doc ? xml_disks(ctxt, "/domain") : NULL;
}

/*
 * One snapshot of @st's domain read into @st->snaps (and @st->current); false
 * with the reason recorded, unless @failed says one is recorded already.
 * A snapshot gone meanwhile (VIR_ERR_NO_DOMAIN_SNAPSHOT) is left out.
 */
static bool revert_state_add_snapshot(struct revert_state *st, virDomainSnapshotPtr handle, bool failed)
{
    const char *snap_name = virDomainSnapshotGetName(handle);
    char *xml = virDomainSnapshotGetXMLDesc(handle, VIR_DOMAIN_SNAPSHOT_XML_SECURE);
    int cur = xml ? virDomainSnapshotIsCurrent(handle, 0) : -1;
    struct revert_snapshot *snap = NULL;

    if (!xml || cur < 0) {
        if (virGetLastErrorCode() != VIR_ERR_NO_DOMAIN_SNAPSHOT && !failed)
            error_set(EIO, "cannot read snapshot '%s' of domain '%s': %s", snap_name, st->name,
                             virGetLastErrorMessage());
        g_free(xml);
        return virGetLastErrorCode() == VIR_ERR_NO_DOMAIN_SNAPSHOT;
    }
    if (!(snap = revert_snapshot_parse(snap_name, xml))) {
        if (!failed)
            error_set(EIO, "cannot parse snapshot '%s' of domain '%s'", snap_name, st->name);
        return false;
    }
    g_ptr_array_add(st->snaps, snap);
    if (cur == 1)
        st->current = g_strdup(snap_name);
    return true;
}

/* The domain, its persistent definition and every snapshot; NULL with the reason. */
struct revert_state *revert_state_read(virConnectPtr conn, virDomainPtr dom)
{
    g_autoptr(revert_state) st = g_new0(struct revert_state, 1);
    virDomainSnapshotPtr *list = NULL;
    char uuid[VIR_UUID_STRING_BUFLEN];
    bool failed = false;
    int n;

    st->conn = conn;
    st->dom = dom;
    virDomainRef(dom);
    st->uri = virConnectGetURI(conn);
    st->name = g_strdup(virDomainGetName(dom));
    st->label = host_conn_domain_label(conn, st->name);
    if (virDomainGetUUIDString(dom, uuid) == 0)
        st->uuid = g_strdup(uuid);
    st->xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE);
    if (!st->xml || !st->uri) {
        error_from_virt("cannot read the definition of domain '%s'", st->name);
        return NULL;
    }
    st->disks = revert_domain_disks_parse(st->xml);
    if (!st->disks) {
        error_set(EIO, "cannot parse the definition of domain '%s'", st->name);
        return NULL;
    }

    st->snaps = g_ptr_array_new_with_free_func((GDestroyNotify)revert_snapshot_free);
    n = virDomainListAllSnapshots(dom, &list, 0);
    if (n < 0) {
        error_from_virt("cannot list the snapshots of domain '%s'", st->name);
        return NULL;
    }
    /* Fail closed: a snapshot that cannot be read may be what needs an image the revert would drop. */
    for (int i = 0; i < n; i++) {
        failed |= !revert_state_add_snapshot(st, list[i], failed);
        virDomainSnapshotFree(list[i]);
    }
    free(list);
    return failed ? NULL : g_steal_pointer(&st);
}

/* Whether any snapshot's metadata names @file (as its overlay, what it froze, or a disk of its domain). */
bool revert_state_names_file(struct revert_state *st, const char *file, const char *except)
{
    for (guint i = 0; i < st->snaps->len; i++) {
        struct revert_snapshot *snap = g_ptr_array_index(st->snaps, i);
        GHashTableIter it;
        gpointer value;

        if (except && strcmp(snap->name, except) == 0)
            continue;
        g_hash_table_iter_init(&it, snap->overlay);
        while (g_hash_table_iter_next(&it, NULL, &value)) {
            if (strcmp(value, file) == 0)
                return true;
        }
        g_hash_table_iter_init(&it, snap->frozen);
        while (g_hash_table_iter_next(&it, NULL, &value)) {
            if (strcmp(value, file) == 0)
                return true;
        }
        for (guint j = 0; snap->domain_disks && j < snap->domain_disks->len; j++) {
            struct snapfs_disk *d = g_ptr_array_index(snap->domain_disks, j);

            if (d->file && strcmp(d->file, file) == 0)
                return true;
        }
    }
    return false;
}

/* Whether @file lies in the chain of one of @tops; a chain that cannot be read is an error, never a "no". */
int revert_chains_hold(GPtrArray *tops, GPtrArray *formats, const char *file)
{
    for (guint i = 0; i < tops->len; i++) {
        const char *top = g_ptr_array_index(tops, i);
        g_autoptr(GPtrArray) chain = chain_read(top, formats ? g_ptr_array_index(formats, i) : NULL);

        if (!chain) {
            error_set(EIO, "cannot tell whether the chain of '%s' reads '%s': %s", top, file,
                             error_message());
            return -1;
        }
        for (guint j = 0; j < chain->len; j++) {
            if (strcmp(((struct snapfs_layer *)g_ptr_array_index(chain, j))->file, file) == 0)
                return 1;
        }
    }
    return 0;
}

bool revert_disk_is_local(const struct snapfs_disk *disk)
{
    return disk->file && disk->file[0] == '/' && (!disk->device || strcmp(disk->device, "disk") == 0);
}

/*
 * The snapshot whose frozen images the domain reads untouched (empty tops
 * right on them), comparing the disks that @target reverts; or NULL.
 */
struct revert_snapshot *revert_state_identical(struct revert_state *st, struct revert_snapshot *target)
{
    for (guint i = 0; i < st->snaps->len; i++) {
        struct revert_snapshot *snap = g_ptr_array_index(st->snaps, i);
        bool same = snap->external;
        guint compared = 0;

        for (guint j = 0; same && j < st->disks->len; j++) {
            struct snapfs_disk *disk = g_ptr_array_index(st->disks, j);
            const char *frozen;
            g_autofree char *backing = NULL;

            if (!revert_disk_is_local(disk) || !g_hash_table_contains(target->frozen, disk->target))
                continue;
            frozen = g_hash_table_lookup(snap->frozen, disk->target);
            backing = frozen && chain_qcow2_empty(disk->file) ? revert_image_backing(disk->file, disk->format, NULL)
                                                              : NULL;
            same = backing && strcmp(backing, frozen) == 0;
            compared++;
        }
        if (same && compared > 0)
            return snap;
    }
    return NULL;
}

/* ---- libvirt steps ---------------------------------------------------------------- */

int revert_snapshot_redefine(struct revert_state *st, const char *xml, const char *name, bool current)
{
    unsigned int flags = VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE | (current ? VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT : 0);
    g_autoptr(virDomainSnapshot) snap = virDomainSnapshotCreateXML(st->dom, xml, flags);

    if (!snap) {
        error_from_virt("cannot redefine snapshot '%s' of domain '%s'", name, st->name);
        return -1;
    }
    return 0;
}

/* Makes the existing snapshot @name current again (its metadata unchanged). */
int revert_snapshot_make_current(struct revert_state *st, const char *name)
{
    g_autoptr(virDomainSnapshot) snap = virDomainSnapshotLookupByName(st->dom, name, 0);
    g_autofree char *xml = NULL;

    if (!snap) {
        error_from_virt("cannot find snapshot '%s' of domain '%s'", name, st->name);
        return -1;
    }
    xml = virDomainSnapshotGetXMLDesc(snap, VIR_DOMAIN_SNAPSHOT_XML_SECURE);
    g_clear_pointer(&snap, virDomainSnapshotFree);
    if (!xml) {
        error_from_virt("cannot read snapshot '%s' of domain '%s'", name, st->name);
        return -1;
    }
    return revert_snapshot_redefine(st, xml, name, true);
}

bool revert_snapshot_exists(virDomainPtr dom, const char *name)
{
    g_autoptr(virDomainSnapshot) snap = virDomainSnapshotLookupByName(dom, name, 0);

    return snap != NULL;
}

/* The pre-revert snapshot: metadata of an external snapshot whose frozen images are the old tops. */
char *revert_keep_xml(struct revert_state *st, const struct revert_journal *journal)
{
    g_autoptr(GDateTime) now = g_date_time_new_now_local();
    g_autofree char *when = g_date_time_format(now, "%Y-%m-%d %H:%M:%S");
    g_autofree char *description = g_strdup_printf("What the disks held when snapfs reverted to '%s' at %s.",
                                                   journal->target, when);
    g_autoptr(GPtrArray) disks = g_ptr_array_new_with_free_func((GDestroyNotify)xml_snapshot_disk_free);

    for (guint i = 0; i < st->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(st->disks, i);
        struct snapfs_snapshot_disk *kept = g_new0(struct snapfs_snapshot_disk, 1);

        kept->target = g_strdup(disk->target);
        for (guint j = 0; j < journal->disks->len; j++) {
            struct revert_disk *rd = g_ptr_array_index(journal->disks, j);

            if (strcmp(rd->target, disk->target) == 0) {
                g_free(kept->file);
                kept->file = g_strdup(rd->keep_overlay);
            }
        }
        kept->kind = g_strdup(kept->file ? "external" : "no");
        kept->format = g_strdup("qcow2");
        g_ptr_array_add(disks, kept);
    }
    return xml_snapshot_new(journal->keep_name, description, st->current, g_date_time_to_unix(now), disks,
                                   strstr(st->xml, "<domain"));
}

/* Points @disk at @rd's new top, a qcow2 overlay on @frozen (of @format) whose chain is spelled out below it. */
static int revert_disk_on_new_top(xmlNodePtr disk, const struct revert_disk *rd, const char *frozen,
                                  const char *format)
{
    g_autoptr(GPtrArray) chain = chain_read(frozen, format);

    if (!chain)
        return -1;
    /* The top layer only stands for the new overlay: only what lies below it is spelled out. */
    g_ptr_array_add(chain, g_new0(struct snapfs_layer, 1));
    xml_disk_set_top(disk, rd->new_top, "qcow2");
    if (xml_disk_set_backing(disk, chain) < 0) {
        error_set(EIO, "cannot spell out the backing chain of '%s'", frozen);
        return -1;
    }
    return 0;
}

/* The disk of @journal with target @target that the revert moves to a new top, or NULL. */
static const struct revert_disk *revert_journal_moved_disk(const struct revert_journal *journal, const char *target)
{
    const struct revert_disk *rd = NULL;

    for (guint j = 0; target && j < journal->disks->len; j++) {
        struct revert_disk *cand = g_ptr_array_index(journal->disks, j);

        if (strcmp(cand->target, target) == 0 && cand->new_top)
            rd = cand;
    }
    return rd;
}

/*
 * The domain's new definition: the one the snapshot recorded (as libvirt's
 * own revert restores it), else the present one, with each reverted disk on
 * its new top and the chain below it spelled out.
 */
char *revert_domain_xml(struct revert_state *st, struct revert_snapshot *target, const struct revert_journal *journal)
{
    g_autoptr(xmlXPathContext) ctxt = NULL;
    g_autoptr(xmlDoc) doc = xml_read_snapshot_domain(target->xml, &ctxt);
    g_autoptr(GPtrArray) disks = NULL;

    if (!doc)
        doc = xml_read(st->xml, &ctxt);
    if (!doc) {
        error_set(EIO, "cannot parse the definition of domain '%s'", st->name);
        return NULL;
    }
    /* The same domain, whatever the snapshot recorded. */
    xml_domain_set_identity(doc, st->name, st->uuid);
    disks = xml_nodes(ctxt, "/domain/devices/disk");
    for (guint i = 0; i < disks->len; i++) {
        xmlNodePtr disk = g_ptr_array_index(disks, i);
        g_autofree char *t = xml_string(ctxt, disk, "string(target/@dev)");
        const struct revert_disk *rd = revert_journal_moved_disk(journal, t);

        if (rd && revert_disk_on_new_top(disk, rd, g_hash_table_lookup(target->frozen, t),
                                         g_hash_table_lookup(target->frozen_format, t)) < 0)
            return NULL;
    }
    return xml_dump(doc);
}

/* Whether the domain's persistent definition runs every reverted disk on its new top. */
bool revert_domain_on_new_tops(struct revert_state *st, const struct revert_journal *journal)
{
    bool any = false;

    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
        struct snapfs_disk *disk;

        if (!rd->new_top)
            continue;
        disk = xml_disk_find(st->disks, rd->target);
        if (!disk || !disk->file || strcmp(disk->file, rd->new_top) != 0)
            return false;
        any = true;
    }
    return any;
}

/* The disks of the domain's persistent definition as it is now. */
GPtrArray *revert_domain_disks_now(struct revert_state *st)
{
    g_autofree char *xml = virDomainGetXMLDesc(st->dom, VIR_DOMAIN_XML_INACTIVE);
    GPtrArray *disks = xml ? revert_domain_disks_parse(xml) : NULL;

    if (!disks)
        log_warn("cannot read the definition of domain '%s': %s", st->label,
                    xml ? "it cannot be parsed" : virGetLastErrorMessage());
    return disks;
}
