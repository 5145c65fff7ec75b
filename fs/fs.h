/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What the files of the FUSE layer share: the inode table and the operations table. */
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "snapfs/tree.h"

/* The kernel's node ids, each standing for one node of the tree. */
struct fs_inodes;

/* Past @limit ids held, the kernel is asked to drop the least recently looked up (once pruning started). */
struct fs_inodes *fs_inodes_new(unsigned limit);
void fs_inodes_free(struct fs_inodes *inodes);
/* Start and stop the thread that asks the kernel to drop names through @session (stop before it is destroyed). */
void fs_inodes_start_pruning(struct fs_inodes *inodes, struct fuse_session *session);
void fs_inodes_stop_pruning(struct fs_inodes *inodes);
/* The id for @name (a directory if @dir) in directory @parent, made on first use; counts one lookup. */
fuse_ino_t fs_inodes_get(struct fs_inodes *inodes, fuse_ino_t parent, const char *name,
                         const struct snapfs_node *node, bool dir);
/* A copy of the node behind @ino (the caller frees it), or NULL if the kernel forgot it. */
struct snapfs_node *fs_inodes_node(struct fs_inodes *inodes, fuse_ino_t ino);
/* Counts @nlookup lookups forgotten; true when the kernel holds @ino no more and it is gone (never reused). */
bool fs_inodes_forget(struct fs_inodes *inodes, fuse_ino_t ino, uint64_t nlookup);
/* Guest path @from in live/ of @dir's domain was renamed to @to: the ids of it and of what is below it name @to now. */
void fs_inodes_renamed(struct fs_inodes *inodes, const struct snapfs_node *dir, const char *from, const char *to);

/*
 * The mount's state, the userdata of every request.  What no lock or atomic is named for is set
 * before the session serves and read-only while it does; the tree and the inode table lock themselves.
 */
struct fs_context {
    struct snapfs_tree *tree;
    struct fs_inodes *inodes;
    uid_t owner;      /* the mounting user: with root, the only one who may change things */
    bool kernel_permissions;  /* the kernel may check permissions itself: allow_other, or mounted by root */
    /* allow_other: who may enter besides root and the owner (set before the session, read-only after) */
    bool admission;           /* every request is checked against the two lists */
    GArray *allowed_uids;     /* uid_t: allow_users= */
    GArray *allowed_gids;     /* gid_t: allow_groups=, matched against the caller's gid and supplementary groups */
    struct fuse_session *session;   /* set with the session, before the mount */
    GMutex listings_lock;     /* a leaf: nothing is taken while it is held (src/README.md, "Locks") */
    GHashTable *listings;     /* listings_lock: node id of a folder libvirt fills -> the names it showed last (a set), until forgotten */
    gint stopped;             /* atomic: the FUSE loop has returned */
    gint open_handles;        /* atomic: files and folders the kernel has open (opened, not yet released) */
    GHashTable *open_dirs;    /* listings_lock: the set of struct fs_dir * the kernel has open */
    GHashTable *open_controls;   /* listings_lock: the struct fs_control * of revert files open (freed with it) */
    GThreadPool *invalidations;   /* node ids whose cached pages the kernel must drop (fs_watch_stale() to fs_unwatch_stale()) */
};

/* The session of a mount that left this namespace but lives on in others: left to the exit (fs/main.c says why). */
extern struct fuse_session *fs_session_left;

/* FUSE worker threads at most (GUEST_MAX_INFLIGHT of them may wait on appliances). */
#define FS_MAX_THREADS 64

/* Every handler, each in the file of its group (fs/ops-priv.h lists them). */
extern const struct fuse_lowlevel_ops fs_operations;
/* After the session: free the listings of folders still open (no releasedir will come). */
void fs_free_open_dirs(struct fs_context *ctx);

/* Frees a revert file's open state (the destroy function of open_controls). */
void fs_control_destroy(gpointer data);
/* Once the session exists: the kernel is told to drop its cache of files whose images changed under a handle. */
void fs_watch_stale(struct fs_context *ctx);
/* Before the session goes (nothing more is told). */
void fs_unwatch_stale(struct fs_context *ctx);
