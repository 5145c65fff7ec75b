/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Settling a revert: rolling it back before its commit point, finishing it past it, now or at the next start (revert_recover()). */
#include "revert-priv.h"
#include "snapfs/engine.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/revert.h"
#include "snapfs/state-dir.h"
#include "snapfs/virt.h"

#include <errno.h>
#include <libvirt/virterror.h>
#include <string.h>
#include <unistd.h>

/* @why: "rolling back" or "nothing needs it after", said of the revert @journal records. */
static void settle_unlink_logged(const struct revert_state *st, const struct revert_journal *journal,
                                 const char *file, const char *why)
{
    if (unlink(file) == 0)
        log_info("removed '%s' of domain '%s' (%s the revert to snapshot '%s')", file, st->label, why,
                    journal->target);
    else if (errno != ENOENT)
        log_warn("cannot remove '%s' of domain '%s' (%s the revert to snapshot '%s'): %s", file, st->label,
                    why, journal->target, g_strerror(errno));
}

/* Undo a revert that did not reach its commit point; the domain never named what is removed here. */
int revert_roll_back(struct revert_state *st, const struct revert_journal *journal)
{
    int ret = 0;

    if (journal->phase == REVERT_PHASE_INTERNAL_ASKED) {
        error_set(EIO, "the revert of domain '%s' to snapshot '%s' cannot be rolled back: libvirt was asked "
                         "to apply it", st->name, journal->target);
        return -1;
    }
    if (journal->keep_name && revert_snapshot_exists(st->dom, journal->keep_name)) {
        g_autoptr(virDomainSnapshot) snap = virDomainSnapshotLookupByName(st->dom, journal->keep_name, 0);
        unsigned int flags = journal->phase == REVERT_PHASE_INTERNAL ? 0 : VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY;

        if (!snap || virDomainSnapshotDelete(snap, flags) < 0) {
            error_from_virt("cannot remove snapshot '%s' of domain '%s' while rolling back",
                                   journal->keep_name, st->name);
            ret = -1;
        }
    }
    for (guint i = 0; ret == 0 && i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);

        if (rd->keep_overlay)
            settle_unlink_logged(st, journal, rd->keep_overlay, "rolling back");
        if (rd->new_top && rd->new_created)
            settle_unlink_logged(st, journal, rd->new_top, "rolling back");
    }
    if (ret == 0 && journal->old_current && revert_snapshot_exists(st->dom, journal->old_current))
        ret = revert_snapshot_make_current(st, journal->old_current);
    if (ret == 0)
        ret = revert_journal_remove(journal);
    return ret;
}

/* Finish a revert past its commit point: the target current, the leftovers gone. */
int revert_roll_forward(struct revert_state *st, const struct revert_journal *journal, bool faults)
{
    g_autoptr(GPtrArray) disks = NULL;

    /* libvirt's own revert removes the current snapshot's overlays: the pre-revert one gets them back. */
    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);

        if (rd->keep_overlay && rd->old_top && !g_file_test(rd->keep_overlay, G_FILE_TEST_EXISTS) &&
            revert_image_create_overlay(rd->keep_overlay, rd->old_top, revert_old_top_format(st, journal, rd)) < 0)
            return -1;
    }
    if (journal->phase != REVERT_PHASE_INTERNAL && journal->phase != REVERT_PHASE_INTERNAL_ASKED &&
        (!st->current || strcmp(st->current, journal->target) != 0)) {
        if (revert_snapshot_make_current(st, journal->target) < 0)
            return -1;
        if (faults)
            revert_fault("current");
    }
    disks = revert_domain_disks_now(st);
    for (guint i = 0; disks && i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
        bool in_use = false;

        /* Never what the domain still runs on, whatever the journal says. */
        for (guint j = 0; rd->old_top && j < disks->len; j++) {
            struct snapfs_disk *now = g_ptr_array_index(disks, j);

            in_use |= now->file && strcmp(now->file, rd->old_top) == 0;
        }
        if (rd->drop_old && rd->old_top && !in_use)
            settle_unlink_logged(st, journal, rd->old_top, "nothing needs it after");
    }
    if (faults)
        revert_fault("cleanup");
    return revert_journal_remove(journal);
}

/*
 * A crash after libvirt was asked to apply an internal snapshot, which it
 * did not finish (the target is not current): some disks may read as the
 * target already, the others as before.  What they all held before is only
 * in pre-revert-DATE, so it stays (never deleted here), and the warning
 * names it; nothing else is changed.
 */
static int revert_settle_asked(struct revert_state *st, struct revert_journal *journal)
{
    if (journal->keep_name && revert_snapshot_exists(st->dom, journal->keep_name))
        log_warn("the revert of domain '%s' to snapshot '%s' was cut short after libvirt was asked to apply "
                    "it: some of its disks may be reverted already; what they held before is kept as snapshot "
                    "'%s' (write '%s' to revert to go back to it)", st->label, journal->target,
                    journal->keep_name, journal->keep_name);
    else
        log_warn("the revert of domain '%s' to snapshot '%s' was cut short after libvirt was asked to apply "
                    "it: some of its disks may be reverted already, and %s", st->label, journal->target,
                    journal->keep_name ? "the snapshot of their state before is missing"
                                       : "nothing of their state before was kept (revert_keep=off)");
    return revert_journal_remove(journal);
}

/* Settle one journal found on disk; @st is the domain's state now. */
int revert_settle(struct revert_state *st, struct revert_journal *journal)
{
    bool committed;

    revert_journal_vet(journal, st);
    if (journal->phase == REVERT_PHASE_INTERNAL_ASKED && (!st->current || strcmp(st->current, journal->target) != 0))
        return revert_settle_asked(st, journal);
    if (journal->phase == REVERT_PHASE_BY_HAND)
        committed = revert_domain_on_new_tops(st, journal);
    else if (journal->phase == REVERT_PHASE_INTERNAL_ASKED)
        committed = true;       /* the target is current: libvirt finished applying it */
    else
        committed = st->current && strcmp(st->current, journal->target) == 0 &&
                    (!journal->keep_name || revert_snapshot_exists(st->dom, journal->keep_name));
    log_info("%s the interrupted revert of domain '%s' to snapshot '%s'",
                committed ? "finishing" : "rolling back", st->label, journal->target);
    return committed ? revert_roll_forward(st, journal, false) : revert_roll_back(st, journal);
}

/*
 * A revert given up before its commit point: rolled back, keeping the
 * reason recorded; @note ends the warning where the rollback fails.  Always -1.
 */
int revert_undo(struct revert_state *st, const struct revert_journal *journal, const char *note)
{
    g_autofree char *reason = g_strdup(error_message());
    int errnum = error_errno();

    if (revert_roll_back(st, journal) < 0)
        log_warn("cannot roll back the revert of domain '%s' to snapshot '%s'%s: %s", st->label, journal->target,
                    note, error_message());
    error_set(errnum, "%s", reason);
    return -1;
}

const char *revert_state_dir(const struct revert_options *options)
{
    return options && options->state_dir ? options->state_dir : STATE_DIR_ROOT;
}

/*
 * Settles the interrupted revert @journal records, on @conn, under the
 * domain's lock; 0, or -1 with a warning logged (its journal stays, but where
 * libvirt says the domain is gone).
 */
static int recover_one(virConnectPtr conn, struct revert_journal *journal)
{
    g_autoptr(revert_state) st = NULL;
    g_autofree char *label = host_conn_domain_label(conn, journal->domain);
    g_autoptr(virDomain) dom = NULL;
    struct domain_lock *lock;
    int ret = 0;

    /* At startup nobody else acts on the domain through this snapfs; another process may (the state lock's business). */
    lock = domain_lock_acquire_conn(conn, journal->domain, "recovering an interrupted revert",
                                   "cannot recover an interrupted revert");
    if (!lock) {
        log_warn("%s", error_message());
        return -1;
    }
    dom = journal->uuid ? virDomainLookupByUUIDString(conn, journal->uuid)
                        : virDomainLookupByName(conn, journal->domain);
    if (!dom && virGetLastErrorCode() != VIR_ERR_NO_DOMAIN) {
        /* Not an answer about the domain (libvirt down, a timeout): the journal waits for one. */
        error_from_virt("cannot look up domain '%s' of an interrupted revert to snapshot '%s' (its "
                               "journal '%s' is kept for the next revert of it or the next start)",
                               label, journal->target, journal->path);
        log_warn("%s", error_message());
        ret = -1;
    } else if (!dom) {
        /* The domain is gone (libvirt says so): nothing of it to settle, its images are left as they are. */
        log_warn("domain '%s' of an interrupted revert to snapshot '%s' no longer exists; dropping its "
                    "journal '%s'", label, journal->target, journal->path);
        if (revert_journal_remove(journal) < 0)
            ret = -1;
    } else {
        st = revert_state_read(conn, dom);
        g_clear_pointer(&dom, virDomainFree);
        if (!st || revert_settle(st, journal) < 0) {
            log_warn("cannot settle the interrupted revert of domain '%s' to snapshot '%s': %s", label,
                        journal->target, error_message());
            ret = -1;
        }
    }
    domain_lock_release(lock);
    return ret;
}

int revert_recover(virConnectPtr conn, const struct revert_options *options)
{
    g_autoptr(GPtrArray) paths = revert_journal_list(revert_state_dir(options));
    g_autofree char *uri = virConnectGetURI(conn);
    int ret = 0;

    for (guint i = 0; uri && i < paths->len; i++) {
        g_autoptr(revert_journal) journal = revert_journal_load(g_ptr_array_index(paths, i));

        if (!journal) {
            log_warn("%s", error_message());
            ret = -1;
            continue;
        }
        if (strcmp(journal->uri, uri) == 0 && recover_one(conn, journal) < 0)
            ret = -1;
    }
    return ret;
}
