/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Disk image backing chains, read from the images' own headers (qcow2 natively, other formats by their magic). */
#include "snapfs/chain.h"
#include "snapfs/error.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define QCOW2_MAGIC 0x514649fbU
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acaU
#define QCOW2_MAX_BACKING_NAME 1023   /* QEMU's own limit */
#define CHAIN_MAX_DEPTH 256

void chain_layer_free(struct snapfs_layer *layer)
{
    if (!layer)
        return;
    g_free(layer->file);
    g_free(layer->format);
    g_free(layer->backing);
    g_free(layer->backing_format);
    g_free(layer);
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const unsigned char *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static bool read_exact(int fd, void *buf, size_t len, off_t offset)
{
    ssize_t n = pread(fd, buf, len, offset);

    return n == (ssize_t)len;
}

/*
 * Image formats snapfs accepts from libvirt's XML or an image's header: the
 * disk image formats of qemu-img here, without the protocols, filters and
 * vvfat (a host directory as a disk).  Whatever names a format is written
 * into overlays, domain XML and appliance drives, so it must be one qemu
 * opens as an image and nothing else.
 */
static const char *const chain_formats[] = {
    "raw", "qcow2", "qcow", "qed", "vmdk", "vdi", "vpc", "vhdx", "luks", "bochs", "cloop", "dmg", "parallels",
};

bool chain_format_known(const char *format)
{
    for (size_t i = 0; format && i < G_N_ELEMENTS(chain_formats); i++) {
        if (strcmp(format, chain_formats[i]) == 0)
            return true;
    }
    return false;
}

/* qcow2: the backing file name and, from the header extensions, its format. */
static int chain_read_qcow2(int fd, const unsigned char *head, struct snapfs_layer *layer)
{
    uint32_t version = be32(head + 4);
    uint64_t backing_offset = be64(head + 8);
    uint32_t backing_size = be32(head + 16);
    uint64_t ext_offset = version >= 3 ? be32(head + 100) : 72;
    unsigned char ext[8];

    layer->virtual_size = be64(head + 24);
    if (backing_offset == 0)
        return 0;
    if (backing_size == 0 || backing_size > QCOW2_MAX_BACKING_NAME) {
        error_set(EIO, "cannot read image '%s': its backing file name is %u bytes long",
                         layer->file, backing_size);
        return -1;
    }
    layer->backing = g_malloc0(backing_size + 1);
    if (!read_exact(fd, layer->backing, backing_size, backing_offset)) {
        error_set(EIO, "cannot read the backing file name of image '%s'", layer->file);
        return -1;
    }
    /* Extensions run from the end of the header to the backing name; type 0 ends them. */
    while (ext_offset + sizeof(ext) <= backing_offset) {
        uint32_t type, len;

        if (!read_exact(fd, ext, sizeof(ext), ext_offset))
            break;
        type = be32(ext);
        len = be32(ext + 4);
        if (type == 0)
            break;
        if (type == QCOW2_EXT_BACKING_FORMAT && len > 0 && len < 64) {
            g_autofree char *name = g_malloc0(len + 1);

            if (read_exact(fd, name, len, ext_offset + 8))
                layer->backing_format = g_steal_pointer(&name);
        }
        ext_offset += 8 + ((len + 7ULL) & ~7ULL);
    }
    return 0;
}

/* The virtual size of formats snapfs does not parse: what the first bytes say, where that is simple. */
/*
 * A VHDX image's virtual size: the region table (at 192 KiB) gives where the metadata region is,
 * whose table gives where the "virtual disk size" item is.  GUIDs as stored on disk.
 */
static uint64_t chain_vhdx_size(int fd)
{
    static const unsigned char metadata_region[16] = { 0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
                                                       0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e };
    static const unsigned char virtual_disk_size[16] = { 0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48,
                                                         0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8 };
    unsigned char table[16 + 2048 * 32], buf[8];
    uint64_t region = 0;
    uint32_t count;

    if (!read_exact(fd, table, 16, 192 * 1024) || memcmp(table, "regi", 4) != 0)
        return 0;
    count = MIN(le32(table + 8), 2047u);
    if (!read_exact(fd, table + 16, count * 32, 192 * 1024 + 16))
        return 0;
    for (uint32_t i = 0; i < count && !region; i++) {
        if (memcmp(table + 16 + i * 32, metadata_region, 16) == 0)
            region = le64(table + 16 + i * 32 + 16);
    }
    if (!region || !read_exact(fd, table, 32, (off_t)region) || memcmp(table, "metadata", 8) != 0)
        return 0;
    count = MIN((uint32_t)table[10] | (uint32_t)table[11] << 8, 2047u);
    if (!read_exact(fd, table + 32, count * 32, (off_t)region + 32))
        return 0;
    for (uint32_t i = 0; i < count; i++) {
        const unsigned char *entry = table + 32 + i * 32;

        if (memcmp(entry, virtual_disk_size, 16) == 0 &&
            read_exact(fd, buf, sizeof(buf), (off_t)(region + le32(entry + 16))))
            return le64(buf);
    }
    return 0;
}

static uint64_t chain_other_size(int fd, const char *format, const unsigned char *head, size_t len)
{
    unsigned char buf[8];

    if (strcmp(format, "raw") == 0) {
        off_t end = lseek(fd, 0, SEEK_END);

        return end > 0 ? (uint64_t)end : 0;
    }
    if (strcmp(format, "vmdk") == 0 && len >= 20 && memcmp(head, "KDMV", 4) == 0)
        return le64(head + 12) * 512;                  /* capacity, in sectors */
    if (strcmp(format, "vdi") == 0 && read_exact(fd, buf, sizeof(buf), 0x170))
        return le64(buf);
    if (strcmp(format, "vpc") == 0 && read_exact(fd, buf, sizeof(buf), 48))
        return be64(buf);                              /* footer: current size */
    if (strcmp(format, "vhdx") == 0 && len >= 8 && memcmp(head, "vhdxfile", 8) == 0)
        return chain_vhdx_size(fd);
    return 0;
}

struct snapfs_layer *chain_read_layer(const char *file, const char *format)
{
    struct snapfs_layer *layer = g_new0(struct snapfs_layer, 1);
    unsigned char head[512] = { 0 };
    ssize_t len;
    int fd = -1;

    layer->file = g_strdup(file);
    /* Probing would take a raw disk's guest-written qcow2 header for the truth: refuse instead. */
    if (!format) {
        error_set(ENOTSUP, "the format of image '%s' is recorded neither by libvirt nor by the image "
                         "below which it stands: snapfs does not guess formats", file);
        goto error;
    }
    if (!chain_format_known(format)) {
        g_autofree char *shown = g_strescape(format, NULL);

        error_set(ENOTSUP, "image '%s' is said to be of format '%s', which is not a disk image format "
                         "snapfs accepts", file, shown);
        goto error;
    }
    fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        error_set(errno == ENOENT ? ENOENT : EIO, "cannot open image '%s': %s",
                         file, g_strerror(errno));
        goto error;
    }
    len = pread(fd, head, sizeof(head), 0);
    if (len < 0) {
        error_set(EIO, "cannot read image '%s': %s", file, g_strerror(errno));
        goto error;
    }
    layer->format = g_strdup(format);
    if (strcmp(layer->format, "qcow2") == 0) {
        if (len < 104 || be32(head) != QCOW2_MAGIC) {
            error_set(EIO, "image '%s' is not a qcow2 image", file);
            goto error;
        }
        if (chain_read_qcow2(fd, head, layer) < 0)
            goto error;
    } else {
        layer->virtual_size = chain_other_size(fd, layer->format, head, len);
    }
    close(fd);
    return layer;

error:
    if (fd >= 0)
        close(fd);
    chain_layer_free(layer);
    return NULL;
}

GPtrArray *chain_internal_snapshots(const char *file)
{
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    unsigned char head[72];
    uint64_t offset;
    uint32_t count;
    int fd = open(file, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        error_set(errno == ENOENT ? ENOENT : EIO, "cannot open image '%s': %s", file, g_strerror(errno));
        return NULL;
    }
    if (!read_exact(fd, head, sizeof(head), 0) || be32(head) != QCOW2_MAGIC) {
        close(fd);
        return g_steal_pointer(&names);
    }
    count = be32(head + 60);
    offset = be64(head + 64);
    /* Each entry: fixed 40 bytes, extra data, id, name, padded to 8 bytes. */
    for (uint32_t i = 0; i < count && i < 65536; i++) {
        unsigned char entry[40];
        uint32_t extra, id_len, name_len;
        char *name;

        if (!read_exact(fd, entry, sizeof(entry), offset))
            break;
        id_len = (uint32_t)entry[12] << 8 | entry[13];
        name_len = (uint32_t)entry[14] << 8 | entry[15];
        extra = be32(entry + 36);
        name = g_malloc0(name_len + 1);
        if (!read_exact(fd, name, name_len, offset + 40 + extra + id_len)) {
            g_free(name);
            break;
        }
        g_ptr_array_add(names, name);
        offset += (40ULL + extra + id_len + name_len + 7) & ~7ULL;
    }
    close(fd);
    return g_steal_pointer(&names);
}

char *chain_resolve(const char *file, const char *backing)
{
    g_autofree char *dir = NULL;

    if (g_path_is_absolute(backing))
        return g_strdup(backing);
    dir = g_path_get_dirname(file);
    return g_build_filename(dir, backing, NULL);
}

/* Backing names that are not local files (nbd:, json:{...}, http://...) end what snapfs can follow. */
static bool chain_is_protocol(const char *backing)
{
    const char *colon = strchr(backing, ':');
    const char *slash = strchr(backing, '/');

    return colon && (!slash || colon < slash);
}

GPtrArray *chain_read(const char *top, const char *format)
{
    g_autoptr(GPtrArray) chain = g_ptr_array_new_with_free_func((GDestroyNotify)chain_layer_free);
    g_autofree char *file = g_strdup(top);
    g_autofree char *fmt = g_strdup(format);

    while (file) {
        struct snapfs_layer *layer;

        if (chain->len >= CHAIN_MAX_DEPTH) {
            error_set(ELOOP, "the backing chain of '%s' is deeper than %d images or loops",
                             top, CHAIN_MAX_DEPTH);
            return NULL;
        }
        for (guint i = 0; i < chain->len; i++) {
            struct snapfs_layer *seen = g_ptr_array_index(chain, i);

            if (strcmp(seen->file, file) == 0) {
                error_set(ELOOP, "the backing chain of '%s' loops at '%s'", top, file);
                return NULL;
            }
        }
        layer = chain_read_layer(file, fmt);
        if (!layer)
            return NULL;
        g_ptr_array_add(chain, layer);
        g_clear_pointer(&file, g_free);
        g_clear_pointer(&fmt, g_free);
        if (layer->backing && !chain_is_protocol(layer->backing)) {
            if (!layer->backing_format) {
                error_set(ENOTSUP, "image '%s' names its backing file '%s' without its format, and snapfs "
                                 "does not guess formats (record it with qemu-img rebase -u -F FORMAT -b ...)",
                                 layer->file, layer->backing);
                return NULL;
            }
            file = chain_resolve(layer->file, layer->backing);
            fmt = g_strdup(layer->backing_format);
        }
    }
    /* Read top-down, handed out base first so that a layer's index never changes. */
    for (guint i = 0, j = chain->len - 1; i < j; i++, j--) {
        gpointer tmp = chain->pdata[i];

        chain->pdata[i] = chain->pdata[j];
        chain->pdata[j] = tmp;
    }
    return g_steal_pointer(&chain);
}

char *chain_backing_xml(GPtrArray *chain)
{
    GString *xml = g_string_new(NULL);

    /* Nest from the layer below the top down to the base, then close the nesting. */
    for (gint i = (gint)chain->len - 2; i >= 0; i--) {
        struct snapfs_layer *layer = g_ptr_array_index(chain, i);
        g_autofree char *file = g_markup_escape_text(layer->file, -1);
        g_autofree char *format = g_markup_escape_text(layer->format, -1);

        g_string_append_printf(xml, "<backingStore type='file'><format type='%s'/><source file='%s'/>",
                               format, file);
    }
    g_string_append(xml, "<backingStore/>");
    for (gint i = (gint)chain->len - 2; i >= 0; i--)
        g_string_append(xml, "</backingStore>");
    return g_string_free(xml, FALSE);
}

bool chain_qcow2_empty(const char *file)
{
    unsigned char head[104];
    g_autofree unsigned char *l1 = NULL;
    uint64_t l1_bytes;
    bool empty = false;
    int fd = open(file, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return false;
    if (!read_exact(fd, head, sizeof(head), 0) || be32(head) != QCOW2_MAGIC)
        goto out;
    if (be32(head + 60) != 0)                           /* internal snapshots */
        goto out;
    if (be32(head + 4) >= 3 && (be64(head + 72) & ~1ULL) != 0)  /* incompatible features but the dirty bit */
        goto out;
    l1_bytes = (uint64_t)be32(head + 36) * 8;
    if (l1_bytes > 64 * 1024 * 1024)
        goto out;
    l1 = g_malloc0(l1_bytes ? l1_bytes : 1);
    if (!read_exact(fd, l1, l1_bytes, (off_t)be64(head + 40)))
        goto out;
    empty = true;
    for (uint64_t i = 0; i < l1_bytes; i++) {
        if (l1[i]) {
            empty = false;
            break;
        }
    }
out:
    close(fd);
    return empty;
}
