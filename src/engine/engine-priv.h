/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What the engine's files share, grouped by the file that defines it: disks and snapshots, the graph of images,
 * the fail-closed checks, what changed, the hooks and the progress. */
#pragma once

#include "snapfs/engine.h"
#include "snapfs/xml.h"

#include <glib.h>
#include <libvirt/libvirt.h>
#include <stdbool.h>

/* ---- domain.c: a domain and its snapshots as libvirt describes them ---- */

/* Disks of domain XML (a whole <domain>, or the one inside a <domainsnapshot>); NULL if it cannot be parsed. */
GPtrArray *engine_parse_disks(const char *xml, bool inside_snapshot);

/* Whether libvirt's disk-only snapshot makes an overlay for @disk by default. */
bool engine_disk_is_snapshotted(const struct snapfs_disk *disk);

struct engine_snapshot_info {
    char *name;
    char *description;
    bool external;          /* any disk external */
    GPtrArray *disks;       /* struct snapfs_snapshot_disk * */
    GPtrArray *domain_disks;/* struct snapfs_disk *: the domain as it was, so each disk's top then */
};

void engine_snapshot_info_free(struct engine_snapshot_info *info);
struct engine_snapshot_info *engine_parse_snapshot(const char *xml);

/* Whether the images @conn's domains use are files on this host (a local or loopback URI). */
bool engine_conn_is_local(virConnectPtr conn);

/* Whether a block job runs on any disk of @dom; sets EBUSY naming it. */
bool engine_block_job_running(virDomainPtr dom, GPtrArray *disks, const char *what);

/* Libvirt's live (if running) or persistent disks of @dom, or NULL with the reason. */
GPtrArray *engine_domain_disks(virDomainPtr dom, bool inactive);

/* ---- graph.c: the graph of images ---- */

/*
 * Every image the connection's domains and snapshots can reach, each with
 * the image below it, read from the images' headers.  What a delete checks
 * before it merges or unlinks anything.
 */
struct engine_images {
    GHashTable *backing;  /* file -> the file below it ("" at a base) */
    GHashTable *tops;     /* file -> "domain disk" for every image a domain runs on */
    GHashTable *named;    /* file -> "domain/snapshot" for every image a snapshot's XML names */
    GPtrArray *roots;     /* every disk and snapshot image with the domain it belongs to (struct image_root, graph.c) */
};
/* No lock: one operation's thread builds, reads and frees its own graph. */

struct engine_images *engine_images_new(void);
void engine_images_free(struct engine_images *images);

/*
 * Every image the domains on @conn run on (live and persistent XML), and
 * every image the snapshots of every domain name, except snapshot
 * @skip_snapshot of @domain (NULL: none).  Fails closed: NULL with EIO and
 * the reason, after @what, if libvirt cannot list or describe a domain or a
 * snapshot, or an image header on the way cannot be read; whoever asked must
 * then change nothing.  A domain or snapshot gone meanwhile is skipped.
 */
struct engine_images *engine_images_collect(virConnectPtr conn, const char *domain,
                                            const char *skip_snapshot, const char *what);

/* Add @file and the chain below it (already known images end the walk); -1 with EIO if a header cannot be read. */
int engine_images_add_chain(struct engine_images *images, const char *file, const char *format);

/* Whether @file is @images's top or lies in a chain below some top or named image. */
bool engine_images_reachable(struct engine_images *images, const char *file);

/*
 * Who reads @file through its chain, other than @except_domain's disks and
 * snapshots (NULL: anyone): "disk vda of domain 'web02'", "snapshot 's1' of
 * domain 'web02' (disk vda)"; NULL if nobody.  Caller frees.
 */
char *engine_images_user(struct engine_images *images, const char *file, const char *except_domain);

/* Images whose backing is @file, as a NULL-terminated array the caller frees (g_free, not the strings). */
const char **engine_images_dependents(struct engine_images *images, const char *file);

/* The chain of @top as absolute paths, top first (never NULL; just @top if unreadable). */
GPtrArray *engine_chain_files(const char *top, const char *format);

/* ---- in-use.c: who else holds an image ---- */

/*
 * 0 when no process but this one and the qemu of the domain with @uuid
 * (NULL: none excepted) holds any of @files open (scanning /proc/PID/fd);
 * else -1 with EBUSY naming the pid, its name and the file, or EIO where a
 * process's files cannot be read.
 */
int engine_check_not_open(const char *uuid, const char *what, const char *const *files);

/* ---- hooks.c ---- */

/* Tell whoever listens (engine_set_chain_changed) that @file of domain @label moved, merged or went away. */
void engine_notify_chain_changed(const char *label, const char *file);

/* ---- changes.c: what an operation changed ---- */

/* Snapshot of the files of a set of chains: size, mtime and backing, to tell afterwards what changed. */
GHashTable *engine_files_state(GPtrArray *files);
/* engine_files_state() of every chain of @disks (struct snapfs_disk *). */
GHashTable *engine_domain_files_state(GPtrArray *disks);
/* Notify every file of @before whose state differs now (or that is gone); @label names the domain. */
void engine_notify_changed_since(const char *label, GHashTable *before);

/* ---- progress.c ---- */

/*
 * From here until engine_progress_end(), engine_progress() for @domain says
 * @what, with the percentage of the block jobs on @targets (disk names) when
 * there are any.  Never fails.
 */
struct engine_progress;
struct engine_progress *engine_progress_begin(virConnectPtr conn, virDomainPtr dom, const char *domain,
                                              const char *what, GPtrArray *targets);
void engine_progress_end(struct engine_progress *progress);
