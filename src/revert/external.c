/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The revert to an external snapshot: libvirt's own where it can and it is safe, else by hand in journalled numbered steps with one commit point. */
#include "revert-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/virt.h"

#include <errno.h>
#include <fcntl.h>
#include <libvirt/virterror.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * The by-hand revert of an external snapshot S (what libvirt 9.9+ does
 * itself, plus keeping the state left behind), step by step.  Each step
 * is one atomic change; the commit point is the domain's redefinition:
 *
 *   journal        the intent (every file to make, the snapshot to keep) is on disk   revert_external()
 *   keep-overlays  an empty overlay on each old top image, for pre-revert-DATE          external_keep()
 *   keep           pre-revert-DATE defined (metadata only) and made current             external_keep()
 *                  (libvirt's own revert, tried next where it is safe,
 *                  unlinks the current snapshot's overlays: these, never
 *                  the old top images: external_native()); from here on only
 *                  where libvirt answered that it cannot (external_by_hand()):
 *   overlays       a new overlay on each image S froze (or S's own, reused,      external_overlays()
 *                  where nothing was ever written to it)
 *   domain         the domain redefined on the new overlays, <backingStore>      external_define()
 *                  spelled out
 *   current        S's metadata redefined as current                             revert_roll_forward() (settle.c)
 *   cleanup        old top images nothing needs any more unlinked (empty ones,   revert_roll_forward() (settle.c)
 *                  or all with revert_keep=off)
 *
 * The step names are the fault steps of REVERT_FAULT_STEPS (snapfs/revert.h):
 * with SNAPFS_FAULT=revert:STEP, revert_fault() ends the process right after
 * STEP, as a kill -9 would; the crash tests (tests/revert/, driven by
 * revertlib.py) stop there and check what the next start settles.
 *
 * Internal snapshots are libvirt's own revert after an internal
 * pre-revert-DATE (steps journal, keep, asked, current: internal.c).  Once
 * libvirt was asked to apply it, pre-revert-DATE stays whatever happens:
 * libvirt 9.0 applies it disk by disk and undoes nothing when a disk fails.
 * So the journal says "asked" (phase internal-asked) before libvirt is
 * asked, and a crash from there on is never rolled back: pre-revert-DATE is
 * kept and named in a warning, whatever the disks read.
 *
 * Nothing of this starts, and a running domain is not stopped (--force),
 * before every check that could refuse the revert passed (revert_prepare()
 * in request.c, the plan in plan.c): the plan, the local images, an
 * internal snapshot's constraints, and fail closed, who else needs what the
 * revert rewrites or unlinks.
 *
 * Before "domain" a crash is rolled back (files this revert made unlinked,
 * pre-revert-DATE's metadata removed, the old current snapshot current
 * again: revert_roll_back()); from "domain" on it is rolled forward
 * (revert_roll_forward(); after a crash, revert_recover() at the next start:
 * settle.c).  At every point libvirt accepts the domain and it boots: its
 * XML only ever names complete images.
 */

/*
 * Whether libvirt's own revert refused because it cannot do this one, never
 * having touched anything: 9.0-9.8 answer "revert to external snapshot not
 * supported yet" (VIR_ERR_CONFIG_UNSUPPORTED); 9.9 and later still refuse
 * disk-only snapshots of a running domain (state disk-snapshot) with
 * "Invalid target domain state ... Refusing snapshot reversion".
 */
static bool native_refused_as_unsupported(void)
{
    virErrorPtr err = virGetLastError();

    return err && (err->code == VIR_ERR_CONFIG_UNSUPPORTED ||
                   (err->message && (strstr(err->message, "not supported yet") ||
                                     strstr(err->message, "Refusing snapshot reversion"))));
}

/*
 * libvirt's own external revert (9.9+) unlinks the overlays of the current
 * snapshot, taking them for the state left behind.  That holds when they are
 * the domain's top images (or the pre-revert snapshot's fresh overlays, made
 * current for this), not after a revert snapfs did by hand, where they may
 * be what other snapshots stand on.
 */
static bool native_is_safe(struct revert_state *st, const struct revert_journal *journal)
{
    struct revert_snapshot *current = revert_state_snapshot(st, st->current);
    struct revert_snapshot *target = revert_state_snapshot(st, journal->target);
    GHashTableIter it;
    gpointer key, value;

    if (journal->keep_name && st->current && strcmp(st->current, journal->keep_name) == 0)
        return true;
    if (!current || !target)
        return false;
    g_hash_table_iter_init(&it, current->overlay);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        struct snapfs_disk *disk = xml_disk_find(st->disks, key);

        if (!disk || !disk->file || strcmp(disk->file, value) != 0)
            return false;
        /* libvirt unlinks it whoever else stands on it (a linked clone: libvirt 11 did): snapfs's own revert
         * leaves it then.  Where that cannot be told, too. */
        if (revert_plan_image_free(st, target, value) != 1)
            return false;
    }
    return true;
}

/* Whether the connection says it reverts external snapshots itself: <externalSnapshot/> among a guest's features. */
static bool native_advertised(virConnectPtr conn)
{
    g_autofree char *caps = virConnectGetCapabilities(conn);
    g_autofree char *found = NULL;
    g_autoptr(xmlXPathContext) ctxt = NULL;
    g_autoptr(xmlDoc) doc = caps ? xml_read(caps, &ctxt) : NULL;

    if (doc)
        found = xml_string(ctxt, NULL, "name(/capabilities/guest/features/externalSnapshot)");
    return found != NULL;
}

/* Whether libvirt's own revert will be tried (and may do it all, so that no image need be local). */
bool revert_native_possible(struct revert_state *st, const struct revert_journal *journal)
{
    unsigned long version = 0;

    /* The connection's capabilities say so (libvirt 11's qemu driver); a libvirt of 9.9 or later that does not
     * (the test driver) is tried, and its refusal leaves it to snapfs.  Pre-revert's overlays make it safe
     * whatever is current. */
    if (!native_advertised(st->conn) && (virConnectGetLibVersion(st->conn, &version) < 0 || version < 9009000))
        return false;
    return journal->keep_name || native_is_safe(st, journal);
}

/*
 * libvirt's own revert (libvirt 11) makes each disk's new overlay mode 0600 but root's, whatever owns the
 * image below it; snapfs's own overlays, and those of mkdir, are owned as the image they stand on (what
 * libvirt's DAC driver gives its own).  Only while the domain is shut off: nothing runs on them yet.  Failures are
 * logged, not returned: the revert is done by now.
 */
static void native_make_private(struct revert_state *st)
{
    g_autoptr(GPtrArray) now = virDomainIsActive(st->dom) == 0 ? revert_domain_disks_now(st) : NULL;

    for (guint i = 0; now && i < now->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(now, i);
        struct snapfs_disk *before = xml_disk_find(st->disks, disk->target);
        struct snapfs_layer *layer;
        g_autofree char *below = NULL;
        struct stat st_below, st_new;
        int fd;

        /* Only the overlays libvirt has just made: a disk it left on its image is not one. */
        if (!disk->file || !revert_disk_is_local(disk) || (before && before->file && strcmp(before->file, disk->file) == 0))
            continue;
        layer = chain_read_layer(disk->file, disk->format);
        below = layer && layer->backing ? chain_resolve(disk->file, layer->backing) : NULL;
        if (layer)
            chain_layer_free(layer);
        fd = open(disk->file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
        if (!below || fd < 0 || fstat(fd, &st_new) < 0 || !S_ISREG(st_new.st_mode) || stat(below, &st_below) < 0) {
            log_warn("cannot give overlay '%s' of domain '%s' the owner of the image below it", disk->file,
                        st->label);
        } else {
            if ((st_new.st_uid != st_below.st_uid || st_new.st_gid != st_below.st_gid) &&
                fchown(fd, st_below.st_uid, st_below.st_gid) < 0)
                log_warn("cannot give overlay '%s' of domain '%s' the owner of '%s': %s", disk->file, st->label,
                            below, g_strerror(errno));
            if ((st_new.st_mode & 07777) != 0600 && fchmod(fd, 0600) < 0)
                log_warn("cannot make overlay '%s' of domain '%s' mode 0600: %s", disk->file, st->label,
                            g_strerror(errno));
        }
        if (fd >= 0)
            close(fd);
    }
}

/*
 * Steps keep-overlays and keep: an empty overlay on each old top, synced, then
 * pre-revert-DATE defined on them and made current.  -1 with the reason.
 */
static int external_keep(struct revert_state *st, struct revert_snapshot *target, struct revert_journal *journal)
{
    g_autofree char *keep = NULL;

    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);

        if (rd->keep_overlay &&
            revert_image_create_overlay(rd->keep_overlay, rd->old_top, revert_old_top_format(st, journal, rd)) < 0) {
            /* Someone else's file of that name is theirs: the rollback leaves it alone. */
            if (error_errno() == EEXIST)
                g_clear_pointer(&rd->keep_overlay, g_free);
            return -1;
        }
    }
    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
        g_autofree char *dir = rd->keep_overlay ? g_path_get_dirname(rd->keep_overlay) : NULL;

        if (dir)
            revert_sync_path(dir);
    }
    revert_fault("keep-overlays");
    keep = revert_keep_xml(st, journal);
    if (revert_snapshot_redefine(st, keep, journal->keep_name, true) < 0)
        return -1;
    g_free(st->current);
    st->current = g_strdup(journal->keep_name);
    log_info("kept the state domain '%s' leaves as snapshot '%s' before reverting it to snapshot '%s'",
                st->label, journal->keep_name, target->name);
    revert_fault("keep");
    return 0;
}

/*
 * libvirt's own revert, where the connected libvirt has it (9.9 and later)
 * and it is safe: 0 if it reverted, -1 if not, with *@unsupported telling
 * whether libvirt answered that it cannot (nothing touched: snapfs does it)
 * or failed (the reason recorded).
 */
static int external_native(struct revert_state *st, struct revert_snapshot *target,
                           const struct revert_journal *journal, bool *unsupported)
{
    g_autoptr(virDomainSnapshot) snap = NULL;
    int rc;

    if (!native_is_safe(st, journal)) {
        log_debug("libvirt's own revert of domain '%s' to snapshot '%s' would unlink images snapshots still "
                     "need: snapfs does it", st->label, target->name);
        *unsupported = true;
        return -1;
    }
    snap = virDomainSnapshotLookupByName(st->dom, target->name, 0);
    rc = snap ? virDomainRevertToSnapshot(snap, 0) : -1;
    /* Read before virDomainSnapshotFree(), which clears libvirt's last error. */
    *unsupported = rc < 0 && native_refused_as_unsupported();
    if (rc < 0 && !*unsupported)
        error_from_virt("cannot revert domain '%s' to '%s'", st->name, target->name);
    else if (*unsupported)
        log_debug("libvirt cannot revert domain '%s' to external snapshot '%s' (%s): snapfs does it",
                     st->label, target->name, virGetLastErrorMessage());
    return rc;
}

/* Step overlays: a new overlay on each image @target froze, where the plan makes one; directories synced. */
static int external_overlays(struct revert_snapshot *target, struct revert_journal *journal)
{
    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
        const char *frozen = g_hash_table_lookup(target->frozen, rd->target);

        if (rd->new_top && rd->new_created &&
            revert_image_create_overlay(rd->new_top, frozen, g_hash_table_lookup(target->frozen_format, rd->target)) < 0) {
            if (error_errno() == EEXIST)
                rd->new_created = false;
            return -1;
        }
        if (rd->new_top) {
            g_autofree char *dir = g_path_get_dirname(rd->new_top);

            revert_sync_path(dir);
        }
    }
    revert_fault("overlays");
    return 0;
}

/* Step domain, the commit point: the domain redefined on the new tops. */
static int external_define(struct revert_state *st, struct revert_snapshot *target,
                           const struct revert_journal *journal)
{
    g_autofree char *domain_xml = revert_domain_xml(st, target, journal);
    g_autoptr(virDomain) dom = NULL;

    if (!domain_xml)
        return -1;
    dom = virDomainDefineXML(st->conn, domain_xml);
    if (!dom) {
        error_from_virt("cannot redefine domain '%s' on the overlays of snapshot '%s'",
                               st->name, target->name);
        return -1;
    }
    return 0;
}

/*
 * The by-hand revert from step overlays on (libvirt answered that it cannot):
 * -1 with the reason before the commit point (the caller rolls back), 0 past
 * it, whatever the steps after it do (the next start finishes them).
 */
static int external_by_hand(struct revert_state *st, struct revert_snapshot *target, struct revert_journal *journal)
{
    if (revert_check_local(st, target) < 0)
        return -1;
    journal->phase = REVERT_PHASE_BY_HAND;
    if (revert_journal_write(journal) < 0)
        return -1;
    if (external_overlays(target, journal) < 0 || external_define(st, target, journal) < 0)
        return -1;
    log_info("domain '%s' now runs on new overlays over snapshot '%s'", st->label, target->name);
    revert_fault("domain");
    if (revert_roll_forward(st, journal, true) < 0) {
        log_warn("domain '%s' was reverted to snapshot '%s' but not everything was finished (the next "
                    "start of snapfs finishes it): %s", st->label, target->name, error_message());
    }
    return 0;
}

/* Carries out @journal, the plan of the revert to external snapshot @target (@noop: nothing to do but its name). */
int revert_external(struct revert_state *st, struct revert_snapshot *target, struct revert_journal *journal,
                    bool noop)
{
    bool unsupported;

    if (noop) {
        /* Nothing was written since the domain left @target: only its name is missing. */
        log_info("domain '%s' reads as snapshot '%s' already", st->label, target->name);
        return st->current && strcmp(st->current, target->name) == 0 ? 0 : revert_snapshot_make_current(st, target->name);
    }
    if (revert_journal_write(journal) < 0)
        return -1;
    revert_fault("journal");
    if (journal->keep_name && external_keep(st, target, journal) < 0)
        return revert_undo(st, journal, " (the next start of snapfs tries again)");
    if (external_native(st, target, journal, &unsupported) == 0) {
        log_info("libvirt reverted domain '%s' to snapshot '%s'", st->label, target->name);
        native_make_private(st);
        g_free(st->current);
        st->current = g_strdup(target->name);
        return revert_roll_forward(st, journal, true);
    }
    if (!unsupported || external_by_hand(st, target, journal) < 0)
        return revert_undo(st, journal, " (the next start of snapfs tries again)");
    return 0;
}
