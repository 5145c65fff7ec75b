/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Reading libvirt's XML: documents, XPath strings and the <disk> elements of domains and snapshots, for every part. */
#include "snapfs/xml.h"
#include "snapfs/chain.h"

#include <libxml/parser.h>
#include <string.h>

void xml_disk_free(struct snapfs_disk *disk)
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

void xml_snapshot_disk_free(struct snapfs_snapshot_disk *disk)
{
    if (!disk)
        return;
    g_free(disk->target);
    g_free(disk->kind);
    g_free(disk->file);
    g_free(disk->format);
    g_free(disk);
}

struct snapfs_disk *xml_disk_find(GPtrArray *disks, const char *target)
{
    for (guint i = 0; disks && i < disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(disks, i);

        if (disk->target && strcmp(disk->target, target) == 0)
            return disk;
    }
    return NULL;
}

xmlDocPtr xml_read(const char *xml, xmlXPathContextPtr *ctxt)
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

void xml_free(xmlDocPtr doc, xmlXPathContextPtr ctxt)
{
    xmlXPathFreeContext(ctxt);
    xmlFreeDoc(doc);
}

char *xml_dump(xmlDocPtr doc)
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

char *xml_string(xmlXPathContextPtr ctxt, xmlNodePtr node, const char *expr)
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

GPtrArray *xml_nodes(xmlXPathContextPtr ctxt, const char *expr)
{
    GPtrArray *nodes = g_ptr_array_new();
    xmlNodePtr saved = ctxt->node;
    g_autoptr(xmlXPathObject) obj = NULL;

    ctxt->node = xmlDocGetRootElement(ctxt->doc);
    obj = xmlXPathEval((const xmlChar *)expr, ctxt);
    ctxt->node = saved;
    for (int i = 0; obj && obj->type == XPATH_NODESET && obj->nodesetval && i < obj->nodesetval->nodeNr; i++)
        g_ptr_array_add(nodes, obj->nodesetval->nodeTab[i]);
    return nodes;
}

static char *xml_source(xmlXPathContextPtr ctxt, xmlNodePtr node)
{
    char *file = xml_string(ctxt, node, "string(source/@file)");

    return file ? file : xml_string(ctxt, node, "string(source/@dev)");
}

GPtrArray *xml_disks(xmlXPathContextPtr ctxt, const char *prefix)
{
    g_autofree char *expr = g_strdup_printf("%s/devices/disk", prefix);
    GPtrArray *disks = g_ptr_array_new_with_free_func((GDestroyNotify)xml_disk_free);
    g_autoptr(GPtrArray) nodes = xml_nodes(ctxt, expr);

    for (guint i = 0; i < nodes->len; i++) {
        xmlNodePtr node = g_ptr_array_index(nodes, i);
        struct snapfs_disk *disk = g_new0(struct snapfs_disk, 1);
        g_autofree char *readonly = xml_string(ctxt, node, "string(count(readonly))");

        disk->target = xml_string(ctxt, node, "string(target/@dev)");
        disk->type = xml_string(ctxt, node, "string(@type)");
        disk->device = xml_string(ctxt, node, "string(@device)");
        disk->snapshot = xml_string(ctxt, node, "string(@snapshot)");
        disk->file = xml_source(ctxt, node);
        disk->format = xml_string(ctxt, node, "string(driver/@type)");
        disk->readonly = readonly && strcmp(readonly, "0") != 0;
        if (!disk->type)
            disk->type = g_strdup("file");
        if (!disk->device)
            disk->device = g_strdup("disk");
        if (!disk->target) {
            xml_disk_free(disk);
            continue;
        }
        g_ptr_array_add(disks, disk);
    }
    return disks;
}

GPtrArray *xml_snapshot_disks(xmlXPathContextPtr ctxt)
{
    GPtrArray *disks = g_ptr_array_new_with_free_func((GDestroyNotify)xml_snapshot_disk_free);
    g_autoptr(GPtrArray) nodes = xml_nodes(ctxt, "/domainsnapshot/disks/disk");

    for (guint i = 0; i < nodes->len; i++) {
        xmlNodePtr node = g_ptr_array_index(nodes, i);
        struct snapfs_snapshot_disk *disk = g_new0(struct snapfs_snapshot_disk, 1);

        disk->target = xml_string(ctxt, node, "string(@name)");
        disk->kind = xml_string(ctxt, node, "string(@snapshot)");
        disk->file = xml_source(ctxt, node);
        disk->format = xml_string(ctxt, node, "string(driver/@type)");
        if (!disk->kind)
            disk->kind = g_strdup("no");
        if (!disk->target) {
            xml_snapshot_disk_free(disk);
            continue;
        }
        g_ptr_array_add(disks, disk);
    }
    return disks;
}

bool xml_exists(xmlXPathContextPtr ctxt, const char *expr)
{
    g_autoptr(xmlXPathObject) obj = xmlXPathEval((const xmlChar *)expr, ctxt);

    return obj && obj->type == XPATH_NODESET && obj->nodesetval && obj->nodesetval->nodeNr > 0;
}

char *xml_set_description(const char *xml, const char *description)
{
    g_autoptr(xmlXPathContext) ctxt = NULL;
    g_autoptr(xmlDoc) doc = xml_read(xml, &ctxt);
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
    return xml_dump(doc);
}


/* The first child element of @node named @name, or NULL. */
static xmlNodePtr xml_first_child(xmlNodePtr node, const char *name)
{
    for (xmlNodePtr c = node->children; c; c = c->next) {
        if (c->type == XML_ELEMENT_NODE && strcmp((const char *)c->name, name) == 0)
            return c;
    }
    return NULL;
}

/* Unlinks and frees every child element of @node named @name. */
static void xml_drop_children(xmlNodePtr node, const char *name)
{
    xmlNodePtr next;

    for (xmlNodePtr c = node->children; c; c = next) {
        next = c->next;
        if (c->type == XML_ELEMENT_NODE && strcmp((const char *)c->name, name) == 0) {
            xmlUnlinkNode(c);
            xmlFreeNode(c);
        }
    }
}

/* Sets the text of @node to @text, taken as it is. */
static void xml_set_text(xmlNodePtr node, const char *text)
{
    /* SetContent would read entities in the text; AddContent takes it as it is. */
    xmlNodeSetContent(node, NULL);
    xmlNodeAddContent(node, (const xmlChar *)text);
}

xmlDocPtr xml_read_snapshot_domain(const char *snapshot_xml, xmlXPathContextPtr *ctxt)
{
    g_autoptr(xmlXPathContext) sctxt = NULL;
    g_autoptr(xmlDoc) sdoc = xml_read(snapshot_xml, &sctxt);
    g_autoptr(xmlDoc) doc = NULL;
    xmlNodePtr root, dom;

    *ctxt = NULL;
    if (!sdoc)
        return NULL;
    root = xmlDocGetRootElement(sdoc);
    dom = xml_first_child(root, "inactiveDomain");
    if (!dom)
        dom = xml_first_child(root, "domain");
    if (!dom)
        return NULL;
    doc = xmlNewDoc((const xmlChar *)"1.0");
    xmlDocSetRootElement(doc, xmlDocCopyNode(dom, doc, 1));
    xmlNodeSetName(xmlDocGetRootElement(doc), (const xmlChar *)"domain");
    *ctxt = xmlXPathNewContext(doc);
    return *ctxt ? g_steal_pointer(&doc) : NULL;
}

void xml_domain_set_identity(xmlDocPtr doc, const char *name, const char *uuid)
{
    xmlNodePtr root = xmlDocGetRootElement(doc);
    xmlNodePtr name_node = xml_first_child(root, "name");
    xmlNodePtr uuid_node = xml_first_child(root, "uuid");

    if (name_node)
        xml_set_text(name_node, name);
    if (uuid_node && uuid)
        xml_set_text(uuid_node, uuid);
    xmlUnsetProp(root, (const xmlChar *)"id");
}

void xml_disk_set_top(xmlNodePtr disk, const char *file, const char *format)
{
    xmlNodePtr driver, source;

    xmlSetProp(disk, (const xmlChar *)"type", (const xmlChar *)"file");
    driver = xml_first_child(disk, "driver");
    if (!driver) {
        driver = xmlNewDocNode(disk->doc, NULL, (const xmlChar *)"driver", NULL);
        xmlSetProp(driver, (const xmlChar *)"name", (const xmlChar *)"qemu");
        xmlAddChild(disk, driver);
    }
    xmlSetProp(driver, (const xmlChar *)"type", (const xmlChar *)format);
    /* The old top's chain is not the new one's: xml_disk_set_backing() spells that out. */
    xml_drop_children(disk, "backingStore");
    xml_drop_children(disk, "source");
    source = xmlNewDocNode(disk->doc, NULL, (const xmlChar *)"source", NULL);
    xmlSetProp(source, (const xmlChar *)"file", (const xmlChar *)file);
    xmlAddNextSibling(driver, source);
}

int xml_disk_set_backing(xmlNodePtr disk, GPtrArray *chain)
{
    g_autofree char *inner = chain_backing_xml(chain);
    g_autofree char *wrapped = g_strdup_printf("<x>%s</x>", inner);
    g_autoptr(xmlDoc) frag = xmlReadMemory(wrapped, (int)strlen(wrapped), "backing.xml", NULL,
                                           XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    xmlNodePtr first = frag ? xml_first_child(xmlDocGetRootElement(frag), "backingStore") : NULL;
    xmlNodePtr node, source;

    if (!first)
        return -1;
    node = xmlDocCopyNode(first, disk->doc, 1);
    if (!node)
        return -1;
    xml_drop_children(disk, "backingStore");
    source = xml_first_child(disk, "source");
    if (source)
        xmlAddNextSibling(source, node);
    else
        xmlAddChild(disk, node);
    return 0;
}

/* @text escaped as XML element content or attribute value (NULL: empty). */
static char *xml_escaped(const char *text)
{
    return g_markup_escape_text(text ? text : "", -1);
}

/* One <disk> of a snapshot's <disks>: external on @disk->file of @disk->format, or not snapshotted. */
static void xml_append_snapshot_disk(GString *xml, const struct snapfs_snapshot_disk *disk)
{
    g_autofree char *target = xml_escaped(disk->target);

    if (disk->file && strcmp(disk->kind, "external") == 0) {
        g_autofree char *file = xml_escaped(disk->file);
        g_autofree char *format = xml_escaped(disk->format);

        g_string_append_printf(xml, "    <disk name='%s' snapshot='external' type='file'>\n"
                                    "      <driver type='%s'/>\n      <source file='%s'/>\n    </disk>\n",
                               target, format, file);
    } else {
        g_string_append_printf(xml, "    <disk name='%s' snapshot='no'/>\n", target);
    }
}

char *xml_snapshot_new(const char *name, const char *description, const char *parent, gint64 created,
                              GPtrArray *disks, const char *domain_xml)
{
    g_autofree char *name_text = xml_escaped(name);
    g_autofree char *description_text = xml_escaped(description);
    GString *xml;

    if (!disks)
        return g_strdup_printf("<domainsnapshot><name>%s</name><description>%s</description></domainsnapshot>",
                               name_text, description_text);
    xml = g_string_new("<domainsnapshot>\n");
    g_string_append_printf(xml, "  <name>%s</name>\n", name_text);
    g_string_append_printf(xml, "  <description>%s</description>\n", description_text);
    g_string_append(xml, "  <state>shutoff</state>\n");
    if (parent) {
        g_autofree char *parent_text = xml_escaped(parent);

        g_string_append_printf(xml, "  <parent>\n    <name>%s</name>\n  </parent>\n", parent_text);
    }
    g_string_append_printf(xml, "  <creationTime>%" G_GINT64_FORMAT "</creationTime>\n", created);
    g_string_append(xml, "  <memory snapshot='no'/>\n  <disks>\n");
    for (guint i = 0; i < disks->len; i++)
        xml_append_snapshot_disk(xml, g_ptr_array_index(disks, i));
    g_string_append(xml, "  </disks>\n");
    g_string_append(xml, domain_xml ? domain_xml : "");
    g_string_append(xml, "</domainsnapshot>\n");
    return g_string_free(xml, FALSE);
}
