/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The revert to an internal snapshot: libvirt's own, after an internal pre-revert-DATE, journalled in steps journal, keep, asked, current (see external.c for the by-hand steps). */
#include "revert-priv.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/virt.h"

#include <errno.h>
#include <string.h>

/*
 * libvirt reverts an internal snapshot by applying it (qemu-img snapshot -a)
 * to the images the domain used when it was taken.  Where the domain has
 * moved on to external overlays since, those images are what external
 * snapshots froze, and applying it would change them: refused (ENOTSUP).
 */
int revert_internal_check(struct revert_state *st, struct revert_snapshot *target)
{
    for (guint i = 0; target->domain_disks && i < target->domain_disks->len; i++) {
        struct snapfs_disk *then = g_ptr_array_index(target->domain_disks, i);
        struct snapfs_disk *now = xml_disk_find(st->disks, then->target);

        if (!then->file || !revert_disk_is_local(then))
            continue;
        if (!now || !now->file || strcmp(now->file, then->file) != 0) {
            error_set(ENOTSUP, "cannot revert '%s' to internal snapshot '%s': libvirt would rewrite "
                             "image '%s', which the domain no longer runs on and external snapshots may "
                             "stand on", st->name, target->name, then->file);
            return -1;
        }
        for (guint j = 0; j < st->snaps->len; j++) {
            struct revert_snapshot *other = g_ptr_array_index(st->snaps, j);
            GHashTableIter it;
            gpointer value;

            g_hash_table_iter_init(&it, other->frozen);
            while (g_hash_table_iter_next(&it, NULL, &value)) {
                if (strcmp(value, then->file) == 0) {
                    error_set(ENOTSUP, "cannot revert '%s' to internal snapshot '%s': libvirt would "
                                     "rewrite image '%s', which snapshot '%s' froze",
                                     st->name, target->name, then->file, other->name);
                    return -1;
                }
            }
        }
    }
    return 0;
}

/* Step keep: pre-revert-DATE, an internal snapshot of what the disks hold now, as libvirt makes it by default. */
static int internal_keep(struct revert_state *st, struct revert_snapshot *target, const struct revert_journal *journal)
{
    g_autofree char *description = g_strdup_printf("What the disks held when snapfs reverted to '%s'.", target->name);
    g_autofree char *xml = xml_snapshot_new(journal->keep_name, description, NULL, 0, NULL, NULL);
    g_autoptr(virDomainSnapshot) snap = virDomainSnapshotCreateXML(st->dom, xml, 0);

    if (!snap) {
        error_from_virt("cannot keep the state of domain '%s' as snapshot '%s' before reverting",
                               st->name, journal->keep_name);
        return -1;
    }
    return 0;
}

/*
 * libvirt 9.0 applies an internal snapshot disk by disk and undoes nothing
 * when one fails: the disks before it may be reverted already.  What they
 * held is only in pre-revert-DATE now, so it stays, whatever else failed.
 * The reason recorded says so.  Always -1.
 */
static int internal_cut_short(const struct revert_journal *journal)
{
    g_autofree char *reason = g_strdup(error_message());

    if (revert_journal_remove(journal) < 0)
        log_warn("%s", error_message());
    if (journal->keep_name) {
        error_set(EIO, "%s; some of its disks may be reverted already: what they held before is kept "
                         "as snapshot '%s' (write '%s' to revert to go back to it)", reason,
                         journal->keep_name, journal->keep_name);
    } else {
        error_set(EIO, "%s; some of its disks may be reverted already (revert_keep=off: nothing of "
                         "their state before was kept)", reason);
    }
    log_warn("%s", error_message());
    return -1;
}

/* Steps asked and current: the journal says libvirt is asked, then libvirt applies @target. */
static int internal_apply(struct revert_state *st, struct revert_snapshot *target, struct revert_journal *journal)
{
    g_autoptr(virDomainSnapshot) snap = virDomainSnapshotLookupByName(st->dom, target->name, 0);
    int rc;

    if (!snap) {
        error_from_virt("cannot revert domain '%s' to '%s'", st->name, target->name);
        return revert_undo(st, journal, "");
    }
    /* From here on a crash is never rolled back (revert_settle_asked()): the journal must say so first. */
    journal->phase = REVERT_PHASE_INTERNAL_ASKED;
    if (revert_journal_write(journal) < 0) {
        g_clear_pointer(&snap, virDomainSnapshotFree);
        journal->phase = REVERT_PHASE_INTERNAL;
        return revert_undo(st, journal, "");
    }
    revert_fault("asked");
    rc = virDomainRevertToSnapshot(snap, 0);
    if (rc < 0)
        error_from_virt("cannot revert domain '%s' to '%s'", st->name, target->name);
    g_clear_pointer(&snap, virDomainSnapshotFree);
    if (rc < 0)
        return internal_cut_short(journal);
    revert_fault("current");
    return revert_journal_remove(journal);
}

int revert_internal(struct revert_state *st, struct revert_snapshot *target, const char *path,
                    const struct revert_options *options)
{
    g_autoptr(revert_journal) journal = revert_journal_new(st, target, path, REVERT_PHASE_INTERNAL);

    if (options->keep) {
        g_autoptr(GDateTime) now = g_date_time_new_now_local();
        g_autofree char *stamp = g_date_time_format(now, "%Y%m%d-%H%M%S");

        journal->keep_name = revert_keep_name(st->dom, stamp);
    }
    if (revert_journal_write(journal) < 0)
        return -1;
    revert_fault("journal");
    if (journal->keep_name) {
        if (internal_keep(st, target, journal) < 0) {
            revert_journal_remove(journal);
            return -1;
        }
        revert_fault("keep");
    }
    return internal_apply(st, target, journal);
}
