/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A look from the host for LVM physical volumes on a disk image, before an appliance is chosen for it. */

#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/spawn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/*
 * Why: a view whose disks hold LVM needs an appliance of its own drives (pool.c), and the
 * appliance's blkid finds that out only after booting the shared one: a boot more, seconds under TCG.
 * The LVM label sits in one of the first four sectors of the physical volume, which is the whole disk
 * or a partition, so a few KiB read through qemu-io (which knows every image format and chain) tell
 * it first.  What this cannot see (logical partitions, an internal snapshot) the appliance still finds.
 */

#define SECTOR 512
#define HEAD_BYTES (34 * SECTOR)  /* MBR, GPT header and 128 GPT entries */
#define LABEL_BYTES (4 * SECTOR)  /* where LVM may put its label */
#define MAX_PARTITIONS 16

struct region {
    uint64_t offset;
    size_t len;
    guint8 *data;
    size_t filled;
};

/* Fill @regions from one line of `qemu-io -c "read -v"`: "00000200:  4c 41 42 ...  LAB...". */
static void hexdump_line(const char *line, struct region *regions, size_t n)
{
    char *end;
    uint64_t at = strtoull(line, &end, 16);

    if (end == line || end[0] != ':' || end[1] != ' ')
        return;
    for (const char *p = end + 2; p[0] == ' ' && g_ascii_isxdigit(p[1]) && g_ascii_isxdigit(p[2]); p += 3, at++) {
        guint8 byte = g_ascii_xdigit_value(p[1]) << 4 | g_ascii_xdigit_value(p[2]);

        for (size_t i = 0; i < n; i++) {
            if (at >= regions[i].offset && at - regions[i].offset < regions[i].len) {
                regions[i].data[at - regions[i].offset] = byte;
                regions[i].filled++;
            }
        }
    }
}

/* Read @regions of the image with qemu-io, read-only and sharing it with a running domain; -1 with the reason. */
static int image_read(const char *file, const char *format, struct region *regions, size_t n)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *out = NULL, *err = NULL;
    g_auto(GStrv) lines = NULL;
    int status = 0;

    g_ptr_array_add(argv, g_strdup("qemu-io"));
    g_ptr_array_add(argv, g_strdup("-r"));
    for (size_t i = 0; i < n; i++) {
        g_ptr_array_add(argv, g_strdup("-c"));
        g_ptr_array_add(argv, g_strdup_printf("read -v %" G_GUINT64_FORMAT " %zu", regions[i].offset, regions[i].len));
        regions[i].filled = 0;
    }
    g_ptr_array_add(argv, g_strdup("--image-opts"));
    g_ptr_array_add(argv, guest_image_opts(format, file));
    g_ptr_array_add(argv, NULL);
    if (spawn_sync((const char *const *)argv->pdata, SPAWN_TOOL_TIMEOUT_S, &out, &err, &status) < 0)
        return -1;
    /* A read past the end of the image fails alone: qemu-io goes on with the others, then exits with 1. */
    lines = g_strsplit(out, "\n", -1);
    for (char **line = lines; *line; line++)
        hexdump_line(*line, regions, n);
    for (size_t i = 0; i < n; i++) {
        if (regions[i].filled)
            return 0;
    }
    if (!g_spawn_check_wait_status(status, NULL)) {
        error_set(EIO, "qemu-io cannot read '%s': %s", file, g_strstrip(err));
        return -1;
    }
    return 0;
}

/* Whether one of the four sectors at the start of @data holds LVM's label. */
static bool has_label(const guint8 *data)
{
    for (int s = 0; s < 4; s++) {
        const guint8 *sector = data + s * SECTOR;

        if (memcmp(sector, "LABELONE", 8) == 0 && memcmp(sector + 24, "LVM2 001", 8) == 0)
            return true;
    }
    return false;
}

/* The first sectors of the partitions in @head (an MBR or GPT): up to @max into @starts; their number. */
static size_t partition_starts(const guint8 *head, uint64_t *starts, size_t max, bool *unseen)
{
    size_t n = 0;
    bool gpt = false;

    if (head[510] != 0x55 || head[511] != 0xaa)
        return 0;
    for (int i = 0; i < 4; i++) {
        const guint8 *entry = head + 0x1be + 16 * i;
        guint8 type = entry[4];

        if (type == 0xee)
            gpt = true;
        else if (type == 0x05 || type == 0x0f || type == 0x85)
            *unseen = true;   /* logical partitions: a chain of tables further in, left to the appliance */
        else if (type && guest_le(entry + 8, 4) && n < max)
            starts[n++] = guest_le(entry + 8, 4);
    }
    if (!gpt)
        return n;
    n = 0;
    if (memcmp(head + SECTOR, "EFI PART", 8) != 0) {
        *unseen = true;
        return 0;
    }
    uint64_t table = guest_le(head + SECTOR + 72, 8), count = guest_le(head + SECTOR + 80, 4);
    uint64_t size = guest_le(head + SECTOR + 84, 4);

    if (size < 128 || table > HEAD_BYTES / SECTOR || count > (HEAD_BYTES - table * SECTOR) / size) {
        *unseen = true;
        return 0;
    }
    for (uint64_t i = 0; i < count; i++) {
        const guint8 *entry = head + table * SECTOR + i * size;
        static const guint8 unused[16];

        if (memcmp(entry, unused, 16) == 0 || guest_le(entry + 32, 8) == 0)
            continue;
        if (n == max) {
            *unseen = true;
            break;
        }
        starts[n++] = guest_le(entry + 32, 8);
    }
    return n;
}

int guest_image_holds_lvm(const char *file, const char *format)
{
    g_autofree guint8 *head = g_malloc0(HEAD_BYTES);
    /* Two reads: an image too small for a partition table still shows its label. */
    struct region first[2] = { { 0, LABEL_BYTES, head, 0 },
                               { LABEL_BYTES, HEAD_BYTES - LABEL_BYTES, head + LABEL_BYTES, 0 } };
    guint8 sentinel[SECTOR];
    struct region parts[MAX_PARTITIONS + 1];
    uint64_t starts[MAX_PARTITIONS];
    guint8 labels[MAX_PARTITIONS][LABEL_BYTES];
    bool unseen = false;
    size_t n;

    if (image_read(file, format, first, 2) < 0)
        return -1;
    if (first[0].filled < LABEL_BYTES) {
        error_set(EIO, "qemu-io read %zu bytes of the first %u of '%s'", first[0].filled, LABEL_BYTES, file);
        return -1;
    }
    if (has_label(head))
        return 1;
    if (first[1].filled < first[1].len)
        return 0;   /* an image smaller than a partition table */
    n = partition_starts(head, starts, MAX_PARTITIONS, &unseen);
    /*
     * A partition that starts past the end of the image (a damaged table) reads nothing: no label there.
     * The first sector read along tells that from an image that cannot be opened any more.
     */
    parts[0] = (struct region){ 0, SECTOR, sentinel, 0 };
    for (size_t i = 0; i < n; i++) {
        memset(labels[i], 0, LABEL_BYTES);
        parts[i + 1] = (struct region){ starts[i] * SECTOR, LABEL_BYTES, labels[i], 0 };
    }
    if (n && image_read(file, format, parts, n + 1) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (parts[i + 1].filled == LABEL_BYTES && has_label(labels[i]))
            return 1;
    }
    if (unseen)
        log_debug("'%s': partitions this look does not read (logical, or a damaged table): the appliance will see "
                     "whether they hold LVM", file);
    return 0;
}
