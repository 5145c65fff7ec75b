/* SPDX-License-Identifier: GPL-2.0-or-later */
/* libvirt's XML, read and written in one place: documents with their XPath context, strings by XPath,
 * the one parser of <disk> elements; no other file calls libxml2's parser or serializer. */
#pragma once

#include <glib.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>
#include <stdbool.h>

/* A <disk> of a domain's XML. */
struct snapfs_disk {
    char *target;    /* "vda" */
    char *type;      /* "file", "block", "network", ...; "file" if unsaid */
    char *device;    /* "disk", "cdrom", ...; "disk" if unsaid */
    char *file;      /* source file or dev; NULL for network disks and empty drives */
    char *format;    /* driver type, NULL if unsaid */
    char *snapshot;  /* the disk's snapshot= attribute, NULL if unsaid */
    bool readonly;
};

/* A <disk> of a snapshot's own <disks>. */
struct snapfs_snapshot_disk {
    char *target;
    char *kind;      /* "internal", "external", "no", "manual"; "no" if unsaid */
    char *file;      /* external: the overlay this snapshot created */
    char *format;    /* its driver type, NULL if unsaid */
};

void xml_disk_free(struct snapfs_disk *disk);
void xml_snapshot_disk_free(struct snapfs_snapshot_disk *disk);
/* The disk of @disks (struct snapfs_disk *) with target @target, or NULL. */
struct snapfs_disk *xml_disk_find(GPtrArray *disks, const char *target);

/* Parses @xml (no network, no messages); NULL if it is not XML. Free with xml_free(). */
xmlDocPtr xml_read(const char *xml, xmlXPathContextPtr *ctxt);
void xml_free(xmlDocPtr doc, xmlXPathContextPtr ctxt);

/* libxml2's objects released by g_autoptr, as libvirt's virxml.h does. */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlDoc, xmlFreeDoc)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlXPathContext, xmlXPathFreeContext)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlXPathObject, xmlXPathFreeObject)

/* @doc written out as text (g_free it), NULL if libxml2 fails. */
char *xml_dump(xmlDocPtr doc);

/* The string value of @expr, relative to @node (NULL: the document), or NULL when empty. */
char *xml_string(xmlXPathContextPtr ctxt, xmlNodePtr node, const char *expr);

/* Every <disk> below @prefix ("/domain", or "/domainsnapshot/domain"), in order: struct snapfs_disk *. */
GPtrArray *xml_disks(xmlXPathContextPtr ctxt, const char *prefix);

/* The <disks><disk> of a <domainsnapshot>: struct snapfs_snapshot_disk *. */
GPtrArray *xml_snapshot_disks(xmlXPathContextPtr ctxt);

/* Whether @expr selects at least one node. */
bool xml_exists(xmlXPathContextPtr ctxt, const char *expr);

/* @xml (a <domainsnapshot>) with <description> set to @description, added if missing, as the user wrote it
 * (no entities expanded); NULL if it cannot be parsed. */
char *xml_set_description(const char *xml, const char *description);

/* The nodes @expr selects from the root (xmlNodePtr, owned by the document), in order; empty if none. */
GPtrArray *xml_nodes(xmlXPathContextPtr ctxt, const char *expr);

/*
 * The domain a snapshot's XML recorded (its <inactiveDomain>, else its
 * <domain>) as a document of its own rooted at <domain>, with @ctxt; NULL if
 * @snapshot_xml is not XML or records no domain.
 */
xmlDocPtr xml_read_snapshot_domain(const char *snapshot_xml, xmlXPathContextPtr *ctxt);

/* A domain's <name> and <uuid> (unless @uuid is NULL) set, taken as plain text, and its id= dropped. */
void xml_domain_set_identity(xmlDocPtr doc, const char *name, const char *uuid);

/*
 * Points the <disk> element @disk at the local file @file of @format: type
 * "file", the driver's type (a <driver name='qemu'> added if missing), a new
 * <source file=...> right after the driver, and no <backingStore> (the old
 * top's chain is not the new one's).
 */
void xml_disk_set_top(xmlNodePtr disk, const char *file, const char *format);

/*
 * Spells out @chain (struct snapfs_layer *, base first, the last one the
 * disk's own top, as from chain_read(); only the layers below it are
 * written, so the top may be a placeholder) as the nested <backingStore>
 * elements of <disk> @disk, replacing any it has, right after its <source>
 * (at the end if it has none).  -1 if libxml2 fails (nothing recorded: the
 * caller says what could not be spelled out).
 */
int xml_disk_set_backing(xmlNodePtr disk, GPtrArray *chain);

/*
 * A <domainsnapshot> for libvirt, named @name with @description (plain
 * text, escaped here).  Without @disks, just that: a snapshot libvirt makes
 * (internal, by default).  With @disks (struct snapfs_snapshot_disk *: kind
 * "external" with its file and format, anything else not snapshotted),
 * metadata to redefine: a shut-off state, @parent (NULL: none), @created
 * (seconds since the epoch), no memory, the disks, and @domain_xml (the
 * domain's <domain> element as text, NULL: none) as it is.
 */
char *xml_snapshot_new(const char *name, const char *description, const char *parent, gint64 created,
                              GPtrArray *disks, const char *domain_xml);
