/* SPDX-License-Identifier: GPL-2.0-or-later */
/* mkdir and setfattr: snapshot names, the external disk-only snapshot with the overlays made private, descriptions. */
#include "engine-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/virt.h"
#include "snapfs/log.h"

#include <errno.h>
#include <fcntl.h>
#include <libvirt/virterror.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int engine_check_name(const char *name)
{
    if (!name || !*name) {
        error_set(EINVAL, "a snapshot needs a name");
        return -1;
    }
    if (engine_name_reserved(name)) {
        error_set(EEXIST, "'%s' is reserved in a domain's directory and cannot name a snapshot", name);
        return -1;
    }
    /* File managers and editors make dot-directories of their own; they must never become snapshots. */
    if (name[0] == '.') {
        error_set(EINVAL, "'%s' cannot name a snapshot: it starts with a dot", name);
        return -1;
    }
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        if (*p == '/' || *p < 0x20 || *p == 0x7f) {
            g_autofree char *shown = g_strescape(name, NULL);

            error_set(EINVAL, "'%s' cannot name a snapshot: it holds a '/' or a control character", shown);
            return -1;
        }
    }
    /* libvirt keeps names in XML, which takes only UTF-8. */
    if (!g_utf8_validate(name, -1, NULL)) {
        g_autofree char *shown = g_strescape(name, NULL);

        error_set(EINVAL, "'%s' cannot name a snapshot: it is not valid UTF-8", shown);
        return -1;
    }
    return 0;
}

/* ---- mkdir ------------------------------------------------------------------------- */

/* The overlay libvirt names by default: the image's name with its extension replaced by the snapshot's. */
static char *create_overlay_name(const char *file, const char *name)
{
    const char *dot = strrchr(file, '.');
    g_autofree char *stem = dot && !strchr(dot, '/') ? g_strndup(file, (gsize)(dot - file)) : g_strdup(file);

    return g_strdup_printf("%s.%s", stem, name);
}

/* Whether the guest agent is there to freeze the guest's filesystems (it says so in the live XML). */
static bool create_agent_connected(virDomainPtr dom)
{
    g_autofree char *xml = virDomainGetXMLDesc(dom, 0);
    g_autoptr(xmlXPathContext) ctxt = NULL;
    g_autoptr(xmlDoc) doc = xml ? xml_read(xml, &ctxt) : NULL;

    return doc && xml_exists(ctxt, "/domain/devices/channel/target"
                                          "[@name='org.qemu.guest_agent.0' and @state='connected']");
}

/* Refusals that must come before libvirt touches anything: the name taken, a file in the way, a block job. */
static int create_check(virDomainPtr dom, const char *domain, const char *name, GPtrArray *disks, bool local)
{
    g_autoptr(virDomainSnapshot) existing = virDomainSnapshotLookupByName(dom, name, 0);
    g_autofree char *what = g_strdup_printf("cannot create snapshot '%s' of '%s'", name, domain);
    guint snapshotted = 0;

    if (existing) {
        error_set(EEXIST, "%s: a snapshot of that name exists", what);
        return -1;
    }
    if (engine_block_job_running(dom, disks, what))
        return -1;
    for (guint i = 0; i < disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(disks, i);
        g_autofree char *overlay = NULL;
        g_autofree char *base = NULL;
        struct stat st;

        if (!engine_disk_is_snapshotted(disk))
            continue;
        if (!disk->file) {
            error_set(ENOTSUP, "%s: disk %s has no local image to put an overlay beside", what,
                             disk->target);
            return -1;
        }
        snapshotted++;
        overlay = create_overlay_name(disk->file, name);
        base = g_path_get_basename(overlay);
        if (strlen(base) > NAME_MAX) {
            error_set(ENAMETOOLONG, "%s: the overlay of disk %s would be named '%s', too long a file name",
                             what, disk->target, base);
            return -1;
        }
        /* lstat: a link, dangling or not, takes the name too (libvirt would write through it). */
        if (local && lstat(overlay, &st) == 0) {
            error_set(EEXIST, "%s: the overlay of disk %s, '%s', exists already", what, disk->target, overlay);
            return -1;
        }
        /* libvirt writes the formats it finds into the overlay: every one must be recorded, none guessed. */
        if (local && strcmp(disk->type, "network") != 0) {
            g_autoptr(GPtrArray) chain = chain_read(disk->file, disk->format);

            if (!chain) {
                g_autofree char *reason = g_strdup(error_message());

                error_set(error_errno(), "%s: disk %s: %s", what, disk->target, reason);
                return -1;
            }
        }
    }
    if (!snapshotted) {
        error_set(ENOTSUP, "%s: it has no writable disk to snapshot", what);
        return -1;
    }
    return 0;
}

/* The uid qemu runs as, from the live XML's DAC label ("+64055:+64055"); -1 where it does not say. */
static long create_qemu_uid(virDomainPtr dom)
{
    g_autofree char *xml = virDomainGetXMLDesc(dom, 0);
    g_autoptr(xmlXPathContext) ctxt = NULL;
    g_autoptr(xmlDoc) doc = xml ? xml_read(xml, &ctxt) : NULL;
    g_autofree char *label = doc ? xml_string(ctxt, NULL, "string(/domain/seclabel[@model='dac']/label)")
                                 : NULL;
    long uid = -1;

    if (label) {
        char *end = NULL;
        const char *p = label[0] == '+' ? label + 1 : label;
        long value = strtol(p, &end, 10);

        if (end != p && *end == ':' && value >= 0)
            uid = value;
    }
    return uid;
}

/*
 * A running domain's overlay @file is labelled for qemu by libvirt, 0600 on
 * libvirt 9.0 already: it is never chowned away from qemu, only closed to
 * others where qemu owns it.  Failures are logged, not returned: the
 * snapshot exists by now.
 */
static void create_make_private(const char *label, const char *file, long qemu_uid)
{
    struct stat st;
    int fd = open(file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);

    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0 || errno != ENOENT)
            log_warn("cannot make overlay '%s' of domain '%s' private: %s", file, label,
                        fd >= 0 ? "it is not a regular file" : g_strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    if ((st.st_mode & 07777) != 0600 && (long)st.st_uid == qemu_uid && fchmod(fd, 0600) < 0)
        log_warn("cannot make overlay '%s' of domain '%s' mode 0600: %s", file, label, g_strerror(errno));
    else if ((st.st_mode & 077) && (long)st.st_uid != qemu_uid)
        log_warn("overlay '%s' of running domain '%s' is left mode %04o: qemu does not own it, and closing "
                    "it could cut the guest off its disk", file, label, (unsigned)(st.st_mode & 07777));
    close(fd);
}

/* Every overlay snapshot @snap of the running domain made, private (create_make_private()). */
static void create_make_overlays_private(virDomainPtr dom, virDomainSnapshotPtr snap, const char *label)
{
    g_autofree char *xml = virDomainSnapshotGetXMLDesc(snap, 0);
    struct engine_snapshot_info *info = xml ? engine_parse_snapshot(xml) : NULL;
    long qemu_uid = create_qemu_uid(dom);

    if (!info) {
        log_warn("cannot make the overlays of domain '%s' private: the snapshot's XML cannot be read", label);
        return;
    }
    for (guint i = 0; i < info->disks->len; i++) {
        struct snapfs_snapshot_disk *sd = g_ptr_array_index(info->disks, i);

        if (strcmp(sd->kind, "external") == 0 && sd->file && g_path_is_absolute(sd->file))
            create_make_private(label, sd->file, qemu_uid);
    }
    engine_snapshot_info_free(info);
}

/* An overlay snapfs made itself for a shut-off domain's snapshot, held open until libvirt has taken it. */
struct create_made {
    char *target;
    char *file;
    int fd;
};

static void create_made_free(gpointer data)
{
    struct create_made *made = data;

    if (made->fd >= 0)
        close(made->fd);
    g_free(made->target);
    g_free(made->file);
    g_free(made);
}

/* Each one removed (only while its name is still the file made: engine_image_remove_made()). */
static void create_made_remove(GPtrArray *made)
{
    for (guint i = 0; made && i < made->len; i++) {
        struct create_made *m = g_ptr_array_index(made, i);

        engine_image_remove_made(m->file, m->fd);
    }
}

/*
 * libvirt 9.0 makes a shut-off domain's overlays with qemu-img as root and
 * mode 0644, and snapfs could only close them once libvirt had returned
 * (CVE-2025-13193).  So snapfs makes each one itself first, private from its
 * first byte (engine_image_create_overlay()), on the disk's image and its
 * format from the XML, and hands them to libvirt with REUSE_EXT, which then
 * only checks they exist.  Every disk is named in the XML: an unnamed one
 * would get an overlay that nobody made.  The XML, or NULL with the reason
 * (and nothing left of what it made).
 */
static char *create_make_overlays(const char *domain, const char *name, GPtrArray *disks, GPtrArray *made)
{
    g_autofree char *escaped = g_markup_escape_text(name, -1);
    GString *xml = g_string_new(NULL);

    g_string_append_printf(xml, "<domainsnapshot><name>%s</name><disks>", escaped);
    for (guint i = 0; i < disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(disks, i);
        g_autofree char *target = disk->target ? g_markup_escape_text(disk->target, -1) : NULL;
        g_autofree char *file = NULL;
        struct create_made *m;
        int fd;

        if (!disk->target)
            continue;
        if (!engine_disk_is_snapshotted(disk)) {
            g_string_append_printf(xml, "<disk name='%s' snapshot='no'/>", target);
            continue;
        }
        m = g_new0(struct create_made, 1);
        m->target = g_strdup(disk->target);
        m->file = create_overlay_name(disk->file, name);
        fd = engine_image_create_overlay(m->file, disk->file, disk->format);
        if (fd < 0) {
            g_autofree char *reason = g_strdup(error_message());

            error_set(error_errno(), "cannot create snapshot '%s' of '%s': disk %s: %s", name, domain,
                             disk->target, reason);
            m->fd = -1;
            create_made_free(m);
            create_made_remove(made);
            g_string_free(xml, TRUE);
            return NULL;
        }
        m->fd = fd;
        g_ptr_array_add(made, m);
        file = g_markup_escape_text(m->file, -1);
        g_string_append_printf(xml, "<disk name='%s' snapshot='external' type='file'><driver type='qcow2'/>"
                               "<source file='%s'/></disk>", target, file);
    }
    g_string_append(xml, "</disks></domainsnapshot>");
    return g_string_free(xml, FALSE);
}

static virDomainSnapshotPtr create_call(virDomainPtr dom, const char *xml, unsigned int flags, bool running,
                                        enum engine_quiesce quiesce, const char *label, const char *name)
{
    virDomainSnapshotPtr snap;

    /* A shut-off guest has nothing in flight: quiescing is only for a running one. */
    if (running && (quiesce == ENGINE_QUIESCE_ON ||
                    (quiesce == ENGINE_QUIESCE_AUTO && create_agent_connected(dom)))) {
        snap = virDomainSnapshotCreateXML(dom, xml, flags | VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE);
        if (snap || quiesce == ENGINE_QUIESCE_ON)
            return snap;
        /* ATOMIC: the failed attempt left nothing behind, so trying again unquiesced is safe. */
        log_warn("snapshot '%s' of domain '%s' is taken without quiescing: %s", name, label,
                    virGetLastErrorMessage());
    }
    return virDomainSnapshotCreateXML(dom, xml, flags);
}

/* The old tops are frozen now, with an overlay above: views that read them as live must go. */
static void create_notify_frozen(const char *label, GPtrArray *disks)
{
    for (guint i = 0; i < disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(disks, i);

        if (engine_disk_is_snapshotted(disk) && disk->file)
            engine_notify_chain_changed(label, disk->file);
    }
}

/* mkdir with the domain's lock held: check, make what snapfs makes itself, let libvirt snapshot, tell who reads. */
static int create_locked(virConnectPtr conn, const char *domain, const char *name, enum engine_quiesce quiesce,
                         const char *label, const char *doing)
{
    g_autoptr(virDomain) dom = virDomainLookupByName(conn, domain);
    g_autoptr(virDomainSnapshot) snap = NULL;
    g_autoptr(GPtrArray) disks = NULL;
    g_autoptr(GPtrArray) made = NULL;
    g_autofree char *xml = NULL;
    struct engine_progress *progress;
    unsigned int flags = VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
    bool running, local;

    if (!dom) {
        error_from_virt("cannot create snapshot '%s' of '%s'", name, domain);
        return -1;
    }
    running = virDomainIsActive(dom) == 1;
    disks = engine_domain_disks(dom, !running);
    local = engine_conn_is_local(conn);
    if (!disks || create_check(dom, domain, name, disks, local) < 0)
        return -1;

    /* A running domain's overlays libvirt makes for qemu, 0600 and labelled, and only qemu may open them. */
    if (!running && local) {
        made = g_ptr_array_new_with_free_func(create_made_free);
        xml = create_make_overlays(domain, name, disks, made);
        if (!xml)
            return -1;
        flags |= VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT;
    } else {
        g_autofree char *escaped = g_markup_escape_text(name, -1);

        xml = g_strdup_printf("<domainsnapshot><name>%s</name></domainsnapshot>", escaped);
    }
    progress = engine_progress_begin(conn, NULL, domain, doing, NULL);
    snap = create_call(dom, xml, flags, running, quiesce, label, name);
    /* Record libvirt's reason now: the calls that end the progress reset libvirt's last error. */
    if (!snap)
        error_from_virt("cannot create snapshot '%s' of '%s'", name, domain);
    engine_progress_end(progress);
    if (!snap) {
        /* ATOMIC: libvirt changed nothing, so what snapfs made is nobody's. */
        create_made_remove(made);
        return -1;
    }
    log_info("created snapshot '%s' of domain '%s'%s", name, label, running ? " (live)" : "");
    if (local && running)
        create_make_overlays_private(dom, snap, label);
    create_notify_frozen(label, disks);
    return 0;
}

int engine_snapshot_create(virConnectPtr conn, const char *domain, const char *name,
                           const struct engine_options *options)
{
    g_autofree char *label = NULL;
    g_autofree char *doing = NULL;
    g_autofree char *what = NULL;
    struct domain_lock *lock;
    int ret;

    if (engine_check_name(name) < 0)
        return -1;
    label = host_conn_domain_label(conn, domain);
    doing = g_strdup_printf("creating snapshot '%s'", name);
    what = g_strdup_printf("cannot create snapshot '%s' of '%s'", name, domain);
    /* Two mkdirs of one name: the second waits here (within the bound), then finds the name taken. */
    lock = domain_lock_acquire_conn(conn, domain, doing, what);
    if (!lock)
        return -1;
    ret = create_locked(conn, domain, name, options ? options->quiesce : ENGINE_QUIESCE_AUTO, label, doing);
    domain_lock_release(lock);
    return ret;
}

/* ---- setfattr user.snapfs.description ------------------------------------------------ */

/* setfattr with the domain's lock held: the snapshot redefined with the new <description>. */
static int describe_locked(virConnectPtr conn, const char *domain, const char *name, const char *description,
                           const char *what)
{
    g_autoptr(virDomain) dom = NULL;
    g_autoptr(virDomainSnapshot) snap = NULL;
    g_autoptr(virDomainSnapshot) redefined = NULL;
    g_autofree char *xml = NULL;
    g_autofree char *changed = NULL;
    unsigned int flags = VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE;

    if (!g_utf8_validate(description, -1, NULL)) {
        error_set(EINVAL, "%s: the text is not valid UTF-8", what);
        return -1;
    }
    dom = virDomainLookupByName(conn, domain);
    snap = dom ? virDomainSnapshotLookupByName(dom, name, 0) : NULL;
    if (!snap) {
        error_from_virt("%s", what);
        return -1;
    }
    /* SECURE: the redefinition must carry every secret the snapshot's domain XML holds. */
    xml = virDomainSnapshotGetXMLDesc(snap, VIR_DOMAIN_SNAPSHOT_XML_SECURE);
    if (!xml) {
        error_from_virt("%s", what);
        return -1;
    }
    changed = xml_set_description(xml, description);
    if (!changed) {
        error_set(EIO, "%s: its XML cannot be parsed", what);
        return -1;
    }
    /* Redefining without CURRENT would leave the domain with no current snapshot. */
    if (virDomainSnapshotIsCurrent(snap, 0) == 1)
        flags |= VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT;
    redefined = virDomainSnapshotCreateXML(dom, changed, flags);
    if (!redefined) {
        error_from_virt("%s", what);
        return -1;
    }
    return 0;
}

int engine_snapshot_set_description(virConnectPtr conn, const char *domain, const char *name,
                                    const char *description)
{
    g_autofree char *doing = g_strdup_printf("describing snapshot '%s'", name);
    g_autofree char *what = g_strdup_printf("cannot describe snapshot '%s' of '%s'", name, domain);
    struct domain_lock *lock = domain_lock_acquire_conn(conn, domain, doing, what);
    int ret;

    if (!lock)
        return -1;
    ret = describe_locked(conn, domain, name, description, what);
    domain_lock_release(lock);
    return ret;
}
