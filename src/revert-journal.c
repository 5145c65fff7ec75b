/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The intent journal of a by-hand revert: a small key file, replaced atomically and fsync'd at each change. */
#include "revert-priv.h"
#include "snapfs/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define JOURNAL_GROUP "revert"
#define JOURNAL_DISK_PREFIX "disk "
#define JOURNAL_SUFFIX ".revert-journal"

static const char *const phase_names[] = { "native", "by-hand", "internal" };

void revert_disk_free(struct revert_disk *disk)
{
    if (!disk)
        return;
    g_free(disk->target);
    g_free(disk->old_top);
    g_free(disk->new_top);
    g_free(disk->keep_overlay);
    g_free(disk);
}

void revert_journal_free(struct revert_journal *journal)
{
    if (!journal)
        return;
    g_free(journal->path);
    g_free(journal->uri);
    g_free(journal->domain);
    g_free(journal->uuid);
    g_free(journal->target);
    g_free(journal->keep_name);
    g_free(journal->old_current);
    if (journal->disks)
        g_ptr_array_unref(journal->disks);
    g_free(journal);
}

char *revert_journal_path(const char *state_dir, const char *uri, const char *domain)
{
    g_autofree char *key = g_strdup_printf("%s\n%s", uri, domain);
    g_autofree char *sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256, key, -1);
    g_autofree char *base = NULL;

    /* A hash, because domain names may hold anything a file name cannot. */
    sum[16] = '\0';
    base = g_strdup_printf("%s%s", sum, JOURNAL_SUFFIX);
    return g_build_filename(state_dir, base, NULL);
}

int revert_journal_prepare_dir(const char *state_dir)
{
    if (g_mkdir_with_parents(state_dir, 0700) < 0) {
        snapfs_error_set(EIO, "cannot create the state directory '%s': %s", state_dir, g_strerror(errno));
        return -1;
    }
    return 0;
}

int revert_sync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int ret = 0;

    if (fd < 0 || fsync(fd) < 0) {
        snapfs_error_set(EIO, "cannot flush '%s' to disk: %s", path, g_strerror(errno));
        ret = -1;
    }
    if (fd >= 0)
        close(fd);
    return ret;
}

static void key_set(GKeyFile *kf, const char *group, const char *key, const char *value)
{
    if (value)
        g_key_file_set_string(kf, group, key, value);
}

int revert_journal_write(const struct revert_journal *journal)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autofree char *data = NULL;
    g_autofree char *tmp = g_strdup_printf("%s.tmp", journal->path);
    g_autofree char *dir = g_path_get_dirname(journal->path);
    gsize len;
    int fd;

    key_set(kf, JOURNAL_GROUP, "uri", journal->uri);
    key_set(kf, JOURNAL_GROUP, "domain", journal->domain);
    key_set(kf, JOURNAL_GROUP, "uuid", journal->uuid);
    key_set(kf, JOURNAL_GROUP, "target", journal->target);
    key_set(kf, JOURNAL_GROUP, "phase", phase_names[journal->phase]);
    key_set(kf, JOURNAL_GROUP, "keep", journal->keep_name);
    key_set(kf, JOURNAL_GROUP, "old-current", journal->old_current);
    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *disk = g_ptr_array_index(journal->disks, i);
        g_autofree char *group = g_strdup_printf(JOURNAL_DISK_PREFIX "%s", disk->target);

        key_set(kf, group, "old-top", disk->old_top);
        key_set(kf, group, "new-top", disk->new_top);
        g_key_file_set_boolean(kf, group, "new-created", disk->new_created);
        key_set(kf, group, "keep-overlay", disk->keep_overlay);
        g_key_file_set_boolean(kf, group, "drop-old", disk->drop_old);
    }
    data = g_key_file_to_data(kf, &len, NULL);

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, data, len) != (ssize_t)len || fsync(fd) < 0) {
        snapfs_error_set(EIO, "cannot write the revert journal '%s': %s", tmp, g_strerror(errno));
        if (fd >= 0)
            close(fd);
        unlink(tmp);
        return -1;
    }
    close(fd);
    /* rename() then a flushed directory: the journal is either the old or the new one after a crash. */
    if (rename(tmp, journal->path) < 0) {
        snapfs_error_set(EIO, "cannot write the revert journal '%s': %s", journal->path, g_strerror(errno));
        unlink(tmp);
        return -1;
    }
    return revert_sync_path(dir);
}

static char *key_get(GKeyFile *kf, const char *group, const char *key)
{
    char *value = g_key_file_get_string(kf, group, key, NULL);

    if (value && !value[0])
        g_clear_pointer(&value, g_free);
    return value;
}

struct revert_journal *revert_journal_load(const char *path)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GError) error = NULL;
    g_autoptr(revert_journal) journal = g_new0(struct revert_journal, 1);
    g_auto(GStrv) groups = NULL;
    g_autofree char *phase = NULL;

    if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, &error)) {
        snapfs_error_set(EIO, "cannot read the revert journal '%s': %s", path, error->message);
        return NULL;
    }
    journal->path = g_strdup(path);
    journal->uri = key_get(kf, JOURNAL_GROUP, "uri");
    journal->domain = key_get(kf, JOURNAL_GROUP, "domain");
    journal->uuid = key_get(kf, JOURNAL_GROUP, "uuid");
    journal->target = key_get(kf, JOURNAL_GROUP, "target");
    journal->keep_name = key_get(kf, JOURNAL_GROUP, "keep");
    journal->old_current = key_get(kf, JOURNAL_GROUP, "old-current");
    phase = key_get(kf, JOURNAL_GROUP, "phase");
    if (!journal->uri || !journal->domain || !journal->target || !phase) {
        snapfs_error_set(EIO, "the revert journal '%s' is incomplete", path);
        return NULL;
    }
    for (journal->phase = 0; journal->phase < G_N_ELEMENTS(phase_names); journal->phase++) {
        if (strcmp(phase, phase_names[journal->phase]) == 0)
            break;
    }
    if (journal->phase >= G_N_ELEMENTS(phase_names)) {
        snapfs_error_set(EIO, "the revert journal '%s' names an unknown phase '%s'", path, phase);
        return NULL;
    }
    journal->disks = g_ptr_array_new_with_free_func((GDestroyNotify)revert_disk_free);
    groups = g_key_file_get_groups(kf, NULL);
    for (guint i = 0; groups[i]; i++) {
        struct revert_disk *disk;

        if (!g_str_has_prefix(groups[i], JOURNAL_DISK_PREFIX))
            continue;
        disk = g_new0(struct revert_disk, 1);
        disk->target = g_strdup(groups[i] + strlen(JOURNAL_DISK_PREFIX));
        disk->old_top = key_get(kf, groups[i], "old-top");
        disk->new_top = key_get(kf, groups[i], "new-top");
        disk->new_created = g_key_file_get_boolean(kf, groups[i], "new-created", NULL);
        disk->keep_overlay = key_get(kf, groups[i], "keep-overlay");
        disk->drop_old = g_key_file_get_boolean(kf, groups[i], "drop-old", NULL);
        g_ptr_array_add(journal->disks, disk);
    }
    return g_steal_pointer(&journal);
}

int revert_journal_remove(const struct revert_journal *journal)
{
    g_autofree char *dir = g_path_get_dirname(journal->path);

    if (unlink(journal->path) < 0 && errno != ENOENT) {
        snapfs_error_set(EIO, "cannot remove the revert journal '%s': %s", journal->path, g_strerror(errno));
        return -1;
    }
    return revert_sync_path(dir);
}

static gint path_compare(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

GPtrArray *revert_journal_list(const char *state_dir)
{
    GPtrArray *paths = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GDir) dir = g_dir_open(state_dir, 0, NULL);
    const char *name;

    while (dir && (name = g_dir_read_name(dir))) {
        if (g_str_has_suffix(name, JOURNAL_SUFFIX))
            g_ptr_array_add(paths, g_build_filename(state_dir, name, NULL));
    }
    g_ptr_array_sort(paths, path_compare);
    return paths;
}
