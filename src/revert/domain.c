/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The domain and its snapshots as revert sees them (read from libvirt's XML), and the XML revert gives libvirt. */
#include "revert-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/virt.h"

#include <errno.h>
#include <libvirt/virterror.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>
#include <string.h>

/* ---- XML helpers ----------------------------------------------------------------------- */

static xmlDocPtr xml_read(const char *xml)
{
    return xmlReadMemory(xml, strlen(xml), "libvirt.xml", NULL,
                         XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
}

static char *xml_eval_string(xmlXPathContextPtr ctxt, xmlNodePtr node, const char *expr)
{
    xmlNodePtr saved = ctxt->node;
    xmlXPathObjectPtr obj;
    char *value = NULL;

    ctxt->node = node ? node : xmlDocGetRootElement(ctxt->doc);
    obj = xmlXPathEval((const xmlChar *)expr, ctxt);
    if (obj && obj->type == XPATH_STRING && obj->stringval && obj->stringval[0])
        value = g_strdup((const char *)obj->stringval);
    xmlXPathFreeObject(obj);
    ctxt->node = saved;
    return value;
}

static xmlXPathObjectPtr xml_eval_nodes(xmlXPathContextPtr ctxt, const char *expr)
{
    xmlXPathObjectPtr obj;

    ctxt->node = xmlDocGetRootElement(ctxt->doc);
    obj = xmlXPathEval((const xmlChar *)expr, ctxt);
    if (obj && (obj->type != XPATH_NODESET || !obj->nodesetval)) {
        xmlXPathFreeObject(obj);
        return NULL;
    }
    return obj;
}

static xmlNodePtr xml_child(xmlNodePtr node, const char *name)
{
    for (xmlNodePtr c = node->children; c; c = c->next) {
        if (c->type == XML_ELEMENT_NODE && strcmp((const char *)c->name, name) == 0)
            return c;
    }
    return NULL;
}

static char *xml_dump(xmlDocPtr doc)
{
    xmlChar *mem = NULL;
    int size = 0;
    char *out;

    xmlDocDumpMemory(doc, &mem, &size);
    out = g_strndup((const char *)mem, size);
    xmlFree(mem);
    return out;
}


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

static struct revert_snapshot *revert_snapshot_parse(const char *name, char *xml)
{
    struct revert_snapshot *snap = g_new0(struct revert_snapshot, 1);
    xmlDocPtr doc = xml_read(xml);
    xmlXPathContextPtr ctxt = doc ? xmlXPathNewContext(doc) : NULL;
    xmlXPathObjectPtr obj;

    snap->name = g_strdup(name);
    snap->xml = xml;
    snap->overlay = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    snap->frozen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    snap->frozen_format = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    snap->overlay_format = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    if (!ctxt) {
        revert_snapshot_free(snap);
        snap = NULL;
        goto out;
    }
    snap->domain_disks = snapfs_xml_disks(ctxt, "/domainsnapshot/domain");
    obj = xml_eval_nodes(ctxt, "/domainsnapshot/disks/disk");
    for (int i = 0; obj && i < obj->nodesetval->nodeNr; i++) {
        xmlNodePtr node = obj->nodesetval->nodeTab[i];
        g_autofree char *target = xml_eval_string(ctxt, node, "string(@name)");
        g_autofree char *kind = xml_eval_string(ctxt, node, "string(@snapshot)");
        g_autofree char *file = xml_eval_string(ctxt, node, "string(source/@file)");
        g_autofree char *file_format = xml_eval_string(ctxt, node, "string(driver/@type)");
        g_autofree char *frozen = NULL;
        g_autofree char *frozen_format = NULL;
        struct snapfs_disk *then;

        if (!target || !kind || strcmp(kind, "external") != 0)
            continue;
        snap->external = true;
        if (!file)
            continue;
        /* What the snapshot froze: its overlay's backing, or else the disk of the domain as it was. */
        frozen = revert_image_backing(file, file_format, &frozen_format);
        then = snap->domain_disks ? snapfs_disk_find(snap->domain_disks, target) : NULL;
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
    xmlXPathFreeObject(obj);
out:
    if (ctxt)
        xmlXPathFreeContext(ctxt);
    if (doc)
        xmlFreeDoc(doc);
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

/* The domain, its persistent definition and every snapshot; NULL with the reason. */
struct revert_state *revert_state_read(virConnectPtr conn, virDomainPtr dom)
{
    g_autoptr(revert_state) st = g_new0(struct revert_state, 1);
    virDomainSnapshotPtr *list = NULL;
    char uuid[VIR_UUID_STRING_BUFLEN];
    xmlDocPtr doc;
    xmlXPathContextPtr ctxt;
    bool failed = false;
    int n;

    st->conn = conn;
    st->dom = dom;
    virDomainRef(dom);
    st->uri = virConnectGetURI(conn);
    st->name = g_strdup(virDomainGetName(dom));
    st->label = snapfs_domain_label(conn, st->name);
    if (virDomainGetUUIDString(dom, uuid) == 0)
        st->uuid = g_strdup(uuid);
    st->xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE);
    if (!st->xml || !st->uri) {
        snapfs_error_from_virt("cannot read the definition of domain '%s'", st->name);
        return NULL;
    }
    doc = xml_read(st->xml);
    if (!doc) {
        snapfs_error_set(EIO, "cannot parse the definition of domain '%s'", st->name);
        return NULL;
    }
    ctxt = xmlXPathNewContext(doc);
    st->disks = snapfs_xml_disks(ctxt, "/domain");
    xmlXPathFreeContext(ctxt);
    xmlFreeDoc(doc);

    st->snaps = g_ptr_array_new_with_free_func((GDestroyNotify)revert_snapshot_free);
    n = virDomainListAllSnapshots(dom, &list, 0);
    if (n < 0) {
        snapfs_error_from_virt("cannot list the snapshots of domain '%s'", st->name);
        return NULL;
    }
    /* Fail closed: a snapshot that cannot be read may be what needs an image the revert would drop. */
    for (int i = 0; i < n; i++) {
        const char *snap_name = virDomainSnapshotGetName(list[i]);
        char *xml = virDomainSnapshotGetXMLDesc(list[i], VIR_DOMAIN_SNAPSHOT_XML_SECURE);
        int cur = xml ? virDomainSnapshotIsCurrent(list[i], 0) : -1;
        struct revert_snapshot *snap = NULL;

        if (!xml || cur < 0) {
            if (virGetLastErrorCode() != VIR_ERR_NO_DOMAIN_SNAPSHOT && !failed)
                snapfs_error_set(EIO, "cannot read snapshot '%s' of domain '%s': %s", snap_name, st->name,
                                 virGetLastErrorMessage());
            failed |= virGetLastErrorCode() != VIR_ERR_NO_DOMAIN_SNAPSHOT;
            g_free(xml);
        } else if (!(snap = revert_snapshot_parse(snap_name, xml))) {
            if (!failed)
                snapfs_error_set(EIO, "cannot parse snapshot '%s' of domain '%s'", snap_name, st->name);
            failed = true;
        } else {
            g_ptr_array_add(st->snaps, snap);
            if (cur == 1)
                st->current = g_strdup(snap_name);
        }
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
        g_autoptr(GPtrArray) chain = snapfs_chain_read(top, formats ? g_ptr_array_index(formats, i) : NULL);

        if (!chain) {
            snapfs_error_set(EIO, "cannot tell whether the chain of '%s' reads '%s': %s", top, file,
                             snapfs_error_message());
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
            backing = frozen && revert_image_empty(disk->file) ? revert_image_backing(disk->file, disk->format, NULL)
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
    virDomainSnapshotPtr snap = virDomainSnapshotCreateXML(st->dom, xml, flags);

    if (!snap) {
        snapfs_error_from_virt("cannot redefine snapshot '%s' of domain '%s'", name, st->name);
        return -1;
    }
    virDomainSnapshotFree(snap);
    return 0;
}

/* Makes the existing snapshot @name current again (its metadata unchanged). */
int revert_snapshot_make_current(struct revert_state *st, const char *name)
{
    virDomainSnapshotPtr snap = virDomainSnapshotLookupByName(st->dom, name, 0);
    g_autofree char *xml = NULL;

    if (!snap) {
        snapfs_error_from_virt("cannot find snapshot '%s' of domain '%s'", name, st->name);
        return -1;
    }
    xml = virDomainSnapshotGetXMLDesc(snap, VIR_DOMAIN_SNAPSHOT_XML_SECURE);
    virDomainSnapshotFree(snap);
    if (!xml) {
        snapfs_error_from_virt("cannot read snapshot '%s' of domain '%s'", name, st->name);
        return -1;
    }
    return revert_snapshot_redefine(st, xml, name, true);
}

bool revert_snapshot_exists(virDomainPtr dom, const char *name)
{
    virDomainSnapshotPtr snap = virDomainSnapshotLookupByName(dom, name, 0);

    if (!snap)
        return false;
    virDomainSnapshotFree(snap);
    return true;
}

/* The pre-revert snapshot: metadata of an external snapshot whose frozen images are the old tops. */
char *revert_keep_xml(struct revert_state *st, const struct revert_journal *journal)
{
    GString *xml = g_string_new("<domainsnapshot>\n");
    g_autofree char *name = g_markup_escape_text(journal->keep_name, -1);
    g_autofree char *target = g_markup_escape_text(journal->target, -1);
    g_autoptr(GDateTime) now = g_date_time_new_now_local();
    g_autofree char *when = g_date_time_format(now, "%Y-%m-%d %H:%M:%S");
    const char *dom = strstr(st->xml, "<domain");

    g_string_append_printf(xml, "  <name>%s</name>\n", name);
    g_string_append_printf(xml, "  <description>What the disks held when snapfs reverted to '%s' at %s.</description>\n",
                           target, when);
    g_string_append(xml, "  <state>shutoff</state>\n");
    if (st->current) {
        g_autofree char *parent = g_markup_escape_text(st->current, -1);

        g_string_append_printf(xml, "  <parent>\n    <name>%s</name>\n  </parent>\n", parent);
    }
    g_string_append_printf(xml, "  <creationTime>%" G_GINT64_FORMAT "</creationTime>\n", g_date_time_to_unix(now));
    g_string_append(xml, "  <memory snapshot='no'/>\n  <disks>\n");
    for (guint i = 0; i < st->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(st->disks, i);
        g_autofree char *t = g_markup_escape_text(disk->target, -1);
        const char *overlay = NULL;

        for (guint j = 0; j < journal->disks->len; j++) {
            struct revert_disk *rd = g_ptr_array_index(journal->disks, j);

            if (strcmp(rd->target, disk->target) == 0)
                overlay = rd->keep_overlay;
        }
        if (overlay) {
            g_autofree char *f = g_markup_escape_text(overlay, -1);

            g_string_append_printf(xml, "    <disk name='%s' snapshot='external' type='file'>\n"
                                        "      <driver type='qcow2'/>\n      <source file='%s'/>\n    </disk>\n", t, f);
        } else {
            g_string_append_printf(xml, "    <disk name='%s' snapshot='no'/>\n", t);
        }
    }
    g_string_append(xml, "  </disks>\n");
    g_string_append(xml, dom ? dom : "");
    g_string_append(xml, "</domainsnapshot>\n");
    return g_string_free(xml, FALSE);
}

/* The <backingStore> chain of a new overlay on @frozen, as <disk> children. */
static xmlNodePtr backing_nodes(xmlDocPtr doc, const char *frozen, const char *format)
{
    g_autoptr(GPtrArray) chain = snapfs_chain_read(frozen, format);
    g_autofree char *inner = NULL;
    g_autofree char *wrapped = NULL;
    xmlDocPtr frag;
    xmlNodePtr node = NULL;

    if (!chain)
        return NULL;
    /* The top layer only stands for the new overlay: backing_xml spells out what lies below it. */
    g_ptr_array_add(chain, g_new0(struct snapfs_layer, 1));
    inner = snapfs_chain_backing_xml(chain);
    wrapped = g_strdup_printf("<x>%s</x>", inner);
    frag = xml_read(wrapped);
    if (frag) {
        xmlNodePtr first = xml_child(xmlDocGetRootElement(frag), "backingStore");

        if (first)
            node = xmlDocCopyNode(first, doc, 1);
        xmlFreeDoc(frag);
    }
    if (!node)
        snapfs_error_set(EIO, "cannot spell out the backing chain of '%s'", frozen);
    return node;
}

/*
 * The domain's new definition: the one the snapshot recorded (as libvirt's
 * own revert restores it), else the present one, with each reverted disk on
 * its new top and the chain below it spelled out.
 */
char *revert_domain_xml(struct revert_state *st, struct revert_snapshot *target, const struct revert_journal *journal)
{
    xmlDocPtr sdoc = xml_read(target->xml);
    xmlDocPtr doc = NULL;
    xmlXPathContextPtr ctxt = NULL;
    xmlXPathObjectPtr obj = NULL;
    char *out = NULL;

    if (sdoc) {
        xmlNodePtr root = xmlDocGetRootElement(sdoc);
        xmlNodePtr dom = xml_child(root, "inactiveDomain");

        if (!dom)
            dom = xml_child(root, "domain");
        if (dom) {
            doc = xmlNewDoc((const xmlChar *)"1.0");
            xmlDocSetRootElement(doc, xmlDocCopyNode(dom, doc, 1));
            xmlNodeSetName(xmlDocGetRootElement(doc), (const xmlChar *)"domain");
        }
        xmlFreeDoc(sdoc);
    }
    if (!doc)
        doc = xml_read(st->xml);
    if (!doc) {
        snapfs_error_set(EIO, "cannot parse the definition of domain '%s'", st->name);
        return NULL;
    }
    ctxt = xmlXPathNewContext(doc);
    /* The same domain, whatever the snapshot recorded. */
    {
        xmlNodePtr root = xmlDocGetRootElement(doc);
        xmlNodePtr name = xml_child(root, "name");
        xmlNodePtr uuid = xml_child(root, "uuid");

        /* SetContent would read entities in the text; AddContent takes it as it is. */
        if (name) {
            xmlNodeSetContent(name, NULL);
            xmlNodeAddContent(name, (const xmlChar *)st->name);
        }
        if (uuid && st->uuid) {
            xmlNodeSetContent(uuid, NULL);
            xmlNodeAddContent(uuid, (const xmlChar *)st->uuid);
        }
        xmlUnsetProp(root, (const xmlChar *)"id");
    }
    obj = xml_eval_nodes(ctxt, "/domain/devices/disk");
    for (int i = 0; obj && i < obj->nodesetval->nodeNr; i++) {
        xmlNodePtr disk = obj->nodesetval->nodeTab[i];
        g_autofree char *t = xml_eval_string(ctxt, disk, "string(target/@dev)");
        struct revert_disk *rd = NULL;
        xmlNodePtr driver, source, chain, c, next;
        const char *frozen;

        for (guint j = 0; t && j < journal->disks->len; j++) {
            struct revert_disk *cand = g_ptr_array_index(journal->disks, j);

            if (strcmp(cand->target, t) == 0 && cand->new_top)
                rd = cand;
        }
        if (!rd)
            continue;
        frozen = g_hash_table_lookup(target->frozen, t);
        chain = backing_nodes(doc, frozen, g_hash_table_lookup(target->frozen_format, t));
        if (!chain)
            goto out;
        xmlSetProp(disk, (const xmlChar *)"type", (const xmlChar *)"file");
        driver = xml_child(disk, "driver");
        if (!driver) {
            driver = xmlNewDocNode(doc, NULL, (const xmlChar *)"driver", NULL);
            xmlSetProp(driver, (const xmlChar *)"name", (const xmlChar *)"qemu");
            xmlAddChild(disk, driver);
        }
        xmlSetProp(driver, (const xmlChar *)"type", (const xmlChar *)"qcow2");
        for (c = disk->children; c; c = next) {
            next = c->next;
            if (c->type == XML_ELEMENT_NODE && (strcmp((const char *)c->name, "backingStore") == 0 ||
                                                strcmp((const char *)c->name, "source") == 0)) {
                xmlUnlinkNode(c);
                xmlFreeNode(c);
            }
        }
        source = xmlNewDocNode(doc, NULL, (const xmlChar *)"source", NULL);
        xmlSetProp(source, (const xmlChar *)"file", (const xmlChar *)rd->new_top);
        xmlAddNextSibling(driver, source);
        xmlAddNextSibling(source, chain);
    }
    out = xml_dump(doc);
out:
    xmlXPathFreeObject(obj);
    xmlXPathFreeContext(ctxt);
    xmlFreeDoc(doc);
    return out;
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
        disk = snapfs_disk_find(st->disks, rd->target);
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
    xmlDocPtr doc = xml ? xml_read(xml) : NULL;
    xmlXPathContextPtr ctxt;
    GPtrArray *disks;

    if (!doc) {
        snapfs_warn("cannot read the definition of domain '%s': %s", st->label,
                    xml ? "it cannot be parsed" : virGetLastErrorMessage());
        return NULL;
    }
    ctxt = xmlXPathNewContext(doc);
    disks = snapfs_xml_disks(ctxt, "/domain");
    xmlXPathFreeContext(ctxt);
    xmlFreeDoc(doc);
    return disks;
}
