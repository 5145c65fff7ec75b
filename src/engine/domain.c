/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A domain and its snapshots as the engine reads them from libvirt: disks, snapshot disks, the host, block jobs. */
#include "engine-priv.h"
#include "snapfs/error.h"
#include "snapfs/virt.h"

#include <errno.h>
#include <string.h>

GPtrArray *engine_parse_disks(const char *xml, bool inside_snapshot)
{
    g_autoptr(xmlXPathContext) ctxt = NULL;
    g_autoptr(xmlDoc) doc = xml_read(xml, &ctxt);

    if (!doc)
        return NULL;
    return xml_disks(ctxt, inside_snapshot ? "/domainsnapshot/domain" : "/domain");
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
    g_autoptr(xmlXPathContext) ctxt = NULL;
    g_autoptr(xmlDoc) doc = xml_read(xml, &ctxt);
    struct engine_snapshot_info *info;

    if (!doc)
        return NULL;
    info = g_new0(struct engine_snapshot_info, 1);
    info->name = xml_string(ctxt, NULL, "string(/domainsnapshot/name)");
    info->description = xml_string(ctxt, NULL, "string(/domainsnapshot/description)");
    if (!info->description)
        info->description = g_strdup("");
    info->disks = xml_snapshot_disks(ctxt);
    for (guint i = 0; i < info->disks->len; i++) {
        struct snapfs_snapshot_disk *disk = g_ptr_array_index(info->disks, i);

        if (strcmp(disk->kind, "external") == 0)
            info->external = true;
    }
    info->domain_disks = xml_disks(ctxt, "/domainsnapshot/domain");
    return info;
}

bool engine_conn_is_local(virConnectPtr conn)
{
    g_autofree char *uri = virConnectGetURI(conn);

    return host_uri_is_local(uri);
}

GPtrArray *engine_domain_disks(virDomainPtr dom, bool inactive)
{
    g_autofree char *xml = virDomainGetXMLDesc(dom, inactive ? VIR_DOMAIN_XML_INACTIVE : 0);
    GPtrArray *disks;

    if (!xml) {
        error_from_virt("cannot read the XML of '%s'", virDomainGetName(dom));
        return NULL;
    }
    disks = engine_parse_disks(xml, false);
    if (!disks)
        error_set(EIO, "cannot parse the XML of '%s'", virDomainGetName(dom));
    return disks;
}

bool engine_block_job_running(virDomainPtr dom, GPtrArray *disks, const char *what)
{
    if (virDomainIsActive(dom) != 1)
        return false;
    for (guint i = 0; i < disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(disks, i);
        virDomainBlockJobInfo info;

        if (!disk->target || !disk->file)
            continue;
        if (virDomainGetBlockJobInfo(dom, disk->target, &info, 0) > 0) {
            error_set(EBUSY, "%s: a block job is running on disk %s of '%s'", what, disk->target,
                             virDomainGetName(dom));
            return true;
        }
    }
    return false;
}
