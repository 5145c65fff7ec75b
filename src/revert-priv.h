/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What src/revert.c and src/revert-journal.c share: the intent journal of one revert. */
#pragma once

#include <glib.h>
#include <stdbool.h>

/* One disk of the domain, before and after the revert. */
struct revert_disk {
    char *target;        /* "vda" */
    char *old_top;       /* the image the domain used before, NULL if it lacked the disk */
    char *new_top;       /* the image it uses after, NULL if the revert leaves the disk as it is */
    bool new_created;    /* new_top is an overlay this revert made: unlinked on rollback */
    char *keep_overlay;  /* the pre-revert snapshot's overlay on old_top, made by this revert, or NULL */
    bool drop_old;       /* old_top is unlinked once the revert is done (nothing needs it) */
};

enum revert_phase {
    REVERT_PHASE_NATIVE,    /* external snapshot: libvirt's own revert is being tried */
    REVERT_PHASE_BY_HAND,   /* external snapshot: libvirt cannot, snapfs does it */
    REVERT_PHASE_INTERNAL,  /* internal snapshot: libvirt's own revert */
};

/*
 * The intent of one revert, written (and fsync'd) before anything changes
 * and removed once it is done.  It names everything a rollback removes and
 * a roll-forward finishes; whether the revert took effect is read from
 * libvirt (the domain's disks, the current snapshot), not from the journal.
 */
struct revert_journal {
    char *path;
    char *uri;
    char *domain;
    char *uuid;
    char *target;        /* the snapshot reverted to */
    enum revert_phase phase;
    char *keep_name;     /* the pre-revert snapshot being made, or NULL */
    char *old_current;   /* the current snapshot before, or NULL */
    GPtrArray *disks;    /* struct revert_disk * */
};

void revert_disk_free(struct revert_disk *disk);
void revert_journal_free(struct revert_journal *journal);
/* A typedef of the same name only so that g_autoptr() can name it. */
typedef struct revert_journal revert_journal;
G_DEFINE_AUTOPTR_CLEANUP_FUNC(revert_journal, revert_journal_free)

/* The journal file of @domain on @uri under @state_dir (one revert per domain at a time). */
char *revert_journal_path(const char *state_dir, const char *uri, const char *domain);

/* Creates @state_dir (0700) if needed; -1 with the reason. */
int revert_journal_prepare_dir(const char *state_dir);

/* Writes @journal to its path atomically and durably (fsync of file and directory). */
int revert_journal_write(const struct revert_journal *journal);

/* Reads a journal file; NULL with the reason if it cannot be read or parsed. */
struct revert_journal *revert_journal_load(const char *path);

/* Removes the journal durably; -1 with the reason. */
int revert_journal_remove(const struct revert_journal *journal);

/* Paths of every journal under @state_dir (empty if the directory does not exist). */
GPtrArray *revert_journal_list(const char *state_dir);

/* fsync @path (a file or a directory); -1 with the reason. */
int revert_sync_path(const char *path);
