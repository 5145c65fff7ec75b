/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The snapshot engine: create and delete snapshots, serialized per domain. */
#pragma once

#include "snapfs/domain-lock.h"

#include <libvirt/libvirt.h>
#include <stdbool.h>
#include <string.h>

enum engine_quiesce { ENGINE_QUIESCE_AUTO, ENGINE_QUIESCE_ON, ENGINE_QUIESCE_OFF };

struct engine_options {
    enum engine_quiesce quiesce;
};

/* 0 if @name can name a snapshot, else -1 with EINVAL or EEXIST (reserved) recorded. */
int engine_check_name(const char *name);
/*
 * Whether @name is one a domain's folder holds besides its snapshots (the revert file, the layers
 * and live folders), which no snapshot may take (src/README.md, "The tree and its names").
 */
static inline bool engine_name_reserved(const char *name)
{
    return strcmp(name, "revert") == 0 || strcmp(name, "layers") == 0 || strcmp(name, "live") == 0;
}

/* mkdir: external, disk-only, atomic snapshot @name of every disk of @domain. */
int engine_snapshot_create(virConnectPtr conn, const char *domain, const char *name,
                           const struct engine_options *options);

/*
 * A new qcow2 overlay @file on @backing (of @backing_format, which must be
 * recorded, never guessed: ENOTSUP otherwise), private from its first byte:
 * created here with O_EXCL and O_NOFOLLOW (a name taken, a link among them,
 * is EEXIST and left alone), mode 0600, owned as @backing is (what
 * libvirt's DAC driver gives the overlays it makes), and only then written
 * by qemu-img.  Returns a descriptor of it (the caller closes it), or -1
 * with the reason; on failure nothing it made is left.
 */
int engine_image_create_overlay(const char *file, const char *backing, const char *backing_format);
/*
 * Unlink @file only while it is still the file @fd holds (one the caller
 * made): a name swapped for another file meanwhile is left alone (and
 * logged).  Does not close @fd.  Whether it was unlinked.
 */
bool engine_image_remove_made(const char *file, int fd);

/* rmdir: delete snapshot @name, merging its data so that everything else reads as before. */
int engine_snapshot_delete(virConnectPtr conn, const char *domain, const char *name);

/*
 * After a create or a delete, @fn is called (on the thread that did it, with
 * the domain's lock held) once for every image file whose content, backing
 * or place changed, or that was removed, so that views and appliances that
 * read it are dropped.  Set once at startup; NULL turns it off.
 */
void engine_set_chain_changed(void (*fn)(const char *file, void *opaque), void *opaque);

/*
 * Right before a delete or a revert changes anything (images, domain XML,
 * snapshot metadata), @fn is called on the thread that does it, with the
 * domain's lock held, with every image file the operation is going to
 * write, rebase or remove (NULL-terminated).  A non-zero return, after
 * error_set() (EBUSY: files open in views of them), stops the
 * operation with nothing changed.  Set once at startup; NULL asks nobody.
 * @label is "HOST/DOMAIN", @what the sentence a refusal starts with.
 */
typedef int (*engine_before_change_fn)(const char *label, const char *what, const char *const *files,
                                       void *opaque);
void engine_set_before_change(engine_before_change_fn fn, void *opaque);
/* What delete and revert call at that point: 0, or -1 with the listener's reason. */
int engine_before_change(const char *label, const char *what, const char *const *files);

/*
 * Fail closed, before @files (images of @domain) are unlinked or written
 * into: 0 when nothing but @domain itself needs any of them; else -1 with
 * EBUSY naming who does (a disk or snapshot of another domain whose chain
 * reaches one, or a process other than @domain's own qemu holding one open),
 * or EIO if the domains, their snapshots or an image header cannot be read.
 * @what starts the sentence of a refusal.
 */
int engine_check_unused(virConnectPtr conn, const char *domain, const char *what, const char *const *files);

/*
 * What an operation on @domain is doing right now, as a sentence
 * ("deleting snapshot 's2': merging, 45%"), or NULL when none runs: for
 * user.snapfs.progress.  Never waits for the operation.  Caller frees.
 */
char *engine_progress(virConnectPtr conn, const char *domain);

/* setfattr user.snapfs.description */
int engine_snapshot_set_description(virConnectPtr conn, const char *domain, const char *name,
                                    const char *description);
