/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit test of src/chain.c: chains made by qemu-img are read back layer by layer. */
#include "snapfs/chain.h"
#include "snapfs/error.h"

#include "test-util.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *tmpdir;

static void run(const char *cmd)
{
    test_shell(tmpdir, cmd);
}

static void test_chain_three_deep(void)
{
    g_autofree char *top = g_build_filename(tmpdir, "c.qcow2", NULL);
    g_autoptr(GPtrArray) chain = NULL;
    struct snapfs_layer *base, *mid, *upper;

    run("qemu-img create -q -f raw base.raw 8M");
    run("qemu-img create -q -f qcow2 -F raw -b base.raw a.qcow2");
    run("qemu-img create -q -f qcow2 -F qcow2 -b a.qcow2 b.qcow2 16M");
    run("qemu-img create -q -f qcow2 -F qcow2 -b $PWD/b.qcow2 c.qcow2");
    chain = chain_read(top, "qcow2");
    g_assert_nonnull(chain);
    g_assert_cmpuint(chain->len, ==, 4);
    base = g_ptr_array_index(chain, 0);
    mid = g_ptr_array_index(chain, 1);
    upper = g_ptr_array_index(chain, 3);
    g_assert_true(g_str_has_suffix(base->file, "/base.raw"));
    g_assert_cmpstr(base->format, ==, "raw");
    g_assert_cmpuint(base->virtual_size, ==, 8 << 20);
    g_assert_null(base->backing);
    g_assert_cmpstr(mid->format, ==, "qcow2");
    g_assert_cmpstr(mid->backing, ==, "base.raw");
    g_assert_cmpstr(mid->backing_format, ==, "raw");
    g_assert_cmpuint(upper->virtual_size, ==, 16 << 20);
    g_assert_cmpstr(upper->file, ==, top);

    g_autofree char *xml = chain_backing_xml(chain);
    g_assert_nonnull(strstr(xml, "<backingStore type='file'><format type='qcow2'/>"));
    g_assert_nonnull(strstr(xml, "base.raw'/><backingStore/></backingStore></backingStore></backingStore>"));
}

/* Formats are taken as given, and each one's virtual size read from its own header. */
static void test_chain_given_formats(void)
{
    g_autofree char *vdi = g_build_filename(tmpdir, "d.vdi", NULL);
    g_autofree char *vpc = g_build_filename(tmpdir, "d.vhd", NULL);
    g_autofree char *vmdk = g_build_filename(tmpdir, "d.vmdk", NULL);
    g_autofree char *vhdx = g_build_filename(tmpdir, "d.vhdx", NULL);
    struct snapfs_layer *layer;

    run("qemu-img create -q -f vdi d.vdi 4M && qemu-img create -q -f vpc d.vhd 4M");
    run("qemu-img create -q -f vmdk d.vmdk 4M && qemu-img create -q -f vhdx d.vhdx 4M");
    layer = chain_read_layer(vdi, "vdi");
    g_assert_cmpstr(layer->format, ==, "vdi");
    g_assert_cmpuint(layer->virtual_size, ==, 4 << 20);
    chain_layer_free(layer);
    layer = chain_read_layer(vpc, "vpc");
    g_assert_cmpstr(layer->format, ==, "vpc");
    g_assert_cmpuint(layer->virtual_size, >=, 4 << 20);   /* vpc rounds up to its geometry */
    chain_layer_free(layer);
    layer = chain_read_layer(vmdk, "vmdk");
    g_assert_cmpstr(layer->format, ==, "vmdk");
    g_assert_cmpuint(layer->virtual_size, ==, 4 << 20);
    chain_layer_free(layer);
    layer = chain_read_layer(vhdx, "vhdx");
    g_assert_cmpstr(layer->format, ==, "vhdx");
    g_assert_cmpuint(layer->virtual_size, ==, 4 << 20);
    chain_layer_free(layer);
}

/*
 * Rewrite the backing-format header extension of the qcow2 image @name:
 * its type made unknown (@format NULL: the format is no longer recorded),
 * or its text replaced by @format (of the same length).
 */
static void patch_backing_format(const char *name, const char *format)
{
    g_autofree char *file = g_build_filename(tmpdir, name, NULL);
    g_autofree char *data = NULL;
    gsize len = 0;
    gsize off;

    g_assert_true(g_file_get_contents(file, &data, &len, NULL));
    off = (guint32)(guchar)data[100] << 24 | (guint32)(guchar)data[101] << 16 | (guint32)(guchar)data[102] << 8 |
          (guchar)data[103];
    for (;;) {
        guint32 type = (guint32)(guchar)data[off] << 24 | (guint32)(guchar)data[off + 1] << 16 |
                       (guint32)(guchar)data[off + 2] << 8 | (guchar)data[off + 3];
        guint32 n = (guchar)data[off + 6] << 8 | (guchar)data[off + 7];

        g_assert_cmpuint(type, !=, 0);
        if (type == 0xe2792acaU) {
            if (format) {
                g_assert_cmpuint(strlen(format), ==, n);
                memcpy(data + off + 8, format, n);
            } else {
                memcpy(data + off, "\x12\x34\x56\x78", 4);
            }
            break;
        }
        off += 8 + ((n + 7) & ~7U);
    }
    g_assert_true(g_file_set_contents(file, data, (gssize)len, NULL));
}

/*
 * Formats are never guessed: no format given is refused, and so is a name
 * qemu-img does not know as a disk image format, from the caller or from a
 * header; a backing file the image names without its format is never opened.
 */
static void test_chain_no_guessing(void)
{
    g_autofree char *plain = g_build_filename(tmpdir, "plain.qcow2", NULL);
    g_autofree char *raw = g_build_filename(tmpdir, "guest.raw", NULL);
    g_autofree char *unrecorded = g_build_filename(tmpdir, "unrecorded.qcow2", NULL);
    g_autofree char *odd = g_build_filename(tmpdir, "odd.qcow2", NULL);
    g_autoptr(GPtrArray) chain = NULL;
    struct snapfs_layer *layer;

    run("qemu-img create -q -f qcow2 plain.qcow2 4M");
    g_assert_null(chain_read_layer(plain, NULL));
    g_assert_cmpint(error_errno(), ==, ENOTSUP);
    g_assert_nonnull(strstr(error_message(), "plain.qcow2"));
    g_assert_null(chain_read(plain, NULL));
    g_assert_cmpint(error_errno(), ==, ENOTSUP);
    for (const char *const *bad = (const char *const[]){ "vvfat", "file", "nbd", "host_device", "json", "", NULL };
         *bad; bad++) {
        g_assert_null(chain_read_layer(plain, *bad));
        g_assert_cmpint(error_errno(), ==, ENOTSUP);
    }
    g_assert_true(chain_format_known("qcow2"));
    g_assert_true(chain_format_known("raw"));
    g_assert_false(chain_format_known(NULL));
    g_assert_false(chain_format_known("vvfat"));

    /* A raw disk whose guest wrote a qcow2 header naming a host file: raw it stays, nothing below it. */
    run("(echo host-secret > secret.txt) && qemu-img create -q -f qcow2 -F raw -b $PWD/secret.txt -u guest.raw 4M");
    chain = chain_read(raw, "raw");
    g_assert_nonnull(chain);
    g_assert_cmpuint(chain->len, ==, 1);
    layer = g_ptr_array_index(chain, 0);
    g_assert_cmpstr(layer->format, ==, "raw");
    g_assert_null(layer->backing);
    g_clear_pointer(&chain, g_ptr_array_unref);

    /* An overlay naming that raw disk as its backing file without a format: refused, not probed. */
    run("qemu-img create -q -f qcow2 -F raw -b guest.raw -u unrecorded.qcow2 4M");
    patch_backing_format("unrecorded.qcow2", NULL);
    layer = chain_read_layer(unrecorded, "qcow2");
    g_assert_nonnull(layer);
    g_assert_cmpstr(layer->backing, ==, "guest.raw");
    g_assert_null(layer->backing_format);
    chain_layer_free(layer);
    g_assert_null(chain_read(unrecorded, "qcow2"));
    g_assert_cmpint(error_errno(), ==, ENOTSUP);
    g_assert_nonnull(strstr(error_message(), "guest.raw"));
    g_assert_null(strstr(error_message(), "secret"));

    /* A header extension naming what is no disk image format: refused. */
    run("qemu-img create -q -f qcow2 -F qcow2 -b plain.qcow2 -u odd.qcow2 4M");
    patch_backing_format("odd.qcow2", "vvfat");
    g_assert_null(chain_read(odd, "qcow2"));
    g_assert_cmpint(error_errno(), ==, ENOTSUP);
    g_assert_nonnull(strstr(error_message(), "vvfat"));
}

static void test_chain_internal_snapshots(void)
{
    g_autofree char *file = g_build_filename(tmpdir, "internal.qcow2", NULL);
    g_autoptr(GPtrArray) names = NULL;

    run("qemu-img create -q -f qcow2 internal.qcow2 4M");
    run("qemu-img snapshot -c first internal.qcow2 && qemu-img snapshot -c 'second one' internal.qcow2");
    names = chain_internal_snapshots(file);
    g_assert_nonnull(names);
    g_assert_cmpuint(names->len, ==, 2);
    g_assert_cmpstr(g_ptr_array_index(names, 0), ==, "first");
    g_assert_cmpstr(g_ptr_array_index(names, 1), ==, "second one");
}

static void test_chain_errors(void)
{
    g_autofree char *missing = g_build_filename(tmpdir, "missing.qcow2", NULL);
    g_autofree char *loop = g_build_filename(tmpdir, "loop1.qcow2", NULL);

    g_assert_null(chain_read(missing, "qcow2"));
    g_assert_cmpint(error_errno(), ==, ENOENT);
    g_assert_nonnull(strstr(error_message(), "missing.qcow2"));

    /* A dangling backing file is reported by name. */
    run("qemu-img create -q -f qcow2 -F raw -b gone.raw -u dangling.qcow2 4M");
    g_autofree char *dangling = g_build_filename(tmpdir, "dangling.qcow2", NULL);
    g_assert_null(chain_read(dangling, "qcow2"));
    g_assert_nonnull(strstr(error_message(), "gone.raw"));

    /* Two images naming each other. */
    run("qemu-img create -q -f qcow2 -F qcow2 -b loop2.qcow2 -u loop1.qcow2 4M");
    run("qemu-img create -q -f qcow2 -F qcow2 -b loop1.qcow2 -u loop2.qcow2 4M");
    g_assert_null(chain_read(loop, "qcow2"));
    g_assert_cmpint(error_errno(), ==, ELOOP);
}

int main(int argc, char **argv)
{
    int ret;

    if (system("qemu-img --version >/dev/null 2>&1") != 0)
        return 77;
    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("snapfs-chain-XXXXXX", NULL);
    g_test_add_func("/chain/three-deep", test_chain_three_deep);
    g_test_add_func("/chain/given-formats", test_chain_given_formats);
    g_test_add_func("/chain/no-guessing", test_chain_no_guessing);
    g_test_add_func("/chain/internal-snapshots", test_chain_internal_snapshots);
    g_test_add_func("/chain/errors", test_chain_errors);
    ret = g_test_run();
    if (test_remove_dir(tmpdir))
        ret = 1;
    g_free(tmpdir);
    return ret;
}
