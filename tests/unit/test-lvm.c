/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit test of src/guest/lvm.c: LVM labels found from the host on whole disks, MBR and GPT partitions, through qcow2. */
#include "snapfs/error.h"

#include "test-util.h"
#include "../../src/guest/guest-priv.h"

#include <errno.h>
#include <string.h>

static char *tmpdir;

static void run(const char *cmd)
{
    test_shell(tmpdir, cmd);
}

/* A raw disk of 8 MiB with an LVM label in the second sector at byte @at (no label when @at is negative). */
static void disk(const char *name, const char *table, long at)
{
    g_autofree char *make = g_strdup_printf("rm -f %s && truncate -s 8M %s", name, name);

    run(make);
    if (table) {
        g_autofree char *fdisk = g_strdup_printf("printf '%s' | sfdisk -q %s", table, name);

        run(fdisk);
    }
    if (at >= 0) {
        g_autofree char *label = g_strdup_printf(
            "printf 'LABELONE' | dd of=%s bs=1 seek=%ld conv=notrunc status=none && "
            "printf 'LVM2 001' | dd of=%s bs=1 seek=%ld conv=notrunc status=none", name, at + 512, name, at + 512 + 24);

        run(label);
    }
}

static int holds(const char *name, const char *format)
{
    g_autofree char *file = g_build_filename(tmpdir, name, NULL);

    return guest_image_holds_lvm(file, format);
}

static void test_lvm_whole_disk_and_chains(void)
{
    disk("whole.raw", NULL, 0);
    g_assert_cmpint(holds("whole.raw", "raw"), ==, 1);
    /* The label only in an overlay: the overlay holds LVM, its base does not. */
    disk("plain.raw", NULL, -1);
    run("qemu-img convert -q -O qcow2 plain.raw plain.qcow2 && "
        "qemu-img convert -q -O qcow2 -B plain.qcow2 -F qcow2 whole.raw over.qcow2 && "
        "qemu-img create -q -f qcow2 -F qcow2 -b over.qcow2 top.qcow2");
    g_assert_cmpint(holds("plain.qcow2", "qcow2"), ==, 0);
    g_assert_cmpint(holds("over.qcow2", "qcow2"), ==, 1);
    g_assert_cmpint(holds("top.qcow2", "qcow2"), ==, 1);
    /* A filesystem on the whole disk is no physical volume. */
    run("rm -f ext.raw && mkfs.ext4 -q ext.raw 8M");
    g_assert_cmpint(holds("ext.raw", "raw"), ==, 0);
}

static void test_lvm_partitions(void)
{
    /* MBR: the label in the second primary partition. */
    disk("mbr.raw", "start=2048, size=4096, type=83\\nstart=8192, type=8e\\n", 8192L * 512);
    g_assert_cmpint(holds("mbr.raw", "raw"), ==, 1);
    disk("mbr-none.raw", "start=2048, size=4096, type=83\\nstart=8192, type=8e\\n", -1);
    g_assert_cmpint(holds("mbr-none.raw", "raw"), ==, 0);
    /* GPT: the label in the third partition. */
    disk("gpt.raw", "label: gpt\\nstart=2048, size=2048\\nstart=4096, size=2048\\nstart=6144, size=8192\\n",
         6144L * 512);
    g_assert_cmpint(holds("gpt.raw", "raw"), ==, 1);
    run("qemu-img convert -q -O qcow2 gpt.raw gpt.qcow2");
    g_assert_cmpint(holds("gpt.qcow2", "qcow2"), ==, 1);
    disk("gpt-none.raw", "label: gpt\\nstart=2048, size=2048\\nstart=4096\\n", -1);
    g_assert_cmpint(holds("gpt-none.raw", "raw"), ==, 0);
    /* A logical partition is not looked at: the appliance finds it (0, not a wrong 1). */
    disk("logical.raw", "start=2048, type=5\\nstart=4096, type=8e\\n", 4096L * 512);
    g_assert_cmpint(holds("logical.raw", "raw"), ==, 0);
}

static void test_lvm_bad_input(void)
{
    /* A table whose partitions start past the end of the image, or nowhere: no label, no crash. */
    disk("past.raw", "start=2048, type=8e\\n", -1);
    run("printf '\\377\\377\\377\\177' | dd of=past.raw bs=1 seek=$((0x1be + 8)) conv=notrunc status=none");
    g_assert_cmpint(holds("past.raw", "raw"), ==, 0);
    disk("gpt-bad.raw", "label: gpt\\nstart=2048\\n", -1);
    run("printf '\\377\\377\\377\\377' | dd of=gpt-bad.raw bs=1 seek=$((512 + 80)) conv=notrunc status=none");
    g_assert_cmpint(holds("gpt-bad.raw", "raw"), ==, 0);
    /* An image smaller than a partition table, with a label. */
    run("rm -f tiny.raw && truncate -s 4096 tiny.raw && printf 'LABELONE' | dd of=tiny.raw bs=1 seek=512 "
        "conv=notrunc status=none && printf 'LVM2 001' | dd of=tiny.raw bs=1 seek=536 conv=notrunc status=none");
    g_assert_cmpint(holds("tiny.raw", "raw"), ==, 1);
    /* Missing, not of the format named, a comma in the name. */
    g_assert_cmpint(holds("missing.qcow2", "qcow2"), ==, -1);
    g_assert_cmpint(error_errno(), ==, EIO);
    g_assert_nonnull(strstr(error_message(), "missing.qcow2"));
    g_assert_cmpint(holds("whole.raw", "qcow2"), ==, -1);
    run("cp whole.raw 'a,b.raw'");
    g_assert_cmpint(holds("a,b.raw", "raw"), ==, 1);
}

int main(int argc, char **argv)
{
    int rc;

    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("snapfs-test-lvm-XXXXXX", NULL);
    g_assert_nonnull(tmpdir);
    g_test_add_func("/lvm/whole-disk-and-chains", test_lvm_whole_disk_and_chains);
    g_test_add_func("/lvm/partitions", test_lvm_partitions);
    g_test_add_func("/lvm/bad-input", test_lvm_bad_input);
    rc = g_test_run();
    return rc | test_remove_dir(tmpdir);
}
