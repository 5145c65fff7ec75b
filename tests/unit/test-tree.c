/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit test of src/tree/ and src/host.c against libvirt's test:/// driver with a fixture of snapshots and real image chains. */
#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/tree.h"

#include "test-util.h"
#include <libvirt/virterror.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *tmpdir;
static char *uri;
static struct snapfs_host *hosts[2];
static struct snapfs_tree *tree;

static const char fixture[] =
    "<node>\n"
    " <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\n"
    "  <name>web01</name><memory>65536</memory><os><type>hvm</type></os>\n"
    "  <devices>\n"
    "   <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\n"
    "    <source file='@DIR@/web01.s2'/><target dev='vda'/></disk>\n"
    "   <disk type='file' device='cdrom'><source file='@DIR@/none.iso'/><target dev='hdc'/></disk>\n"
    "  </devices>\n"
    "  <test:domainsnapshot><name>s1</name><active>0</active><creationTime>1700000000</creationTime>\n"
    "   <state>shutoff</state><description>first one</description>\n"
    "   <disks><disk name='vda' snapshot='external'><source file='@DIR@/web01.s1'/></disk></disks>\n"
    "  </test:domainsnapshot>\n"
    "  <test:domainsnapshot><name>s2</name><active>1</active><creationTime>1700000100</creationTime>\n"
    "   <state>shutoff</state><parent><name>s1</name></parent>\n"
    "   <disks><disk name='vda' snapshot='external'><source file='@DIR@/web01.s2'/></disk></disks>\n"
    "  </test:domainsnapshot>\n"
    " </domain>\n"
    " <domain type='test'>\n"
    "  <name>db 01 é</name><memory>65536</memory><os><type>hvm</type></os>\n"
    " </domain>\n"
    "</node>\n";

static void run(const char *cmd)
{
    test_shell(tmpdir, cmd);
}

static struct snapfs_node *lookup_path(const char *path)
{
    g_auto(GStrv) parts = g_strsplit(path, "/", -1);
    struct snapfs_node *node = tree_node_root();

    for (int i = 0; parts[i]; i++) {
        struct snapfs_node *child = NULL;
        struct stat st;

        if (!parts[i][0])
            continue;
        if (tree_lookup(tree, node, parts[i], &child, &st) < 0) {
            tree_node_free(node);
            return NULL;
        }
        tree_node_free(node);
        node = child;
    }
    return node;
}

static int collect(void *opaque, const char *name, const struct stat *st)
{
    g_string_append_printf(opaque, "%s%s,", name, S_ISDIR(st->st_mode) ? "/" : "");
    return 0;
}

static char *listing(const char *path)
{
    struct snapfs_node *node = lookup_path(path);
    GString *names = g_string_new(NULL);

    g_assert_nonnull(node);
    g_assert_cmpint(tree_readdir(tree, node, collect, names), ==, 0);
    tree_node_free(node);
    return g_string_free(names, FALSE);
}

static char *xattr(const char *path, const char *name)
{
    struct snapfs_node *node = lookup_path(path);
    char buf[4096];
    ssize_t n;

    g_assert_nonnull(node);
    n = tree_getxattr(tree, node, name, buf, sizeof(buf));
    tree_node_free(node);
    return n < 0 ? NULL : g_strndup(buf, (gsize)n);
}

static void test_tree_listings(void)
{
    g_autofree char *root = listing("/");
    g_autofree char *domain = listing("/web01");
    g_autofree char *disks = listing("/web01/layers");
    g_autofree char *layers = listing("/web01/layers/vda");

    g_assert_cmpstr(root, ==, "db 01 é/,web01/,");
    g_assert_cmpstr(domain, ==, "revert,layers/,live/,s1/,s2/,");
    g_assert_cmpstr(disks, ==, "vda/,");   /* the cdrom is no disk */
    g_assert_cmpstr(layers, ==, "0-base.qcow2/,1-web01.s1/,2-web01.s2/,");
}

static void test_tree_snapshot_attrs(void)
{
    struct snapfs_node *node = lookup_path("/web01/s1");
    struct stat st;

    g_assert_nonnull(node);
    g_assert_cmpint(tree_getattr(tree, node, &st), ==, 0);
    g_assert_true(S_ISDIR(st.st_mode));
    g_assert_cmpint(st.st_mode & 07777, ==, 0555);
    g_assert_cmpint(st.st_mtime, ==, 1700000000);
    tree_node_free(node);

    g_autofree char *parent1 = xattr("/web01/s1", "user.snapfs.parent");
    g_autofree char *parent2 = xattr("/web01/s2", "user.snapfs.parent");
    g_autofree char *created = xattr("/web01/s2", "user.snapfs.created");
    g_autofree char *desc = xattr("/web01/s1", "user.snapfs.description");
    g_autofree char *kind = xattr("/web01/s1", "user.snapfs.kind");
    g_autofree char *state = xattr("/web01/s1", "user.snapfs.state");
    g_autofree char *current1 = xattr("/web01/s1", "user.snapfs.current");
    g_autofree char *current2 = xattr("/web01/s2", "user.snapfs.current");

    g_assert_null(parent1);
    g_assert_cmpint(error_errno(), ==, ENODATA);
    g_assert_cmpstr(parent2, ==, "s1");
    g_assert_cmpstr(created, ==, "1700000100");
    g_assert_cmpstr(desc, ==, "first one");
    g_assert_cmpstr(kind, ==, "external");
    g_assert_cmpstr(state, ==, "shutoff");
    g_assert_cmpstr(current1, ==, "0");
    g_assert_cmpstr(current2, ==, "1");
}

static void test_tree_layer_attrs(void)
{
    g_autofree char *base_file = xattr("/web01/layers/vda/0-base.qcow2", "user.snapfs.file");
    g_autofree char *base_backing = xattr("/web01/layers/vda/0-base.qcow2", "user.snapfs.backing");
    g_autofree char *base_frozen = xattr("/web01/layers/vda/0-base.qcow2", "user.snapfs.snapshot");
    g_autofree char *mid_frozen = xattr("/web01/layers/vda/1-web01.s1", "user.snapfs.snapshot");
    g_autofree char *mid_backing = xattr("/web01/layers/vda/1-web01.s1", "user.snapfs.backing");
    g_autofree char *top_frozen = xattr("/web01/layers/vda/2-web01.s2", "user.snapfs.snapshot");
    g_autofree char *top_live = xattr("/web01/layers/vda/2-web01.s2", "user.snapfs.live");
    g_autofree char *size = xattr("/web01/layers/vda/2-web01.s2", "user.snapfs.virtual_size");
    g_autofree char *format = xattr("/web01/layers/vda/0-base.qcow2", "user.snapfs.format");
    g_autofree char *expected_base = g_build_filename(tmpdir, "base.qcow2", NULL);

    g_assert_cmpstr(base_file, ==, expected_base);
    g_assert_null(base_backing);
    g_assert_cmpstr(base_frozen, ==, "s1");
    g_assert_cmpstr(mid_frozen, ==, "s2");
    g_assert_cmpstr(mid_backing, ==, expected_base);
    g_assert_null(top_frozen);
    g_assert_cmpstr(top_live, ==, "1");
    g_assert_cmpstr(size, ==, "16777216");
    g_assert_cmpstr(format, ==, "qcow2");
}

static void test_tree_revert_content(void)
{
    struct snapfs_node *node = lookup_path("/web01/revert");
    char buf[64] = { 0 };
    struct stat st;

    g_assert_nonnull(node);
    g_assert_cmpint(tree_getattr(tree, node, &st), ==, 0);
    g_assert_true(S_ISREG(st.st_mode));
    g_assert_cmpint(st.st_size, ==, 3);
    g_assert_cmpint(tree_read(tree, node, buf, sizeof(buf), 0), ==, 3);
    g_assert_cmpstr(buf, ==, "s2\n");
    g_assert_cmpint(tree_read(tree, node, buf, sizeof(buf), 3), ==, 0);
    tree_node_free(node);
}

static void test_tree_errors(void)
{
    struct snapfs_node *root = tree_node_root();
    struct snapfs_node *domain = lookup_path("/web01");

    g_assert_null(lookup_path("/nosuch"));
    g_assert_cmpint(error_errno(), ==, ENOENT);
    g_assert_null(lookup_path("/web01/nosuch"));
    g_assert_cmpint(error_errno(), ==, ENOENT);
    g_assert_null(lookup_path("/web01/layers/vdb"));
    g_assert_cmpint(error_errno(), ==, ENOENT);
    g_assert_null(lookup_path("/web01/layers/hdc"));
    g_assert_cmpint(error_errno(), ==, ENOENT);
    g_assert_null(lookup_path("/web01/layers/vda/3-web01.s2"));
    g_assert_cmpint(error_errno(), ==, ENOENT);
    g_assert_null(lookup_path("/web01/layers/vda/1-base.qcow2"));
    g_assert_cmpint(error_errno(), ==, ENOENT);

    g_assert_cmpint(tree_mkdir(tree, root, "newdomain"), ==, -1);
    g_assert_cmpint(error_errno(), ==, EPERM);
    g_assert_cmpint(tree_write(tree, domain, "x", 1, 0, true), ==, -1);
    g_assert_cmpint(error_errno(), ==, EROFS);
    g_assert_cmpint(tree_rmdir(tree, domain, "layers"), ==, -1);
    g_assert_cmpint(error_errno(), ==, EPERM);
    tree_node_free(domain);
    tree_node_free(root);
}

/* What each kind refuses, and with which errno: fs/ops.c answers the kernel with it unchanged. */
static void test_tree_refusals_by_kind(void)
{
    const char *content[] = { "/web01/s1", "/web01/layers/vda/0-base.qcow2", "/web01/live" };
    const char *own[] = { "/", "/web01", "/web01/revert", "/web01/layers", "/web01/layers/vda" };
    struct snapfs_node *domain = lookup_path("/web01");
    struct snapfs_node *revert = lookup_path("/web01/revert");
    struct snapfs_node *snapshot = lookup_path("/web01/s1");
    struct snapfs_node *file, *child;
    struct stat st = { .st_nlink = 1, .st_mode = S_IFREG };

    for (guint i = 0; i < G_N_ELEMENTS(content); i++) {
        struct snapfs_node *node = lookup_path(content[i]);

        g_assert_nonnull(node);
        g_assert_cmpint(tree_refuse_change(node, "unlink"), ==, -1);
        g_assert_cmpint(error_errno(), ==, EROFS);
        g_assert_cmpint(tree_rename(node, true), ==, -1);
        g_assert_cmpint(error_errno(), ==, EROFS);
        g_assert_cmpint(tree_check_open(node, false), ==, -1);
        g_assert_cmpint(error_errno(), ==, EISDIR);
        g_assert_null(tree_listed_node(node, "etc", &st));
        tree_node_free(node);
    }
    for (guint i = 0; i < G_N_ELEMENTS(own); i++) {
        struct snapfs_node *node = lookup_path(own[i]);

        g_assert_nonnull(node);
        g_assert_cmpint(tree_refuse_change(node, "unlink"), ==, -1);
        g_assert_cmpint(error_errno(), ==, EPERM);
        g_assert_null(tree_listed_node(node, "x", &st));
        tree_node_free(node);
    }
    g_assert_cmpint(tree_rename(domain, true), ==, -1);
    g_assert_cmpint(error_errno(), ==, ENOTSUP);
    g_assert_cmpint(tree_rename(domain, false), ==, -1);
    g_assert_cmpint(error_errno(), ==, EXDEV);
    g_assert_true(tree_holds_snapshots(domain));
    g_assert_false(tree_holds_snapshots(snapshot));
    g_assert_true(tree_is_describable(snapshot));
    g_assert_false(tree_is_describable(domain));
    g_assert_true(tree_is_control(revert));
    g_assert_false(tree_is_control(domain));
    g_assert_cmpint(tree_check_open(revert, true), ==, 0);
    g_assert_cmpint(tree_node_cache(revert), ==, SNAPFS_CACHE_NONE);
    g_assert_cmpint(tree_node_cache(domain), ==, SNAPFS_CACHE_SHORT);

    /* A guest file, made by hand: looking one up would start an appliance. */
    file = tree_node_copy(snapshot);
    file->kind = SNAPFS_NODE_GUEST;
    file->path = g_strdup("/etc");
    g_assert_cmpint(tree_check_open(file, false), ==, 0);
    g_assert_cmpint(tree_check_open(file, true), ==, -1);
    g_assert_cmpint(error_errno(), ==, EROFS);
    g_assert_cmpint(tree_refuse_change(file, "create a file"), ==, -1);
    g_assert_cmpint(error_errno(), ==, EROFS);
    g_assert_cmpint(tree_node_cache(file), ==, SNAPFS_CACHE_FOREVER);
    child = tree_listed_node(file, "passwd", &st);
    g_assert_nonnull(child);
    g_assert_cmpint(child->kind, ==, SNAPFS_NODE_GUEST);
    g_assert_cmpstr(child->path, ==, "/etc/passwd");
    g_assert_cmpstr(child->identity, ==, snapshot->identity);
    tree_node_free(child);
    st.st_nlink = 0;   /* listed without its attributes */
    g_assert_null(tree_listed_node(file, "passwd", &st));
    tree_node_free(file);
    tree_node_free(snapshot);
    tree_node_free(revert);
    tree_node_free(domain);
}

/* A snapshot libvirt has under NAME, made behind the tree's back (redefined, as a restore would), not current. */
static void define_snapshot(const char *name)
{
    g_autoptr(virConnect) conn = host_conn(hosts[0]);
    g_autoptr(virDomain) dom = conn ? virDomainLookupByName(conn, "web01") : NULL;
    g_autofree char *domain_xml = dom ? virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE) : NULL;
    g_autofree char *xml = NULL;
    g_autoptr(virDomainSnapshot) snap = NULL;

    g_assert_nonnull(domain_xml);
    xml = g_strdup_printf("<domainsnapshot><name>%s</name><creationTime>1700000200</creationTime>"
                          "<state>shutoff</state><parent><name>s2</name></parent>"
                          "<disks><disk name='vda' snapshot='internal'/></disks>%s</domainsnapshot>", name, domain_xml);
    snap = virDomainSnapshotCreateXML(dom, xml, VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE);
    if (!snap)
        g_error("libvirt did not take snapshot '%s': %s", name, virGetLastErrorMessage());
    host_invalidate(hosts[0], "web01");
}

/* DOMAIN/live: a reserved name, a folder of content that moves, read from the disks' tops now. */
static void test_tree_live(void)
{
    struct snapfs_node *domain = lookup_path("/web01");
    struct snapfs_node *live = lookup_path("/web01/live");
    g_autofree char *flag = xattr("/web01/live", "user.snapfs.live");
    g_autofree char *listed = NULL;
    struct snapfs_domain *web01;
    struct stat st;

    g_assert_nonnull(live);
    g_assert_cmpint(live->kind, ==, SNAPFS_NODE_LIVE);
    g_assert_cmpint(tree_getattr(tree, live, &st), ==, 0);
    g_assert_true(S_ISDIR(st.st_mode));
    g_assert_cmpint(st.st_mode & 07777, ==, 0555);
    g_assert_cmpint(tree_node_cache(live), ==, SNAPFS_CACHE_LIVE);
    g_assert_cmpstr(flag, ==, "1");
    g_assert_nonnull(strstr(live->identity, "/web01.s2"));
    g_assert_cmpint(tree_mkdir(tree, domain, "live"), ==, -1);
    g_assert_cmpint(error_errno(), ==, EEXIST);
    g_assert_cmpint(tree_rmdir(tree, domain, "live"), ==, -1);
    g_assert_cmpint(error_errno(), ==, EPERM);

    /* One libvirt has under that name is not shown, and the name still finds live. */
    define_snapshot("live");
    web01 = host_get_domain(hosts[0], "web01");
    g_assert_nonnull(host_domain_find_snapshot(web01, "live"));
    host_domain_unref(web01);
    listed = listing("/web01");
    g_assert_cmpstr(listed, ==, "revert,layers/,live/,s1/,s2/,");
    tree_node_free(live);
    live = lookup_path("/web01/live");
    g_assert_nonnull(live);
    g_assert_cmpint(live->kind, ==, SNAPFS_NODE_LIVE);
    g_assert_null(live->snapshot);
    tree_node_free(live);
    tree_node_free(domain);
}

static void test_tree_host_names(void)
{
    struct snapfs_host *two[3];

    two[0] = hosts[0];
    two[1] = hosts[1];
    host_name_all(two, 2);
    g_assert_cmpstr(host_name(two[0]), ==, "localhost");
    g_assert_cmpstr(host_name(two[1]), ==, "localhost-2");
}

int main(int argc, char **argv)
{
    struct snapfs_tree_config config = { .uid = 0, .gid = 0 };
    g_autofree char *path = NULL;
    g_autoptr(GString) text = NULL;
    int ret;

    if (system("qemu-img --version >/dev/null 2>&1") != 0)
        return 77;
    g_test_init(&argc, &argv, NULL);
    g_setenv("LIBVIRT_LOG_OUTPUTS", "1:file:/dev/null", TRUE);
    tmpdir = g_dir_make_tmp("snapfs-tree-XXXXXX", NULL);
    run("qemu-img create -q -f qcow2 base.qcow2 16M");
    run("qemu-img create -q -f qcow2 -F qcow2 -b base.qcow2 web01.s1");
    run("qemu-img create -q -f qcow2 -F qcow2 -b web01.s1 web01.s2");
    text = g_string_new(fixture);
    g_string_replace(text, "@DIR@", tmpdir, 0);
    path = g_build_filename(tmpdir, "fixture.xml", NULL);
    g_assert_true(g_file_set_contents(path, text->str, -1, NULL));
    uri = g_strdup_printf("test://%s", path);

    g_assert_cmpint(host_start_events(), ==, 0);
    hosts[0] = host_open(uri, false);
    hosts[1] = host_open(uri, false);
    g_assert_nonnull(hosts[0]);
    g_assert_nonnull(hosts[1]);
    g_assert_null(host_open("nosuchdriver:///x", true));
    tree = tree_new(hosts, 1, &config);

    g_test_add_func("/tree/listings", test_tree_listings);
    g_test_add_func("/tree/snapshot-attrs", test_tree_snapshot_attrs);
    g_test_add_func("/tree/layer-attrs", test_tree_layer_attrs);
    g_test_add_func("/tree/revert-content", test_tree_revert_content);
    g_test_add_func("/tree/errors", test_tree_errors);
    g_test_add_func("/tree/refusals-by-kind", test_tree_refusals_by_kind);
    g_test_add_func("/tree/host-names", test_tree_host_names);
    g_test_add_func("/tree/live", test_tree_live);
    ret = g_test_run();

    tree_free(tree);
    host_close(hosts[0]);
    host_close(hosts[1]);
    host_stop_events();
    if (test_remove_dir(tmpdir))
        ret = 1;
    g_free(tmpdir);
    g_free(uri);
    return ret;
}
