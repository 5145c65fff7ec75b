/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What the files of src/revert/ share: the intent journal of one revert, the domain as libvirt describes it, the images, the steps. */
#pragma once

#include "snapfs/revert.h"
#include "snapfs/xml.h"

#include <glib.h>
#include <libvirt/libvirt.h>
#include <stdbool.h>

/*
 * Locks: none of these structures is shared.  Each is made, used and freed
 * by the one thread carrying out a revert (or the startup recovery) while it
 * holds the domain's operation lock (domain_lock_acquire_conn(); src/README.md,
 * "Locks and their order"), which also keeps every other snapfs operation
 * off the domain's snapshots and images; so their fields take no lock.
 */

/* One disk of the domain, before and after the revert. */
struct revert_disk {
    char *target;        /* "vda" */
    char *old_top;       /* the image the domain used before, NULL if it lacked the disk */
    char *new_top;       /* the image it uses after, NULL if the revert leaves the disk as it is */
    bool new_created;    /* new_top is an overlay this revert made: unlinked on rollback */
    char *keep_overlay;  /* the pre-revert snapshot's overlay on old_top, made by this revert, or NULL */
    bool drop_old;       /* old_top is unlinked once the revert is done (nothing needs it) */
};

enum revert_phase {
    REVERT_PHASE_NATIVE,    /* external snapshot: libvirt's own revert is being tried */
    REVERT_PHASE_BY_HAND,   /* external snapshot: libvirt cannot, snapfs does it */
    REVERT_PHASE_INTERNAL,  /* internal snapshot: libvirt's own revert, not asked for yet */
    REVERT_PHASE_INTERNAL_ASKED, /* internal snapshot: libvirt was asked to apply it: pre-revert-... stays */
};

/*
 * The intent of one revert, written (and fsync'd) before anything changes
 * and removed once it is done.  It names everything a rollback removes and
 * a roll-forward finishes; whether the revert took effect is read from
 * libvirt (the domain's disks, the current snapshot), not from the journal.
 */
struct revert_journal {
    char *path;
    char *uri;
    char *domain;
    char *uuid;
    char *target;        /* the snapshot reverted to */
    enum revert_phase phase;
    char *keep_name;     /* the pre-revert snapshot being made, or NULL */
    char *old_current;   /* the current snapshot before, or NULL */
    GPtrArray *disks;    /* struct revert_disk * */
};

void revert_disk_free(struct revert_disk *disk);
void revert_journal_free(struct revert_journal *journal);
/* A typedef of the same name only so that g_autoptr() can name it. */
typedef struct revert_journal revert_journal;
G_DEFINE_AUTOPTR_CLEANUP_FUNC(revert_journal, revert_journal_free)

/* The journal file of @domain on @uri under @state_dir (one revert per domain at a time). */
char *revert_journal_path(const char *state_dir, const char *uri, const char *domain);

/* Creates @state_dir (0700) if needed; -1 with the reason. */
int revert_journal_prepare_dir(const char *state_dir);

/* Writes @journal to its path atomically and durably (fsync of file and directory). */
int revert_journal_write(const struct revert_journal *journal);

/* Reads a journal file; NULL with the reason if it cannot be read or parsed. */
struct revert_journal *revert_journal_load(const char *path);

/*
 * A journal read back names files to unlink (and the pre-revert overlays to
 * make again); whoever wrote it, only images a revert of @st's domain makes
 * are taken: named as revert_image_name() names them, in a directory (by
 * realpath) holding an image of the domain or of one of its snapshots, a
 * regular file or nothing (never a link).  Anything else is dropped from
 * @journal, and left where it is with a warning.  So is a kept snapshot's
 * name that is not a pre-revert-... one (a rollback deletes it).
 */
struct revert_state;
void revert_journal_vet(struct revert_journal *journal, struct revert_state *st);

/* Removes the journal durably; -1 with the reason. */
int revert_journal_remove(const struct revert_journal *journal);

/* Paths of every journal under @state_dir (empty if the directory does not exist). */
GPtrArray *revert_journal_list(const char *state_dir);

/* For the crash tests: _exit(137) right after @step where SNAPFS_FAULT=revert:@step (REVERT_FAULT_STEPS). */
void revert_fault(const char *step);

/* fsync @path (a file or a directory); -1 with the reason. */
int revert_sync_path(const char *path);

/* ---- the domain and its snapshots (domain.c) ---- */

/* A snapshot, with what each of its external disks made and froze. */
struct revert_snapshot {
    char *name;
    char *xml;
    bool external;            /* any disk external */
    GHashTable *overlay;      /* target -> the overlay the snapshot made */
    GHashTable *frozen;       /* target -> the image it froze */
    GHashTable *frozen_format;  /* target -> the frozen image's format, where libvirt or its overlay records it */
    GHashTable *overlay_format; /* target -> the overlay's format, as the snapshot's XML says */
    GPtrArray *domain_disks;  /* the domain as it was: struct snapfs_disk * */
};

/* A domain as libvirt describes it at the start of a revert. */
struct revert_state {
    virConnectPtr conn;
    virDomainPtr dom;
    char *uri;
    char *name;
    char *label;          /* "HOST/NAME": how the log names the domain */
    char *uuid;
    char *xml;            /* the persistent definition */
    GPtrArray *disks;     /* struct snapfs_disk *, from xml */
    GPtrArray *snaps;     /* struct revert_snapshot * */
    char *current;        /* the current snapshot, or NULL */
};

void revert_state_free(struct revert_state *st);
typedef struct revert_state revert_state;
G_DEFINE_AUTOPTR_CLEANUP_FUNC(revert_state, revert_state_free)

/* The domain, its persistent definition and every snapshot; NULL with the reason (EIO if any snapshot cannot be read). */
struct revert_state *revert_state_read(virConnectPtr conn, virDomainPtr dom);
struct revert_snapshot *revert_state_snapshot(struct revert_state *st, const char *name);
/* The disks of the domain's persistent definition as it is now (NULL, logged, if unreadable). */
GPtrArray *revert_domain_disks_now(struct revert_state *st);

/* Whether any snapshot but @except names @file (as its overlay, what it froze, or a disk of its domain). */
bool revert_state_names_file(struct revert_state *st, const char *file, const char *except);
/* 1 if @file is in the chain of any of @tops (file names, read as @formats say, NULL: unsaid), 0 if not, -1 with EIO if one cannot be read. */
int revert_chains_hold(GPtrArray *tops, GPtrArray *formats, const char *file);
/* A disk whose image is a local file or device (not a network disk, not a cdrom). */
bool revert_disk_is_local(const struct snapfs_disk *disk);
/* The snapshot whose frozen images the domain reads untouched, over the disks @target reverts; or NULL. */
struct revert_snapshot *revert_state_identical(struct revert_state *st, struct revert_snapshot *target);

int revert_snapshot_redefine(struct revert_state *st, const char *xml, const char *name, bool current);
/* Makes the existing snapshot @name current (its metadata unchanged). */
int revert_snapshot_make_current(struct revert_state *st, const char *name);
bool revert_snapshot_exists(virDomainPtr dom, const char *name);

/* The pre-revert snapshot's XML: an external snapshot whose frozen images are the old tops. */
char *revert_keep_xml(struct revert_state *st, const struct revert_journal *journal);
/* The domain's new definition: @target's, each reverted disk on its new top with the chain spelled out. */
char *revert_domain_xml(struct revert_state *st, struct revert_snapshot *target, const struct revert_journal *journal);
/* Whether the persistent definition runs every reverted disk on its new top (the commit point passed). */
bool revert_domain_on_new_tops(struct revert_state *st, const struct revert_journal *journal);

/* ---- images (image.c) ---- */

/* The image @file (of format @file_format) is backed by, absolute (and its format if recorded), or NULL. */
char *revert_image_backing(const char *file, const char *file_format, char **format);
/*
 * An empty qcow2 overlay @file on @backing (of @backing_format, which must be
 * given: ENOTSUP otherwise), flushed to disk; mode 0600 and owned as @backing
 * from the start; EEXIST, nothing touched, if @file exists.  -1 with the reason.
 */
int revert_image_create_overlay(const char *file, const char *backing, const char *backing_format);
/* @dir/@domain.@target.@what.qcow2, with -2, -3... if taken; the names made readable as file names. */
char *revert_image_name(const char *dir, const char *domain, const char *target, const char *what);
/* Whether @file is named as revert_image_name() names them, for @domain, @target and a @what starting with @what_prefix. */
bool revert_image_is_named(const char *file, const char *domain, const char *target, const char *what_prefix);

/* ---- the plan, checked before anything changes (plan.c) ---- */

/* The name of a snapshot a revert keeps the state left behind as (a rollback deletes it). */
#define REVERT_KEEP_PREFIX "pre-revert-"

/* A journal of the revert of @st's domain to @target in @phase, at @path: no disk, no kept snapshot yet. */
struct revert_journal *revert_journal_new(struct revert_state *st, struct revert_snapshot *target, const char *path,
                                          enum revert_phase phase);
/* pre-revert-@stamp, with -2, -3... where a snapshot of @dom has that name. */
char *revert_keep_name(virDomainPtr dom, const char *stamp);
/* The plan for reverting to external snapshot @target (@noop: only its name is missing); NULL with the reason. */
struct revert_journal *revert_plan_external(struct revert_state *st, struct revert_snapshot *target, const char *path,
                                            const struct revert_options *options, bool *noop);
/* The format libvirt recorded for @rd's old top (the domain now, or the pre-revert snapshot's domain), or NULL. */
const char *revert_old_top_format(struct revert_state *st, const struct revert_journal *journal,
                                  const struct revert_disk *rd);
/* 1 if nobody else needs @file, 0 if someone does (logged), -1 with EIO where that cannot be told. */
int revert_plan_image_free(struct revert_state *st, struct revert_snapshot *target, const char *file);
/* Every overlay the plan makes: name free (EEXIST), formats below it recorded (ENOTSUP). */
int revert_check_images(struct revert_state *st, struct revert_snapshot *target, const struct revert_journal *journal);
/* The images the by-hand revert needs are files on this host (ENOTSUP otherwise). */
int revert_check_local(struct revert_state *st, struct revert_snapshot *target);

/* ---- the steps (external.c, internal.c) ---- */

/* Whether libvirt's own external revert will be tried. */
bool revert_native_possible(struct revert_state *st, const struct revert_journal *journal);
/* The revert to external snapshot @target as @journal plans it; -1 with the reason, rolled back. */
int revert_external(struct revert_state *st, struct revert_snapshot *target, struct revert_journal *journal,
                    bool noop);
/* Whether libvirt may apply internal snapshot @target (ENOTSUP where it would rewrite what others stand on). */
int revert_internal_check(struct revert_state *st, struct revert_snapshot *target);
/* The revert to internal snapshot @target, journalled at @path. */
int revert_internal(struct revert_state *st, struct revert_snapshot *target, const char *path,
                    const struct revert_options *options);

/* ---- settling: rollback, roll-forward, recovery (settle.c) ---- */

/* Undo a revert that did not reach its commit point. */
int revert_roll_back(struct revert_state *st, const struct revert_journal *journal);
/* Finish a revert past its commit point (@faults: the crash tests' steps current and cleanup apply). */
int revert_roll_forward(struct revert_state *st, const struct revert_journal *journal, bool faults);
/* Settle one journal found on disk, @st being the domain's state now. */
int revert_settle(struct revert_state *st, struct revert_journal *journal);
/* Rolls back, keeping the reason recorded; @note ends the warning where that fails.  Always -1. */
int revert_undo(struct revert_state *st, const struct revert_journal *journal, const char *note);
/* Where journals live: options->state_dir, else /var/lib/snapfs. */
const char *revert_state_dir(const struct revert_options *options);
