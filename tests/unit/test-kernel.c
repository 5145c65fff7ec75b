/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit test of src/guest/boot.c: the ELF kernel inside a bzImage, found, unpacked and checked for its PVH entry. */
#include "snapfs/error.h"

#include "../../src/guest/guest-priv.h"

#include <errno.h>
#include <glob.h>
#include <lzma.h>
#include <string.h>
#ifdef SNAPFS_HAVE_ZSTD
#include <zstd.h>
#endif

static void put_le(guint8 *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = v >> (8 * i);
}

/* A 64-bit ELF image of one PT_NOTE segment holding one note, then filler that compresses well. */
static GByteArray *make_elf(const char *note_name, uint32_t note_type)
{
    GByteArray *elf = g_byte_array_new();
    size_t namesz = strlen(note_name) + 1, note_len = 12 + ((namesz + 3) & ~3u) + 4;
    guint8 *p;

    g_byte_array_set_size(elf, 64 + 56 + note_len + 200000);
    p = elf->data;
    memset(p, 0, elf->len);
    memcpy(p, "\177ELF", 4);
    p[4] = 2; /* 64-bit */
    p[5] = 1; /* little endian */
    put_le(p + 32, 64, 8);  /* e_phoff */
    put_le(p + 54, 56, 2);  /* e_phentsize */
    put_le(p + 56, 1, 2);   /* e_phnum */
    put_le(p + 64, 4, 4);   /* p_type PT_NOTE */
    put_le(p + 64 + 8, 120, 8);       /* p_offset */
    put_le(p + 64 + 32, note_len, 8); /* p_filesz */
    put_le(p + 120, namesz, 4);
    put_le(p + 124, 4, 4);  /* descsz: the entry address */
    put_le(p + 128, note_type, 4);
    memcpy(p + 132, note_name, namesz);
    for (size_t i = 120 + note_len; i < elf->len; i++)
        p[i] = (guint8)(i / 1000);
    return elf;
}

/* A bzImage whose payload is @payload: setup header of boot protocol 2.15, one setup sector, 16 bytes in. */
static GByteArray *make_bzimage(const guint8 *payload, size_t len)
{
    GByteArray *image = g_byte_array_new();

    g_byte_array_set_size(image, 1024 + 16);
    memset(image->data, 0, image->len);
    image->data[0x1f1] = 1;
    memcpy(image->data + 0x202, "HdrS", 4);
    put_le(image->data + 0x206, 0x20f, 2);
    put_le(image->data + 0x248, 16, 4);
    put_le(image->data + 0x24c, len, 4);
    g_byte_array_append(image, payload, len);
    g_byte_array_append(image, (const guint8 *)"\0\0\0\0", 4); /* the size the kernel's build appends */
    return image;
}

static GByteArray *xz(const GByteArray *in)
{
    GByteArray *out = g_byte_array_new();
    size_t pos = 0;

    g_byte_array_set_size(out, lzma_stream_buffer_bound(in->len));
    g_assert_cmpint(lzma_easy_buffer_encode(6, LZMA_CHECK_CRC32, NULL, in->data, in->len, out->data, &pos, out->len),
                    ==, LZMA_OK);
    g_byte_array_set_size(out, pos);
    return out;
}

static void test_kernel_unpacks_xz(void)
{
    g_autoptr(GByteArray) elf = make_elf("Xen", 18);
    g_autoptr(GByteArray) packed = xz(elf);
    g_autoptr(GByteArray) image = make_bzimage(packed->data, packed->len);
    g_autoptr(GBytes) out = guest_boot_unpack(image->data, image->len);

    g_assert_nonnull(out);
    g_assert_cmpuint(g_bytes_get_size(out), ==, elf->len);
    g_assert_cmpmem(g_bytes_get_data(out, NULL), g_bytes_get_size(out), elf->data, elf->len);
}

/* Debian 13's kernels are zstd-compressed: unpacked the same where snapfs has libzstd, a reason where not. */
static void test_kernel_unpacks_zstd(void)
{
    g_autoptr(GByteArray) elf = make_elf("Xen", 18);
    g_autoptr(GByteArray) packed = g_byte_array_new();
    g_autoptr(GByteArray) image = NULL;
    g_autoptr(GBytes) out = NULL;

#ifdef SNAPFS_HAVE_ZSTD
    size_t n;

    g_byte_array_set_size(packed, ZSTD_compressBound(elf->len));
    n = ZSTD_compress(packed->data, packed->len, elf->data, elf->len, 19);
    g_assert_false(ZSTD_isError(n));
    g_byte_array_set_size(packed, n);
    image = make_bzimage(packed->data, packed->len);
    out = guest_boot_unpack(image->data, image->len);
    g_assert_nonnull(out);
    g_assert_cmpmem(g_bytes_get_data(out, NULL), g_bytes_get_size(out), elf->data, elf->len);
    /* Cut anywhere in the frame: refused, never a part of the kernel. */
    for (size_t len = 1040 + 8; len < 1040 + packed->len; len += 1 + len / 64) {
        g_autoptr(GByteArray) cut = make_bzimage(packed->data, len - 1040);

        g_assert_null(guest_boot_unpack(cut->data, cut->len));
        g_assert_cmpint(error_errno(), ==, EINVAL);
        g_assert_nonnull(strstr(error_message(), "zstd"));
    }
#else
    static const guint8 magic[] = { 0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0 };

    g_byte_array_append(packed, magic, sizeof(magic));
    image = make_bzimage(packed->data, packed->len);
    out = guest_boot_unpack(image->data, image->len);
    g_assert_null(out);
    g_assert_cmpint(error_errno(), ==, ENOTSUP);
    g_assert_nonnull(strstr(error_message(), "libzstd"));
#endif
}

static void test_kernel_refuses(void)
{
    g_autoptr(GByteArray) linux_note = make_elf("Linux", 18);
    g_autoptr(GByteArray) other_type = make_elf("Xen", 17);
    g_autoptr(GByteArray) packed = xz(linux_note), packed2 = xz(other_type);
    g_autoptr(GByteArray) image = make_bzimage(packed->data, packed->len);
    g_autoptr(GByteArray) image2 = make_bzimage(packed2->data, packed2->len);
    static const guint8 gzip[] = { 0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0 };
    g_autoptr(GByteArray) gz = make_bzimage(gzip, sizeof(gzip));

    /* An ELF without the PVH note would not boot: qemu refuses it. */
    g_assert_null(guest_boot_unpack(image->data, image->len));
    g_assert_cmpint(error_errno(), ==, ENOTSUP);
    g_assert_nonnull(strstr(error_message(), "PVH"));
    g_assert_null(guest_boot_unpack(image2->data, image2->len));
    g_assert_null(guest_boot_unpack(gz->data, gz->len));
    g_assert_cmpint(error_errno(), ==, ENOTSUP);
    g_assert_nonnull(strstr(error_message(), "other than xz"));

    /* Not a bzImage, or an old one. */
    g_assert_null(guest_boot_unpack(linux_note->data, linux_note->len));
    g_assert_cmpint(error_errno(), ==, EINVAL);
    put_le(image->data + 0x206, 0x207, 2);
    g_assert_null(guest_boot_unpack(image->data, image->len));
    g_assert_nonnull(strstr(error_message(), "2.08"));
}

/* Every truncation and a flipped byte anywhere: a reason, never a crash (the ASan build reads past nothing). */
static void test_kernel_damaged(void)
{
    g_autoptr(GByteArray) elf = make_elf("Xen", 18);
    g_autoptr(GByteArray) packed = xz(elf);
    g_autoptr(GByteArray) image = make_bzimage(packed->data, packed->len);
    unsigned refused = 0;

    for (size_t len = 0; len < 1040 + packed->len; len += 1 + len / 64) {
        g_autofree guint8 *copy = g_memdup2(image->data, len);

        g_assert_null(guest_boot_unpack(copy, len));
        refused++;
    }
    for (size_t at = 0x1f0; at < image->len; at += 7) {
        g_autoptr(GBytes) out = NULL;

        image->data[at] ^= 0x55;
        out = guest_boot_unpack(image->data, image->len);
        /* xz's check catches a damaged payload; a flipped byte the kernel does not read changes nothing. */
        if (out)
            g_assert_cmpmem(g_bytes_get_data(out, NULL), g_bytes_get_size(out), elf->data, elf->len);
        image->data[at] ^= 0x55;
    }
    g_assert_cmpuint(refused, >, 50);

    /* ELF program headers and notes that point outside the image. */
    for (int field = 0; field < 4; field++) {
        g_autoptr(GByteArray) bad = make_elf("Xen", 18);
        g_autoptr(GByteArray) bad_packed = NULL, bad_image = NULL;
        static const struct { int at, bytes; uint64_t value; } lies[] = {
            { 32, 8, UINT64_MAX - 8 }, { 56, 2, 0xffff }, { 64 + 32, 8, UINT64_MAX }, { 120, 4, 0xfffffff0 },
        };

        put_le(bad->data + lies[field].at, lies[field].value, lies[field].bytes);
        bad_packed = xz(bad);
        bad_image = make_bzimage(bad_packed->data, bad_packed->len);
        g_assert_null(guest_boot_unpack(bad_image->data, bad_image->len));
        g_assert_cmpint(error_errno(), ==, ENOTSUP);
    }
}

/* The kernel libguestfs boots here, when the machine has one to read. */
static void test_kernel_of_this_host(void)
{
    glob_t found = { 0 };
    g_autofree char *data = NULL;
    gsize len;

    if (glob("/boot/vmlinuz-*", 0, NULL, &found) != 0 || !g_file_get_contents(found.gl_pathv[found.gl_pathc - 1],
                                                                           &data, &len, NULL)) {
        globfree(&found);
        g_test_skip("no readable kernel in /boot");
        return;
    }
    g_autoptr(GBytes) out = guest_boot_unpack((const guint8 *)data, len);

    if (!out && error_errno() == ENOTSUP) {
        g_test_skip(error_message());
    } else {
        g_assert_nonnull(out);
        g_assert_cmpuint(g_bytes_get_size(out), >, len);
        g_assert_cmpmem(g_bytes_get_data(out, NULL), 4, "\177ELF", 4);
    }
    globfree(&found);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/kernel/unpacks-xz", test_kernel_unpacks_xz);
    g_test_add_func("/kernel/unpacks-zstd", test_kernel_unpacks_zstd);
    g_test_add_func("/kernel/refuses", test_kernel_refuses);
    g_test_add_func("/kernel/damaged", test_kernel_damaged);
    g_test_add_func("/kernel/this-host", test_kernel_of_this_host);
    return g_test_run();
}
