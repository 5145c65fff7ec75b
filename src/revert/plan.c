/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The plan of a revert, checked before anything changes: the journal it starts from, which images an external revert makes, reuses and drops, and whether they are local files with recorded formats. */
#include "revert-priv.h"
#include "snapfs/chain.h"
#include "snapfs/engine.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/virt.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

/*
 * The format of @rd's old top, as libvirt recorded it: the domain's disk now
 * or, once the domain left it, the pre-revert snapshot's domain.  NULL if
 * neither says (then no overlay is made on it: formats are never guessed).
 */
const char *revert_old_top_format(struct revert_state *st, const struct revert_journal *journal,
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

/* A journal of the revert of @st's domain to @target in phase @phase, with no disk and no kept snapshot yet. */
struct revert_journal *revert_journal_new(struct revert_state *st, struct revert_snapshot *target, const char *path,
                                          enum revert_phase phase)
{
    struct revert_journal *journal = g_new0(struct revert_journal, 1);

    journal->path = g_strdup(path);
    journal->uri = g_strdup(st->uri);
    journal->domain = g_strdup(st->name);
    journal->uuid = g_strdup(st->uuid);
    journal->target = g_strdup(target->name);
    journal->phase = phase;
    journal->old_current = g_strdup(st->current);
    journal->disks = g_ptr_array_new_with_free_func((GDestroyNotify)revert_disk_free);
    return journal;
}

/* pre-revert-@stamp, or pre-revert-@stamp-2, -3... where a snapshot of @dom has that name already. */
char *revert_keep_name(virDomainPtr dom, const char *stamp)
{
    char *name = g_strdup_printf(REVERT_KEEP_PREFIX "%s", stamp);

    for (int n = 2; revert_snapshot_exists(dom, name); n++) {
        g_free(name);
        name = g_strdup_printf(REVERT_KEEP_PREFIX "%s-%d", stamp, n);
    }
    return name;
}

/* The disk of @journal with target @target, or NULL. */
static struct revert_disk *plan_journal_disk(const struct revert_journal *journal, const char *target)
{
    struct revert_disk *rd = NULL;

    for (guint j = 0; j < journal->disks->len; j++) {
        if (strcmp(((struct revert_disk *)g_ptr_array_index(journal->disks, j))->target, target) == 0)
            rd = g_ptr_array_index(journal->disks, j);
    }
    return rd;
}

/* Every local disk the domain has now: its old top, and the pre-revert overlay on it. */
static void plan_old_tops(struct revert_state *st, struct revert_snapshot *target, struct revert_journal *journal)
{
    for (guint i = 0; i < st->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(st->disks, i);
        struct revert_disk *rd;

        if (!revert_disk_is_local(disk))
            continue;
        rd = g_new0(struct revert_disk, 1);
        rd->target = g_strdup(disk->target);
        rd->old_top = g_strdup(disk->file);
        /* A disk the snapshot left out stays as it is: nothing of it is left behind to keep. */
        if (journal->keep_name && g_hash_table_contains(target->frozen, disk->target)) {
            g_autofree char *dir = g_path_get_dirname(disk->file);

            rd->keep_overlay = revert_image_name(dir, st->name, disk->target, journal->keep_name);
        }
        g_ptr_array_add(journal->disks, rd);
    }
}

/*
 * Whether the overlay @own that @target made on @frozen (disk @t) can be the
 * new top again: nothing written to it since, no other snapshot naming it,
 * in no chain of @tops (the domain's disks now), free of other users.
 * 1 if so, 0 if not, -1 with the reason where that cannot be told.
 */
static int plan_own_reusable(struct revert_state *st, struct revert_snapshot *target, const char *t,
                             const char *own, const char *frozen, GPtrArray *tops, GPtrArray *formats)
{
    g_autofree char *backing = NULL;
    int held, free_of_others;

    if (!own || !chain_qcow2_empty(own) || revert_state_names_file(st, own, target->name))
        return 0;
    backing = revert_image_backing(own, g_hash_table_lookup(target->overlay_format, t), NULL);
    held = revert_chains_hold(tops, formats, own);
    free_of_others = held == 0 && backing && strcmp(backing, frozen) == 0 ? revert_plan_image_free(st, target, own) : 0;
    if (held < 0 || free_of_others < 0)
        return -1;
    return free_of_others;
}

/* Every disk the snapshot froze: its own overlay where nothing was written to it since, else a new one. */
static int plan_new_tops(struct revert_state *st, struct revert_snapshot *target, struct revert_journal *journal,
                         const char *stamp)
{
    g_autoptr(GPtrArray) tops = g_ptr_array_new();
    g_autoptr(GPtrArray) formats = g_ptr_array_new();
    GHashTableIter it;
    gpointer key, value;

    for (guint i = 0; i < st->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(st->disks, i);

        if (disk->file) {
            g_ptr_array_add(tops, disk->file);
            g_ptr_array_add(formats, disk->format);
        }
    }
    g_hash_table_iter_init(&it, target->frozen);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        const char *t = key, *frozen = value;
        const char *own = g_hash_table_lookup(target->overlay, t);
        struct revert_disk *rd = plan_journal_disk(journal, t);
        int reusable;

        if (!rd) {
            rd = g_new0(struct revert_disk, 1);
            rd->target = g_strdup(t);
            g_ptr_array_add(journal->disks, rd);
        }
        reusable = plan_own_reusable(st, target, t, own, frozen, tops, formats);
        if (reusable < 0)
            return -1;
        if (reusable == 1)
            rd->new_top = g_strdup(own);
        if (!rd->new_top) {
            g_autofree char *dir = g_path_get_dirname(rd->old_top ? rd->old_top : own ? own : frozen);
            g_autofree char *what = g_strdup_printf("revert-%s-%s", target->name, stamp);

            rd->new_top = revert_image_name(dir, st->name, t, what);
            rd->new_created = true;
        }
    }
    return 0;
}

/* Old tops nobody needs once the domain left them: unlinked at the end, unless kept. */
static int plan_drop_old(struct revert_state *st, struct revert_snapshot *target, struct revert_journal *journal,
                         const struct revert_options *options)
{
    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
        g_autoptr(GPtrArray) new_tops = g_ptr_array_new();
        g_autoptr(GPtrArray) new_formats = g_ptr_array_new();
        int held;

        if (!rd->old_top || !rd->new_top || strcmp(rd->old_top, rd->new_top) == 0)
            continue;
        if (!chain_qcow2_empty(rd->old_top) && options->keep)
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
            int unused = revert_plan_image_free(st, target, rd->old_top);

            if (unused < 0)
                return -1;
            held = unused == 0;
        }
        if (held < 0)
            return -1;
        rd->drop_old = held == 0;
    }
    return 0;
}

/* The plan for reverting to external snapshot @target: which images to make, keep and drop; NULL with the reason. */
struct revert_journal *revert_plan_external(struct revert_state *st, struct revert_snapshot *target, const char *path,
                                            const struct revert_options *options, bool *noop)
{
    g_autoptr(revert_journal) journal = revert_journal_new(st, target, path, REVERT_PHASE_NATIVE);
    g_autoptr(GDateTime) now = g_date_time_new_now_local();
    g_autofree char *stamp = g_date_time_format(now, "%Y%m%d-%H%M%S");
    struct revert_snapshot *identical = revert_state_identical(st, target);

    *noop = identical == target;
    if (*noop)
        return g_steal_pointer(&journal);
    if (options->keep && !identical)
        journal->keep_name = revert_keep_name(st->dom, stamp);
    plan_old_tops(st, target, journal);
    if (plan_new_tops(st, target, journal, stamp) < 0)
        return NULL;
    if (!journal->keep_name && plan_drop_old(st, target, journal, options) < 0)
        return NULL;
    return g_steal_pointer(&journal);
}

/*
 * Whether @file, which the revert to @target would write into or unlink, is
 * free of other users: 1 if so; 0 if another domain, another domain's
 * snapshot or a process needs it (logged: the revert leaves it alone); -1
 * with EIO where that cannot be told (fail closed: the revert is refused).
 */
int revert_plan_image_free(struct revert_state *st, struct revert_snapshot *target, const char *file)
{
    g_autofree char *what = g_strdup_printf("cannot revert '%s' to '%s'", st->name, target->name);
    const char *files[] = { file, NULL };
    const char *reason;

    /* Another host's files are not here to be read: nothing there is reused or unlinked. */
    if (!host_uri_is_local(st->uri))
        return 0;
    if (engine_check_unused(st->conn, st->name, what, files) == 0)
        return 1;
    if (error_errno() != EBUSY)
        return -1;
    reason = error_message();
    if (g_str_has_prefix(reason, what) && reason[strlen(what)] == ':')
        reason += strlen(what) + 2;
    log_info("the revert of domain '%s' to snapshot '%s' leaves '%s' as it is: %s", st->label, target->name,
                file, reason);
    return 0;
}

/*
 * Every overlay the plan makes: its name free (a file is never overwritten,
 * EEXIST) and the format of what it stands on, and of that image's chain,
 * recorded by libvirt or the images (formats are never guessed, ENOTSUP).
 * Checked before anything changes.
 */
int revert_check_images(struct revert_state *st, struct revert_snapshot *target,
                        const struct revert_journal *journal)
{
    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);
        const char *made[2] = { rd->keep_overlay, rd->new_created ? rd->new_top : NULL };
        const char *below[2] = { rd->old_top, g_hash_table_lookup(target->frozen, rd->target) };
        const char *format[2] = { revert_old_top_format(st, journal, rd),
                                  g_hash_table_lookup(target->frozen_format, rd->target) };

        for (int k = 0; k < 2; k++) {
            g_autoptr(GPtrArray) chain = NULL;
            struct stat sb;

            if (!made[k] || !below[k])
                continue;
            if (lstat(made[k], &sb) == 0) {
                error_set(EEXIST, "cannot revert '%s' to '%s': '%s' exists already (snapfs never "
                                 "overwrites a file)", st->name, target->name, made[k]);
                return -1;
            }
            if (!format[k]) {
                error_set(ENOTSUP, "cannot revert '%s' to '%s': neither libvirt nor an image records "
                                 "the format of '%s', and snapfs does not guess formats", st->name,
                                 target->name, below[k]);
                return -1;
            }
            chain = chain_read(below[k], format[k]);
            if (!chain) {
                g_autofree char *reason = g_strdup(error_message());

                error_set(error_errno(), "cannot revert '%s' to '%s': %s", st->name, target->name,
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
int revert_check_local(struct revert_state *st, struct revert_snapshot *target)
{
    GHashTableIter it;
    gpointer value;

    if (!host_uri_is_local(st->uri)) {
        error_set(ENOTSUP, "cannot revert '%s' to '%s': libvirt at '%s' cannot revert to external "
                         "snapshots and snapfs needs the images as local files to do it by hand",
                         st->name, target->name, st->uri);
        return -1;
    }
    for (guint i = 0; i < st->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(st->disks, i);

        if (revert_disk_is_local(disk) && !g_file_test(disk->file, G_FILE_TEST_EXISTS)) {
            error_set(ENOTSUP, "cannot revert '%s' to '%s': its image '%s' is not a file snapfs can see "
                             "on this host", st->name, target->name, disk->file);
            return -1;
        }
    }
    g_hash_table_iter_init(&it, target->frozen);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        if (!g_file_test(value, G_FILE_TEST_EXISTS)) {
            error_set(ENOTSUP, "cannot revert '%s' to '%s': its image '%s' is not a file snapfs can see "
                             "on this host", st->name, target->name, (const char *)value);
            return -1;
        }
    }
    return 0;
}
