/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit test of revert's request syntax and of its journal's round trip through a file. */
#include "../../src/revert-priv.h"
#include "snapfs/error.h"
#include "snapfs/revert.h"

#include <errno.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <string.h>

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
    g_assert_cmpint(snapfs_error_errno(), ==, EINVAL);
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
    g_assert_cmpint(g_rmdir(dir), ==, 0);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/revert/parse", test_parse);
    g_test_add_func("/revert/journal", test_journal);
    return g_test_run();
}
