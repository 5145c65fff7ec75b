/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A guest's /etc/fstab read by snapfs itself: which filesystems a Linux root mounts where. */
#include "guest-priv.h"

#include <string.h>

/*
 * Why: guestfs_inspect_os() mounts and examines every filesystem of every disk in the appliance
 * (release files, hostname, fstab through Augeas, the architecture of its binaries): about 10 s a
 * filesystem under TCG, so a domain of five layers waits 50 s for its first listing, and an
 * appliance that holds thirty snapshots minutes.  A view needs only where its own root's fstab
 * mounts its own filesystems.  This file parses that fstab; src/guest/view-mount.c resolves its
 * entries against the view's filesystems, and anything either does not understand falls back to
 * full inspection.
 *
 * The fstab is the guest's, so hostile: it only chooses which of the view's own filesystems is
 * mounted where inside the appliance, and a mountpoint must be absolute and plain (no "." or ".."
 * component, no empty one), at most GUEST_FSTAB_MAX_ENTRIES of them.
 */

/* Types fstab may name that are no filesystem of the guest's disks: skipped, as inspection skips them. */
static const char *const not_on_disk[] = {
    "swap", "none", "proc", "sysfs", "devpts", "tmpfs", "devtmpfs", "ramfs", "securityfs", "cgroup", "cgroup2",
    "debugfs", "tracefs", "efivarfs", "hugetlbfs", "mqueue", "pstore", "configfs", "binfmt_misc", "fusectl",
    "autofs", "bpf", "nfs", "nfs4", "cifs", "smbfs", "smb3", "9p", "virtiofs", "overlay", "sshfs", "davfs", NULL,
};

void guest_fstab_entry_free(gpointer data)
{
    struct guest_fstab_entry *e = data;

    g_free(e->spec);
    g_free(e->mountpoint);
    g_free(e->type);
    g_free(e->options);
    g_free(e);
}

/* @field with fstab's octal escapes (\040 for a space) undone; NULL if one is malformed or gives a NUL. */
static char *unescape(const char *field)
{
    GString *out = g_string_new(NULL);

    for (const char *c = field; *c; c++) {
        if (*c != '\\') {
            g_string_append_c(out, *c);
            continue;
        }
        if (c[1] < '0' || c[1] > '3' || c[2] < '0' || c[2] > '7' || c[3] < '0' || c[3] > '7') {
            g_string_free(out, TRUE);
            return NULL;
        }
        char value = (char)((c[1] - '0') * 64 + (c[2] - '0') * 8 + (c[3] - '0'));

        if (value == '\0') {
            g_string_free(out, TRUE);
            return NULL;
        }
        g_string_append_c(out, value);
        c += 3;
    }
    return g_string_free(out, FALSE);
}

/* Whether @path is absolute and plain: no empty, "." or ".." component (one trailing "/" aside). */
static bool plain_absolute(const char *path)
{
    g_auto(GStrv) parts = NULL;

    if (path[0] != '/')
        return false;
    if (strcmp(path, "/") == 0)
        return true;
    parts = g_strsplit(path + 1, "/", -1);
    for (size_t i = 0; parts[i]; i++) {
        bool last = parts[i + 1] == NULL;

        if ((!*parts[i] && !last) || strcmp(parts[i], ".") == 0 || strcmp(parts[i], "..") == 0)
            return false;
    }
    return true;
}

/* Whether the comma-separated @options hold @name, or name=... when @prefix. */
bool guest_fstab_has_option(const char *options, const char *name, bool prefix)
{
    g_auto(GStrv) list = g_strsplit(options, ",", -1);
    size_t len = strlen(name);

    for (size_t i = 0; list[i]; i++) {
        if (strcmp(list[i], name) == 0 || (prefix && strncmp(list[i], name, len) == 0 && list[i][len] == '='))
            return true;
    }
    return false;
}

bool guest_fstab_parse(const char *text, size_t len, GPtrArray *entries)
{
    g_auto(GStrv) lines = NULL;

    /* A NUL inside is no text file. */
    if (memchr(text, '\0', len))
        return false;
    lines = g_strsplit(text, "\n", -1);
    for (size_t i = 0; lines[i]; i++) {
        g_auto(GStrv) fields = NULL;
        g_autoptr(GPtrArray) words = g_ptr_array_new();
        struct guest_fstab_entry *e;
        char *line = g_strstrip(lines[i]);

        if (!*line || *line == '#')
            continue;
        fields = g_strsplit_set(line, " \t", -1);
        for (size_t j = 0; fields[j]; j++) {
            if (*fields[j])
                g_ptr_array_add(words, fields[j]);
        }
        /* spec, mountpoint, type, and options that may be left out; a seventh field is no fstab. */
        if (words->len < 3 || words->len > 6)
            return false;
        e = g_new0(struct guest_fstab_entry, 1);
        e->spec = unescape(g_ptr_array_index(words, 0));
        e->mountpoint = unescape(g_ptr_array_index(words, 1));
        e->type = g_strdup(g_ptr_array_index(words, 2));
        e->options = g_strdup(words->len > 3 ? (const char *)g_ptr_array_index(words, 3) : "defaults");
        if (!e->spec || !e->mountpoint) {
            guest_fstab_entry_free(e);
            return false;
        }
        /* Not a filesystem of the disks, or a folder shown again elsewhere: nothing to mount. */
        if (g_strv_contains(not_on_disk, e->type) || g_str_has_prefix(e->type, "fuse") ||
            strcmp(e->mountpoint, "none") == 0 || strcmp(e->mountpoint, "swap") == 0 ||
            guest_fstab_has_option(e->options, "bind", false) || guest_fstab_has_option(e->options, "rbind", false)) {
            guest_fstab_entry_free(e);
            continue;
        }
        /* btrfs subvolumes are libguestfs's to resolve; a mountpoint that is not plain, nobody's. */
        if (!plain_absolute(e->mountpoint) ||
            (strcmp(e->type, "btrfs") == 0 && (guest_fstab_has_option(e->options, "subvol", true) ||
                                               guest_fstab_has_option(e->options, "subvolid", true))) ||
            entries->len >= GUEST_FSTAB_MAX_ENTRIES) {
            guest_fstab_entry_free(e);
            return false;
        }
        /* "/boot/" is "/boot". */
        if (strlen(e->mountpoint) > 1 && g_str_has_suffix(e->mountpoint, "/"))
            e->mountpoint[strlen(e->mountpoint) - 1] = '\0';
        for (guint j = 0; j < entries->len; j++) {
            if (strcmp(((struct guest_fstab_entry *)g_ptr_array_index(entries, j))->mountpoint, e->mountpoint) == 0) {
                guest_fstab_entry_free(e);
                return false;    /* two filesystems on one folder: which one shows is not for snapfs to guess */
            }
        }
        g_ptr_array_add(entries, e);
    }
    return true;
}
