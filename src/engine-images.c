/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What the engine reads before it acts: disks and snapshots from libvirt's XML, and which images need which. */
#include "engine-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>
#include <string.h>
#include <sys/stat.h>

static GMutex notify_mutex;
static void (*notify_fn)(const char *file, void *opaque);
static void *notify_opaque;
static engine_before_change_fn before_fn;
static void *before_opaque;

void engine_set_chain_changed(void (*fn)(const char *file, void *opaque), void *opaque)
{
    g_mutex_lock(&notify_mutex);
    notify_fn = fn;
    notify_opaque = opaque;
    g_mutex_unlock(&notify_mutex);
}

void engine_notify_chain_changed(const char *label, const char *file)
{
    void (*fn)(const char *file, void *opaque);
    void *opaque;

    g_mutex_lock(&notify_mutex);
    fn = notify_fn;
    opaque = notify_opaque;
    g_mutex_unlock(&notify_mutex);
    snapfs_debug("image '%s' of domain '%s' moved or merged", file, label);
    if (fn)
        fn(file, opaque);
}

void engine_set_before_change(engine_before_change_fn fn, void *opaque)
{
    g_mutex_lock(&notify_mutex);
    before_fn = fn;
    before_opaque = opaque;
    g_mutex_unlock(&notify_mutex);
}

int engine_before_change(const char *label, const char *what, const char *const *files)
{
    engine_before_change_fn fn;
    void *opaque;

    g_mutex_lock(&notify_mutex);
    fn = before_fn;
    opaque = before_opaque;
    g_mutex_unlock(&notify_mutex);
    return fn ? fn(label, what, files, opaque) : 0;
}

/* ---- XML ------------------------------------------------------------------------ */

static xmlDocPtr xml_read(const char *xml)
{
    return xmlReadMemory(xml, (int)strlen(xml), "libvirt.xml", NULL,
                         XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
}

GPtrArray *engine_parse_disks(const char *xml, bool inside_snapshot)
{
    xmlXPathContextPtr ctxt = NULL;
    xmlDocPtr doc = snapfs_xml_read(xml, &ctxt);
    GPtrArray *disks;

    if (!doc)
        return NULL;
    disks = snapfs_xml_disks(ctxt, inside_snapshot ? "/domainsnapshot/domain" : "/domain");
    snapfs_xml_free(doc, ctxt);
    return disks;
}

bool engine_disk_is_snapshotted(const struct snapfs_disk *disk)
{
    /* libvirt's defaults for a disk-only snapshot: no overlay for read-only or removable media. */
    if (disk->snapshot && strcmp(disk->snapshot, "no") == 0)
        return false;
    if (disk->readonly || strcmp(disk->device, "cdrom") == 0 || strcmp(disk->device, "floppy") == 0)
        return false;
    return disk->target != NULL;
}

void engine_snapshot_info_free(struct engine_snapshot_info *info)
{
    if (!info)
        return;
    g_free(info->name);
    g_free(info->description);
    if (info->disks)
        g_ptr_array_unref(info->disks);
    if (info->domain_disks)
        g_ptr_array_unref(info->domain_disks);
    g_free(info);
}

struct engine_snapshot_info *engine_parse_snapshot(const char *xml)
{
    xmlXPathContextPtr ctxt = NULL;
    xmlDocPtr doc = snapfs_xml_read(xml, &ctxt);
    struct engine_snapshot_info *info;

    if (!doc)
        return NULL;
    info = g_new0(struct engine_snapshot_info, 1);
    info->name = snapfs_xml_string(ctxt, NULL, "string(/domainsnapshot/name)");
    info->description = snapfs_xml_string(ctxt, NULL, "string(/domainsnapshot/description)");
    if (!info->description)
        info->description = g_strdup("");
    info->disks = snapfs_xml_snapshot_disks(ctxt);
    for (guint i = 0; i < info->disks->len; i++) {
        struct snapfs_snapshot_disk *disk = g_ptr_array_index(info->disks, i);

        if (strcmp(disk->kind, "external") == 0)
            info->external = true;
    }
    info->domain_disks = snapfs_xml_disks(ctxt, "/domainsnapshot/domain");
    snapfs_xml_free(doc, ctxt);
    return info;
}

char *engine_snapshot_xml_set_description(const char *xml, const char *description)
{
    xmlDocPtr doc = xml_read(xml);
    xmlNodePtr root, desc = NULL;
    xmlChar *out = NULL;
    int len = 0;
    char *ret;

    if (!doc)
        return NULL;
    root = xmlDocGetRootElement(doc);
    for (xmlNodePtr cur = root ? root->children : NULL; cur; cur = cur->next)
        if (cur->type == XML_ELEMENT_NODE && strcmp((const char *)cur->name, "description") == 0)
            desc = cur;
    if (!root) {
        xmlFreeDoc(doc);
        return NULL;
    }
    if (!desc)
        desc = xmlNewChild(root, NULL, (const xmlChar *)"description", NULL);
    /* xmlNodeSetContent would take '&' for an entity reference; the text must stay as the user wrote it. */
    xmlNodeSetContent(desc, NULL);
    xmlNodeAddContent(desc, (const xmlChar *)description);
    xmlDocDumpMemory(doc, &out, &len);
    ret = out ? g_strndup((const char *)out, (gsize)len) : NULL;
    xmlFree(out);
    xmlFreeDoc(doc);
    return ret;
}

/* ---- images -------------------------------------------------------------------- */

void engine_images_free(struct engine_images *images)
{
    if (!images)
        return;
    g_hash_table_unref(images->backing);
    g_hash_table_unref(images->tops);
    g_hash_table_unref(images->named);
    g_free(images);
}

static struct engine_images *images_new(void)
{
    struct engine_images *images = g_new0(struct engine_images, 1);

    images->backing = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    images->tops = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    images->named = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    return images;
}

void engine_images_add_chain(struct engine_images *images, const char *file, const char *format)
{
    g_autofree char *cur = g_strdup(file);
    g_autofree char *fmt = g_strdup(format);

    /* One header at a time, so that a chain shared by many snapshots is read once. */
    for (int depth = 0; cur && depth < 256; depth++) {
        struct snapfs_layer *layer;
        char *below = NULL;

        if (g_hash_table_contains(images->backing, cur))
            return;
        layer = snapfs_chain_read_layer(cur, fmt);
        if (!layer) {
            /* An image that cannot be read still counts as needed by whoever names it. */
            snapfs_debug("cannot read image '%s': %s", cur, snapfs_error_message());
            g_hash_table_insert(images->backing, g_strdup(cur), g_strdup(""));
            return;
        }
        if (layer->backing && !strchr(layer->backing, ':'))
            below = snapfs_chain_resolve(cur, layer->backing);
        else if (layer->backing && layer->backing[0] == '/')
            below = g_strdup(layer->backing);
        g_hash_table_insert(images->backing, g_strdup(cur), g_strdup(below ? below : ""));
        g_free(fmt);
        fmt = g_strdup(layer->backing_format);
        snapfs_layer_free(layer);
        g_free(cur);
        cur = below;
    }
}

GPtrArray *engine_chain_files(const char *top, const char *format)
{
    struct engine_images *images = images_new();
    GPtrArray *files = g_ptr_array_new_with_free_func(g_free);
    const char *cur = top;

    engine_images_add_chain(images, top, format);
    while (cur && *cur && files->len < 256) {
        g_ptr_array_add(files, g_strdup(cur));
        cur = g_hash_table_lookup(images->backing, cur);
    }
    engine_images_free(images);
    return files;
}

static void images_add_disks(struct engine_images *images, GPtrArray *disks, const char *domain,
                             const char *snapshot)
{
    for (guint i = 0; disks && i < disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(disks, i);

        if (!disk->file || strcmp(disk->type, "network") == 0)
            continue;
        engine_images_add_chain(images, disk->file, disk->format);
        if (snapshot)
            g_hash_table_insert(images->named, g_strdup(disk->file), g_strdup_printf("%s/%s", domain, snapshot));
        else
            g_hash_table_insert(images->tops, g_strdup(disk->file), g_strdup_printf("%s %s", domain, disk->target));
    }
}

static void images_add_domain(struct engine_images *images, virDomainPtr dom, bool running,
                              bool with_snapshots, const char *skip_snapshot)
{
    const char *name = virDomainGetName(dom);
    virDomainSnapshotPtr *snaps = NULL;
    int n;

    for (int inactive = 0; inactive < 2; inactive++) {
        GPtrArray *disks;

        if (!inactive && !running)
            continue;
        disks = engine_domain_disks(dom, inactive);
        images_add_disks(images, disks, name, NULL);
        if (disks)
            g_ptr_array_unref(disks);
    }
    if (!with_snapshots)
        return;
    n = virDomainListAllSnapshots(dom, &snaps, 0);
    for (int i = 0; i < n; i++) {
        const char *snap_name = virDomainSnapshotGetName(snaps[i]);
        g_autofree char *xml = NULL;
        struct engine_snapshot_info *info = NULL;

        if (skip_snapshot && strcmp(snap_name, skip_snapshot) == 0)
            goto next;
        xml = virDomainSnapshotGetXMLDesc(snaps[i], 0);
        info = xml ? engine_parse_snapshot(xml) : NULL;
        if (!info)
            goto next;
        for (guint d = 0; d < info->disks->len; d++) {
            struct snapfs_snapshot_disk *disk = g_ptr_array_index(info->disks, d);

            if (disk->file && strcmp(disk->kind, "external") == 0) {
                engine_images_add_chain(images, disk->file, disk->format);
                g_hash_table_insert(images->named, g_strdup(disk->file), g_strdup_printf("%s/%s", name, snap_name));
            }
        }
        /* The domain as it was: for an internal snapshot, the images that hold it. */
        images_add_disks(images, info->domain_disks, name, snap_name);
next:
        engine_snapshot_info_free(info);
        virDomainSnapshotFree(snaps[i]);
    }
    free(snaps);
}

struct engine_images *engine_images_collect(virConnectPtr conn, const char *domain,
                                            const char *skip_snapshot)
{
    struct engine_images *images = images_new();

    /* Listing running and shut-off domains apart saves asking each whether it runs. */
    for (int running = 0; running < 2; running++) {
        virDomainPtr *doms = NULL;
        int n = virConnectListAllDomains(conn, &doms, running ? VIR_CONNECT_LIST_DOMAINS_ACTIVE
                                                              : VIR_CONNECT_LIST_DOMAINS_INACTIVE);

        if (n < 0) {
            snapfs_error_from_virt("cannot list the domains to see which images they use");
            engine_images_free(images);
            return NULL;
        }
        for (int i = 0; i < n; i++) {
            images_add_domain(images, doms[i], running, strcmp(virDomainGetName(doms[i]), domain) == 0,
                              skip_snapshot);
            virDomainFree(doms[i]);
        }
        free(doms);
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

/* ---- what changed --------------------------------------------------------------- */

struct file_state {
    struct stat st;
    char *backing;
};

static void file_state_free(gpointer data)
{
    struct file_state *state = data;

    g_free(state->backing);
    g_free(state);
}

static struct file_state *file_state_read(const char *file)
{
    struct file_state *state = g_new0(struct file_state, 1);

    if (stat(file, &state->st) < 0) {
        g_free(state);
        return NULL;
    }
    /*
     * Not the header: its format is not known here, and formats are never guessed.  A new backing
     * name is a write to the file, which its modification time shows.
     */
    state->backing = g_strdup("");
    return state;
}

GHashTable *engine_files_state(GPtrArray *files)
{
    GHashTable *states = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, file_state_free);

    for (guint i = 0; i < files->len; i++) {
        const char *file = g_ptr_array_index(files, i);
        struct file_state *state;

        if (g_hash_table_contains(states, file))
            continue;
        state = file_state_read(file);
        if (state)
            g_hash_table_insert(states, g_strdup(file), state);
    }
    return states;
}

void engine_notify_changed_since(const char *label, GHashTable *before)
{
    GHashTableIter iter;
    gpointer key, value;

    g_hash_table_iter_init(&iter, before);
    while (g_hash_table_iter_next(&iter, &key, &value)) {
        struct file_state *old = value;
        struct file_state *now = file_state_read(key);
        bool changed = !now || now->st.st_ino != old->st.st_ino || now->st.st_size != old->st.st_size ||
                       now->st.st_mtim.tv_sec != old->st.st_mtim.tv_sec ||
                       now->st.st_mtim.tv_nsec != old->st.st_mtim.tv_nsec ||
                       strcmp(now->backing, old->backing) != 0;

        if (changed)
            engine_notify_chain_changed(label, key);
        if (now)
            file_state_free(now);
    }
}
