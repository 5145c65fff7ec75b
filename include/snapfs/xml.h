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

void snapfs_disk_free(struct snapfs_disk *disk);
void snapfs_snapshot_disk_free(struct snapfs_snapshot_disk *disk);
/* The disk of @disks (struct snapfs_disk *) with target @target, or NULL. */
struct snapfs_disk *snapfs_disk_find(GPtrArray *disks, const char *target);

/* Parses @xml (no network, no messages); NULL if it is not XML. Free with snapfs_xml_free(). */
xmlDocPtr snapfs_xml_read(const char *xml, xmlXPathContextPtr *ctxt);
void snapfs_xml_free(xmlDocPtr doc, xmlXPathContextPtr ctxt);

/* libxml2's objects released by g_autoptr, as libvirt's virxml.h does. */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlDoc, xmlFreeDoc)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlXPathContext, xmlXPathFreeContext)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlXPathObject, xmlXPathFreeObject)

/* @doc written out as text (g_free it), NULL if libxml2 fails. */
char *snapfs_xml_dump(xmlDocPtr doc);

/* The string value of @expr, relative to @node (NULL: the document), or NULL when empty. */
char *snapfs_xml_string(xmlXPathContextPtr ctxt, xmlNodePtr node, const char *expr);

/* Every <disk> below @prefix ("/domain", or "/domainsnapshot/domain"), in order: struct snapfs_disk *. */
GPtrArray *snapfs_xml_disks(xmlXPathContextPtr ctxt, const char *prefix);

/* The <disks><disk> of a <domainsnapshot>: struct snapfs_snapshot_disk *. */
GPtrArray *snapfs_xml_snapshot_disks(xmlXPathContextPtr ctxt);

/* --- engine --- */

/* Whether @expr selects at least one node. */
bool snapfs_xml_exists(xmlXPathContextPtr ctxt, const char *expr);

/* @xml (a <domainsnapshot>) with <description> set to @description, added if missing, as the user wrote it
 * (no entities expanded); NULL if it cannot be parsed. */
char *snapfs_xml_set_description(const char *xml, const char *description);
