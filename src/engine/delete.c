/* SPDX-License-Identifier: GPL-2.0-or-later */
/* rmdir: delete a snapshot through libvirt where it is safe, refuse (ENOTSUP) where libvirt 9.0 would lose data. */
#include "engine-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/virt.h"

#include <errno.h>
#include <libvirt/virterror.h>
#include <libxml/parser.h>
#include <string.h>
#include <unistd.h>

/* Everything one delete looks at, gathered before anything is changed; no lock: one thread, under the domain's lock. */
struct delete_ctx {
    virConnectPtr conn;
    virDomainPtr dom;
    virDomainSnapshotPtr snap;
    const char *domain;
    const char *name;
    char *label;                        /* "HOST/DOMAIN", for the log */
    char *what;                         /* "cannot delete snapshot 'NAME' of 'DOMAIN'" */
    char uuid[VIR_UUID_STRING_BUFLEN];  /* the domain's: its own qemu may hold its images */
    bool running;
    struct engine_snapshot_info *info;
    GPtrArray *disks;                   /* struct snapfs_disk *, live if running */
    struct engine_images *images;
};

/* The image right above @file in the chain that starts at @top, "" if @file is @top, NULL if absent. */
static const char *delete_above_in_chain(struct engine_images *images, const char *top, const char *file)
{
    const char *above = "";
    const char *cur = top;

    for (int depth = 0; cur && *cur && depth < 256; depth++) {
        if (strcmp(cur, file) == 0)
            return above;
        above = cur;
        cur = g_hash_table_lookup(images->backing, cur);
    }
    return NULL;
}

/* ---- the checks that keep libvirt 9.0 from losing data ---------------------------------- */

/* Another domain (a linked clone) or its snapshot reading either file would read otherwise after. */
static int delete_check_not_shared(struct delete_ctx *ctx, const char *overlay, const char *frozen)
{
    g_autofree char *other = engine_images_user(ctx->images, overlay, ctx->domain);

    if (other) {
        error_set(EBUSY, "%s: %s stands on its overlay '%s', which the merge would remove",
                         ctx->what, other, overlay);
        return -1;
    }
    other = engine_images_user(ctx->images, frozen, ctx->domain);
    if (other) {
        error_set(EBUSY, "%s: %s stands on '%s', which the merge would change", ctx->what, other, frozen);
        return -1;
    }
    return 0;
}

/* libvirt 9.0 unlinks the overlay with every internal snapshot inside it (seen: a child's, after a revert). */
static int delete_check_no_internal(struct delete_ctx *ctx, const char *overlay)
{
    g_autoptr(GPtrArray) internal = chain_internal_snapshots(overlay);

    if (!internal) {
        error_set(EIO, "%s: cannot tell whether its overlay '%s' holds internal snapshots: %s", ctx->what,
                         overlay, error_message());
        return -1;
    }
    if (internal->len > 0) {
        error_set(ENOTSUP, "%s: its overlay '%s' holds internal snapshot '%s', which the merge would destroy",
                         ctx->what, overlay, (const char *)g_ptr_array_index(internal, 0));
        return -1;
    }
    return 0;
}

/* Nothing but the disk's own chain may be built on the overlay (@above) or on what it froze (the overlay). */
static int delete_check_no_branch(struct delete_ctx *ctx, const char *overlay, const char *frozen,
                                  const char *above)
{
    g_autofree const char **over_deps = engine_images_dependents(ctx->images, overlay);
    g_autofree const char **frozen_deps = NULL;

    for (size_t i = 0; over_deps[i]; i++) {
        if (strcmp(over_deps[i], above) != 0) {
            error_set(ENOTSUP, "%s: '%s' is built on its overlay '%s' outside the disk's chain (a branch); "
                             "the merge would break it", ctx->what, over_deps[i], overlay);
            return -1;
        }
    }
    frozen_deps = engine_images_dependents(ctx->images, frozen);
    for (size_t i = 0; frozen_deps[i]; i++) {
        if (strcmp(frozen_deps[i], overlay) != 0) {
            error_set(ENOTSUP, "%s: '%s' is also built on '%s', which the merge would change",
                             ctx->what, frozen_deps[i], frozen);
            return -1;
        }
    }
    return 0;
}

/*
 * libvirt merges the snapshot's overlay into the image below it (the one
 * the snapshot froze), rebases the image above onto that, and unlinks the
 * overlay.  That is right only when nothing else reads either file.
 */
static int delete_check_merge_disk(struct delete_ctx *ctx, struct snapfs_snapshot_disk *sd,
                                   struct snapfs_disk *disk, const char *above)
{
    const char *overlay = sd->file;
    const char *frozen = g_hash_table_lookup(ctx->images->backing, overlay);
    const char *user;

    if (!frozen || !*frozen) {
        error_set(ENOTSUP, "%s: its overlay '%s' of disk %s has no backing image to merge into",
                         ctx->what, overlay, sd->target);
        return -1;
    }
    if (delete_check_not_shared(ctx, overlay, frozen) < 0 || delete_check_no_internal(ctx, overlay) < 0 ||
        delete_check_no_branch(ctx, overlay, frozen, above) < 0)
        return -1;
    user = g_hash_table_lookup(ctx->images->tops, frozen);
    if (user) {
        error_set(ENOTSUP, "%s: '%s', which the merge would change, is the disk of %s",
                         ctx->what, frozen, user);
        return -1;
    }
    user = g_hash_table_lookup(ctx->images->tops, overlay);
    if (user && strcmp(overlay, disk->file) != 0) {
        error_set(ENOTSUP, "%s: its overlay '%s' is the disk of %s", ctx->what, overlay, user);
        return -1;
    }
    return 0;
}

/*
 * Spell out the <backingStore> chain of one <disk> of the domain's XML: 1
 * when it did, 0 when there was nothing to spell (no file, or spelled out
 * already), -1 with the reason.  The splice stays here until xml.c holds the
 * one "spell out a disk's backing chain" that revert and delete will share.
 */
static int delete_spell_out_disk(struct delete_ctx *ctx, xmlXPathContextPtr xpath, xmlNodePtr disk)
{
    g_autofree char *file = xml_string(xpath, disk, "string(source/@file)");
    g_autofree char *format = xml_string(xpath, disk, "string(driver/@type)");
    g_autofree char *spelled = xml_string(xpath, disk, "string(count(backingStore/node()))");
    g_autoptr(GPtrArray) chain = NULL;

    /* Already spelled out (a non-empty <backingStore>), or nothing to spell. */
    if (!file || g_strcmp0(spelled, "0") != 0)
        return 0;
    chain = chain_read(file, format);
    if (!chain)
        return -1;
    if (chain->len <= 1)
        return 0;
    if (xml_disk_set_backing(disk, chain) < 0) {
        error_set(EIO, "%s: cannot spell out the chain of '%s'", ctx->what, file);
        return -1;
    }
    return 1;
}

/*
 * libvirt 9.0 deletes external snapshots of a shut-off domain only when the
 * persistent XML spells out each disk's <backingStore> chain.  Spelling it out
 * changes nothing the guest sees, so it is safe at any moment.
 */
static int delete_spell_out_chains(struct delete_ctx *ctx)
{
    g_autofree char *xml = virDomainGetXMLDesc(ctx->dom, VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE);
    g_autoptr(xmlXPathContext) xpath = NULL;
    g_autoptr(xmlDoc) doc = NULL;
    g_autofree char *out = NULL;
    g_autoptr(virDomain) redefined = NULL;
    g_autoptr(GPtrArray) disks = NULL;
    bool changed = false;

    if (!xml) {
        error_from_virt("%s", ctx->what);
        return -1;
    }
    doc = xml_read(xml, &xpath);
    disks = doc ? xml_nodes(xpath, "/domain/devices/disk") : NULL;
    for (guint i = 0; disks && i < disks->len; i++) {
        int spelled = delete_spell_out_disk(ctx, xpath, g_ptr_array_index(disks, i));

        if (spelled < 0)
            return -1;
        changed = changed || spelled > 0;
    }
    if (!changed)
        return 0;
    out = xml_dump(doc);
    redefined = out ? virDomainDefineXML(ctx->conn, out) : NULL;
    if (!redefined) {
        error_from_virt("%s: cannot spell out the backing chains in its XML", ctx->what);
        return -1;
    }
    log_debug("spelled out the backing chains of domain '%s' for libvirt to delete snapshot '%s'",
                 ctx->label, ctx->name);
    return 0;
}

/* ---- the three ways ----------------------------------------------------------------- */

/*
 * Before the first change: whoever reads @files (open files in their views)
 * may still refuse it; once those appliances are gone, no other process but
 * the domain's own qemu may hold one open.
 */
static int delete_ask(struct delete_ctx *ctx, GPtrArray *files)
{
    g_ptr_array_add(files, NULL);
    if (engine_before_change(ctx->label, ctx->what, (const char *const *)files->pdata) < 0)
        return -1;
    return engine_check_not_open(ctx->uuid, ctx->what, (const char *const *)files->pdata);
}

static int delete_internal(struct delete_ctx *ctx)
{
    g_autoptr(GPtrArray) holders = g_ptr_array_new();

    /* qemu-img snapshot -d rewrites each image that holds it. */
    for (guint i = 0; i < ctx->info->domain_disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(ctx->info->domain_disks, i);

        if (disk->file && strcmp(disk->type, "network") != 0)
            g_ptr_array_add(holders, disk->file);
    }
    if (delete_ask(ctx, holders) < 0)
        return -1;
    /* libvirt 9.0 finds each disk's internal snapshot where the snapshot's own XML says it is. */
    if (virDomainSnapshotDelete(ctx->snap, 0) < 0) {
        error_from_virt("%s", ctx->what);
        return -1;
    }
    return 0;
}

/* The snapshot's overlays that nothing in @images reaches or stands on: what an off-branch delete removes. */
static GPtrArray *delete_unreached(struct delete_ctx *ctx, struct engine_images *images)
{
    GPtrArray *unreached = g_ptr_array_new();

    for (guint i = 0; i < ctx->info->disks->len; i++) {
        struct snapfs_snapshot_disk *sd = g_ptr_array_index(ctx->info->disks, i);
        g_autofree const char **deps = NULL;

        if (strcmp(sd->kind, "external") != 0 || !sd->file)
            continue;
        deps = engine_images_dependents(images, sd->file);
        if (!engine_images_reachable(images, sd->file) && !deps[0])
            g_ptr_array_add(unreached, sd->file);
    }
    return unreached;
}

/*
 * The snapshot is on a branch the domain no longer runs (a revert moved it):
 * nothing needs merging.  Its metadata goes first, then each overlay it made
 * that nothing reaches any more, so a crash in between leaves only a file.
 * Images below its overlays are left alone: they may be the user's own.
 */
static int delete_off_branch(struct delete_ctx *ctx)
{
    g_autoptr(GPtrArray) doomed = NULL;
    struct engine_images *after = engine_images_collect(ctx->conn, ctx->domain, ctx->name, ctx->what);

    /* What will be unlinked below, as it looks with the snapshot gone. */
    if (!after)
        return -1;
    doomed = delete_unreached(ctx, after);
    engine_images_free(after);
    if (delete_ask(ctx, doomed) < 0)
        return -1;
    if (virDomainSnapshotDelete(ctx->snap, VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY) < 0) {
        error_from_virt("%s", ctx->what);
        return -1;
    }
    after = engine_images_collect(ctx->conn, ctx->domain, NULL, ctx->what);
    if (!after) {
        log_warn("deleted snapshot '%s' of domain '%s' but kept its overlays: %s", ctx->name, ctx->label,
                    error_message());
        return 0;
    }
    g_ptr_array_unref(doomed);
    doomed = delete_unreached(ctx, after);
    /* Opened meanwhile (the domain's lock keeps only snapfs out): kept, as anything still read is. */
    for (guint i = 0; i < doomed->len; i++) {
        const char *one[] = { g_ptr_array_index(doomed, i), NULL };

        if (engine_check_not_open(ctx->uuid, ctx->what, one) < 0) {
            log_debug("'%s' of deleted snapshot '%s' of domain '%s' stays: %s", one[0], ctx->name, ctx->label,
                         error_message());
            g_ptr_array_remove_index(doomed, i--);
        }
    }
    for (guint i = 0; i < ctx->info->disks->len; i++) {
        struct snapfs_snapshot_disk *sd = g_ptr_array_index(ctx->info->disks, i);

        if (strcmp(sd->kind, "external") == 0 && sd->file && !g_ptr_array_find(doomed, sd->file, NULL))
            log_info("kept '%s' of deleted snapshot '%s' of domain '%s': something still reads it",
                        sd->file, ctx->name, ctx->label);
    }
    for (guint i = 0; i < doomed->len; i++) {
        const char *file = g_ptr_array_index(doomed, i);

        if (unlink(file) < 0)
            log_warn("cannot remove '%s' of deleted snapshot '%s' of domain '%s': %s", file, ctx->name,
                        ctx->label, g_strerror(errno));
        else
            engine_notify_chain_changed(ctx->label, file);
    }
    engine_images_free(after);
    return 0;
}

/* The snapshot whose XML (SECURE) is @xml redefined as @dom's current one; NULL (also for no @xml) on failure. */
static virDomainSnapshotPtr delete_redefine_current(virDomainPtr dom, const char *xml)
{
    return xml ? virDomainSnapshotCreateXML(dom, xml, VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE |
                                            VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT) : NULL;
}

/*
 * libvirt 9.0 takes a childless snapshot that is not current for one with
 * nothing to merge, and unlinks the image it froze, which the live disk
 * still reads.  Made current first, it is merged like any leaf.  Returns the
 * snapshot that was current (NULL if none) in @previous, to restore on failure.
 */
static int delete_make_current(struct delete_ctx *ctx, virDomainSnapshotPtr *previous)
{
    g_autofree char *xml = virDomainSnapshotGetXMLDesc(ctx->snap, VIR_DOMAIN_SNAPSHOT_XML_SECURE);
    g_autoptr(virDomainSnapshot) redefined = NULL;

    *previous = virDomainHasCurrentSnapshot(ctx->dom, 0) == 1 ? virDomainSnapshotCurrent(ctx->dom, 0) : NULL;
    redefined = delete_redefine_current(ctx->dom, xml);
    if (!redefined) {
        error_from_virt("%s", ctx->what);
        g_clear_pointer(previous, virDomainSnapshotFree);
        return -1;
    }
    return 0;
}

/* Put the current snapshot back after a failed delete, keeping the delete's error. */
static void delete_restore_current(struct delete_ctx *ctx, virDomainSnapshotPtr previous)
{
    g_autofree char *xml = virDomainSnapshotGetXMLDesc(previous, VIR_DOMAIN_SNAPSHOT_XML_SECURE);
    g_autoptr(virDomainSnapshot) redefined = delete_redefine_current(ctx->dom, xml);

    if (!redefined)
        log_warn("cannot make snapshot '%s' the current snapshot of domain '%s' again after failing to "
                    "delete snapshot '%s'", virDomainSnapshotGetName(previous), ctx->label, ctx->name);
}

/*
 * Which of the snapshot's external disks the domain still runs on, in
 * @in_chain, out of @external; -1 with ENOTSUP if it mixes internal disks in.
 */
static int delete_count_in_chain(struct delete_ctx *ctx, guint *in_chain, guint *external)
{
    *in_chain = *external = 0;
    for (guint i = 0; i < ctx->info->disks->len; i++) {
        struct snapfs_snapshot_disk *sd = g_ptr_array_index(ctx->info->disks, i);
        struct snapfs_disk *disk;

        if (strcmp(sd->kind, "internal") == 0) {
            error_set(ENOTSUP, "%s: it mixes internal and external disks", ctx->what);
            return -1;
        }
        if (strcmp(sd->kind, "external") != 0)
            continue;
        (*external)++;
        disk = xml_disk_find(ctx->disks, sd->target);
        if (sd->file && disk && disk->file && delete_above_in_chain(ctx->images, disk->file, sd->file))
            (*in_chain)++;
    }
    return 0;
}

/* The refusals of a tree libvirt 9.0 cannot merge: disks half off the branch, branches, a current inner snapshot. */
static int delete_check_mergeable(struct delete_ctx *ctx, int children, int current, guint in_chain,
                                  guint external)
{
    if (in_chain != external) {
        error_set(ENOTSUP, "%s: some of its disks run on it and others no longer do", ctx->what);
        return -1;
    }
    if (children > 1) {
        error_set(ENOTSUP, "%s: it has %d children (a branched tree); libvirt cannot merge it into both",
                         ctx->what, children);
        return -1;
    }
    if (current == 1 && children > 0) {
        error_set(ENOTSUP, "%s: it is the current snapshot (reverted to) and has children; "
                         "libvirt 9.0 cannot merge it", ctx->what);
        return -1;
    }
    for (guint i = 0; i < ctx->info->disks->len; i++) {
        struct snapfs_snapshot_disk *sd = g_ptr_array_index(ctx->info->disks, i);
        struct snapfs_disk *disk;

        if (strcmp(sd->kind, "external") != 0)
            continue;
        disk = xml_disk_find(ctx->disks, sd->target);
        if (delete_check_merge_disk(ctx, sd, disk, delete_above_in_chain(ctx->images, disk->file, sd->file)) < 0)
            return -1;
    }
    return 0;
}

/* Merged away, merged into, and rebased onto what it was merged into: asked about before the merge. */
static int delete_ask_merge(struct delete_ctx *ctx)
{
    g_autoptr(GPtrArray) changed = g_ptr_array_new();

    for (guint i = 0; i < ctx->info->disks->len; i++) {
        struct snapfs_snapshot_disk *sd = g_ptr_array_index(ctx->info->disks, i);
        const char *frozen, *above;

        if (strcmp(sd->kind, "external") != 0)
            continue;
        frozen = g_hash_table_lookup(ctx->images->backing, sd->file);
        above = delete_above_in_chain(ctx->images, xml_disk_find(ctx->disks, sd->target)->file, sd->file);
        g_ptr_array_add(changed, sd->file);
        if (frozen && *frozen)
            g_ptr_array_add(changed, (gpointer)frozen);
        if (above && *above)
            g_ptr_array_add(changed, (gpointer)above);
    }
    return delete_ask(ctx, changed);
}

/* libvirt's merge, its percentage readable meanwhile; -1 with libvirt's reason. */
static int delete_merge(struct delete_ctx *ctx)
{
    g_autoptr(GPtrArray) targets = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *doing = g_strdup_printf("deleting snapshot '%s'", ctx->name);
    struct engine_progress *progress;
    int ret;

    for (guint i = 0; i < ctx->info->disks->len; i++) {
        struct snapfs_snapshot_disk *sd = g_ptr_array_index(ctx->info->disks, i);

        if (strcmp(sd->kind, "external") == 0)
            g_ptr_array_add(targets, g_strdup(sd->target));
    }
    progress = engine_progress_begin(ctx->conn, ctx->dom, ctx->domain, doing, targets);
    ret = virDomainSnapshotDelete(ctx->snap, 0);
    /* Record libvirt's reason now: the calls that end the progress reset libvirt's last error. */
    if (ret < 0)
        error_from_virt("%s", ctx->what);
    engine_progress_end(progress);
    return ret < 0 ? -1 : 0;
}

/* Merged into, and merged away: even where no byte moved (an empty overlay), the chain did. */
static void delete_notify_merged(struct delete_ctx *ctx)
{
    for (guint i = 0; i < ctx->info->disks->len; i++) {
        struct snapfs_snapshot_disk *sd = g_ptr_array_index(ctx->info->disks, i);
        const char *frozen;

        if (strcmp(sd->kind, "external") != 0)
            continue;
        frozen = g_hash_table_lookup(ctx->images->backing, sd->file);
        engine_notify_chain_changed(ctx->label, sd->file);
        if (frozen && *frozen)
            engine_notify_chain_changed(ctx->label, frozen);
    }
}

/*
 * An external snapshot: off the domain's branch its files are only let go;
 * on it, libvirt merges it.  Every refusal and check comes first, while
 * nothing is changed; then whoever reads the images is asked, the chains are
 * spelled out (shut-off domains), the snapshot is made current where libvirt
 * 9.0 needs it, and only then does libvirt merge.
 */
static int delete_external(struct delete_ctx *ctx)
{
    int children = virDomainSnapshotNumChildren(ctx->snap, 0);
    int current = virDomainSnapshotIsCurrent(ctx->snap, 0);
    g_autoptr(virDomainSnapshot) previous = NULL;
    guint in_chain, external;

    if (children < 0 || current < 0) {
        error_from_virt("%s", ctx->what);
        return -1;
    }
    if (!engine_conn_is_local(ctx->conn)) {
        error_set(ENOTSUP, "%s: libvirt 9.0 loses data merging some snapshot trees, so snapfs checks the "
                         "images first, and it needs them as files on this host", ctx->what);
        return -1;
    }
    ctx->images = engine_images_collect(ctx->conn, ctx->domain, NULL, ctx->what);
    if (!ctx->images || delete_count_in_chain(ctx, &in_chain, &external) < 0)
        return -1;
    /*
     * Off the branch the domain runs on, nothing needs merging: what it froze
     * stays as long as anything (its children) reads it.  Never libvirt's
     * delete here: 9.0 would unlink the image the snapshot froze.
     */
    if (in_chain == 0)
        return delete_off_branch(ctx);
    if (delete_check_mergeable(ctx, children, current, in_chain, external) < 0 || delete_ask_merge(ctx) < 0)
        return -1;
    if (!ctx->running && delete_spell_out_chains(ctx) < 0)
        return -1;
    if (children == 0 && current != 1) {
        if (delete_make_current(ctx, &previous) < 0)
            return -1;
    }
    if (delete_merge(ctx) < 0) {
        if (previous)
            delete_restore_current(ctx, previous);
        return -1;
    }
    delete_notify_merged(ctx);
    return 0;
}

/* Every reference and string of @ctx let go. */
static void delete_ctx_clear(struct delete_ctx *ctx)
{
    engine_images_free(ctx->images);
    if (ctx->disks)
        g_ptr_array_unref(ctx->disks);
    engine_snapshot_info_free(ctx->info);
    if (ctx->snap)
        virDomainSnapshotFree(ctx->snap);
    if (ctx->dom)
        virDomainFree(ctx->dom);
    g_free(ctx->what);
    g_free(ctx->label);
}

/* rmdir with the domain's lock held: read the snapshot and the domain, then delete it one of the three ways. */
static int delete_locked(struct delete_ctx *ctx)
{
    g_autoptr(GHashTable) before = NULL;
    g_autofree char *xml = NULL;
    int ret;

    /* Tests only: a delete that holds the domain's lock for a while, as a long merge does. */
    if (g_strcmp0(g_getenv("SNAPFS_FAULT"), "engine:slow-delete") == 0) {
        log_warn("SNAPFS_FAULT: holding the lock of domain '%s' for 8 s", ctx->label);
        g_usleep(8 * G_USEC_PER_SEC);
    }
    ctx->dom = virDomainLookupByName(ctx->conn, ctx->domain);
    ctx->snap = ctx->dom ? virDomainSnapshotLookupByName(ctx->dom, ctx->name, 0) : NULL;
    if (!ctx->snap) {
        error_from_virt("%s", ctx->what);
        return -1;
    }
    xml = virDomainSnapshotGetXMLDesc(ctx->snap, 0);
    ctx->info = xml ? engine_parse_snapshot(xml) : NULL;
    if (!ctx->info || virDomainGetUUIDString(ctx->dom, ctx->uuid) < 0) {
        error_from_virt("%s", ctx->what);
        return -1;
    }
    ctx->running = virDomainIsActive(ctx->dom) == 1;
    ctx->disks = engine_domain_disks(ctx->dom, !ctx->running);
    if (!ctx->disks || engine_block_job_running(ctx->dom, ctx->disks, ctx->what))
        return -1;
    before = engine_domain_files_state(ctx->disks);

    ret = ctx->info->external ? delete_external(ctx) : delete_internal(ctx);
    if (ret == 0) {
        log_info("deleted snapshot '%s' of domain '%s'", ctx->name, ctx->label);
        engine_notify_changed_since(ctx->label, before);
    }
    return ret;
}

int engine_snapshot_delete(virConnectPtr conn, const char *domain, const char *name)
{
    struct delete_ctx ctx = { .conn = conn, .domain = domain, .name = name,
                              .label = host_conn_domain_label(conn, domain) };
    g_autofree char *doing = g_strdup_printf("deleting snapshot '%s'", name);
    struct domain_lock *lock;
    int ret;

    ctx.what = g_strdup_printf("cannot delete snapshot '%s' of '%s'", name, domain);
    lock = domain_lock_acquire_conn(conn, domain, doing, ctx.what);
    ret = lock ? delete_locked(&ctx) : -1;
    delete_ctx_clear(&ctx);
    domain_lock_release(lock);
    return ret;
}
