/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Disk image backing chains, read from the images' own headers. */
#pragma once

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

/* One image of a chain. */
struct snapfs_layer {
    char *file;          /* absolute path */
    char *format;        /* "qcow2", "raw", "vmdk", ...: as libvirt or the image above recorded it */
    uint64_t virtual_size;
    char *backing;       /* the backing file name as the image records it, NULL at the base */
    char *backing_format;/* as the image records it, NULL if it does not */
};

void chain_layer_free(struct snapfs_layer *layer);

/*
 * Formats are never guessed from an image's content (a raw disk's guest can
 * write any header into it): they come from libvirt's XML or from the
 * backing format the image above records, and must be one of the disk image
 * formats qemu-img knows.  Whether @format is one.
 */
bool chain_format_known(const char *format);

/*
 * Read one image's header, taking it to be of @format.  Returns NULL and
 * records the reason (snapfs_error_*) if the file cannot be read, ENOTSUP if
 * @format is NULL or not a format chain_format_known() accepts.
 */
struct snapfs_layer *chain_read_layer(const char *file, const char *format);

/*
 * The whole chain of @top, base first: element 0 is the base, the last is
 * @top.  A relative backing name is resolved against the directory of the
 * image that names it.  A backing name snapfs cannot open locally (a
 * protocol such as nbd: or json:) ends the chain there.  Loops are refused,
 * and so (ENOTSUP) is a backing file whose format the image does not record.
 * Returns a GPtrArray of struct snapfs_layer *, or NULL with the reason.
 */
GPtrArray *chain_read(const char *top, const char *format);

/* Names of the internal snapshots a qcow2 image holds (empty for other formats), or NULL with the reason. */
GPtrArray *chain_internal_snapshots(const char *file);

/* Absolute path of @backing as named by the image @file. */
char *chain_resolve(const char *file, const char *backing);

/*
 * The <source> and nested <backingStore> elements that spell out @chain
 * (base first, as from chain_read) below a <disk> element, for domain
 * XML that libvirt 9.0 needs to delete external snapshots of a shut-off
 * domain.  The result starts with the <backingStore> of the layer below the top.
 */
char *chain_backing_xml(GPtrArray *chain);

/*
 * Whether @file is a qcow2 overlay that holds no data of its own: no
 * internal snapshot, no incompatible feature but the dirty bit (one that
 * keeps data elsewhere), and an L1 table of zeros (nothing was ever written
 * to it).  Errs on "not empty": false where it cannot be read.
 */
bool chain_qcow2_empty(const char *file);
