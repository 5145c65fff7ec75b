/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What an operation changed: the state of every file of a domain's chains before, compared after, and the hook told. */
#include "engine-priv.h"

#include <string.h>
#include <sys/stat.h>

struct file_state {
    struct stat st;
    char *backing;
};

static void file_state_free(gpointer data)
{
    struct file_state *state = data;

    g_free(state->backing);
    g_free(state);
}

static struct file_state *file_state_read(const char *file)
{
    struct file_state *state = g_new0(struct file_state, 1);

    if (stat(file, &state->st) < 0) {
        g_free(state);
        return NULL;
    }
    /*
     * Not the header: its format is not known here, and formats are never guessed.  A new backing
     * name is a write to the file, which its modification time shows.
     */
    state->backing = g_strdup("");
    return state;
}

GHashTable *engine_files_state(GPtrArray *files)
{
    GHashTable *states = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, file_state_free);

    for (guint i = 0; i < files->len; i++) {
        const char *file = g_ptr_array_index(files, i);
        struct file_state *state;

        if (g_hash_table_contains(states, file))
            continue;
        state = file_state_read(file);
        if (state)
            g_hash_table_insert(states, g_strdup(file), state);
    }
    return states;
}

void engine_notify_changed_since(const char *label, GHashTable *before)
{
    GHashTableIter iter;
    gpointer key, value;

    g_hash_table_iter_init(&iter, before);
    while (g_hash_table_iter_next(&iter, &key, &value)) {
        struct file_state *old = value;
        struct file_state *now = file_state_read(key);
        bool changed = !now || now->st.st_ino != old->st.st_ino || now->st.st_size != old->st.st_size ||
                       now->st.st_mtim.tv_sec != old->st.st_mtim.tv_sec ||
                       now->st.st_mtim.tv_nsec != old->st.st_mtim.tv_nsec ||
                       strcmp(now->backing, old->backing) != 0;

        if (changed)
            engine_notify_chain_changed(label, key);
        if (now)
            file_state_free(now);
    }
}

/* The files of every disk's chain, top first, to notice afterwards what moved. */
static GPtrArray *disks_chain_files(GPtrArray *disks)
{
    GPtrArray *files = g_ptr_array_new_with_free_func(g_free);

    for (guint i = 0; disks && i < disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(disks, i);
        GPtrArray *chain;

        if (!disk->file || strcmp(disk->type, "network") == 0)
            continue;
        chain = engine_chain_files(disk->file, disk->format);
        for (guint j = 0; j < chain->len; j++)
            g_ptr_array_add(files, g_strdup(g_ptr_array_index(chain, j)));
        g_ptr_array_unref(chain);
    }
    return files;
}

GHashTable *engine_domain_files_state(GPtrArray *disks)
{
    GPtrArray *files = disks_chain_files(disks);
    GHashTable *state = engine_files_state(files);

    g_ptr_array_unref(files);
    return state;
}
