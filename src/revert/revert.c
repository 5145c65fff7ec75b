/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Revert a domain to a snapshot: libvirt's own revert where it can, by hand for external snapshots of shut-off domains. */
#include "revert-priv.h"
#include "snapfs/chain.h"
#include "snapfs/engine.h"
#include "snapfs/error.h"
#include "snapfs/virt.h"
#include "snapfs/log.h"
#include "snapfs/revert.h"

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
 *   journal        the intent (every file to make, the snapshot to keep) is on disk
 *   keep-overlays  an empty overlay on each old top image, for pre-revert-DATE
 *   keep           pre-revert-DATE defined (metadata only) and made current
 *                  (libvirt's own revert, tried next where it is safe,
 *                  unlinks the current snapshot's overlays: these, never
 *                  the old top images); from here on only where libvirt
 *                  answered that it cannot:
 *   overlays       a new overlay on each image S froze (or S's own, reused,
 *                  where nothing was ever written to it)
 *   domain         the domain redefined on the new overlays, <backingStore> spelled out
 *   current        S's metadata redefined as current
 *   cleanup        old top images nothing needs any more unlinked (empty ones, or all with revert_keep=off)
 *
 * Internal snapshots are libvirt's own revert after an internal
 * pre-revert-DATE (steps journal, keep, asked, current).  Once libvirt was
 * asked to apply it, pre-revert-DATE stays whatever happens: libvirt 9.0
 * applies it disk by disk and undoes nothing when a disk fails.  So the
 * journal says "asked" (phase internal-asked) before libvirt is asked, and
 * a crash from there on is never rolled back: pre-revert-DATE is kept and
 * named in a warning, whatever the disks read.
 *
 * Nothing of this starts, and a running domain is not stopped (--force),
 * before every check that could refuse the revert passed (revert_prepare):
 * the plan, the local images, an internal snapshot's constraints, and fail
 * closed, who else needs what the revert rewrites or unlinks.
 *
 * Before "domain" a crash is rolled back (files this revert made unlinked,
 * pre-revert-DATE's metadata removed, the old current snapshot current
 * again); from "domain" on it is rolled forward.  At every point libvirt
 * accepts the domain and it boots: its XML only ever names complete images.
 */

#define FORCE_SUFFIX " --force"
#define KEEP_PREFIX "pre-revert-"

/* ---- fault injection (tests only) -------------------------------------------- */

static void revert_fault(const char *step)
{
    const char *fault = getenv("SNAPFS_FAULT");

    if (fault && g_str_has_prefix(fault, "revert:") && strcmp(fault + strlen("revert:"), step) == 0) {
        snapfs_warn("SNAPFS_FAULT: stopping dead after revert step '%s'", step);
        _exit(137);
    }
}

/* ---- the request ------------------------------------------------------------- */

void revert_request_clear(struct revert_request *request)
{
    g_clear_pointer(&request->name, g_free);
    request->force = false;
}

int revert_parse(const char *buf, size_t len, struct revert_request *request)
{
    g_autofree char *text = NULL;
    size_t n;

    request->name = NULL;
    request->force = false;
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    if (len == 0) {
        snapfs_error_set(EINVAL, "a revert request names a snapshot: nothing was written");
        return -1;
    }
    if (memchr(buf, '\n', len)) {
        snapfs_error_set(EINVAL, "a revert request names one snapshot on one line");
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f) {
            snapfs_error_set(EINVAL, "a revert request cannot hold control characters");
            return -1;
        }
    }
    text = g_strndup(buf, len);
    if (strlen(text) != len || !g_utf8_validate(text, -1, NULL)) {
        snapfs_error_set(EINVAL, "a revert request must be UTF-8 text");
        return -1;
    }
    n = strlen(text);
    if (g_str_has_suffix(text, FORCE_SUFFIX)) {
        request->force = true;
        n -= strlen(FORCE_SUFFIX);
        text[n] = '\0';
    }
    if (n == 0 || text[0] == ' ' || text[n - 1] == ' ') {
        snapfs_error_set(EINVAL, "a revert request is 'NAME' or 'NAME --force', without blanks around NAME");
        return -1;
    }
    if (g_str_has_prefix(text, "--")) {
        snapfs_error_set(EINVAL, "'%s': options follow the snapshot name ('NAME --force')", text);
        return -1;
    }
    /* A last word that looks like an option and is not --force. */
    {
        const char *last = strrchr(text, ' ');

        if (last && g_str_has_prefix(last, " --")) {
            snapfs_error_set(EINVAL, "unknown option '%s' in a revert request (only --force)", last + 1);
            return -1;
        }
    }
    request->name = g_steal_pointer(&text);
    return 0;
}

/* ---- finishing and rolling back ---------------------------------------------------- */

/*
 * The format of @rd's old top, as libvirt recorded it: the domain's disk now
 * or, once the domain left it, the pre-revert snapshot's domain.  NULL if
 * neither says (then no overlay is made on it: formats are never guessed).
 */
static const char *old_top_format(struct revert_state *st, const struct revert_journal *journal,
                                  const struct revert_disk *rd)
{
    struct revert_snapshot *keep = journal->keep_name ? revert_state_snapshot(st, journal->keep_name) : NULL;
    GPtrArray *lists[] = { st->disks, keep ? keep->domain_disks : NULL };

    for (guint l = 0; l < G_N_ELEMENTS(lists); l++) {
        for (guint i = 0; rd->old_top && lists[l] && i < lists[l]->len; i++) {
            struct snapfs_disk *disk = g_ptr_array_index(lists[l], i);

            if (disk->file && strcmp(disk->file, rd->old_top) == 0 && disk->format)
                return disk->format;
        }
    }
    return NULL;
}

/* @why: "rolling back" or "nothing needs it after", said of the revert @journal records. */
static void unlink_logged(const struct revert_state *st, const struct revert_journal *journal, const char *file,
                          const char *why)
{
    if (unlink(file) == 0)
        snapfs_info("removed '%s' of domain '%s' (%s the revert to snapshot '%s')", file, st->label, why,
                    journal->target);
    else if (errno != ENOENT)
        snapfs_warn("cannot remove '%s' of domain '%s' (%s the revert to snapshot '%s'): %s", file, st->label,
                    why, journal->target, g_strerror(errno));
}

/* Undo a revert that did not reach its commit point; the domain never named what is removed here. */
static int revert_roll_back(struct revert_state *st, const struct revert_journal *journal)
{
    int ret = 0;

    if (journal->phase == REVERT_PHASE_INTERNAL_ASKED) {
        snapfs_error_set(EIO, "the revert of domain '%s' to snapshot '%s' cannot be rolled back: libvirt was asked "
                         "to apply it", st->name, journal->target);
        return -1;
    }
    if (journal->keep_name && revert_snapshot_exists(st->dom, journal->keep_name)) {
        virDomainSnapshotPtr snap = virDomainSnapshotLookupByName(st->dom, journal->keep_name, 0);
        unsigned int flags = journal->phase == REVERT_PHASE_INTERNAL ? 0 : VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY;

        if (!snap || virDomainSnapshotDelete(snap, flags) < 0) {
            snapfs_error_from_virt("cannot remove snapshot '%s' of domain '%s' while rolling back",
                                   journal->keep_name, st->name);
            ret = -1;
        }
        if (snap)
            virDomainSnapshotFree(snap);
    }
    for (guint i = 0; ret == 0 && i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);

        if (rd->keep_overlay)
            unlink_logged(st, journal, rd->keep_overlay, "rolling back");
        if (rd->new_top && rd->new_created)
            unlink_logged(st, journal, rd->new_top, "rolling back");
    }
    if (ret == 0 && journal->old_current && revert_snapshot_exists(st->dom, journal->old_current))
        ret = revert_snapshot_make_current(st, journal->old_current);
    if (ret == 0)
        ret = revert_journal_remove(journal);
    return ret;
}

/* Finish a revert past its commit point: the target current, the leftovers gone. */
static int revert_roll_forward(struct revert_state *st, const struct revert_journal *journal, bool faults)
{
    g_autoptr(GPtrArray) disks = NULL;

    /* libvirt's own revert removes the current snapshot's overlays: the pre-revert one gets them back. */
    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);

        if (rd->keep_overlay && rd->old_top && !g_file_test(rd->keep_overlay, G_FILE_TEST_EXISTS) &&
            revert_image_create_overlay(rd->keep_overlay, rd->old_top, old_top_format(st, journal, rd)) < 0)
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
            unlink_logged(st, journal, rd->old_top, "nothing needs it after");
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
        snapfs_warn("the revert of domain '%s' to snapshot '%s' was cut short after libvirt was asked to apply "
                    "it: some of its disks may be reverted already; what they held before is kept as snapshot "
                    "'%s' (write '%s' to revert to go back to it)", st->label, journal->target,
                    journal->keep_name, journal->keep_name);
    else
        snapfs_warn("the revert of domain '%s' to snapshot '%s' was cut short after libvirt was asked to apply "
                    "it: some of its disks may be reverted already, and %s", st->label, journal->target,
                    journal->keep_name ? "the snapshot of their state before is missing"
                                       : "nothing of their state before was kept (revert_keep=off)");
    return revert_journal_remove(journal);
}

/* Settle one journal found on disk; @st is the domain's state now. */
static int revert_settle(struct revert_state *st, struct revert_journal *journal)
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
    snapfs_info("%s the interrupted revert of domain '%s' to snapshot '%s'",
                committed ? "finishing" : "rolling back", st->label, journal->target);
    return committed ? revert_roll_forward(st, journal, false) : revert_roll_back(st, journal);
}

/* ---- the revert ------------------------------------------------------------------- */

static int revert_stop(virDomainPtr dom, const char *domain, const char *label, const char *target)
{
    snapfs_info("stopping domain '%s' to revert it to snapshot '%s', as asked", label, target);
    if (virDomainDestroyFlags(dom, VIR_DOMAIN_DESTROY_GRACEFUL) < 0 && virDomainDestroy(dom) < 0) {
        snapfs_error_from_virt("cannot stop domain '%s' to revert it to '%s'", domain, target);
        return -1;
    }
    return 0;
}

/*
 * Whether libvirt's own revert refused because it cannot do this one, never
 * having touched anything: 9.0-9.8 answer "revert to external snapshot not
 * supported yet" (VIR_ERR_CONFIG_UNSUPPORTED); 9.9 and later still refuse
 * disk-only snapshots of a running domain (state disk-snapshot) with
 * "Invalid target domain state ... Refusing snapshot reversion".
 */
static bool virt_unsupported(void)
{
    virErrorPtr err = virGetLastError();

    return err && (err->code == VIR_ERR_CONFIG_UNSUPPORTED ||
                   (err->message && (strstr(err->message, "not supported yet") ||
                                     strstr(err->message, "Refusing snapshot reversion"))));
}

/*
 * Whether @file, which the revert to @target would write into or unlink, is
 * free of other users: 1 if so; 0 if another domain, another domain's
 * snapshot or a process needs it (logged: the revert leaves it alone); -1
 * with EIO where that cannot be told (fail closed: the revert is refused).
 */
static int plan_image_free(struct revert_state *st, struct revert_snapshot *target, const char *file)
{
    g_autofree char *what = g_strdup_printf("cannot revert '%s' to '%s'", st->name, target->name);
    const char *files[] = { file, NULL };
    const char *reason;

    /* Another host's files are not here to be read: nothing there is reused or unlinked. */
    if (!snapfs_uri_is_local(st->uri))
        return 0;
    if (engine_check_unused(st->conn, st->name, what, files) == 0)
        return 1;
    if (snapfs_error_errno() != EBUSY)
        return -1;
    reason = snapfs_error_message();
    if (g_str_has_prefix(reason, what) && reason[strlen(what)] == ':')
        reason += strlen(what) + 2;
    snapfs_info("the revert of domain '%s' to snapshot '%s' leaves '%s' as it is: %s", st->label, target->name,
                file, reason);
    return 0;
}

/* The plan for reverting to external snapshot @target: which images to make, keep and drop; NULL with the reason. */
static struct revert_journal *plan_external(struct revert_state *st, struct revert_snapshot *target, const char *path,
                                            const struct revert_options *options, bool *noop)
{
    g_autoptr(revert_journal) journal = g_new0(struct revert_journal, 1);
    g_autoptr(GDateTime) now = g_date_time_new_now_local();
    g_autofree char *stamp = g_date_time_format(now, "%Y%m%d-%H%M%S");
    g_autoptr(GPtrArray) tops = g_ptr_array_new();
    g_autoptr(GPtrArray) formats = g_ptr_array_new();
    struct revert_snapshot *identical = revert_state_identical(st, target);
    bool keep;
    GHashTableIter it;
    gpointer key, value;

    journal->path = g_strdup(path);
    journal->uri = g_strdup(st->uri);
    journal->domain = g_strdup(st->name);
    journal->uuid = g_strdup(st->uuid);
    journal->target = g_strdup(target->name);
    journal->phase = REVERT_PHASE_NATIVE;
    journal->old_current = g_strdup(st->current);
    journal->disks = g_ptr_array_new_with_free_func((GDestroyNotify)revert_disk_free);
    *noop = identical == target;
    if (*noop)
        return g_steal_pointer(&journal);

    for (guint i = 0; i < st->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(st->disks, i);

        if (disk->file) {
            g_ptr_array_add(tops, disk->file);
            g_ptr_array_add(formats, disk->format);
        }
    }
    keep = options->keep && !identical;
    if (keep) {
        journal->keep_name = g_strdup_printf(KEEP_PREFIX "%s", stamp);
        for (int n = 2; revert_snapshot_exists(st->dom, journal->keep_name); n++) {
            g_free(journal->keep_name);
            journal->keep_name = g_strdup_printf(KEEP_PREFIX "%s-%d", stamp, n);
        }
    }
    /* Every local disk the domain has now: its old top, and the pre-revert overlay on it. */
    for (guint i = 0; i < st->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(st->disks, i);
        struct revert_disk *rd;

        if (!revert_disk_is_local(disk))
            continue;
        rd = g_new0(struct revert_disk, 1);
        rd->target = g_strdup(disk->target);
        rd->old_top = g_strdup(disk->file);
        /* A disk the snapshot left out stays as it is: nothing of it is left behind to keep. */
        if (keep && g_hash_table_contains(target->frozen, disk->target)) {
            g_autofree char *dir = g_path_get_dirname(disk->file);

            rd->keep_overlay = revert_image_name(dir, st->name, disk->target, journal->keep_name);
        }
        g_ptr_array_add(journal->disks, rd);
    }
    /* Every disk the snapshot froze: its own overlay where nothing was written to it since, else a new one. */
    g_hash_table_iter_init(&it, target->frozen);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        const char *t = key, *frozen = value;
        const char *own = g_hash_table_lookup(target->overlay, t);
        struct revert_disk *rd = NULL;

        for (guint j = 0; j < journal->disks->len; j++) {
            if (strcmp(((struct revert_disk *)g_ptr_array_index(journal->disks, j))->target, t) == 0)
                rd = g_ptr_array_index(journal->disks, j);
        }
        if (!rd) {
            rd = g_new0(struct revert_disk, 1);
            rd->target = g_strdup(t);
            g_ptr_array_add(journal->disks, rd);
        }
        if (own && snapfs_chain_qcow2_empty(own) && !revert_state_names_file(st, own, target->name)) {
            g_autofree char *backing = revert_image_backing(own, g_hash_table_lookup(target->overlay_format, t), NULL);
            int held = revert_chains_hold(tops, formats, own);
            int free_of_others = held == 0 && backing && strcmp(backing, frozen) == 0
                                 ? plan_image_free(st, target, own) : 0;

            if (held < 0 || free_of_others < 0)
                return NULL;
            if (free_of_others == 1)
                rd->new_top = g_strdup(own);
        }
        if (!rd->new_top) {
            g_autofree char *dir = g_path_get_dirname(rd->old_top ? rd->old_top : own ? own : frozen);
            g_autofree char *what = g_strdup_printf("revert-%s-%s", target->name, stamp);

            rd->new_top = revert_image_name(dir, st->name, t, what);
            rd->new_created = true;
        }
    }
    /* Old tops nobody needs once the domain left them: unlinked at the end, unless kept. */
    for (guint i = 0; !keep && i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
        g_autoptr(GPtrArray) new_tops = g_ptr_array_new();
        g_autoptr(GPtrArray) new_formats = g_ptr_array_new();
        int held;

        if (!rd->old_top || !rd->new_top || strcmp(rd->old_top, rd->new_top) == 0)
            continue;
        if (!snapfs_chain_qcow2_empty(rd->old_top) && options->keep)
            continue;
        if (revert_state_names_file(st, rd->old_top, NULL))
            continue;
        for (guint j = 0; j < journal->disks->len; j++) {
            struct revert_disk *other = g_ptr_array_index(journal->disks, j);
            const char *frozen = g_hash_table_lookup(target->frozen, other->target);

            if (frozen) {
                g_ptr_array_add(new_tops, (gpointer)frozen);
                g_ptr_array_add(new_formats, g_hash_table_lookup(target->frozen_format, other->target));
            }
        }
        held = revert_chains_hold(new_tops, new_formats, rd->old_top);
        if (held == 0) {
            /* Another domain or a process may still need what this one leaves. */
            int unused = plan_image_free(st, target, rd->old_top);

            if (unused < 0)
                return NULL;
            held = unused == 0;
        }
        if (held < 0)
            return NULL;
        rd->drop_old = held == 0;
    }
    return g_steal_pointer(&journal);
}

/*
 * Every overlay the plan makes: its name free (a file is never overwritten,
 * EEXIST) and the format of what it stands on, and of that image's chain,
 * recorded by libvirt or the images (formats are never guessed, ENOTSUP).
 * Checked before anything changes.
 */
static int revert_check_images(struct revert_state *st, struct revert_snapshot *target,
                               const struct revert_journal *journal)
{
    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
        const char *made[2] = { rd->keep_overlay, rd->new_created ? rd->new_top : NULL };
        const char *below[2] = { rd->old_top, g_hash_table_lookup(target->frozen, rd->target) };
        const char *format[2] = { old_top_format(st, journal, rd),
                                  g_hash_table_lookup(target->frozen_format, rd->target) };

        for (int k = 0; k < 2; k++) {
            g_autoptr(GPtrArray) chain = NULL;
            struct stat sb;

            if (!made[k] || !below[k])
                continue;
            if (lstat(made[k], &sb) == 0) {
                snapfs_error_set(EEXIST, "cannot revert '%s' to '%s': '%s' exists already (snapfs never "
                                 "overwrites a file)", st->name, target->name, made[k]);
                return -1;
            }
            if (!format[k]) {
                snapfs_error_set(ENOTSUP, "cannot revert '%s' to '%s': neither libvirt nor an image records "
                                 "the format of '%s', and snapfs does not guess formats", st->name,
                                 target->name, below[k]);
                return -1;
            }
            chain = snapfs_chain_read(below[k], format[k]);
            if (!chain) {
                g_autofree char *reason = g_strdup(snapfs_error_message());

                snapfs_error_set(snapfs_error_errno(), "cannot revert '%s' to '%s': %s", st->name, target->name,
                                 reason);
                return -1;
            }
        }
    }
    return 0;
}

/*
 * The by-hand path makes overlays next to the images and reads their
 * headers: it needs them as files on this host.  ENOTSUP otherwise, with why.
 */
static int revert_check_local(struct revert_state *st, struct revert_snapshot *target)
{
    GHashTableIter it;
    gpointer value;

    if (!snapfs_uri_is_local(st->uri)) {
        snapfs_error_set(ENOTSUP, "cannot revert '%s' to '%s': libvirt at '%s' cannot revert to external "
                         "snapshots and snapfs needs the images as local files to do it by hand",
                         st->name, target->name, st->uri);
        return -1;
    }
    for (guint i = 0; i < st->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(st->disks, i);

        if (revert_disk_is_local(disk) && !g_file_test(disk->file, G_FILE_TEST_EXISTS)) {
            snapfs_error_set(ENOTSUP, "cannot revert '%s' to '%s': its image '%s' is not a file snapfs can see "
                             "on this host", st->name, target->name, disk->file);
            return -1;
        }
    }
    g_hash_table_iter_init(&it, target->frozen);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        if (!g_file_test(value, G_FILE_TEST_EXISTS)) {
            snapfs_error_set(ENOTSUP, "cannot revert '%s' to '%s': its image '%s' is not a file snapfs can see "
                             "on this host", st->name, target->name, (const char *)value);
            return -1;
        }
    }
    return 0;
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
        struct snapfs_disk *disk = snapfs_disk_find(st->disks, key);

        if (!disk || !disk->file || strcmp(disk->file, value) != 0)
            return false;
        /* libvirt unlinks it whoever else stands on it (a linked clone: libvirt 11 did): snapfs's own revert
         * leaves it then.  Where that cannot be told, too. */
        if (plan_image_free(st, target, value) != 1)
            return false;
    }
    return true;
}

/* Whether the connection says it reverts external snapshots itself: <externalSnapshot/> among a guest's features. */
static bool native_advertised(virConnectPtr conn)
{
    g_autofree char *caps = virConnectGetCapabilities(conn);
    g_autofree char *found = NULL;
    xmlXPathContextPtr ctxt = NULL;
    xmlDocPtr doc = caps ? snapfs_xml_read(caps, &ctxt) : NULL;

    if (doc)
        found = snapfs_xml_string(ctxt, NULL, "name(/capabilities/guest/features/externalSnapshot)");
    snapfs_xml_free(doc, ctxt);
    return found != NULL;
}

/* Whether libvirt's own revert will be tried (and may do it all, so that no image need be local). */
static bool native_possible(struct revert_state *st, const struct revert_journal *journal)
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
        struct snapfs_disk *before = snapfs_disk_find(st->disks, disk->target);
        struct snapfs_layer *layer;
        g_autofree char *below = NULL;
        struct stat st_below, st_new;
        int fd;

        /* Only the overlays libvirt has just made: a disk it left on its image is not one. */
        if (!disk->file || !revert_disk_is_local(disk) || (before && before->file && strcmp(before->file, disk->file) == 0))
            continue;
        layer = snapfs_chain_read_layer(disk->file, disk->format);
        below = layer && layer->backing ? snapfs_chain_resolve(disk->file, layer->backing) : NULL;
        if (layer)
            snapfs_layer_free(layer);
        fd = open(disk->file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
        if (!below || fd < 0 || fstat(fd, &st_new) < 0 || !S_ISREG(st_new.st_mode) || stat(below, &st_below) < 0) {
            snapfs_warn("cannot give overlay '%s' of domain '%s' the owner of the image below it", disk->file,
                        st->label);
        } else {
            if ((st_new.st_uid != st_below.st_uid || st_new.st_gid != st_below.st_gid) &&
                fchown(fd, st_below.st_uid, st_below.st_gid) < 0)
                snapfs_warn("cannot give overlay '%s' of domain '%s' the owner of '%s': %s", disk->file, st->label,
                            below, g_strerror(errno));
            if ((st_new.st_mode & 07777) != 0600 && fchmod(fd, 0600) < 0)
                snapfs_warn("cannot make overlay '%s' of domain '%s' mode 0600: %s", disk->file, st->label,
                            g_strerror(errno));
        }
        if (fd >= 0)
            close(fd);
    }
}

/* Carries out @journal, the plan of the revert to external snapshot @target (@noop: nothing to do but its name). */
static int revert_external(struct revert_state *st, struct revert_snapshot *target, struct revert_journal *journal,
                           bool noop)
{
    g_autofree char *domain_xml = NULL;
    g_autofree char *keep = NULL;
    virDomainSnapshotPtr snap;
    bool unsupported;
    int rc;

    if (noop) {
        /* Nothing was written since the domain left @target: only its name is missing. */
        snapfs_info("domain '%s' reads as snapshot '%s' already", st->label, target->name);
        return st->current && strcmp(st->current, target->name) == 0 ? 0 : revert_snapshot_make_current(st, target->name);
    }
    if (revert_journal_write(journal) < 0)
        return -1;
    revert_fault("journal");

    if (journal->keep_name) {
        for (guint i = 0; i < journal->disks->len; i++) {
            struct revert_disk *rd = g_ptr_array_index(journal->disks, i);

            if (rd->keep_overlay &&
                revert_image_create_overlay(rd->keep_overlay, rd->old_top, old_top_format(st, journal, rd)) < 0) {
                /* Someone else's file of that name is theirs: the rollback leaves it alone. */
                if (snapfs_error_errno() == EEXIST)
                    g_clear_pointer(&rd->keep_overlay, g_free);
                goto fail;
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
            goto fail;
        g_free(st->current);
        st->current = g_strdup(journal->keep_name);
        snapfs_info("kept the state domain '%s' leaves as snapshot '%s' before reverting it to snapshot '%s'",
                    st->label, journal->keep_name, target->name);
        revert_fault("keep");
    }

    /* libvirt's own revert, where the connected libvirt has it (9.9 and later) and it is safe. */
    if (native_is_safe(st, journal)) {
        snap = virDomainSnapshotLookupByName(st->dom, target->name, 0);
        rc = snap ? virDomainRevertToSnapshot(snap, 0) : -1;
        /* Read before virDomainSnapshotFree(), which clears libvirt's last error. */
        unsupported = rc < 0 && virt_unsupported();
        if (rc < 0 && !unsupported)
            snapfs_error_from_virt("cannot revert domain '%s' to '%s'", st->name, target->name);
        else if (unsupported)
            snapfs_debug("libvirt cannot revert domain '%s' to external snapshot '%s' (%s): snapfs does it",
                         st->label, target->name, virGetLastErrorMessage());
        if (snap)
            virDomainSnapshotFree(snap);
    } else {
        snapfs_debug("libvirt's own revert of domain '%s' to snapshot '%s' would unlink images snapshots still "
                     "need: snapfs does it", st->label, target->name);
        rc = -1;
        unsupported = true;
    }
    if (rc == 0) {
        snapfs_info("libvirt reverted domain '%s' to snapshot '%s'", st->label, target->name);
        native_make_private(st);
        g_free(st->current);
        st->current = g_strdup(target->name);
        return revert_roll_forward(st, journal, true);
    }
    if (!unsupported)
        goto fail;
    if (revert_check_local(st, target) < 0)
        goto fail;
    journal->phase = REVERT_PHASE_BY_HAND;
    if (revert_journal_write(journal) < 0)
        goto fail;

    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
        const char *frozen = g_hash_table_lookup(target->frozen, rd->target);

        if (rd->new_top && rd->new_created &&
            revert_image_create_overlay(rd->new_top, frozen, g_hash_table_lookup(target->frozen_format, rd->target)) < 0) {
            if (snapfs_error_errno() == EEXIST)
                rd->new_created = false;
            goto fail;
        }
        if (rd->new_top) {
            g_autofree char *dir = g_path_get_dirname(rd->new_top);

            revert_sync_path(dir);
        }
    }
    revert_fault("overlays");

    domain_xml = revert_domain_xml(st, target, journal);
    if (!domain_xml)
        goto fail;
    {
        virDomainPtr dom = virDomainDefineXML(st->conn, domain_xml);

        if (!dom) {
            snapfs_error_from_virt("cannot redefine domain '%s' on the overlays of snapshot '%s'",
                                   st->name, target->name);
            goto fail;
        }
        virDomainFree(dom);
    }
    snapfs_info("domain '%s' now runs on new overlays over snapshot '%s'", st->label, target->name);
    revert_fault("domain");
    if (revert_roll_forward(st, journal, true) < 0) {
        snapfs_warn("domain '%s' was reverted to snapshot '%s' but not everything was finished (the next "
                    "start of snapfs finishes it): %s", st->label, target->name, snapfs_error_message());
    }
    return 0;

fail:
    {
        g_autofree char *reason = g_strdup(snapfs_error_message());
        int errnum = snapfs_error_errno();

        if (revert_roll_back(st, journal) < 0)
            snapfs_warn("cannot roll back the revert of domain '%s' to snapshot '%s' (the next start of snapfs "
                        "tries again): %s", st->label, target->name, snapfs_error_message());
        snapfs_error_set(errnum, "%s", reason);
    }
    return -1;
}

/*
 * libvirt reverts an internal snapshot by applying it (qemu-img snapshot -a)
 * to the images the domain used when it was taken.  Where the domain has
 * moved on to external overlays since, those images are what external
 * snapshots froze, and applying it would change them: refused (ENOTSUP).
 */
static int revert_internal_check(struct revert_state *st, struct revert_snapshot *target)
{
    for (guint i = 0; target->domain_disks && i < target->domain_disks->len; i++) {
        struct snapfs_disk *then = g_ptr_array_index(target->domain_disks, i);
        struct snapfs_disk *now = snapfs_disk_find(st->disks, then->target);

        if (!then->file || !revert_disk_is_local(then))
            continue;
        if (!now || !now->file || strcmp(now->file, then->file) != 0) {
            snapfs_error_set(ENOTSUP, "cannot revert '%s' to internal snapshot '%s': libvirt would rewrite "
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
                    snapfs_error_set(ENOTSUP, "cannot revert '%s' to internal snapshot '%s': libvirt would "
                                     "rewrite image '%s', which snapshot '%s' froze",
                                     st->name, target->name, then->file, other->name);
                    return -1;
                }
            }
        }
    }
    return 0;
}

/* Before libvirt was asked: undo what revert_internal() did, keeping the reason recorded.  Always -1. */
static int internal_roll_back(struct revert_state *st, struct revert_journal *journal)
{
    g_autofree char *reason = g_strdup(snapfs_error_message());
    int errnum = snapfs_error_errno();

    if (revert_roll_back(st, journal) < 0)
        snapfs_warn("cannot roll back the revert of domain '%s' to snapshot '%s': %s", st->label, journal->target,
                    snapfs_error_message());
    snapfs_error_set(errnum, "%s", reason);
    return -1;
}

static int revert_internal(struct revert_state *st, struct revert_snapshot *target, const char *path,
                           const struct revert_options *options)
{
    g_autoptr(revert_journal) journal = g_new0(struct revert_journal, 1);
    virDomainSnapshotPtr snap;
    int rc;

    journal->path = g_strdup(path);
    journal->uri = g_strdup(st->uri);
    journal->domain = g_strdup(st->name);
    journal->uuid = g_strdup(st->uuid);
    journal->target = g_strdup(target->name);
    journal->phase = REVERT_PHASE_INTERNAL;
    journal->old_current = g_strdup(st->current);
    journal->disks = g_ptr_array_new_with_free_func((GDestroyNotify)revert_disk_free);
    if (options->keep) {
        g_autoptr(GDateTime) now = g_date_time_new_now_local();
        g_autofree char *stamp = g_date_time_format(now, "%Y%m%d-%H%M%S");

        journal->keep_name = g_strdup_printf(KEEP_PREFIX "%s", stamp);
        for (int n = 2; revert_snapshot_exists(st->dom, journal->keep_name); n++) {
            g_free(journal->keep_name);
            journal->keep_name = g_strdup_printf(KEEP_PREFIX "%s-%d", stamp, n);
        }
    }
    if (revert_journal_write(journal) < 0)
        return -1;
    revert_fault("journal");
    if (journal->keep_name) {
        /* An internal snapshot of what the disks hold now, as libvirt makes it by default. */
        g_autofree char *name = g_markup_escape_text(journal->keep_name, -1);
        g_autofree char *target_name = g_markup_escape_text(target->name, -1);
        g_autofree char *xml = g_strdup_printf("<domainsnapshot><name>%s</name><description>What the disks "
                                               "held when snapfs reverted to '%s'.</description></domainsnapshot>",
                                               name, target_name);

        snap = virDomainSnapshotCreateXML(st->dom, xml, 0);
        if (!snap) {
            snapfs_error_from_virt("cannot keep the state of domain '%s' as snapshot '%s' before reverting",
                                   st->name, journal->keep_name);
            revert_journal_remove(journal);
            return -1;
        }
        virDomainSnapshotFree(snap);
        revert_fault("keep");
    }
    snap = virDomainSnapshotLookupByName(st->dom, target->name, 0);
    if (!snap) {
        snapfs_error_from_virt("cannot revert domain '%s' to '%s'", st->name, target->name);
        return internal_roll_back(st, journal);
    }
    /* From here on a crash is never rolled back (revert_settle_asked()): the journal must say so first. */
    journal->phase = REVERT_PHASE_INTERNAL_ASKED;
    if (revert_journal_write(journal) < 0) {
        virDomainSnapshotFree(snap);
        journal->phase = REVERT_PHASE_INTERNAL;
        return internal_roll_back(st, journal);
    }
    revert_fault("asked");
    rc = virDomainRevertToSnapshot(snap, 0);
    if (rc < 0)
        snapfs_error_from_virt("cannot revert domain '%s' to '%s'", st->name, target->name);
    virDomainSnapshotFree(snap);
    if (rc < 0) {
        /*
         * libvirt 9.0 applies an internal snapshot disk by disk and undoes
         * nothing when one fails: the disks before it may be reverted
         * already.  What they held is only in pre-revert-DATE now, so it
         * stays, whatever else failed.
         */
        g_autofree char *reason = g_strdup(snapfs_error_message());

        if (revert_journal_remove(journal) < 0)
            snapfs_warn("%s", snapfs_error_message());
        if (journal->keep_name) {
            snapfs_error_set(EIO, "%s; some of its disks may be reverted already: what they held before is kept "
                             "as snapshot '%s' (write '%s' to revert to go back to it)", reason,
                             journal->keep_name, journal->keep_name);
        } else {
            snapfs_error_set(EIO, "%s; some of its disks may be reverted already (revert_keep=off: nothing of "
                             "their state before was kept)", reason);
        }
        snapfs_warn("%s", snapfs_error_message());
        return -1;
    }
    revert_fault("current");
    return revert_journal_remove(journal);
}

/* A name the request did not find: a prefix of it that is a snapshot means trailing garbage. */
static int revert_not_found(virDomainPtr dom, const char *domain, const char *name)
{
    g_autofree char *prefix = g_strdup(name);
    char *space;

    while ((space = strrchr(prefix, ' '))) {
        *space = '\0';
        if (revert_snapshot_exists(dom, prefix)) {
            snapfs_error_set(EINVAL, "cannot revert '%s': unexpected text after snapshot name '%s'", domain, prefix);
            return -1;
        }
    }
    snapfs_error_set(ENOENT, "cannot revert '%s' to '%s': there is no such snapshot", domain, name);
    return -1;
}

/*
 * Before the first change: every disk reads otherwise afterwards (its top is
 * left behind, unlinked, or rewritten by an internal revert), so whoever
 * reads the tops now (open files in the live layers) may refuse it.
 */
static int revert_ask(struct revert_state *st, const char *name)
{
    g_autoptr(GPtrArray) tops = g_ptr_array_new();
    g_autofree char *what = g_strdup_printf("cannot revert '%s' to '%s'", st->name, name);

    for (guint i = 0; i < st->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(st->disks, i);

        if (revert_disk_is_local(disk))
            g_ptr_array_add(tops, disk->file);
    }
    g_ptr_array_add(tops, NULL);
    return engine_before_change(st->label, what, (const char *const *)tops->pdata);
}

/*
 * Every check that could refuse the revert to @target, with nothing changed
 * yet, so that a running domain is stopped only once they all passed.  An
 * external snapshot: the plan (in @plan, @noop when only its name is
 * missing) and the local images it needs.  An internal one: what libvirt
 * would rewrite, and that nobody else stands on it.
 */
static int revert_prepare(struct revert_state *st, struct revert_snapshot *target, const char *path,
                          const struct revert_options *options, struct revert_journal **plan, bool *noop)
{
    g_autofree char *what = g_strdup_printf("cannot revert '%s' to '%s'", st->name, target->name);

    *plan = NULL;
    *noop = false;
    if (target->external) {
        GHashTableIter it;
        gpointer key;

        if (g_hash_table_size(target->frozen) == 0) {
            snapfs_error_set(EIO, "%s: the snapshot names no image it froze", what);
            return -1;
        }
        g_hash_table_iter_init(&it, target->overlay);
        while (g_hash_table_iter_next(&it, &key, NULL)) {
            if (!g_hash_table_contains(target->frozen, key)) {
                snapfs_error_set(EIO, "%s: cannot tell which image of disk %s the snapshot froze", what,
                                 (const char *)key);
                return -1;
            }
        }
        *plan = plan_external(st, target, path, options, noop);
        if (!*plan)
            return -1;
        /* Keeping the state left behind makes overlays here, and so does the by-hand revert. */
        if (!*noop && ((*plan)->keep_name || !native_possible(st, *plan)) && revert_check_local(st, target) < 0) {
            g_clear_pointer(plan, revert_journal_free);
            return -1;
        }
        /* The overlays it makes: names free, formats recorded. */
        if (!*noop && snapfs_uri_is_local(st->uri) && revert_check_images(st, target, *plan) < 0) {
            g_clear_pointer(plan, revert_journal_free);
            return -1;
        }
        return 0;
    }
    if (revert_internal_check(st, target) < 0)
        return -1;
    if (snapfs_uri_is_local(st->uri)) {
        /* qemu-img snapshot -c (pre-revert) and -a rewrite every image that holds it. */
        g_autoptr(GPtrArray) files = g_ptr_array_new();

        for (guint i = 0; target->domain_disks && i < target->domain_disks->len; i++) {
            struct snapfs_disk *then = g_ptr_array_index(target->domain_disks, i);

            if (then->file && revert_disk_is_local(then))
                g_ptr_array_add(files, then->file);
        }
        g_ptr_array_add(files, NULL);
        if (engine_check_unused(st->conn, st->name, what, (const char *const *)files->pdata) < 0)
            return -1;
    }
    return 0;
}

static const char *state_dir_of(const struct revert_options *options)
{
    return options && options->state_dir ? options->state_dir : "/var/lib/snapfs";
}

int revert_write(virConnectPtr conn, const char *domain, const char *buf, size_t len,
                 const struct revert_options *options)
{
    struct revert_request request = { 0 };
    struct engine_lock *lock = NULL;
    virDomainPtr dom = NULL;
    g_autoptr(revert_state) st = NULL;
    g_autoptr(revert_journal) plan = NULL;
    g_autofree char *uri = NULL;
    g_autofree char *path = NULL;
    g_autofree char *label = NULL;
    struct revert_snapshot *target;
    bool saved, noop = false;
    int active;
    int ret = -1;

    if (revert_parse(buf, len, &request) < 0)
        return -1;
    label = snapfs_domain_label(conn, domain);
    {
        g_autofree char *doing = g_strdup_printf("reverting to snapshot '%s'", request.name);
        g_autofree char *what = g_strdup_printf("cannot revert '%s' to '%s'", domain, request.name);

        lock = engine_lock_domain_conn(conn, domain, doing, what);
    }
    if (!lock)
        goto cleanup;
    dom = virDomainLookupByName(conn, domain);
    if (!dom) {
        snapfs_error_from_virt("cannot revert '%s'", domain);
        goto cleanup;
    }
    if (!revert_snapshot_exists(dom, request.name)) {
        revert_not_found(dom, domain, request.name);
        goto cleanup;
    }
    uri = virConnectGetURI(conn);
    if (!uri) {
        snapfs_error_from_virt("cannot revert '%s'", domain);
        goto cleanup;
    }
    if (revert_journal_prepare_dir(state_dir_of(options)) < 0)
        goto cleanup;
    path = revert_journal_path(state_dir_of(options), uri, domain);
    if (g_file_test(path, G_FILE_TEST_EXISTS)) {
        /* An earlier revert of this domain was cut short: settle it before anything else. */
        g_autoptr(revert_journal) old = revert_journal_load(path);
        g_autoptr(revert_state) before = old ? revert_state_read(conn, dom) : NULL;

        if (!before || revert_settle(before, old) < 0)
            goto cleanup;
    }

    active = virDomainIsActive(dom);
    if (active < 0) {
        snapfs_error_from_virt("cannot revert '%s'", domain);
        goto cleanup;
    }
    if (virDomainIsPersistent(dom) == 0) {
        /* Stopping it would make it vanish, and redefining it would change what kind of domain it is. */
        snapfs_error_set(ENOTSUP, "cannot revert '%s' to '%s': it is a transient domain (revert needs a "
                         "defined one, as virsh define makes it)", domain, request.name);
        goto cleanup;
    }
    if (active && !request.force) {
        snapfs_error_set(EBUSY, "cannot revert '%s' to '%s': the domain is running (write '%s --force' "
                         "to stop it first)", domain, request.name, request.name);
        goto cleanup;
    }
    saved = virDomainHasManagedSaveImage(dom, 0) == 1;
    if (saved && !request.force) {
        snapfs_error_set(EBUSY, "cannot revert '%s' to '%s': it has a saved memory state that would not "
                         "match the reverted disks (write '%s --force' to discard it)",
                         domain, request.name, request.name);
        goto cleanup;
    }
    st = revert_state_read(conn, dom);
    if (!st)
        goto cleanup;
    target = revert_state_snapshot(st, request.name);
    if (!target) {
        snapfs_error_set(ENOENT, "cannot revert '%s' to '%s': there is no such snapshot", domain, request.name);
        goto cleanup;
    }
    if (revert_ask(st, request.name) < 0 || revert_prepare(st, target, path, options, &plan, &noop) < 0)
        goto cleanup;
    if (active) {
        /* Every check passed: only now is the domain stopped, and then looked at again as it is stopped. */
        if (revert_stop(dom, domain, label, request.name) < 0)
            goto cleanup;
        g_clear_pointer(&plan, revert_journal_free);
        g_clear_pointer(&st, revert_state_free);
        st = revert_state_read(conn, dom);
        target = st ? revert_state_snapshot(st, request.name) : NULL;
        if (st && !target)
            snapfs_error_set(ENOENT, "cannot revert '%s' to '%s': there is no such snapshot", domain, request.name);
        if (!target || revert_prepare(st, target, path, options, &plan, &noop) < 0)
            goto cleanup;
    }
    if (saved && virDomainManagedSaveRemove(dom, 0) < 0) {
        snapfs_error_from_virt("cannot discard the saved memory state of '%s'", domain);
        goto cleanup;
    }
    ret = target->external ? revert_external(st, target, plan, noop)
                           : revert_internal(st, target, path, options);
    if (ret == 0)
        snapfs_info("reverted domain '%s' to snapshot '%s'", label, request.name);

cleanup:
    if (dom)
        virDomainFree(dom);
    engine_unlock_domain(lock);
    revert_request_clear(&request);
    return ret;
}

int revert_recover(virConnectPtr conn, const struct revert_options *options)
{
    g_autoptr(GPtrArray) paths = revert_journal_list(state_dir_of(options));
    g_autofree char *uri = virConnectGetURI(conn);
    int ret = 0;

    for (guint i = 0; uri && i < paths->len; i++) {
        g_autoptr(revert_journal) journal = revert_journal_load(g_ptr_array_index(paths, i));
        g_autoptr(revert_state) st = NULL;
        g_autofree char *label = NULL;
        struct engine_lock *lock;
        virDomainPtr dom;

        if (!journal) {
            snapfs_warn("%s", snapfs_error_message());
            ret = -1;
            continue;
        }
        if (strcmp(journal->uri, uri) != 0)
            continue;
        label = snapfs_domain_label(conn, journal->domain);
        /* At startup nobody else acts on the domain through this snapfs; another process may (the state lock's business). */
        lock = engine_lock_domain_conn(conn, journal->domain, "recovering an interrupted revert",
                                       "cannot recover an interrupted revert");
        if (!lock) {
            snapfs_warn("%s", snapfs_error_message());
            ret = -1;
            continue;
        }
        dom = journal->uuid ? virDomainLookupByUUIDString(conn, journal->uuid)
                            : virDomainLookupByName(conn, journal->domain);
        if (!dom && virGetLastErrorCode() != VIR_ERR_NO_DOMAIN) {
            /* Not an answer about the domain (libvirt down, a timeout): the journal waits for one. */
            snapfs_error_from_virt("cannot look up domain '%s' of an interrupted revert to snapshot '%s' (its "
                                   "journal '%s' is kept for the next revert of it or the next start)",
                                   label, journal->target, journal->path);
            snapfs_warn("%s", snapfs_error_message());
            ret = -1;
            engine_unlock_domain(lock);
            continue;
        }
        if (!dom) {
            /* The domain is gone (libvirt says so): nothing of it to settle, its images are left as they are. */
            snapfs_warn("domain '%s' of an interrupted revert to snapshot '%s' no longer exists; dropping its "
                        "journal '%s'", label, journal->target, journal->path);
            if (revert_journal_remove(journal) < 0)
                ret = -1;
            engine_unlock_domain(lock);
            continue;
        }
        st = revert_state_read(conn, dom);
        virDomainFree(dom);
        if (!st || revert_settle(st, journal) < 0) {
            snapfs_warn("cannot settle the interrupted revert of domain '%s' to snapshot '%s': %s", label,
                        journal->target, snapfs_error_message());
            ret = -1;
        }
        engine_unlock_domain(lock);
    }
    return ret;
}
