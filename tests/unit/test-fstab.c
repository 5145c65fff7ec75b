/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit test of src/guest/fstab.c: a guest's fstab parsed, and every line snapfs does not understand refused. */
#include "../../src/guest/guest-priv.h"

#include <string.h>

/* The entries of @text, or NULL when the parser refuses it. */
static GPtrArray *parse(const char *text)
{
    GPtrArray *entries = g_ptr_array_new_with_free_func(guest_fstab_entry_free);

    if (!guest_fstab_parse(text, strlen(text), entries)) {
        g_ptr_array_unref(entries);
        return NULL;
    }
    return entries;
}

static const struct guest_fstab_entry *entry(GPtrArray *entries, guint i)
{
    g_assert_cmpuint(i, <, entries->len);
    return g_ptr_array_index(entries, i);
}

static void test_debian(void)
{
    g_autoptr(GPtrArray) e = parse("# /etc/fstab: static file system information.\n"
                                   "#\n"
                                   "# <file system> <mount point>   <type>  <options>       <dump>  <pass>\n"
                                   "UUID=3a7d8a52-3f1e-4a3e-8f44-0d9f6a2e8b01 /               ext4    "
                                   "errors=remount-ro 0       1\n"
                                   "UUID=7c1e9a0b /boot/ ext4\tdefaults\t0 2\n"
                                   "\n"
                                   "/dev/vda5 none swap sw 0 0\n"
                                   "tmpfs /tmp tmpfs defaults 0 0\n"
                                   "proc /proc proc defaults 0 0\n"
                                   "server:/export /srv/nfs nfs4 defaults 0 0\n"
                                   "sshfs#me@host: /mnt/remote fuse.sshfs noauto 0 0\n"
                                   "/srv/data /var/www none bind 0 0\n"
                                   "/srv/data2 /var/www2 ext4 rbind,ro 0 0\n"
                                   "LABEL=my\\040data /mnt/my\\040disk xfs noauto\n"
                                   "/dev/disk/by-uuid/1234 /home ext4");

    g_assert_nonnull(e);
    g_assert_cmpuint(e->len, ==, 4);
    g_assert_cmpstr(entry(e, 0)->spec, ==, "UUID=3a7d8a52-3f1e-4a3e-8f44-0d9f6a2e8b01");
    g_assert_cmpstr(entry(e, 0)->mountpoint, ==, "/");
    g_assert_cmpstr(entry(e, 0)->options, ==, "errors=remount-ro");
    g_assert_cmpstr(entry(e, 1)->mountpoint, ==, "/boot");
    g_assert_cmpstr(entry(e, 2)->spec, ==, "LABEL=my data");
    g_assert_cmpstr(entry(e, 2)->mountpoint, ==, "/mnt/my disk");
    g_assert_cmpstr(entry(e, 2)->type, ==, "xfs");
    g_assert_cmpstr(entry(e, 3)->options, ==, "defaults");
}

static void test_empty(void)
{
    g_autoptr(GPtrArray) none = parse("");
    g_autoptr(GPtrArray) comments = parse("# nothing here\n\n   \n\t# nor here\n");

    g_assert_nonnull(none);
    g_assert_cmpuint(none->len, ==, 0);
    g_assert_nonnull(comments);
    g_assert_cmpuint(comments->len, ==, 0);
}

/* Lines snapfs does not go by: full inspection decides instead. */
static void test_refused(void)
{
    static const char *const bad[] = {
        "UUID=1 relative/path ext4 defaults 0 0\n",
        "UUID=1 /boot/../etc ext4 defaults 0 0\n",
        "UUID=1 /.. ext4 defaults 0 0\n",
        "UUID=1 /a/./b ext4 defaults 0 0\n",
        "UUID=1 /a//b ext4 defaults 0 0\n",
        "UUID=1 / btrfs subvol=@ 0 0\n",
        "UUID=1 /home btrfs defaults,subvolid=258 0 0\n",
        "UUID=1 / ext4\nUUID=2 / ext4\n",
        "UUID=1 /boot ext4\nUUID=2 /boot/ ext4\n",
        "UUID=1 / ext4 defaults 0 1 extra\n",
        "UUID=1 /\n",
        "UUID=1 /mnt/a\\09 ext4\n",
        "UUID=1 /mnt/a\\000b ext4\n",
        "UUID=1 /mnt/a\\ ext4\n",
    };

    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(GPtrArray) e = parse(bad[i]);

        if (e)
            g_error("accepted: %s", bad[i]);
    }
    /* A NUL inside is no text file. */
    {
        static const char with_nul[] = "UUID=1 / ext4\0UUID=2 /boot ext4\n";
        g_autoptr(GPtrArray) e = g_ptr_array_new_with_free_func(guest_fstab_entry_free);

        g_assert_false(guest_fstab_parse(with_nul, sizeof(with_nul) - 1, e));
    }
}

/* A btrfs without subvolumes is a filesystem like any other; more entries than the bound are refused. */
static void test_bounds(void)
{
    g_autoptr(GString) many = g_string_new(NULL);
    g_autoptr(GPtrArray) plain = parse("UUID=1 / btrfs defaults,compress=zstd 0 0\n");
    g_autoptr(GPtrArray) e = NULL;

    g_assert_nonnull(plain);
    g_assert_cmpuint(plain->len, ==, 1);
    for (int i = 0; i < GUEST_FSTAB_MAX_ENTRIES; i++)
        g_string_append_printf(many, "UUID=%d /m%d ext4\n", i, i);
    e = parse(many->str);
    g_assert_nonnull(e);
    g_assert_cmpuint(e->len, ==, GUEST_FSTAB_MAX_ENTRIES);
    g_clear_pointer(&e, g_ptr_array_unref);
    g_string_append(many, "UUID=x /one-more ext4\n");
    e = parse(many->str);
    g_assert_null(e);
}

static void test_options(void)
{
    g_assert_true(guest_fstab_has_option("defaults,noauto", "noauto", false));
    g_assert_false(guest_fstab_has_option("defaults,noautox", "noauto", false));
    g_assert_true(guest_fstab_has_option("rw,subvol=@home", "subvol", true));
    g_assert_false(guest_fstab_has_option("rw,subvol=@home", "subvol", false));
    g_assert_false(guest_fstab_has_option("rw,subvolume", "subvol", true));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/fstab/debian", test_debian);
    g_test_add_func("/fstab/empty", test_empty);
    g_test_add_func("/fstab/refused", test_refused);
    g_test_add_func("/fstab/bounds", test_bounds);
    g_test_add_func("/fstab/options", test_options);
    return g_test_run();
}
