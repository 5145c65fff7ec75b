/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Revert a domain to a snapshot: libvirt's own revert where it can, by hand for external snapshots of shut-off domains. */
#include "revert-priv.h"
#include "snapfs/chain.h"
#include "snapfs/engine.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/revert.h"

#include <errno.h>
#include <fcntl.h>
#include <libvirt/virterror.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/uri.h>
#include <libxml/xpath.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/*
 * The by-hand revert of an external snapshot S (what libvirt 9.9+ does
 * itself, plus keeping the state left behind), step by step.  Each step
 * is one atomic change; the commit point is the domain's redefinition:
 *
 *   journal        the intent (every file to make, the snapshot to keep) is on disk
 *   keep-overlays  an empty overlay on each old top image, for pre-revert-DATE
 *   keep           pre-revert-DATE defined (metadata only) and made current
 *                  (libvirt's own revert, tried next, removes the current
 *                  snapshot's overlays, never the old top images)
 *   overlays       a new overlay on each image S froze
 *   domain         the domain redefined on the new overlays, <backingStore> spelled out
 *   current        S's metadata redefined as current
 *   cleanup        old top images nothing needs any more unlinked (empty ones, or all with revert_keep=off)
 *
 * Before "domain" a crash is rolled back (files this revert made unlinked,
 * pre-revert-DATE's metadata removed, the old current snapshot current
 * again); from "domain" on it is rolled forward.  At every point libvirt
 * accepts the domain and it boots: its XML only ever names complete images.
 */

#define FORCE_SUFFIX " --force"
#define KEEP_PREFIX "pre-revert-"

/* ---- fault injection (tests only) -------------------------------------------- */

static void revert_fault(const char *step)
{
    const char *fault = getenv("SNAPFS_FAULT");

    if (fault && g_str_has_prefix(fault, "revert:") && strcmp(fault + strlen("revert:"), step) == 0) {
        snapfs_warn("SNAPFS_FAULT: stopping dead after revert step '%s'", step);
        _exit(137);
    }
}

/* ---- the request ------------------------------------------------------------- */

void revert_request_clear(struct revert_request *request)
{
    g_clear_pointer(&request->name, g_free);
    request->force = false;
}

int revert_parse(const char *buf, size_t len, struct revert_request *request)
{
    g_autofree char *text = NULL;
    size_t n;

    request->name = NULL;
    request->force = false;
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    if (len == 0) {
        snapfs_error_set(EINVAL, "a revert request names a snapshot: nothing was written");
        return -1;
    }
    if (memchr(buf, '\n', len)) {
        snapfs_error_set(EINVAL, "a revert request names one snapshot on one line");
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f) {
            snapfs_error_set(EINVAL, "a revert request cannot hold control characters");
            return -1;
        }
    }
    text = g_strndup(buf, len);
    if (strlen(text) != len || !g_utf8_validate(text, -1, NULL)) {
        snapfs_error_set(EINVAL, "a revert request must be UTF-8 text");
        return -1;
    }
    n = strlen(text);
    if (g_str_has_suffix(text, FORCE_SUFFIX)) {
        request->force = true;
        n -= strlen(FORCE_SUFFIX);
        text[n] = '\0';
    }
    if (n == 0 || text[0] == ' ' || text[n - 1] == ' ') {
        snapfs_error_set(EINVAL, "a revert request is 'NAME' or 'NAME --force', without blanks around NAME");
        return -1;
    }
    if (g_str_has_prefix(text, "--")) {
        snapfs_error_set(EINVAL, "'%s': options follow the snapshot name ('NAME --force')", text);
        return -1;
    }
    /* A last word that looks like an option and is not --force. */
    {
        const char *last = strrchr(text, ' ');

        if (last && g_str_has_prefix(last, " --")) {
            snapfs_error_set(EINVAL, "unknown option '%s' in a revert request (only --force)", last + 1);
            return -1;
        }
    }
    request->name = g_steal_pointer(&text);
    return 0;
}

/* ---- XML ----------------------------------------------------------------------- */

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

/* A disk of a domain's XML. */
struct rdisk {
    char *target;
    char *device;
    char *file;     /* source file or dev, NULL for network disks and empty drives */
    char *format;
};

static void rdisk_free(struct rdisk *disk)
{
    g_free(disk->target);
    g_free(disk->device);
    g_free(disk->file);
    g_free(disk->format);
    g_free(disk);
}

/* The disks of a <domain> (@prefix "/domain") or of the one in a snapshot ("/domainsnapshot/domain"). */
static GPtrArray *xml_domain_disks(xmlXPathContextPtr ctxt, const char *prefix)
{
    GPtrArray *disks = g_ptr_array_new_with_free_func((GDestroyNotify)rdisk_free);
    g_autofree char *expr = g_strdup_printf("%s/devices/disk", prefix);
    xmlXPathObjectPtr obj = xml_eval_nodes(ctxt, expr);

    for (int i = 0; obj && i < obj->nodesetval->nodeNr; i++) {
        xmlNodePtr node = obj->nodesetval->nodeTab[i];
        struct rdisk *disk = g_new0(struct rdisk, 1);

        disk->target = xml_eval_string(ctxt, node, "string(target/@dev)");
        disk->device = xml_eval_string(ctxt, node, "string(@device)");
        disk->file = xml_eval_string(ctxt, node, "string(source/@file)");
        if (!disk->file)
            disk->file = xml_eval_string(ctxt, node, "string(source/@dev)");
        disk->format = xml_eval_string(ctxt, node, "string(driver/@type)");
        if (!disk->target) {
            rdisk_free(disk);
            continue;
        }
        g_ptr_array_add(disks, disk);
    }
    xmlXPathFreeObject(obj);
    return disks;
}

static struct rdisk *rdisk_find(GPtrArray *disks, const char *target)
{
    for (guint i = 0; i < disks->len; i++) {
        struct rdisk *disk = g_ptr_array_index(disks, i);

        if (strcmp(disk->target, target) == 0)
            return disk;
    }
    return NULL;
}

/* ---- images ------------------------------------------------------------------- */

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const unsigned char *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

/*
 * Whether @file is a qcow2 overlay that holds no data of its own: no
 * internal snapshot, no feature that keeps data elsewhere, and an L1 table
 * of zeros (nothing was ever written to it).  Errs on "not empty".
 */
static bool image_empty(const char *file)
{
    unsigned char head[104];
    g_autofree unsigned char *l1 = NULL;
    uint64_t l1_bytes;
    bool empty = false;
    int fd = open(file, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return false;
    if (pread(fd, head, sizeof(head), 0) != (ssize_t)sizeof(head) || be32(head) != 0x514649fbU)
        goto out;
    if (be32(head + 60) != 0)                           /* internal snapshots */
        goto out;
    if (be32(head + 4) >= 3 && (be64(head + 72) & ~1ULL) != 0)  /* anything but the dirty bit */
        goto out;
    l1_bytes = (uint64_t)be32(head + 36) * 8;
    if (l1_bytes > 64 * 1024 * 1024)
        goto out;
    l1 = g_malloc0(l1_bytes ? l1_bytes : 1);
    if (pread(fd, l1, l1_bytes, (off_t)be64(head + 40)) != (ssize_t)l1_bytes)
        goto out;
    empty = true;
    for (uint64_t i = 0; i < l1_bytes; i++) {
        if (l1[i]) {
            empty = false;
            break;
        }
    }
out:
    close(fd);
    return empty;
}

/* The image @file is backed by, as an absolute path (and its format), or NULL. */
static char *image_backing(const char *file, char **format)
{
    struct snapfs_layer *layer = snapfs_chain_read_layer(file, NULL);
    char *backing = NULL;

    if (format)
        *format = NULL;
    if (!layer)
        return NULL;
    if (layer->backing) {
        backing = snapfs_chain_resolve(layer->file, layer->backing);
        if (format)
            *format = g_strdup(layer->backing_format);
    }
    snapfs_layer_free(layer);
    return backing;
}

static int image_create_overlay(const char *file, const char *backing, const char *backing_format)
{
    g_autofree char *fmt = backing_format ? g_strdup(backing_format) : NULL;
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;
    g_autoptr(GError) error = NULL;
    int status = 0;

    if (!fmt) {
        struct snapfs_layer *layer = snapfs_chain_read_layer(backing, NULL);

        if (!layer)
            return -1;
        fmt = g_strdup(layer->format);
        snapfs_layer_free(layer);
    }
    {
        /* -u: the backing image is known to be complete; not opening it keeps this fast. */
        const char *argv[] = { "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", fmt, "-b", backing,
                               file, NULL, NULL };
        g_autofree char *size = NULL;
        struct snapfs_layer *layer = snapfs_chain_read_layer(backing, fmt);

        if (!layer)
            return -1;
        size = g_strdup_printf("%" G_GUINT64_FORMAT, layer->virtual_size);
        snapfs_layer_free(layer);
        argv[11] = size;
        if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &out, &err, &status, &error)) {
            snapfs_error_set(EIO, "cannot create overlay '%s': %s", file, error->message);
            return -1;
        }
    }
    if (!g_spawn_check_wait_status(status, NULL)) {
        g_strstrip(err);
        snapfs_error_set(EIO, "cannot create overlay '%s' on '%s': %s", file, backing, err);
        unlink(file);
        return -1;
    }
    return revert_sync_path(file);
}

/* A file name made of what a person can read in @name (snapshot names may hold anything). */
static char *file_part(const char *name)
{
    GString *out = g_string_new(NULL);

    for (const char *p = name; *p; p++)
        g_string_append_c(out, g_ascii_isalnum(*p) || *p == '-' || *p == '_' || *p == '.' ? *p : '_');
    return g_string_free(out, FALSE);
}

/* @dir/@domain.@target.@what.qcow2, or with -2, -3... if that exists already. */
static char *overlay_name(const char *dir, const char *domain, const char *target, const char *what)
{
    g_autofree char *dom = file_part(domain);
    g_autofree char *w = file_part(what);

    for (int n = 1;; n++) {
        g_autofree char *base = n == 1 ? g_strdup_printf("%s.%s.%s.qcow2", dom, target, w)
                                       : g_strdup_printf("%s.%s.%s-%d.qcow2", dom, target, w, n);
        char *path = g_build_filename(dir, base, NULL);

        if (!g_file_test(path, G_FILE_TEST_EXISTS))
            return path;
        g_free(path);
    }
}

/* ---- what libvirt says about the domain --------------------------------------- */

struct rsnap {
    char *name;
    char *xml;
    bool external;            /* any disk external */
    GHashTable *overlay;      /* target -> the overlay the snapshot made */
    GHashTable *frozen;       /* target -> the image it froze */
    GHashTable *frozen_format;
    GPtrArray *domain_disks;  /* the domain as it was: struct rdisk * */
};

static void rsnap_free(struct rsnap *snap)
{
    g_free(snap->name);
    g_free(snap->xml);
    g_hash_table_unref(snap->overlay);
    g_hash_table_unref(snap->frozen);
    g_hash_table_unref(snap->frozen_format);
    if (snap->domain_disks)
        g_ptr_array_unref(snap->domain_disks);
    g_free(snap);
}

struct rstate {
    virConnectPtr conn;
    virDomainPtr dom;
    char *uri;
    char *name;
    char *uuid;
    char *xml;            /* the persistent definition */
    GPtrArray *disks;     /* struct rdisk *, from xml */
    GPtrArray *snaps;     /* struct rsnap * */
    char *current;        /* the current snapshot, or NULL */
};

static void rstate_free(struct rstate *st)
{
    if (!st)
        return;
    if (st->dom)
        virDomainFree(st->dom);
    g_free(st->uri);
    g_free(st->name);
    g_free(st->uuid);
    g_free(st->xml);
    if (st->disks)
        g_ptr_array_unref(st->disks);
    if (st->snaps)
        g_ptr_array_unref(st->snaps);
    g_free(st->current);
    g_free(st);
}
typedef struct rstate rstate;
G_DEFINE_AUTOPTR_CLEANUP_FUNC(rstate, rstate_free)

static struct rsnap *rsnap_parse(const char *name, char *xml)
{
    struct rsnap *snap = g_new0(struct rsnap, 1);
    xmlDocPtr doc = xml_read(xml);
    xmlXPathContextPtr ctxt = doc ? xmlXPathNewContext(doc) : NULL;
    xmlXPathObjectPtr obj;

    snap->name = g_strdup(name);
    snap->xml = xml;
    snap->overlay = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    snap->frozen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    snap->frozen_format = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    if (!ctxt)
        goto out;
    snap->domain_disks = xml_domain_disks(ctxt, "/domainsnapshot/domain");
    obj = xml_eval_nodes(ctxt, "/domainsnapshot/disks/disk");
    for (int i = 0; obj && i < obj->nodesetval->nodeNr; i++) {
        xmlNodePtr node = obj->nodesetval->nodeTab[i];
        g_autofree char *target = xml_eval_string(ctxt, node, "string(@name)");
        g_autofree char *kind = xml_eval_string(ctxt, node, "string(@snapshot)");
        g_autofree char *file = xml_eval_string(ctxt, node, "string(source/@file)");
        g_autofree char *frozen = NULL;
        g_autofree char *frozen_format = NULL;
        struct rdisk *then;

        if (!target || !kind || strcmp(kind, "external") != 0)
            continue;
        snap->external = true;
        if (!file)
            continue;
        /* What the snapshot froze: its overlay's backing, or else the disk of the domain as it was. */
        frozen = image_backing(file, &frozen_format);
        then = snap->domain_disks ? rdisk_find(snap->domain_disks, target) : NULL;
        if (!frozen && then && then->file) {
            frozen = g_strdup(then->file);
            frozen_format = g_strdup(then->format);
        }
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

static struct rsnap *rstate_snap(struct rstate *st, const char *name)
{
    for (guint i = 0; name && i < st->snaps->len; i++) {
        struct rsnap *snap = g_ptr_array_index(st->snaps, i);

        if (strcmp(snap->name, name) == 0)
            return snap;
    }
    return NULL;
}

/* The domain, its persistent definition and every snapshot; NULL with the reason. */
static struct rstate *rstate_read(virConnectPtr conn, virDomainPtr dom)
{
    g_autoptr(rstate) st = g_new0(struct rstate, 1);
    virDomainSnapshotPtr *list = NULL;
    char uuid[VIR_UUID_STRING_BUFLEN];
    xmlDocPtr doc;
    xmlXPathContextPtr ctxt;
    int n;

    st->conn = conn;
    st->dom = dom;
    virDomainRef(dom);
    st->uri = virConnectGetURI(conn);
    st->name = g_strdup(virDomainGetName(dom));
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
    st->disks = xml_domain_disks(ctxt, "/domain");
    xmlXPathFreeContext(ctxt);
    xmlFreeDoc(doc);

    st->snaps = g_ptr_array_new_with_free_func((GDestroyNotify)rsnap_free);
    n = virDomainListAllSnapshots(dom, &list, 0);
    if (n < 0) {
        snapfs_error_from_virt("cannot list the snapshots of domain '%s'", st->name);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        char *xml = virDomainSnapshotGetXMLDesc(list[i], VIR_DOMAIN_SNAPSHOT_XML_SECURE);
        int cur = virDomainSnapshotIsCurrent(list[i], 0);

        if (xml)
            g_ptr_array_add(st->snaps, rsnap_parse(virDomainSnapshotGetName(list[i]), xml));
        if (cur == 1)
            st->current = g_strdup(virDomainSnapshotGetName(list[i]));
        virDomainSnapshotFree(list[i]);
    }
    free(list);
    return g_steal_pointer(&st);
}

/* Whether any snapshot's metadata names @file (as its overlay, what it froze, or a disk of its domain). */
static bool rstate_names_file(struct rstate *st, const char *file, const char *except)
{
    for (guint i = 0; i < st->snaps->len; i++) {
        struct rsnap *snap = g_ptr_array_index(st->snaps, i);
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
            struct rdisk *d = g_ptr_array_index(snap->domain_disks, j);

            if (d->file && strcmp(d->file, file) == 0)
                return true;
        }
    }
    return false;
}

/* Whether @file lies below a top image of the domain or in the chain below @extra_tops. */
static bool chains_hold(GPtrArray *tops, const char *file)
{
    for (guint i = 0; i < tops->len; i++) {
        g_autoptr(GPtrArray) chain = snapfs_chain_read(g_ptr_array_index(tops, i), NULL);

        for (guint j = 0; chain && j < chain->len; j++) {
            if (strcmp(((struct snapfs_layer *)g_ptr_array_index(chain, j))->file, file) == 0)
                return true;
        }
    }
    return false;
}

static bool disk_is_local(const struct rdisk *disk)
{
    return disk->file && disk->file[0] == '/' && (!disk->device || strcmp(disk->device, "disk") == 0);
}

/*
 * The snapshot whose frozen images the domain reads untouched (empty tops
 * right on them), comparing the disks that @target reverts; or NULL.
 */
static struct rsnap *rstate_identical(struct rstate *st, struct rsnap *target)
{
    for (guint i = 0; i < st->snaps->len; i++) {
        struct rsnap *snap = g_ptr_array_index(st->snaps, i);
        bool same = snap->external;
        guint compared = 0;

        for (guint j = 0; same && j < st->disks->len; j++) {
            struct rdisk *disk = g_ptr_array_index(st->disks, j);
            const char *frozen;
            g_autofree char *backing = NULL;

            if (!disk_is_local(disk) || !g_hash_table_contains(target->frozen, disk->target))
                continue;
            frozen = g_hash_table_lookup(snap->frozen, disk->target);
            backing = frozen && image_empty(disk->file) ? image_backing(disk->file, NULL) : NULL;
            same = backing && strcmp(backing, frozen) == 0;
            compared++;
        }
        if (same && compared > 0)
            return snap;
    }
    return NULL;
}

/* ---- libvirt steps ---------------------------------------------------------------- */

static int snapshot_redefine(struct rstate *st, const char *xml, const char *name, bool current)
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
static int snapshot_make_current(struct rstate *st, const char *name)
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
    return snapshot_redefine(st, xml, name, true);
}

static bool snapshot_exists(virDomainPtr dom, const char *name)
{
    virDomainSnapshotPtr snap = virDomainSnapshotLookupByName(dom, name, 0);

    if (!snap)
        return false;
    virDomainSnapshotFree(snap);
    return true;
}

/* The pre-revert snapshot: metadata of an external snapshot whose frozen images are the old tops. */
static char *keep_xml(struct rstate *st, const struct revert_journal *journal)
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
        struct rdisk *disk = g_ptr_array_index(st->disks, i);
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
static char *domain_xml_build(struct rstate *st, struct rsnap *target, const struct revert_journal *journal)
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
static bool domain_on_new_tops(struct rstate *st, const struct revert_journal *journal)
{
    bool any = false;

    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
        struct rdisk *disk;

        if (!rd->new_top)
            continue;
        disk = rdisk_find(st->disks, rd->target);
        if (!disk || !disk->file || strcmp(disk->file, rd->new_top) != 0)
            return false;
        any = true;
    }
    return any;
}

/* The disks of the domain's persistent definition as it is now. */
static GPtrArray *domain_disks_now(struct rstate *st)
{
    g_autofree char *xml = virDomainGetXMLDesc(st->dom, VIR_DOMAIN_XML_INACTIVE);
    xmlDocPtr doc = xml ? xml_read(xml) : NULL;
    xmlXPathContextPtr ctxt;
    GPtrArray *disks;

    if (!doc) {
        snapfs_warn("cannot read the definition of domain '%s'", st->name);
        return NULL;
    }
    ctxt = xmlXPathNewContext(doc);
    disks = xml_domain_disks(ctxt, "/domain");
    xmlXPathFreeContext(ctxt);
    xmlFreeDoc(doc);
    return disks;
}

/* ---- finishing and rolling back ---------------------------------------------------- */

static void unlink_logged(const char *file, const char *why)
{
    if (unlink(file) == 0)
        snapfs_info("removed '%s' (%s)", file, why);
    else if (errno != ENOENT)
        snapfs_warn("cannot remove '%s' (%s): %s", file, why, g_strerror(errno));
}

/* Undo a revert that did not reach its commit point; the domain never named what is removed here. */
static int revert_roll_back(struct rstate *st, const struct revert_journal *journal)
{
    int ret = 0;

    if (journal->keep_name && snapshot_exists(st->dom, journal->keep_name)) {
        virDomainSnapshotPtr snap = virDomainSnapshotLookupByName(st->dom, journal->keep_name, 0);
        unsigned int flags = journal->phase == REVERT_PHASE_INTERNAL ? 0 : VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY;

        if (!snap || virDomainSnapshotDelete(snap, flags) < 0) {
            snapfs_error_from_virt("cannot remove snapshot '%s' of domain '%s' while rolling back",
                                   journal->keep_name, st->name);
            ret = -1;
        }
        if (snap)
            virDomainSnapshotFree(snap);
    }
    for (guint i = 0; ret == 0 && i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);

        if (rd->keep_overlay)
            unlink_logged(rd->keep_overlay, "rolled back");
        if (rd->new_top && rd->new_created)
            unlink_logged(rd->new_top, "rolled back");
    }
    if (ret == 0 && journal->old_current && snapshot_exists(st->dom, journal->old_current))
        ret = snapshot_make_current(st, journal->old_current);
    if (ret == 0)
        ret = revert_journal_remove(journal);
    return ret;
}

/* Finish a revert past its commit point: the target current, the leftovers gone. */
static int revert_roll_forward(struct rstate *st, const struct revert_journal *journal, bool faults)
{
    g_autoptr(GPtrArray) disks = NULL;

    /* libvirt's own revert removes the current snapshot's overlays: the pre-revert one gets them back. */
    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);

        if (rd->keep_overlay && rd->old_top && !g_file_test(rd->keep_overlay, G_FILE_TEST_EXISTS) &&
            image_create_overlay(rd->keep_overlay, rd->old_top, NULL) < 0)
            return -1;
    }
    if (journal->phase != REVERT_PHASE_INTERNAL && (!st->current || strcmp(st->current, journal->target) != 0)) {
        if (snapshot_make_current(st, journal->target) < 0)
            return -1;
        if (faults)
            revert_fault("current");
    }
    disks = domain_disks_now(st);
    for (guint i = 0; disks && i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
        bool in_use = false;

        /* Never what the domain still runs on, whatever the journal says. */
        for (guint j = 0; rd->old_top && j < disks->len; j++) {
            struct rdisk *now = g_ptr_array_index(disks, j);

            in_use |= now->file && strcmp(now->file, rd->old_top) == 0;
        }
        if (rd->drop_old && rd->old_top && !in_use)
            unlink_logged(rd->old_top, "nothing needs it after the revert");
    }
    if (faults)
        revert_fault("cleanup");
    return revert_journal_remove(journal);
}

/* Settle one journal found on disk; @st is the domain's state now. */
static int revert_settle(struct rstate *st, struct revert_journal *journal)
{
    bool committed;

    if (journal->phase == REVERT_PHASE_BY_HAND)
        committed = domain_on_new_tops(st, journal);
    else
        committed = st->current && strcmp(st->current, journal->target) == 0 &&
                    (!journal->keep_name || snapshot_exists(st->dom, journal->keep_name));
    snapfs_info("%s the interrupted revert of domain '%s' to '%s'",
                committed ? "finishing" : "rolling back", st->name, journal->target);
    return committed ? revert_roll_forward(st, journal, false) : revert_roll_back(st, journal);
}

/* ---- the revert ------------------------------------------------------------------- */

static int revert_stop(virDomainPtr dom, const char *domain, const char *target)
{
    snapfs_info("stopping domain '%s' to revert it to '%s', as asked", domain, target);
    if (virDomainDestroyFlags(dom, VIR_DOMAIN_DESTROY_GRACEFUL) < 0 && virDomainDestroy(dom) < 0) {
        snapfs_error_from_virt("cannot stop domain '%s' to revert it to '%s'", domain, target);
        return -1;
    }
    return 0;
}

static bool virt_unsupported(void)
{
    virErrorPtr err = virGetLastError();

    return err && (err->code == VIR_ERR_CONFIG_UNSUPPORTED ||
                   (err->message && strstr(err->message, "not supported yet")));
}

/* The plan for reverting to external snapshot @target: which images to make, keep and drop. */
static struct revert_journal *plan_external(struct rstate *st, struct rsnap *target, const char *path,
                                            const struct revert_options *options, bool *noop)
{
    g_autoptr(revert_journal) journal = g_new0(struct revert_journal, 1);
    g_autoptr(GDateTime) now = g_date_time_new_now_local();
    g_autofree char *stamp = g_date_time_format(now, "%Y%m%d-%H%M%S");
    g_autoptr(GPtrArray) tops = g_ptr_array_new();
    struct rsnap *identical = rstate_identical(st, target);
    bool keep;
    GHashTableIter it;
    gpointer key, value;

    journal->path = g_strdup(path);
    journal->uri = g_strdup(st->uri);
    journal->domain = g_strdup(st->name);
    journal->uuid = g_strdup(st->uuid);
    journal->target = g_strdup(target->name);
    journal->phase = REVERT_PHASE_NATIVE;
    journal->old_current = g_strdup(st->current);
    journal->disks = g_ptr_array_new_with_free_func((GDestroyNotify)revert_disk_free);
    *noop = identical == target;
    if (*noop)
        return g_steal_pointer(&journal);

    for (guint i = 0; i < st->disks->len; i++) {
        struct rdisk *disk = g_ptr_array_index(st->disks, i);

        if (disk->file)
            g_ptr_array_add(tops, disk->file);
    }
    keep = options->keep && !identical;
    if (keep) {
        journal->keep_name = g_strdup_printf(KEEP_PREFIX "%s", stamp);
        for (int n = 2; snapshot_exists(st->dom, journal->keep_name); n++) {
            g_free(journal->keep_name);
            journal->keep_name = g_strdup_printf(KEEP_PREFIX "%s-%d", stamp, n);
        }
    }
    /* Every local disk the domain has now: its old top, and the pre-revert overlay on it. */
    for (guint i = 0; i < st->disks->len; i++) {
        struct rdisk *disk = g_ptr_array_index(st->disks, i);
        struct revert_disk *rd;

        if (!disk_is_local(disk))
            continue;
        rd = g_new0(struct revert_disk, 1);
        rd->target = g_strdup(disk->target);
        rd->old_top = g_strdup(disk->file);
        /* A disk the snapshot left out stays as it is: nothing of it is left behind to keep. */
        if (keep && g_hash_table_contains(target->frozen, disk->target)) {
            g_autofree char *dir = g_path_get_dirname(disk->file);

            rd->keep_overlay = overlay_name(dir, st->name, disk->target, journal->keep_name);
        }
        g_ptr_array_add(journal->disks, rd);
    }
    /* Every disk the snapshot froze: its own overlay where nothing was written to it since, else a new one. */
    g_hash_table_iter_init(&it, target->frozen);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        const char *t = key, *frozen = value;
        const char *own = g_hash_table_lookup(target->overlay, t);
        struct revert_disk *rd = NULL;

        for (guint j = 0; j < journal->disks->len; j++) {
            if (strcmp(((struct revert_disk *)g_ptr_array_index(journal->disks, j))->target, t) == 0)
                rd = g_ptr_array_index(journal->disks, j);
        }
        if (!rd) {
            rd = g_new0(struct revert_disk, 1);
            rd->target = g_strdup(t);
            g_ptr_array_add(journal->disks, rd);
        }
        if (own && image_empty(own) && !rstate_names_file(st, own, target->name) && !chains_hold(tops, own)) {
            g_autofree char *backing = image_backing(own, NULL);

            if (backing && strcmp(backing, frozen) == 0)
                rd->new_top = g_strdup(own);
        }
        if (!rd->new_top) {
            g_autofree char *dir = g_path_get_dirname(rd->old_top ? rd->old_top : own ? own : frozen);
            g_autofree char *what = g_strdup_printf("revert-%s-%s", target->name, stamp);

            rd->new_top = overlay_name(dir, st->name, t, what);
            rd->new_created = true;
        }
    }
    /* Old tops nobody needs once the domain left them: unlinked at the end, unless kept. */
    for (guint i = 0; !keep && i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
        g_autoptr(GPtrArray) new_tops = g_ptr_array_new();

        if (!rd->old_top || !rd->new_top || strcmp(rd->old_top, rd->new_top) == 0)
            continue;
        if (!image_empty(rd->old_top) && options->keep)
            continue;
        if (rstate_names_file(st, rd->old_top, NULL))
            continue;
        for (guint j = 0; j < journal->disks->len; j++) {
            struct revert_disk *other = g_ptr_array_index(journal->disks, j);
            const char *frozen = g_hash_table_lookup(target->frozen, other->target);

            if (frozen)
                g_ptr_array_add(new_tops, (gpointer)frozen);
        }
        if (!chains_hold(new_tops, rd->old_top))
            rd->drop_old = true;
    }
    return g_steal_pointer(&journal);
}

/* Whether @uri names this host (no server, or a loopback one), so that its images are files here. */
static bool uri_is_local(const char *uri)
{
    xmlURIPtr parsed = xmlParseURI(uri);
    bool local = true;

    if (parsed && parsed->server && parsed->server[0]) {
        const char *host = parsed->server;

        local = strcmp(host, "localhost") == 0 || g_str_has_prefix(host, "127.") || strcmp(host, "::1") == 0 ||
                g_ascii_strcasecmp(host, g_get_host_name()) == 0;
    }
    xmlFreeURI(parsed);
    return local;
}

/*
 * The by-hand path makes overlays next to the images and reads their
 * headers: it needs them as files on this host.  ENOTSUP otherwise, with why.
 */
static int revert_check_local(struct rstate *st, struct rsnap *target)
{
    GHashTableIter it;
    gpointer value;

    if (!uri_is_local(st->uri)) {
        snapfs_error_set(ENOTSUP, "cannot revert '%s' to '%s': libvirt at '%s' cannot revert to external "
                         "snapshots and snapfs needs the images as local files to do it by hand",
                         st->name, target->name, st->uri);
        return -1;
    }
    for (guint i = 0; i < st->disks->len; i++) {
        struct rdisk *disk = g_ptr_array_index(st->disks, i);

        if (disk_is_local(disk) && !g_file_test(disk->file, G_FILE_TEST_EXISTS)) {
            snapfs_error_set(ENOTSUP, "cannot revert '%s' to '%s': its image '%s' is not a file snapfs can see "
                             "on this host", st->name, target->name, disk->file);
            return -1;
        }
    }
    g_hash_table_iter_init(&it, target->frozen);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        if (!g_file_test(value, G_FILE_TEST_EXISTS)) {
            snapfs_error_set(ENOTSUP, "cannot revert '%s' to '%s': its image '%s' is not a file snapfs can see "
                             "on this host", st->name, target->name, (const char *)value);
            return -1;
        }
    }
    return 0;
}

static int revert_external(struct rstate *st, struct rsnap *target, const char *path,
                           const struct revert_options *options)
{
    g_autoptr(revert_journal) journal = NULL;
    g_autofree char *domain_xml = NULL;
    g_autofree char *keep = NULL;
    virDomainSnapshotPtr snap;
    bool noop = false;
    bool unsupported;
    int rc;

    journal = plan_external(st, target, path, options, &noop);
    if (noop) {
        /* Nothing was written since the domain left @target: only its name is missing. */
        snapfs_info("domain '%s' reads as snapshot '%s' already", st->name, target->name);
        return st->current && strcmp(st->current, target->name) == 0 ? 0 : snapshot_make_current(st, target->name);
    }
    /* Keeping the state left behind makes overlays here, whichever revert runs. */
    if (journal->keep_name && revert_check_local(st, target) < 0)
        return -1;
    if (revert_journal_write(journal) < 0)
        return -1;
    revert_fault("journal");

    if (journal->keep_name) {
        for (guint i = 0; i < journal->disks->len; i++) {
            struct revert_disk *rd = g_ptr_array_index(journal->disks, i);

            if (rd->keep_overlay && image_create_overlay(rd->keep_overlay, rd->old_top, NULL) < 0)
                goto fail;
        }
        for (guint i = 0; i < journal->disks->len; i++) {
            struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
            g_autofree char *dir = rd->keep_overlay ? g_path_get_dirname(rd->keep_overlay) : NULL;

            if (dir)
                revert_sync_path(dir);
        }
        revert_fault("keep-overlays");
        keep = keep_xml(st, journal);
        if (snapshot_redefine(st, keep, journal->keep_name, true) < 0)
            goto fail;
        g_free(st->current);
        st->current = g_strdup(journal->keep_name);
        snapfs_info("kept the state domain '%s' leaves as snapshot '%s'", st->name, journal->keep_name);
        revert_fault("keep");
    }

    /* libvirt's own revert, where the connected libvirt has it (9.9 and later). */
    snap = virDomainSnapshotLookupByName(st->dom, target->name, 0);
    rc = snap ? virDomainRevertToSnapshot(snap, 0) : -1;
    /* Read before virDomainSnapshotFree(), which clears libvirt's last error. */
    unsupported = rc < 0 && virt_unsupported();
    if (rc < 0 && !unsupported)
        snapfs_error_from_virt("cannot revert domain '%s' to '%s'", st->name, target->name);
    else if (unsupported)
        snapfs_debug("libvirt cannot revert to external snapshot '%s' (%s): snapfs does it",
                     target->name, virGetLastErrorMessage());
    if (snap)
        virDomainSnapshotFree(snap);
    if (rc == 0) {
        snapfs_info("libvirt reverted domain '%s' to '%s'", st->name, target->name);
        g_free(st->current);
        st->current = g_strdup(target->name);
        return revert_roll_forward(st, journal, true);
    }
    if (!unsupported)
        goto fail;
    if (revert_check_local(st, target) < 0)
        goto fail;
    journal->phase = REVERT_PHASE_BY_HAND;
    if (revert_journal_write(journal) < 0)
        goto fail;

    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
        const char *frozen = g_hash_table_lookup(target->frozen, rd->target);

        if (rd->new_top && rd->new_created &&
            image_create_overlay(rd->new_top, frozen, g_hash_table_lookup(target->frozen_format, rd->target)) < 0)
            goto fail;
        if (rd->new_top) {
            g_autofree char *dir = g_path_get_dirname(rd->new_top);

            revert_sync_path(dir);
        }
    }
    revert_fault("overlays");

    domain_xml = domain_xml_build(st, target, journal);
    if (!domain_xml)
        goto fail;
    {
        virDomainPtr dom = virDomainDefineXML(st->conn, domain_xml);

        if (!dom) {
            snapfs_error_from_virt("cannot redefine domain '%s' on the overlays of snapshot '%s'",
                                   st->name, target->name);
            goto fail;
        }
        virDomainFree(dom);
    }
    snapfs_info("domain '%s' now runs on new overlays over snapshot '%s'", st->name, target->name);
    revert_fault("domain");
    if (revert_roll_forward(st, journal, true) < 0) {
        snapfs_warn("domain '%s' was reverted to '%s' but not everything was finished (the next start "
                    "of snapfs finishes it): %s", st->name, target->name, snapfs_error_message());
    }
    return 0;

fail:
    {
        g_autofree char *reason = g_strdup(snapfs_error_message());
        int errnum = snapfs_error_errno();

        if (revert_roll_back(st, journal) < 0)
            snapfs_warn("cannot roll back the revert of domain '%s' (the next start of snapfs tries again): %s",
                        st->name, snapfs_error_message());
        snapfs_error_set(errnum, "%s", reason);
    }
    return -1;
}

static int revert_internal(struct rstate *st, struct rsnap *target, const char *path,
                           const struct revert_options *options)
{
    g_autoptr(revert_journal) journal = g_new0(struct revert_journal, 1);
    virDomainSnapshotPtr snap;
    int rc;

    journal->path = g_strdup(path);
    journal->uri = g_strdup(st->uri);
    journal->domain = g_strdup(st->name);
    journal->uuid = g_strdup(st->uuid);
    journal->target = g_strdup(target->name);
    journal->phase = REVERT_PHASE_INTERNAL;
    journal->old_current = g_strdup(st->current);
    journal->disks = g_ptr_array_new_with_free_func((GDestroyNotify)revert_disk_free);
    if (options->keep) {
        g_autoptr(GDateTime) now = g_date_time_new_now_local();
        g_autofree char *stamp = g_date_time_format(now, "%Y%m%d-%H%M%S");

        journal->keep_name = g_strdup_printf(KEEP_PREFIX "%s", stamp);
        for (int n = 2; snapshot_exists(st->dom, journal->keep_name); n++) {
            g_free(journal->keep_name);
            journal->keep_name = g_strdup_printf(KEEP_PREFIX "%s-%d", stamp, n);
        }
    }
    if (revert_journal_write(journal) < 0)
        return -1;
    revert_fault("journal");
    if (journal->keep_name) {
        /* An internal snapshot of what the disks hold now, as libvirt makes it by default. */
        g_autofree char *name = g_markup_escape_text(journal->keep_name, -1);
        g_autofree char *target_name = g_markup_escape_text(target->name, -1);
        g_autofree char *xml = g_strdup_printf("<domainsnapshot><name>%s</name><description>What the disks "
                                               "held when snapfs reverted to '%s'.</description></domainsnapshot>",
                                               name, target_name);

        snap = virDomainSnapshotCreateXML(st->dom, xml, 0);
        if (!snap) {
            snapfs_error_from_virt("cannot keep the state of domain '%s' as snapshot '%s' before reverting",
                                   st->name, journal->keep_name);
            revert_journal_remove(journal);
            return -1;
        }
        virDomainSnapshotFree(snap);
        revert_fault("keep");
    }
    snap = virDomainSnapshotLookupByName(st->dom, target->name, 0);
    rc = snap ? virDomainRevertToSnapshot(snap, 0) : -1;
    if (rc < 0)
        snapfs_error_from_virt("cannot revert domain '%s' to '%s'", st->name, target->name);
    if (snap)
        virDomainSnapshotFree(snap);
    if (rc < 0) {
        g_autofree char *reason = NULL;
        int errnum;

        reason = g_strdup(snapfs_error_message());
        errnum = snapfs_error_errno();
        if (revert_roll_back(st, journal) < 0)
            snapfs_warn("cannot roll back the revert of domain '%s': %s", st->name, snapfs_error_message());
        snapfs_error_set(errnum, "%s", reason);
        return -1;
    }
    revert_fault("current");
    return revert_journal_remove(journal);
}

/* A name the request did not find: a prefix of it that is a snapshot means trailing garbage. */
static int revert_not_found(virDomainPtr dom, const char *domain, const char *name)
{
    g_autofree char *prefix = g_strdup(name);
    char *space;

    while ((space = strrchr(prefix, ' '))) {
        *space = '\0';
        if (snapshot_exists(dom, prefix)) {
            snapfs_error_set(EINVAL, "cannot revert '%s': unexpected text after snapshot name '%s'", domain, prefix);
            return -1;
        }
    }
    snapfs_error_set(ENOENT, "cannot revert '%s' to '%s': there is no such snapshot", domain, name);
    return -1;
}

static const char *state_dir_of(const struct revert_options *options)
{
    return options && options->state_dir ? options->state_dir : "/var/lib/snapfs";
}

/*
 * A revert while another snapshot operation on the domain runs answers
 * EBUSY, but the engine's per-domain locks only wait.  So a helper thread
 * waits for the lock and holds it for us; if it has not got it within
 * REVERT_LOCK_WAIT_MS the revert gives up, and the helper lets go of the
 * lock as soon as it gets it.  (A GMutex must be unlocked by the thread
 * that locked it, hence a thread rather than a flag.)
 */
#define REVERT_LOCK_WAIT_MS 200

struct revert_hold {
    GMutex mutex;
    GCond cond;
    char *key;
    bool acquired;   /* the helper holds the domain's lock */
    bool abandoned;  /* the revert gave up waiting */
    bool done;       /* the revert is over: let go */
    gint refs;
};

static void revert_hold_unref(struct revert_hold *hold)
{
    if (!g_atomic_int_dec_and_test(&hold->refs))
        return;
    g_mutex_clear(&hold->mutex);
    g_cond_clear(&hold->cond);
    g_free(hold->key);
    g_free(hold);
}

static gpointer revert_hold_thread(gpointer data)
{
    struct revert_hold *hold = data;
    struct engine_lock *lock = engine_lock_domain(hold->key);

    g_mutex_lock(&hold->mutex);
    if (!hold->abandoned) {
        hold->acquired = true;
        g_cond_broadcast(&hold->cond);
        while (!hold->done)
            g_cond_wait(&hold->cond, &hold->mutex);
    }
    g_mutex_unlock(&hold->mutex);
    engine_unlock_domain(lock);
    revert_hold_unref(hold);
    return NULL;
}

/* The domain's lock held on our behalf, or NULL if another operation holds it (EBUSY is the caller's). */
static struct revert_hold *revert_lock(virConnectPtr conn, const char *domain)
{
    struct revert_hold *hold = g_new0(struct revert_hold, 1);
    gint64 deadline = g_get_monotonic_time() + REVERT_LOCK_WAIT_MS * G_TIME_SPAN_MILLISECOND;
    bool acquired;

    g_mutex_init(&hold->mutex);
    g_cond_init(&hold->cond);
    hold->key = engine_domain_key(conn, domain);
    hold->refs = 2;
    g_thread_unref(g_thread_new("snapfs-revert-lock", revert_hold_thread, hold));
    g_mutex_lock(&hold->mutex);
    while (!hold->acquired && g_cond_wait_until(&hold->cond, &hold->mutex, deadline))
        ;
    acquired = hold->acquired;
    if (!acquired)
        hold->abandoned = true;
    g_mutex_unlock(&hold->mutex);
    if (!acquired) {
        revert_hold_unref(hold);
        return NULL;
    }
    return hold;
}

static void revert_unlock(struct revert_hold *hold)
{
    if (!hold)
        return;
    g_mutex_lock(&hold->mutex);
    hold->done = true;
    g_cond_broadcast(&hold->cond);
    g_mutex_unlock(&hold->mutex);
    revert_hold_unref(hold);
}

int revert_write(virConnectPtr conn, const char *domain, const char *buf, size_t len,
                 const struct revert_options *options)
{
    struct revert_request request = { 0 };
    struct revert_hold *lock = NULL;
    virDomainPtr dom = NULL;
    g_autoptr(rstate) st = NULL;
    g_autofree char *uri = NULL;
    g_autofree char *path = NULL;
    struct rsnap *target;
    int active;
    int ret = -1;

    if (revert_parse(buf, len, &request) < 0)
        return -1;
    lock = revert_lock(conn, domain);
    if (!lock) {
        snapfs_error_set(EBUSY, "cannot revert '%s' to '%s': another snapshot operation on it is under way",
                         domain, request.name);
        goto cleanup;
    }
    dom = virDomainLookupByName(conn, domain);
    if (!dom) {
        snapfs_error_from_virt("cannot revert '%s'", domain);
        goto cleanup;
    }
    if (!snapshot_exists(dom, request.name)) {
        revert_not_found(dom, domain, request.name);
        goto cleanup;
    }
    uri = virConnectGetURI(conn);
    if (!uri) {
        snapfs_error_from_virt("cannot revert '%s'", domain);
        goto cleanup;
    }
    if (revert_journal_prepare_dir(state_dir_of(options)) < 0)
        goto cleanup;
    path = revert_journal_path(state_dir_of(options), uri, domain);
    if (g_file_test(path, G_FILE_TEST_EXISTS)) {
        /* An earlier revert of this domain was cut short: settle it before anything else. */
        g_autoptr(revert_journal) old = revert_journal_load(path);
        g_autoptr(rstate) before = old ? rstate_read(conn, dom) : NULL;

        if (!before || revert_settle(before, old) < 0)
            goto cleanup;
    }

    active = virDomainIsActive(dom);
    if (active < 0) {
        snapfs_error_from_virt("cannot revert '%s'", domain);
        goto cleanup;
    }
    if (virDomainIsPersistent(dom) == 0) {
        /* Stopping it would make it vanish, and redefining it would change what kind of domain it is. */
        snapfs_error_set(ENOTSUP, "cannot revert '%s' to '%s': it is a transient domain (revert needs a "
                         "defined one, as virsh define makes it)", domain, request.name);
        goto cleanup;
    }
    if (active && !request.force) {
        snapfs_error_set(EBUSY, "cannot revert '%s' to '%s': the domain is running (write '%s --force' "
                         "to stop it first)", domain, request.name, request.name);
        goto cleanup;
    }
    if (virDomainHasManagedSaveImage(dom, 0) == 1) {
        if (!request.force) {
            snapfs_error_set(EBUSY, "cannot revert '%s' to '%s': it has a saved memory state that would not "
                             "match the reverted disks (write '%s --force' to discard it)",
                             domain, request.name, request.name);
            goto cleanup;
        }
        if (virDomainManagedSaveRemove(dom, 0) < 0) {
            snapfs_error_from_virt("cannot discard the saved memory state of '%s'", domain);
            goto cleanup;
        }
    }
    if (active && revert_stop(dom, domain, request.name) < 0)
        goto cleanup;

    st = rstate_read(conn, dom);
    if (!st)
        goto cleanup;
    target = rstate_snap(st, request.name);
    if (!target) {
        snapfs_error_set(ENOENT, "cannot revert '%s' to '%s': there is no such snapshot", domain, request.name);
        goto cleanup;
    }
    if (target->external && g_hash_table_size(target->frozen) == 0) {
        snapfs_error_set(EIO, "cannot revert '%s' to '%s': the snapshot names no image it froze",
                         domain, request.name);
        goto cleanup;
    }
    ret = target->external ? revert_external(st, target, path, options)
                           : revert_internal(st, target, path, options);
    if (ret == 0)
        snapfs_info("reverted domain '%s' to snapshot '%s'", domain, request.name);

cleanup:
    if (dom)
        virDomainFree(dom);
    revert_unlock(lock);
    revert_request_clear(&request);
    return ret;
}

int revert_recover(virConnectPtr conn, const struct revert_options *options)
{
    g_autoptr(GPtrArray) paths = revert_journal_list(state_dir_of(options));
    g_autofree char *uri = virConnectGetURI(conn);
    int ret = 0;

    for (guint i = 0; uri && i < paths->len; i++) {
        g_autoptr(revert_journal) journal = revert_journal_load(g_ptr_array_index(paths, i));
        g_autoptr(rstate) st = NULL;
        struct engine_lock *lock;
        virDomainPtr dom;

        if (!journal) {
            snapfs_warn("%s", snapfs_error_message());
            ret = -1;
            continue;
        }
        if (strcmp(journal->uri, uri) != 0)
            continue;
        lock = engine_lock_domain_conn(conn, journal->domain);
        dom = journal->uuid ? virDomainLookupByUUIDString(conn, journal->uuid)
                            : virDomainLookupByName(conn, journal->domain);
        if (!dom) {
            /* The domain is gone: nothing of it to settle, its images are left as they are. */
            snapfs_warn("domain '%s' of an interrupted revert no longer exists; dropping its journal '%s'",
                        journal->domain, journal->path);
            if (revert_journal_remove(journal) < 0)
                ret = -1;
            engine_unlock_domain(lock);
            continue;
        }
        st = rstate_read(conn, dom);
        virDomainFree(dom);
        if (!st || revert_settle(st, journal) < 0) {
            snapfs_warn("cannot settle the interrupted revert of domain '%s': %s", journal->domain,
                        snapfs_error_message());
            ret = -1;
        }
        engine_unlock_domain(lock);
    }
    return ret;
}
