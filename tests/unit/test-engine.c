/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit test of the engine without libvirtd: names, snapshot XML, and which images need which (chains by qemu-img). */
#include "snapfs/engine.h"
#include "snapfs/error.h"
#include "../../src/engine/engine-priv.h"

#include "test-util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *tmpdir;

static void run(const char *cmd)
{
    test_shell(tmpdir, cmd);
}

static void test_names(void)
{
    static const struct { const char *name; int err; } rows[] = {
        { "", EINVAL }, { ".", EINVAL }, { "..", EINVAL }, { ".hidden", EINVAL }, { "a/b", EINVAL },
        { "a\nb", EINVAL }, { "\x1b[31m", EINVAL }, { "x\x7f", EINVAL }, { "\xff\xfe", EINVAL },
        { "revert", EEXIST }, { "layers", EEXIST },
        { "before-upgrade", 0 }, { "nightly 2026-11-24", 0 }, { "ünïcödé", 0 }, { "a.b", 0 }, { "Revert", 0 },
    };

    for (size_t i = 0; i < G_N_ELEMENTS(rows); i++) {
        int ret;

        error_clear();
        ret = engine_check_name(rows[i].name);
        if (rows[i].err == 0) {
            g_assert_cmpint(ret, ==, 0);
        } else {
            g_assert_cmpint(ret, ==, -1);
            g_assert_cmpint(error_errno(), ==, rows[i].err);
            g_assert_nonnull(strstr(error_message(), "snapshot"));
        }
    }
}

static const char snapshot_xml[] =
    "<domainsnapshot><name>s &amp; t</name><description>old</description><state>shutoff</state>"
    "<disks><disk name='vda' snapshot='external' type='file'><driver type='qcow2'/>"
    "<source file='/img/vm.s'/></disk><disk name='hdc' snapshot='no'/></disks>"
    "<domain type='qemu'><name>vm</name><devices>"
    "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/vm.qcow2'/>"
    "<target dev='vda' bus='virtio'/></disk>"
    "<disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='hdc'/><readonly/></disk>"
    "</devices></domain></domainsnapshot>";

static void test_parse_snapshot(void)
{
    struct engine_snapshot_info *info = engine_parse_snapshot(snapshot_xml);
    struct snapfs_snapshot_disk *vda;
    struct snapfs_disk *disk, *cdrom;

    g_assert_nonnull(info);
    g_assert_cmpstr(info->name, ==, "s & t");
    g_assert_cmpstr(info->description, ==, "old");
    g_assert_true(info->external);
    g_assert_cmpuint(info->disks->len, ==, 2);
    vda = g_ptr_array_index(info->disks, 0);
    g_assert_cmpstr(vda->target, ==, "vda");
    g_assert_cmpstr(vda->kind, ==, "external");
    g_assert_cmpstr(vda->file, ==, "/img/vm.s");
    g_assert_cmpuint(info->domain_disks->len, ==, 2);
    disk = g_ptr_array_index(info->domain_disks, 0);
    cdrom = g_ptr_array_index(info->domain_disks, 1);
    g_assert_cmpstr(disk->file, ==, "/img/vm.qcow2");
    g_assert_cmpstr(disk->format, ==, "qcow2");
    g_assert_true(engine_disk_is_snapshotted(disk));
    g_assert_false(engine_disk_is_snapshotted(cdrom));
    engine_snapshot_info_free(info);
    g_assert_null(engine_parse_snapshot("<not xml"));
}

static void test_set_description(void)
{
    g_autofree char *changed = xml_set_description(snapshot_xml, "a < b & \"c\" &amp;");
    g_autofree char *added = NULL;
    struct engine_snapshot_info *info;

    g_assert_nonnull(changed);
    info = engine_parse_snapshot(changed);
    /* exactly the text written, entities and all */
    g_assert_cmpstr(info->description, ==, "a < b & \"c\" &amp;");
    g_assert_cmpstr(info->name, ==, "s & t");
    g_assert_cmpuint(info->disks->len, ==, 2);
    engine_snapshot_info_free(info);

    added = xml_set_description("<domainsnapshot><name>x</name></domainsnapshot>", "new");
    info = engine_parse_snapshot(added);
    g_assert_cmpstr(info->description, ==, "new");
    engine_snapshot_info_free(info);
}

static char *path(const char *name)
{
    return g_build_filename(tmpdir, name, NULL);
}

/* base <- a <- b (live), and a <- side (a branch): what a delete must see before merging a into base. */
static void test_images_graph(void)
{
    struct engine_images *images;
    g_autofree char *base = path("base.qcow2");
    g_autofree char *a = path("a.qcow2");
    g_autofree char *b = path("b.qcow2");
    g_autofree char *side = path("side.qcow2");
    g_autofree const char **deps_a = NULL;
    g_autofree const char **deps_base = NULL;
    g_autoptr(GPtrArray) files = NULL;

    run("qemu-img create -q -f qcow2 base.qcow2 8M");
    run("qemu-img create -q -f qcow2 -F qcow2 -b base.qcow2 a.qcow2");
    run("qemu-img create -q -f qcow2 -F qcow2 -b $PWD/a.qcow2 b.qcow2");
    run("qemu-img create -q -f qcow2 -F qcow2 -b a.qcow2 side.qcow2");

    files = engine_chain_files(b, "qcow2");
    g_assert_cmpuint(files->len, ==, 3);
    g_assert_cmpstr(g_ptr_array_index(files, 0), ==, b);
    g_assert_cmpstr(g_ptr_array_index(files, 1), ==, a);
    g_assert_cmpstr(g_ptr_array_index(files, 2), ==, base);

    images = engine_images_new();
    g_assert_cmpint(engine_images_add_chain(images, b, "qcow2"), ==, 0);
    g_assert_cmpint(engine_images_add_chain(images, side, "qcow2"), ==, 0);
    g_hash_table_insert(images->tops, g_strdup(b), g_strdup("vm vda"));

    deps_a = engine_images_dependents(images, a);
    g_assert_nonnull(deps_a[0]);
    g_assert_nonnull(deps_a[1]);   /* b and side: a branch, so a must not be merged away */
    g_assert_null(deps_a[2]);
    deps_base = engine_images_dependents(images, base);
    g_assert_cmpstr(deps_base[0], ==, a);
    g_assert_null(deps_base[1]);

    g_assert_true(engine_images_reachable(images, base));
    g_assert_true(engine_images_reachable(images, a));
    /* side is in the graph but no domain runs on it and no snapshot names it */
    g_assert_false(engine_images_reachable(images, side));
    g_hash_table_insert(images->named, g_strdup(side), g_strdup("vm/s2"));
    g_assert_true(engine_images_reachable(images, side));
    engine_images_free(images);
}

/* Fail closed: an image whose header cannot be read (gone, or not what its format says) is an error, not a base. */
static void test_images_unreadable(void)
{
    struct engine_images *images = engine_images_new();
    g_autofree char *top = path("on-broken.qcow2");
    g_autofree char *broken = path("broken.qcow2");
    g_autofree char *gone = path("gone.qcow2");

    run("qemu-img create -q -f qcow2 broken.qcow2 8M");
    run("qemu-img create -q -f qcow2 -F qcow2 -b broken.qcow2 on-broken.qcow2");
    run("truncate -s 50 broken.qcow2");
    g_assert_cmpint(engine_images_add_chain(images, top, "qcow2"), ==, -1);
    g_assert_cmpint(error_errno(), ==, EIO);
    g_assert_nonnull(strstr(error_message(), "broken.qcow2"));
    g_assert_cmpint(engine_images_add_chain(images, gone, "qcow2"), ==, -1);
    g_assert_cmpint(error_errno(), ==, EIO);
    engine_images_free(images);
}

static GPtrArray *notified;

static void on_changed(const char *file, void *opaque)
{
    g_ptr_array_add(notified, g_strdup(file));
}

static void test_changed_since(void)
{
    g_autofree char *x = path("x.qcow2");
    g_autofree char *y = path("y.qcow2");
    g_autofree char *z = path("z.qcow2");
    g_autoptr(GPtrArray) files = g_ptr_array_new_with_free_func(g_free);
    GHashTable *before;

    run("qemu-img create -q -f qcow2 x.qcow2 8M");
    run("qemu-img create -q -f qcow2 -F qcow2 -b x.qcow2 y.qcow2");
    run("qemu-img create -q -f qcow2 -F qcow2 -b y.qcow2 z.qcow2");
    g_ptr_array_add(files, g_strdup(x));
    g_ptr_array_add(files, g_strdup(y));
    g_ptr_array_add(files, g_strdup(z));
    before = engine_files_state(files);
    /* z rebased onto x, y gone: both are told, x (untouched) is not */
    run("qemu-img rebase -u -f qcow2 -F qcow2 -b x.qcow2 z.qcow2 && rm y.qcow2");
    notified = g_ptr_array_new_with_free_func(g_free);
    engine_set_chain_changed(on_changed, NULL);
    engine_notify_changed_since("localhost/test", before);
    engine_set_chain_changed(NULL, NULL);
    g_assert_cmpuint(notified->len, ==, 2);
    g_assert_true(g_ptr_array_find_with_equal_func(notified, y, g_str_equal, NULL));
    g_assert_true(g_ptr_array_find_with_equal_func(notified, z, g_str_equal, NULL));
    g_ptr_array_unref(notified);
    g_hash_table_unref(before);
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    if (system("qemu-img --version >/dev/null 2>&1") != 0)
        return 77;
    tmpdir = g_dir_make_tmp("snapfs-test-engine-XXXXXX", NULL);
    g_test_add_func("/engine/names", test_names);
    g_test_add_func("/engine/parse-snapshot", test_parse_snapshot);
    g_test_add_func("/engine/set-description", test_set_description);
    g_test_add_func("/engine/images-graph", test_images_graph);
    g_test_add_func("/engine/images-unreadable", test_images_unreadable);
    g_test_add_func("/engine/changed-since", test_changed_since);
    ret = g_test_run();
    if (test_remove_dir(tmpdir))
        ret = 1;
    g_free(tmpdir);
    return ret;
}
