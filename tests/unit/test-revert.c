/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit test of revert's request syntax, of its journal's round trip through a file, and of
 * revert and recovery against libvirt's test:/// driver (which has libvirt's own external
 * revert, so this is the path a libvirt 9.9+ takes) with real images.
 */
#include "../../src/revert/revert-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/revert.h"

#include <errno.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <libvirt/virterror.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define UUID "6f7c1b52-3a2d-4f0e-9a51-0c8d7e2b4a10"
#define DOM(top) "<domain type='test'><name>web01</name><uuid>" UUID "</uuid><memory>65536</memory>" \
                 "<os><type>hvm</type></os><devices><disk type='file' device='disk'>" \
                 "<driver name='qemu' type='qcow2'/><source file='@DIR@/" top "'/><target dev='vda'/>" \
                 "</disk></devices></domain>"

/* web01, shut off, on web01.s2: base <- (s1) web01.s1 <- (s2) web01.s2 (written to), s2 current. */
static const char fixture[] =
    "<node>\n"
    " <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\n"
    "  <name>web01</name><uuid>" UUID "</uuid><memory>65536</memory><os><type>hvm</type></os>\n"
    "  <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\n"
    "   <source file='@DIR@/web01.s2'/><target dev='vda'/></disk></devices>\n"
    "  <test:runstate>5</test:runstate>\n"
    "  <test:domainsnapshot><name>s1</name><active>0</active><creationTime>1700000000</creationTime>\n"
    "   <state>shutoff</state>\n"
    "   <disks><disk name='vda' snapshot='external'><source file='@DIR@/web01.s1'/></disk></disks>\n"
    "   " DOM("base.qcow2") "\n"
    "  </test:domainsnapshot>\n"
    "  <test:domainsnapshot><name>s2</name><active>1</active><creationTime>1700000100</creationTime>\n"
    "   <state>shutoff</state><parent><name>s1</name></parent>\n"
    "   <disks><disk name='vda' snapshot='external'><source file='@DIR@/web01.s2'/></disk></disks>\n"
    "   " DOM("web01.s1") "\n"
    "  </test:domainsnapshot>\n"
    " </domain>\n"
    "</node>\n";

static char *tmpdir;
static virConnectPtr conn;

static void run(const char *cmd)
{
    g_autofree char *full = g_strdup_printf("cd '%s' && %s >/dev/null 2>&1", tmpdir, cmd);

    if (system(full) != 0) {
        fprintf(stderr, "command failed: %s\n", cmd);
        exit(1);
    }
}

static char *current_snapshot(void)
{
    virDomainPtr dom = virDomainLookupByName(conn, "web01");
    virDomainSnapshotPtr snap = dom ? virDomainSnapshotCurrent(dom, 0) : NULL;
    char *name = snap ? g_strdup(virDomainSnapshotGetName(snap)) : NULL;

    if (snap)
        virDomainSnapshotFree(snap);
    if (dom)
        virDomainFree(dom);
    return name;
}

/* Names of web01's snapshots that start with @prefix. */
static GPtrArray *snapshots_named(const char *prefix)
{
    GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
    virDomainPtr dom = virDomainLookupByName(conn, "web01");
    virDomainSnapshotPtr *list = NULL;
    int n = virDomainListAllSnapshots(dom, &list, 0);

    for (int i = 0; i < n; i++) {
        if (g_str_has_prefix(virDomainSnapshotGetName(list[i]), prefix))
            g_ptr_array_add(names, g_strdup(virDomainSnapshotGetName(list[i])));
        virDomainSnapshotFree(list[i]);
    }
    free(list);
    virDomainFree(dom);
    return names;
}

static char *state_dir(void)
{
    return g_build_filename(tmpdir, "state", NULL);
}

static void check_ok(const char *text, const char *name, bool force)
{
    struct revert_request request;

    g_assert_cmpint(revert_parse(text, strlen(text), &request), ==, 0);
    g_assert_cmpstr(request.name, ==, name);
    g_assert_cmpint(request.force, ==, force);
    revert_request_clear(&request);
}

static void check_einval(const char *text, size_t len)
{
    struct revert_request request;

    g_assert_cmpint(revert_parse(text, len, &request), ==, -1);
    g_assert_cmpint(error_errno(), ==, EINVAL);
    g_assert_null(request.name);
}

static void test_parse(void)
{
    check_ok("before-upgrade", "before-upgrade", false);
    check_ok("before-upgrade\n", "before-upgrade", false);
    check_ok("before upgrade\n", "before upgrade", false);   /* names may hold spaces */
    check_ok("nightly 2026-11-24 --force\n", "nightly 2026-11-24", true);
    check_ok("s\xc3\xa9rie", "s\xc3\xa9rie", false);
    check_einval("", 0);
    check_einval("\n", 1);
    check_einval("a\nb\n", 4);
    check_einval("a\n\n", 3);
    check_einval("a\0b", 3);
    check_einval("a\tb", 3);
    check_einval(" a", 2);
    check_einval("a ", 2);
    check_einval("--force", 7);
    check_einval(" --force", 8);
    check_einval("a --now", 7);
    check_einval("\xff\xfe", 2);
}

static void test_journal(void)
{
    g_autofree char *dir = g_dir_make_tmp("snapfs-revert-XXXXXX", NULL);
    g_autoptr(revert_journal) journal = g_new0(struct revert_journal, 1);
    g_autoptr(revert_journal) back = NULL;
    g_autoptr(GPtrArray) listed = NULL;
    struct revert_disk *disk = g_new0(struct revert_disk, 1);
    struct revert_disk *read;

    journal->path = revert_journal_path(dir, "qemu:///system", "web 01\n");
    journal->uri = g_strdup("qemu:///system");
    journal->domain = g_strdup("web 01\n");
    journal->uuid = g_strdup("03c976fe-27f6-4ae6-ac10-daebded5838d");
    journal->target = g_strdup("before = upgrade [1]");
    journal->phase = REVERT_PHASE_BY_HAND;
    journal->keep_name = g_strdup("pre-revert-20261125-211500");
    journal->disks = g_ptr_array_new_with_free_func((GDestroyNotify)revert_disk_free);
    disk->target = g_strdup("vda");
    disk->old_top = g_strdup("/var/lib/libvirt/images/web01.qcow2");
    disk->new_top = g_strdup("/var/lib/libvirt/images/web01.vda.revert-x.qcow2");
    disk->new_created = true;
    g_ptr_array_add(journal->disks, disk);

    g_assert_cmpint(revert_journal_write(journal), ==, 0);
    listed = revert_journal_list(dir);
    g_assert_cmpuint(listed->len, ==, 1);
    back = revert_journal_load(g_ptr_array_index(listed, 0));
    g_assert_nonnull(back);
    g_assert_cmpstr(back->domain, ==, "web 01\n");
    g_assert_cmpstr(back->target, ==, "before = upgrade [1]");
    g_assert_cmpint(back->phase, ==, REVERT_PHASE_BY_HAND);
    g_assert_cmpstr(back->keep_name, ==, journal->keep_name);
    g_assert_null(back->old_current);
    g_assert_cmpuint(back->disks->len, ==, 1);
    read = g_ptr_array_index(back->disks, 0);
    g_assert_cmpstr(read->old_top, ==, disk->old_top);
    g_assert_cmpstr(read->new_top, ==, disk->new_top);
    g_assert_true(read->new_created);
    g_assert_false(read->drop_old);
    g_assert_null(read->keep_overlay);

    g_assert_cmpint(revert_journal_remove(back), ==, 0);
    g_assert_false(g_file_test(journal->path, G_FILE_TEST_EXISTS));

    /* Never through a link: a journal that is one is not read, a temporary that is one is not written through. */
    {
        g_autofree char *victim = g_strdup_printf("%s.victim", dir);
        g_autofree char *tmp = g_strdup_printf("%s.tmp", journal->path);
        g_autofree char *text = NULL;

        g_assert_true(g_file_set_contents(victim, "[revert]\nuri=qemu:///system\n", -1, NULL));
        g_assert_cmpint(symlink(victim, journal->path), ==, 0);
        g_assert_null(revert_journal_load(journal->path));
        g_assert_cmpint(unlink(journal->path), ==, 0);
        g_assert_cmpint(symlink(victim, tmp), ==, 0);
        g_assert_cmpint(revert_journal_write(journal), ==, 0);
        g_assert_true(g_file_get_contents(victim, &text, NULL, NULL));
        g_assert_cmpstr(text, ==, "[revert]\nuri=qemu:///system\n");
        g_assert_false(g_file_test(tmp, G_FILE_TEST_EXISTS));
        g_assert_true(g_file_test(journal->path, G_FILE_TEST_IS_REGULAR) &&
                      !g_file_test(journal->path, G_FILE_TEST_IS_SYMLINK));
        g_assert_cmpint(revert_journal_remove(journal), ==, 0);
        g_assert_cmpint(unlink(victim), ==, 0);
    }
    /* A state directory others may write in is neither written nor read. */
    g_assert_cmpint(chmod(dir, 0777), ==, 0);
    g_assert_cmpint(revert_journal_write(journal), ==, -1);
    g_assert_cmpint(error_errno(), ==, EACCES);
    g_assert_cmpint(chmod(dir, 0700), ==, 0);
    g_assert_cmpint(g_rmdir(dir), ==, 0);
}

/* What a journal read back may have unlinked: only names a revert gives its images. */
static void test_image_names(void)
{
    g_autofree char *made = revert_image_name("/nonexistent", "web 01", "vda", "revert-s2-20261125-211500");

    g_assert_cmpstr(made, ==, "/nonexistent/web_01.vda.revert-s2-20261125-211500.qcow2");
    g_assert_true(revert_image_is_named(made, "web 01", "vda", "revert-"));
    g_assert_false(revert_image_is_named(made, "web 01", "vda", "pre-revert-"));
    g_assert_false(revert_image_is_named(made, "web 02", "vda", "revert-"));
    g_assert_false(revert_image_is_named(made, "web 01", "vdb", "revert-"));
    g_assert_true(revert_image_is_named("/i/web01.vda.pre-revert-20261125-211500-2.qcow2", "web01", "vda",
                                        "pre-revert-"));
    g_assert_false(revert_image_is_named("web01.vda.revert-x.qcow2", "web01", "vda", "revert-"));
    g_assert_false(revert_image_is_named("/i/web01.vda.revert-.qcow2", "web01", "vda", "revert-"));
    g_assert_false(revert_image_is_named("/i/web01.vda.revert-x y.qcow2", "web01", "vda", "revert-"));
    g_assert_false(revert_image_is_named("/i/web01.vda.revert-x.raw", "web01", "vda", "revert-"));
    g_assert_false(revert_image_is_named("/etc/passwd", "web01", "vda", "revert-"));
}

/* libvirt reverts by itself here; snapfs keeps the state left behind and settles its journal. */
static void test_native_revert(void)
{
    g_autofree char *dir = state_dir();
    struct revert_options options = { .keep = true, .state_dir = dir };
    g_autoptr(GPtrArray) kept = NULL;
    g_autoptr(GPtrArray) journals = NULL;
    g_autofree char *current = NULL;
    g_autofree char *overlay = NULL;
    g_autofree char *backing = NULL;
    g_autofree char *old_top = g_build_filename(tmpdir, "web01.s2", NULL);

    g_assert_cmpint(revert_write(conn, "web01", "nosuch\n", 7, &options), ==, -1);
    g_assert_cmpint(error_errno(), ==, ENOENT);
    g_assert_cmpint(revert_write(conn, "web01", "s1 and more", 11, &options), ==, -1);
    g_assert_cmpint(error_errno(), ==, EINVAL);
    g_assert_cmpint(revert_write(conn, "nodomain", "s1", 2, &options), ==, -1);
    g_assert_cmpint(error_errno(), ==, ENOENT);

    g_assert_cmpint(revert_write(conn, "web01", "s1\n", 3, &options), ==, 0);
    current = current_snapshot();
    g_assert_cmpstr(current, ==, "s1");
    kept = snapshots_named("pre-revert-");
    g_assert_cmpuint(kept->len, ==, 1);
    /* Its overlay (gone if libvirt removed it with the current snapshot's) is back, on the old top. */
    overlay = g_strdup_printf("%s/web01.vda.%s.qcow2", tmpdir, (char *)g_ptr_array_index(kept, 0));
    g_assert_true(g_file_test(overlay, G_FILE_TEST_EXISTS));
    g_assert_true(chain_qcow2_empty(overlay));
    backing = revert_image_backing(overlay, "qcow2", NULL);
    g_assert_cmpstr(backing, ==, old_top);
    journals = revert_journal_list(dir);
    g_assert_cmpuint(journals->len, ==, 0);
}

static char *domain_top(void)
{
    virDomainPtr dom = virDomainLookupByName(conn, "web01");
    g_autofree char *xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
    const char *start = strstr(xml, "<source file='");
    char *top = start ? g_strndup(start + 14, strcspn(start + 14, "'")) : NULL;

    virDomainFree(dom);
    return top;
}

/*
 * The test driver's own revert put web01 on s1's frozen image itself, so the current
 * snapshot's overlay is not the domain's top: libvirt 9.9+ would unlink it while s2 stands
 * on it.  snapfs reverts by hand instead, and unlinks nothing anything needs.
 */
static void test_unsafe_native_goes_by_hand(void)
{
    g_autofree char *dir = state_dir();
    struct revert_options options = { .keep = false, .state_dir = dir };
    g_autofree char *top = NULL;
    g_autofree char *current = NULL;
    g_autofree char *s1 = g_build_filename(tmpdir, "web01.s1", NULL);
    g_autofree char *backing = NULL;

    g_assert_cmpint(revert_write(conn, "web01", "s2", 2, &options), ==, 0);
    current = current_snapshot();
    g_assert_cmpstr(current, ==, "s2");
    top = domain_top();
    g_assert_nonnull(strstr(top, "/web01.vda.revert-s2-"));
    g_assert_true(g_file_test(s1, G_FILE_TEST_EXISTS));
    backing = revert_image_backing(top, "qcow2", NULL);
    g_assert_cmpstr(backing, ==, s1);
}

/* A journal of a revert cut short before libvirt acted: the next start rolls it back. */
static void test_recover_rolls_back(void)
{
    g_autofree char *dir = state_dir();
    struct revert_options options = { .keep = true, .state_dir = dir };
    g_autoptr(revert_journal) journal = g_new0(struct revert_journal, 1);
    g_autoptr(GPtrArray) journals = NULL;
    g_autofree char *uri = virConnectGetURI(conn);
    g_autofree char *current = current_snapshot();
    struct revert_disk *disk = g_new0(struct revert_disk, 1);

    journal->path = revert_journal_path(dir, uri, "web01");
    journal->uri = g_strdup(uri);
    journal->domain = g_strdup("web01");
    journal->uuid = g_strdup(UUID);
    journal->target = g_strdup("s2");
    journal->phase = REVERT_PHASE_BY_HAND;
    journal->keep_name = g_strdup("pre-revert-19990101-000000");
    journal->old_current = g_strdup(current);
    journal->disks = g_ptr_array_new_with_free_func((GDestroyNotify)revert_disk_free);
    disk->target = g_strdup("vda");
    disk->old_top = g_build_filename(tmpdir, "web01.s1", NULL);
    disk->keep_overlay = g_build_filename(tmpdir, "web01.vda.pre-revert-19990101-000000.qcow2", NULL);
    disk->new_top = g_build_filename(tmpdir, "web01.vda.revert-s2-19990101-000000.qcow2", NULL);
    disk->new_created = true;
    g_ptr_array_add(journal->disks, disk);
    g_assert_cmpint(revert_journal_prepare_dir(dir), ==, 0);
    g_assert_cmpint(revert_journal_write(journal), ==, 0);
    /* The overlays were made, the domain never switched to them. */
    g_assert_cmpint(revert_image_create_overlay(disk->keep_overlay, disk->old_top, "qcow2"), ==, 0);
    g_assert_cmpint(revert_image_create_overlay(disk->new_top, disk->old_top, "qcow2"), ==, 0);

    g_assert_cmpint(revert_recover(conn, &options), ==, 0);
    g_assert_false(g_file_test(disk->keep_overlay, G_FILE_TEST_EXISTS));
    g_assert_false(g_file_test(disk->new_top, G_FILE_TEST_EXISTS));
    g_assert_true(g_file_test(disk->old_top, G_FILE_TEST_EXISTS));
    journals = revert_journal_list(dir);
    g_assert_cmpuint(journals->len, ==, 0);
    g_free(current);
    current = current_snapshot();
    g_assert_cmpstr(current, ==, journal->old_current);
}

static void ignore_error(void *opaque, virErrorPtr err)
{
}

/*
 * An overlay a revert makes is private from the start: mode 0600 and the owner of what it stands
 * on, whatever the umask; an existing name is refused (EEXIST) and left as it was; no format, no overlay.
 */
static void test_overlay_private(void)
{
    g_autofree char *below = g_build_filename(tmpdir, "private-below.qcow2", NULL);
    g_autofree char *overlay = g_build_filename(tmpdir, "private.qcow2", NULL);
    g_autofree char *taken = g_build_filename(tmpdir, "taken.qcow2", NULL);
    g_autofree char *link = g_build_filename(tmpdir, "link.qcow2", NULL);
    g_autofree char *target = g_build_filename(tmpdir, "link-target", NULL);
    g_autofree char *content = NULL;
    struct stat st;
    mode_t mask;

    run("qemu-img create -q -f qcow2 private-below.qcow2 4M && chown 1234:5678 private-below.qcow2");
    mask = umask(0);
    g_assert_cmpint(revert_image_create_overlay(overlay, below, "qcow2"), ==, 0);
    umask(mask);
    g_assert_cmpint(stat(overlay, &st), ==, 0);
    g_assert_cmpint(st.st_mode & 07777, ==, 0600);
    g_assert_cmpint(st.st_uid, ==, 1234);
    g_assert_cmpint(st.st_gid, ==, 5678);

    run("(echo keep me > taken.qcow2)");
    g_assert_cmpint(revert_image_create_overlay(taken, below, "qcow2"), ==, -1);
    g_assert_cmpint(error_errno(), ==, EEXIST);
    g_assert_true(g_file_get_contents(taken, &content, NULL, NULL));
    g_assert_cmpstr(content, ==, "keep me\n");

    /* A dangling link is a name taken too: never followed to make its target. */
    run("ln -s link-target link.qcow2");
    g_assert_cmpint(revert_image_create_overlay(link, below, "qcow2"), ==, -1);
    g_assert_cmpint(error_errno(), ==, EEXIST);
    g_assert_false(g_file_test(target, G_FILE_TEST_EXISTS));

    g_assert_cmpint(unlink(overlay), ==, 0);
    g_assert_cmpint(revert_image_create_overlay(overlay, below, NULL), ==, -1);
    g_assert_cmpint(error_errno(), ==, ENOTSUP);
    g_assert_cmpint(revert_image_create_overlay(overlay, below, "vvfat"), ==, -1);
    g_assert_cmpint(error_errno(), ==, ENOTSUP);
    g_assert_false(g_file_test(overlay, G_FILE_TEST_EXISTS));
}

int main(int argc, char **argv)
{
    g_autoptr(GString) text = NULL;
    g_autofree char *path = NULL;
    g_autofree char *uri = NULL;
    g_autofree char *rm = NULL;
    int ret;

    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/revert/parse", test_parse);
    g_test_add_func("/revert/journal", test_journal);
    g_test_add_func("/revert/image-names", test_image_names);
    if (system("qemu-img --version >/dev/null 2>&1") == 0) {
        g_setenv("LIBVIRT_LOG_OUTPUTS", "1:file:/dev/null", TRUE);
        virSetErrorFunc(NULL, ignore_error);
        tmpdir = g_dir_make_tmp("snapfs-revert-XXXXXX", NULL);
        run("qemu-img create -q -f qcow2 base.qcow2 16M");
        run("qemu-img create -q -f qcow2 -F qcow2 -b \"$PWD/base.qcow2\" web01.s1");
        run("qemu-img create -q -f qcow2 -F qcow2 -b \"$PWD/web01.s1\" web01.s2");
        run("qemu-io -f qcow2 -c 'write -P 7 0 64k' web01.s2");   /* written since s2: kept by a revert */
        text = g_string_new(fixture);
        g_string_replace(text, "@DIR@", tmpdir, 0);
        path = g_build_filename(tmpdir, "fixture.xml", NULL);
        g_assert_true(g_file_set_contents(path, text->str, -1, NULL));
        uri = g_strdup_printf("test://%s", path);
        conn = virConnectOpen(uri);
        g_assert_nonnull(conn);
        g_test_add_func("/revert/native", test_native_revert);
        g_test_add_func("/revert/unsafe-native-goes-by-hand", test_unsafe_native_goes_by_hand);
        g_test_add_func("/revert/recover-rolls-back", test_recover_rolls_back);
        g_test_add_func("/revert/overlay-private", test_overlay_private);
    }
    ret = g_test_run();
    if (conn)
        virConnectClose(conn);
    if (tmpdir) {
        rm = g_strdup_printf("rm -rf '%s'", tmpdir);
        if (system(rm) != 0)
            ret = 1;
    }
    g_free(tmpdir);
    return ret;
}
