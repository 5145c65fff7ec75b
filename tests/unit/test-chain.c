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
    chain = snapfs_chain_read(top, "qcow2");
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

    g_autofree char *xml = snapfs_chain_backing_xml(chain);
    g_assert_nonnull(strstr(xml, "<backingStore type='file'><format type='qcow2'/>"));
    g_assert_nonnull(strstr(xml, "base.raw'/><backingStore/></backingStore></backingStore></backingStore>"));
}

static void test_chain_probe_formats(void)
{
    g_autofree char *vdi = g_build_filename(tmpdir, "d.vdi", NULL);
    g_autofree char *vpc = g_build_filename(tmpdir, "d.vhd", NULL);
    g_autofree char *vmdk = g_build_filename(tmpdir, "d.vmdk", NULL);
    g_autofree char *vhdx = g_build_filename(tmpdir, "d.vhdx", NULL);
    struct snapfs_layer *layer;

    run("qemu-img create -q -f vdi d.vdi 4M && qemu-img create -q -f vpc d.vhd 4M");
    run("qemu-img create -q -f vmdk d.vmdk 4M && qemu-img create -q -f vhdx d.vhdx 4M");
    layer = snapfs_chain_read_layer(vdi, NULL);
    g_assert_cmpstr(layer->format, ==, "vdi");
    g_assert_cmpuint(layer->virtual_size, ==, 4 << 20);
    snapfs_layer_free(layer);
    layer = snapfs_chain_read_layer(vpc, NULL);
    g_assert_cmpstr(layer->format, ==, "vpc");
    g_assert_cmpuint(layer->virtual_size, >=, 4 << 20);   /* vpc rounds up to its geometry */
    snapfs_layer_free(layer);
    layer = snapfs_chain_read_layer(vmdk, NULL);
    g_assert_cmpstr(layer->format, ==, "vmdk");
    g_assert_cmpuint(layer->virtual_size, ==, 4 << 20);
    snapfs_layer_free(layer);
    layer = snapfs_chain_read_layer(vhdx, NULL);
    g_assert_cmpstr(layer->format, ==, "vhdx");
    g_assert_cmpuint(layer->virtual_size, ==, 4 << 20);
    snapfs_layer_free(layer);
}

static void test_chain_internal_snapshots(void)
{
    g_autofree char *file = g_build_filename(tmpdir, "internal.qcow2", NULL);
    g_autoptr(GPtrArray) names = NULL;

    run("qemu-img create -q -f qcow2 internal.qcow2 4M");
    run("qemu-img snapshot -c first internal.qcow2 && qemu-img snapshot -c 'second one' internal.qcow2");
    names = snapfs_chain_internal_snapshots(file);
    g_assert_nonnull(names);
    g_assert_cmpuint(names->len, ==, 2);
    g_assert_cmpstr(g_ptr_array_index(names, 0), ==, "first");
    g_assert_cmpstr(g_ptr_array_index(names, 1), ==, "second one");
}

static void test_chain_errors(void)
{
    g_autofree char *missing = g_build_filename(tmpdir, "missing.qcow2", NULL);
    g_autofree char *loop = g_build_filename(tmpdir, "loop1.qcow2", NULL);

    g_assert_null(snapfs_chain_read(missing, NULL));
    g_assert_cmpint(snapfs_error_errno(), ==, ENOENT);
    g_assert_nonnull(strstr(snapfs_error_message(), "missing.qcow2"));

    /* A dangling backing file is reported by name. */
    run("qemu-img create -q -f qcow2 -F raw -b gone.raw -u dangling.qcow2 4M");
    g_autofree char *dangling = g_build_filename(tmpdir, "dangling.qcow2", NULL);
    g_assert_null(snapfs_chain_read(dangling, "qcow2"));
    g_assert_nonnull(strstr(snapfs_error_message(), "gone.raw"));

    /* Two images naming each other. */
    run("qemu-img create -q -f qcow2 -F qcow2 -b loop2.qcow2 -u loop1.qcow2 4M");
    run("qemu-img create -q -f qcow2 -F qcow2 -b loop1.qcow2 -u loop2.qcow2 4M");
    g_assert_null(snapfs_chain_read(loop, "qcow2"));
    g_assert_cmpint(snapfs_error_errno(), ==, ELOOP);
}

int main(int argc, char **argv)
{
    int ret;

    if (system("qemu-img --version >/dev/null 2>&1") != 0)
        return 77;
    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("snapfs-chain-XXXXXX", NULL);
    g_test_add_func("/chain/three-deep", test_chain_three_deep);
    g_test_add_func("/chain/probe-formats", test_chain_probe_formats);
    g_test_add_func("/chain/internal-snapshots", test_chain_internal_snapshots);
    g_test_add_func("/chain/errors", test_chain_errors);
    ret = g_test_run();
    if (test_remove_dir(tmpdir))
        ret = 1;
    g_free(tmpdir);
    return ret;
}
