/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The intent journal of a by-hand revert: a small key file, replaced atomically and fsync'd at each change. */
#include "revert-priv.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/state-dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * A journal says what the next start of snapfs unlinks and redefines, so
 * it is only ever written and read in the checked state directory
 * (state_dir_open(): the effective user's, writable by nobody
 * else), relative to its fd, without following a link and never over a
 * file that is there already; and what a journal read back names is
 * removed only where it is an image a revert makes, next to the domain's
 * own images (revert_journal_vet()).
 */

#define JOURNAL_GROUP "revert"
#define JOURNAL_DISK_PREFIX "disk "
#define JOURNAL_SUFFIX ".revert-journal"
#define JOURNAL_MAX_BYTES (1 << 20)

/* An older snapfs refuses a phase it does not know (and keeps the journal): never a rollback it should not make. */
static const char *const phase_names[] = { "native", "by-hand", "internal", "internal-asked" };

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
    int fd = state_dir_open(state_dir, true);

    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

/* The checked state directory a journal @path lies in, opened; -1 with the reason. */
static int journal_dir_open(const char *path, char **base)
{
    g_autofree char *dir = g_path_get_dirname(path);

    *base = g_path_get_basename(path);
    return state_dir_open(dir, false);
}

static int sync_dir_fd(int dir_fd, const char *path)
{
    if (fsync(dir_fd) < 0) {
        error_set(EIO, "cannot flush the directory of '%s' to disk: %s", path, g_strerror(errno));
        return -1;
    }
    return 0;
}

int revert_sync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int ret = 0;

    if (fd < 0 || fsync(fd) < 0) {
        error_set(EIO, "cannot flush '%s' to disk: %s", path, g_strerror(errno));
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
    g_autofree char *base = NULL;
    g_autofree char *tmp = NULL;
    gsize len;
    int dir_fd, fd, ret;

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

    dir_fd = journal_dir_open(journal->path, &base);
    if (dir_fd < 0)
        return -1;
    tmp = g_strdup_printf("%s.tmp", base);
    /* What a write cut short left (we hold the state directory's lock and the domain's): never written through. */
    unlinkat(dir_fd, tmp, 0);
    fd = openat(dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, data, len) != (ssize_t)len || fsync(fd) < 0) {
        error_set(EIO, "cannot write the revert journal '%s.tmp': %s", journal->path, g_strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlinkat(dir_fd, tmp, 0);
        }
        close(dir_fd);
        return -1;
    }
    close(fd);
    /* rename() then a flushed directory: the journal is either the old or the new one after a crash. */
    if (renameat(dir_fd, tmp, dir_fd, base) < 0) {
        error_set(EIO, "cannot write the revert journal '%s': %s", journal->path, g_strerror(errno));
        unlinkat(dir_fd, tmp, 0);
        close(dir_fd);
        return -1;
    }
    ret = sync_dir_fd(dir_fd, journal->path);
    close(dir_fd);
    return ret;
}

static char *key_get(GKeyFile *kf, const char *group, const char *key)
{
    char *value = g_key_file_get_string(kf, group, key, NULL);

    if (value && !value[0])
        g_clear_pointer(&value, g_free);
    return value;
}

/* The text of the journal @path (a regular file of the checked state directory, not a link); NULL with the reason. */
static char *journal_read(const char *path, gsize *len)
{
    g_autofree char *base = NULL;
    g_autofree char *text = NULL;
    int dir_fd = journal_dir_open(path, &base);
    const char *why = NULL;
    struct stat st;
    int fd;

    if (dir_fd < 0)
        return NULL;
    fd = openat(dir_fd, base, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    close(dir_fd);
    if (fd < 0 || fstat(fd, &st) < 0)
        why = g_strerror(errno);
    else if (!S_ISREG(st.st_mode))
        why = "it is not a regular file";
    else if (st.st_size > JOURNAL_MAX_BYTES)
        why = "it is too large to be one";
    if (!why) {
        text = g_malloc(st.st_size + 1);
        if (read(fd, text, st.st_size) != st.st_size)
            why = g_strerror(errno);
    }
    if (fd >= 0)
        close(fd);
    if (why) {
        error_set(EIO, "cannot read the revert journal '%s': %s", path, why);
        return NULL;
    }
    text[st.st_size] = '\0';
    *len = st.st_size;
    return g_steal_pointer(&text);
}

struct revert_journal *revert_journal_load(const char *path)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GError) error = NULL;
    g_autoptr(revert_journal) journal = g_new0(struct revert_journal, 1);
    g_auto(GStrv) groups = NULL;
    g_autofree char *phase = NULL;
    g_autofree char *text = NULL;
    gsize len;

    text = journal_read(path, &len);
    if (!text)
        return NULL;
    if (!g_key_file_load_from_data(kf, text, len, G_KEY_FILE_NONE, &error)) {
        error_set(EIO, "cannot read the revert journal '%s': %s", path, error->message);
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
        error_set(EIO, "the revert journal '%s' is incomplete", path);
        return NULL;
    }
    for (journal->phase = 0; journal->phase < G_N_ELEMENTS(phase_names); journal->phase++) {
        if (strcmp(phase, phase_names[journal->phase]) == 0)
            break;
    }
    if (journal->phase >= G_N_ELEMENTS(phase_names)) {
        error_set(EIO, "the revert journal '%s' names an unknown phase '%s'", path, phase);
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
    g_autofree char *base = NULL;
    int dir_fd = journal_dir_open(journal->path, &base);
    int ret;

    if (dir_fd < 0)
        return -1;
    if (unlinkat(dir_fd, base, 0) < 0 && errno != ENOENT) {
        error_set(EIO, "cannot remove the revert journal '%s': %s", journal->path, g_strerror(errno));
        close(dir_fd);
        return -1;
    }
    ret = sync_dir_fd(dir_fd, journal->path);
    close(dir_fd);
    return ret;
}

/* Adds the real directory of @file, if it has one, to @dirs. */
static void add_real_dir(GHashTable *dirs, const char *file)
{
    g_autofree char *dir = file && g_path_is_absolute(file) ? g_path_get_dirname(file) : NULL;
    char *real = dir ? realpath(dir, NULL) : NULL;

    if (real)
        g_hash_table_add(dirs, real);
}

/* The real directories of every image the domain and its snapshots name. */
static GHashTable *domain_image_dirs(struct revert_state *st)
{
    GHashTable *dirs = g_hash_table_new_full(g_str_hash, g_str_equal, free, NULL);

    for (guint i = 0; i < st->disks->len; i++)
        add_real_dir(dirs, ((struct snapfs_disk *)g_ptr_array_index(st->disks, i))->file);
    for (guint i = 0; i < st->snaps->len; i++) {
        struct revert_snapshot *snap = g_ptr_array_index(st->snaps, i);
        GHashTableIter it;
        gpointer value;

        g_hash_table_iter_init(&it, snap->overlay);
        while (g_hash_table_iter_next(&it, NULL, &value))
            add_real_dir(dirs, value);
        g_hash_table_iter_init(&it, snap->frozen);
        while (g_hash_table_iter_next(&it, NULL, &value))
            add_real_dir(dirs, value);
        for (guint j = 0; snap->domain_disks && j < snap->domain_disks->len; j++)
            add_real_dir(dirs, ((struct snapfs_disk *)g_ptr_array_index(snap->domain_disks, j))->file);
    }
    return dirs;
}

/* Why @file, read back from @journal, is not an image of @target that snapfs made; NULL if it is. */
static const char *untrusted_reason(struct revert_state *st, GHashTable *dirs, const char *file, const char *target,
                                    const char *prefix, const char *other_prefix)
{
    g_autofree char *dir = NULL;
    g_autofree char *base = NULL;
    char *real;
    bool next_to;
    struct stat sb;

    if (!revert_image_is_named(file, st->name, target, prefix) &&
        !(other_prefix && revert_image_is_named(file, st->name, target, other_prefix)))
        return "it is not named as snapfs names the images a revert makes";
    dir = g_path_get_dirname(file);
    base = g_path_get_basename(file);
    real = realpath(dir, NULL);
    next_to = real && g_hash_table_contains(dirs, real);
    if (next_to) {
        g_autofree char *real_file = g_build_filename(real, base, NULL);

        /* lstat: the last component is never followed. */
        if (lstat(real_file, &sb) == 0 && !S_ISREG(sb.st_mode)) {
            free(real);
            return "it is not a regular file";
        }
    }
    free(real);
    return next_to ? NULL : "it does not lie next to the domain's own images";
}

static void vet_file(struct revert_state *st, const struct revert_journal *journal, GHashTable *dirs, char **file,
                     bool *flag, const char *target, const char *prefix, const char *other_prefix)
{
    const char *why;

    if (!*file || (flag && !*flag))
        return;
    why = untrusted_reason(st, dirs, *file, target, prefix, other_prefix);
    if (!why)
        return;
    log_warn("leaving '%s' as it is: the revert journal '%s' of domain '%s' names it, but %s", *file,
                journal->path, st->label, why);
    if (flag)
        *flag = false;
    else
        g_clear_pointer(file, g_free);
}

void revert_journal_vet(struct revert_journal *journal, struct revert_state *st)
{
    g_autoptr(GHashTable) dirs = domain_image_dirs(st);

    if (journal->keep_name && !g_str_has_prefix(journal->keep_name, "pre-revert-")) {
        log_warn("leaving snapshot '%s' of domain '%s' as it is: the revert journal '%s' names it as the "
                    "state a revert kept, but snapfs names those pre-revert-DATE", journal->keep_name,
                    st->label, journal->path);
        g_clear_pointer(&journal->keep_name, g_free);
    }
    for (guint i = 0; i < journal->disks->len; i++) {
        struct revert_disk *rd = g_ptr_array_index(journal->disks, i);

        vet_file(st, journal, dirs, &rd->keep_overlay, NULL, rd->target, "pre-revert-", NULL);
        vet_file(st, journal, dirs, &rd->new_top, &rd->new_created, rd->target, "revert-", NULL);
        vet_file(st, journal, dirs, &rd->old_top, &rd->drop_old, rd->target, "revert-", "pre-revert-");
    }
}

static gint path_compare(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

GPtrArray *revert_journal_list(const char *state_dir)
{
    GPtrArray *paths = g_ptr_array_new_with_free_func(g_free);
    int dir_fd = state_dir_open(state_dir, false);
    DIR *dir = dir_fd < 0 ? NULL : fdopendir(dir_fd);
    struct dirent *entry;

    if (dir_fd >= 0 && !dir)
        close(dir_fd);
    if (dir_fd < 0 && error_errno() != ENOENT)
        log_warn("%s", error_message());
    while (dir && (entry = readdir(dir))) {
        if (g_str_has_suffix(entry->d_name, JOURNAL_SUFFIX))
            g_ptr_array_add(paths, g_build_filename(state_dir, entry->d_name, NULL));
    }
    if (dir)
        closedir(dir);
    g_ptr_array_sort(paths, path_compare);
    return paths;
}

/*
 * The crash tests' stop: with SNAPFS_FAULT=revert:STEP the process ends right after STEP, as a
 * kill -9 would (the steps and their order: src/revert/external.c).  Here, beside the journal
 * every step writes, so that each step's file can stop without calling the others.
 */
void revert_fault(const char *step)
{
    const char *fault = getenv("SNAPFS_FAULT");

    if (fault && g_str_has_prefix(fault, "revert:") && strcmp(fault + strlen("revert:"), step) == 0) {
        log_warn("SNAPFS_FAULT: stopping dead after revert step '%s'", step);
        _exit(137);
    }
}
