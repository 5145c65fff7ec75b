/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Reading libvirt's XML: documents, XPath strings and the <disk> elements of domains and snapshots, for every part. */
#include "snapfs/xml.h"

#include <libxml/parser.h>
#include <string.h>

void snapfs_disk_free(struct snapfs_disk *disk)
{
    if (!disk)
        return;
    g_free(disk->target);
    g_free(disk->type);
    g_free(disk->device);
    g_free(disk->file);
    g_free(disk->format);
    g_free(disk->snapshot);
    g_free(disk);
}

void snapfs_snapshot_disk_free(struct snapfs_snapshot_disk *disk)
{
    if (!disk)
        return;
    g_free(disk->target);
    g_free(disk->kind);
    g_free(disk->file);
    g_free(disk->format);
    g_free(disk);
}

struct snapfs_disk *snapfs_disk_find(GPtrArray *disks, const char *target)
{
    for (guint i = 0; disks && i < disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(disks, i);

        if (disk->target && strcmp(disk->target, target) == 0)
            return disk;
    }
    return NULL;
}

xmlDocPtr snapfs_xml_read(const char *xml, xmlXPathContextPtr *ctxt)
{
    xmlDocPtr doc = xmlReadMemory(xml, (int)strlen(xml), "libvirt.xml", NULL,
                                  XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);

    *ctxt = doc ? xmlXPathNewContext(doc) : NULL;
    if (doc && !*ctxt) {
        xmlFreeDoc(doc);
        return NULL;
    }
    return doc;
}

void snapfs_xml_free(xmlDocPtr doc, xmlXPathContextPtr ctxt)
{
    xmlXPathFreeContext(ctxt);
    xmlFreeDoc(doc);
}

char *snapfs_xml_dump(xmlDocPtr doc)
{
    xmlChar *mem = NULL;
    int size = 0;
    char *text;

    xmlDocDumpMemory(doc, &mem, &size);
    if (!mem)
        return NULL;
    text = g_strndup((const char *)mem, (gsize)size);
    xmlFree(mem);
    return text;
}

char *snapfs_xml_string(xmlXPathContextPtr ctxt, xmlNodePtr node, const char *expr)
{
    xmlNodePtr saved = ctxt->node;
    xmlXPathObjectPtr obj;
    char *value = NULL;

    ctxt->node = node ? node : xmlDocGetRootElement(ctxt->doc);
    obj = xmlXPathEval((const xmlChar *)expr, ctxt);
    ctxt->node = saved;
    if (obj && obj->type == XPATH_STRING && obj->stringval && obj->stringval[0])
        value = g_strdup((const char *)obj->stringval);
    xmlXPathFreeObject(obj);
    return value;
}

/* The element nodes @expr selects, or NULL. */
static xmlXPathObjectPtr xml_nodes(xmlXPathContextPtr ctxt, const char *expr)
{
    xmlXPathObjectPtr obj = xmlXPathEval((const xmlChar *)expr, ctxt);

    if (obj && (obj->type != XPATH_NODESET || !obj->nodesetval)) {
        xmlXPathFreeObject(obj);
        return NULL;
    }
    return obj;
}

static char *xml_source(xmlXPathContextPtr ctxt, xmlNodePtr node)
{
    char *file = snapfs_xml_string(ctxt, node, "string(source/@file)");

    return file ? file : snapfs_xml_string(ctxt, node, "string(source/@dev)");
}

GPtrArray *snapfs_xml_disks(xmlXPathContextPtr ctxt, const char *prefix)
{
    g_autofree char *expr = g_strdup_printf("%s/devices/disk", prefix);
    GPtrArray *disks = g_ptr_array_new_with_free_func((GDestroyNotify)snapfs_disk_free);
    xmlXPathObjectPtr obj = xml_nodes(ctxt, expr);

    for (int i = 0; obj && i < obj->nodesetval->nodeNr; i++) {
        xmlNodePtr node = obj->nodesetval->nodeTab[i];
        struct snapfs_disk *disk = g_new0(struct snapfs_disk, 1);
        g_autofree char *readonly = snapfs_xml_string(ctxt, node, "string(count(readonly))");

        disk->target = snapfs_xml_string(ctxt, node, "string(target/@dev)");
        disk->type = snapfs_xml_string(ctxt, node, "string(@type)");
        disk->device = snapfs_xml_string(ctxt, node, "string(@device)");
        disk->snapshot = snapfs_xml_string(ctxt, node, "string(@snapshot)");
        disk->file = xml_source(ctxt, node);
        disk->format = snapfs_xml_string(ctxt, node, "string(driver/@type)");
        disk->readonly = readonly && strcmp(readonly, "0") != 0;
        if (!disk->type)
            disk->type = g_strdup("file");
        if (!disk->device)
            disk->device = g_strdup("disk");
        if (!disk->target) {
            snapfs_disk_free(disk);
            continue;
        }
        g_ptr_array_add(disks, disk);
    }
    xmlXPathFreeObject(obj);
    return disks;
}

GPtrArray *snapfs_xml_snapshot_disks(xmlXPathContextPtr ctxt)
{
    GPtrArray *disks = g_ptr_array_new_with_free_func((GDestroyNotify)snapfs_snapshot_disk_free);
    xmlXPathObjectPtr obj = xml_nodes(ctxt, "/domainsnapshot/disks/disk");

    for (int i = 0; obj && i < obj->nodesetval->nodeNr; i++) {
        xmlNodePtr node = obj->nodesetval->nodeTab[i];
        struct snapfs_snapshot_disk *disk = g_new0(struct snapfs_snapshot_disk, 1);

        disk->target = snapfs_xml_string(ctxt, node, "string(@name)");
        disk->kind = snapfs_xml_string(ctxt, node, "string(@snapshot)");
        disk->file = xml_source(ctxt, node);
        disk->format = snapfs_xml_string(ctxt, node, "string(driver/@type)");
        if (!disk->kind)
            disk->kind = g_strdup("no");
        if (!disk->target) {
            snapfs_snapshot_disk_free(disk);
            continue;
        }
        g_ptr_array_add(disks, disk);
    }
    xmlXPathFreeObject(obj);
    return disks;
}

/* --- engine --- */

bool snapfs_xml_exists(xmlXPathContextPtr ctxt, const char *expr)
{
    g_autoptr(xmlXPathObject) obj = xmlXPathEval((const xmlChar *)expr, ctxt);

    return obj && obj->type == XPATH_NODESET && obj->nodesetval && obj->nodesetval->nodeNr > 0;
}

char *snapfs_xml_set_description(const char *xml, const char *description)
{
    g_autoptr(xmlXPathContext) ctxt = NULL;
    g_autoptr(xmlDoc) doc = snapfs_xml_read(xml, &ctxt);
    xmlNodePtr root = doc ? xmlDocGetRootElement(doc) : NULL;
    xmlNodePtr desc = NULL;

    if (!root)
        return NULL;
    for (xmlNodePtr cur = root->children; cur; cur = cur->next)
        if (cur->type == XML_ELEMENT_NODE && strcmp((const char *)cur->name, "description") == 0)
            desc = cur;
    if (!desc)
        desc = xmlNewChild(root, NULL, (const xmlChar *)"description", NULL);
    /* xmlNodeSetContent would take '&' for an entity reference; the text must stay as the user wrote it. */
    xmlNodeSetContent(desc, NULL);
    xmlNodeAddContent(desc, (const xmlChar *)description);
    return snapfs_xml_dump(doc);
}
