/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The namespace: hosts, domains, snapshots, layers and control files as nodes, with no FUSE in sight. */
#pragma once

#include "snapfs/engine.h"
#include "snapfs/guest.h"
#include "snapfs/revert.h"
#include "snapfs/virt.h"

#include <stdbool.h>
#include <sys/stat.h>
#include <sys/types.h>

enum snapfs_node_kind {
    SNAPFS_NODE_ROOT,       /* the mount's root: domains, or hosts when there are several */
    SNAPFS_NODE_HOST,       /* one connection's folder */
    SNAPFS_NODE_DOMAIN,
    SNAPFS_NODE_REVERT,     /* DOMAIN/revert */
    SNAPFS_NODE_LAYERS,     /* DOMAIN/layers */
    SNAPFS_NODE_DISK,       /* DOMAIN/layers/vda */
    SNAPFS_NODE_LAYER,      /* DOMAIN/layers/vda/N-FILE */
    SNAPFS_NODE_SNAPSHOT,   /* DOMAIN/NAME */
    SNAPFS_NODE_GUEST,      /* anything below a snapshot, a layer or live */
    SNAPFS_NODE_LIVE,       /* DOMAIN/live: the guest as its disks read now */
};

/* How long the kernel may keep what a node says. */
enum snapfs_cache {
    SNAPFS_CACHE_NONE,      /* control files, and layers (their names change with the chain): ask every time */
    SNAPFS_CACHE_SHORT,     /* what libvirt says: a fraction of a second */
    SNAPFS_CACHE_LIVE,      /* a live disk's files: briefly */
    SNAPFS_CACHE_FOREVER,   /* frozen content never changes */
};

struct snapfs_node {
    enum snapfs_node_kind kind;
    int host;               /* index of the connection */
    char *domain;
    char *snapshot;         /* SNAPSHOT, and GUEST below a snapshot */
    char *disk;             /* DISK, LAYER, and GUEST below a layer */
    int layer;              /* LAYER: index from the base; -1 otherwise */
    char *layer_file;       /* LAYER: the image, so a renumbered chain is noticed */
    char *path;             /* GUEST: path inside the view, "/" at its root */
    bool live;              /* below the top layer or live: content moves */
    char *identity;         /* SNAPSHOT, LAYER, LIVE and below: changes when the same name shows other content */
};

struct snapfs_tree_config {
    bool read_only;                      /* -o ro */
    bool restore_keep_off;               /* -o restore_keep=off: no pre-restore snapshot before live/ is written */
    uid_t uid;                           /* owner shown for snapfs's own nodes */
    gid_t gid;
    struct engine_options engine;
    struct revert_options revert;
    struct guest_pool_config guest;
};

struct snapfs_tree;

struct snapfs_tree *tree_new(struct snapfs_host **hosts, size_t n_hosts,
                                    const struct snapfs_tree_config *config);
void tree_free(struct snapfs_tree *tree);
/* Unmounting or SIGTERM: whatever appliances do, requests in them answer EIO now, so snapfs can end. */
void tree_abort(struct snapfs_tree *tree);

struct snapfs_node *tree_node_root(void);
struct snapfs_node *tree_node_copy(const struct snapfs_node *node);
void tree_node_free(struct snapfs_node *node);
enum snapfs_cache tree_node_cache(const struct snapfs_node *node);
/* What log lines call @node: "'/etc/passwd' in snapshot 'before' of domain 'localhost/web01'". */
char *tree_node_describe(struct snapfs_tree *tree, const struct snapfs_node *node);

/* Every call returns -1 after recording errno and reason (snapfs_error_*) on failure. */
int tree_lookup(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name,
                       struct snapfs_node **child, struct stat *st);
int tree_getattr(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st);

/* @st of an entry whose attributes are not known yet has st_nlink 0 and only st_mode's type and st_ino. */
typedef int (*snapfs_dirent_fn)(void *opaque, const char *name, const struct stat *st);
int tree_readdir(struct snapfs_tree *tree, const struct snapfs_node *node,
                        snapfs_dirent_fn fn, void *opaque);

int tree_readlink(struct snapfs_tree *tree, const struct snapfs_node *node, char **target);
ssize_t tree_read(struct snapfs_tree *tree, const struct snapfs_node *node,
                         char *buf, size_t size, off_t offset);
/*
 * A revert request to DOMAIN/revert: @buf is the whole text of one open, at @offset 0 and
 * @first.  fs/ops.c gathers a request written in pieces and hands it over once a newline
 * ends it (fs_write) or the writer's own close(2) does (fs_flush), so that a piecemeal
 * writer never reverts to a prefix of the name; nothing waits for the release, which drops
 * a request still gathering.  Anything else is EINVAL and changes nothing (with the reason
 * in last_error), as a malformed request does.
 */
int tree_write(struct snapfs_tree *tree, const struct snapfs_node *node,
                      const char *buf, size_t size, off_t offset, bool first);

ssize_t tree_getxattr(struct snapfs_tree *tree, const struct snapfs_node *node,
                             const char *name, char *buf, size_t size);
ssize_t tree_listxattr(struct snapfs_tree *tree, const struct snapfs_node *node,
                              char *buf, size_t size);
int tree_setxattr(struct snapfs_tree *tree, const struct snapfs_node *node,
                         const char *name, const char *value, size_t size);

int tree_mkdir(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name);
int tree_rmdir(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name);

/*
 * An open file or directory of a snapshot or a layer (a handle of open(2) or
 * opendir(3) until it is released): it reads the view it was opened on and
 * nothing else.  While it is open, an rmdir or revert that would change an
 * image that view reads answers EBUSY, naming it.  If the images change anyway
 * (virsh behind snapfs's back), reads through it fail with EIO from then on.
 * Nodes without guest content get a handle too, that stops nothing.
 * @cookie is handed to the stale function when the view's images change
 * (fs/ drops the kernel's cache of that inode).  NULL with the reason.
 */
struct snapfs_handle;
struct snapfs_handle *tree_open(struct snapfs_tree *tree, const struct snapfs_node *node, guint64 cookie);
void tree_release(struct snapfs_tree *tree, struct snapfs_handle *handle);
/* 0 while what @handle was opened on is still what its images hold, else -1 with EIO. */
int tree_handle_check(struct snapfs_tree *tree, struct snapfs_handle *handle);
/* tree_read() of the handle's node, through the view it was opened on, checked before and after. */
ssize_t tree_handle_read(struct snapfs_tree *tree, struct snapfs_handle *handle, char *buf, size_t size,
                                off_t offset);
/*
 * @fn is called (from any thread, no lock held) with the cookie of every
 * handle whose view's images changed.  Set once, before anything is opened.
 */
void tree_set_stale_fn(struct snapfs_tree *tree, void (*fn)(guint64 cookie, void *opaque), void *opaque);

/*
 * Restoring into live/ of a shut-off domain (src/tree/restore.c; everywhere else these refuse as
 * tree_refuse_change() does, and in live/ of a running domain, with -o ro, a disk neither qcow2 nor
 * raw, with EROFS and the reason).  The first change takes the pre-restore snapshot.
 *
 * tree_change(): @change (its path left NULL) on entry @name of folder @dir, or on @dir itself when
 * @name is NULL; a rename's or a link's @other is a path within live/ (tree_in_live_path()).
 */
/* Whether @node is DOMAIN/live or a guest file below it. */
bool tree_node_in_live(const struct snapfs_node *node);
int tree_change(struct snapfs_tree *tree, const struct snapfs_node *dir, const char *name,
                struct guest_change *change);
/* The path within live/ of @node, or of entry @name of it: NULL where @node is not inside live/. */
char *tree_in_live_path(const struct snapfs_node *node, const char *name);
/*
 * @node opened for writing: the handle holds the writer (the domain's images stay locked) until
 * released; NULL with the reason.  Writes go through it; flush makes what it wrote durable.
 */
struct snapfs_handle *tree_open_write(struct snapfs_tree *tree, const struct snapfs_node *node, guint64 cookie);
ssize_t tree_handle_write(struct snapfs_tree *tree, struct snapfs_handle *handle, const char *buf, size_t size,
                          off_t offset);
int tree_handle_flush(struct snapfs_tree *tree, struct snapfs_handle *handle);

/* Whether @node is a control file (revert): opened, it takes writes, and tree_read() makes its content. */
bool tree_is_control(const struct snapfs_node *node);

/*
 * Where a change would reach libvirt, for fs/ to let only root and the mounting user ask it
 * (EACCES); elsewhere the tree refuses it by kind, whoever asks: mkdir and rmdir in a domain's
 * folder (it holds snapshots), user.snapfs.description set on a snapshot (it is describable).
 */
bool tree_holds_snapshots(const struct snapfs_node *node);
bool tree_is_describable(const struct snapfs_node *node);

/*
 * The changes no node takes (create, unlink, mknod, symlink, link, chmod and the like,
 * removexattr): -1 with EROFS in snapshots, layers and guest files, EPERM in snapfs's own
 * folders and files, and the reason.  @what says what was asked ("create a file").
 */
int tree_refuse_change(const struct snapfs_node *node, const char *what);
/* Renaming in folder @parent (to the same folder when @same_folder): -1 with ENOTSUP, EXDEV, or as above. */
int tree_rename(const struct snapfs_node *parent, bool same_folder);
/* Before a file is opened (a control file's open goes to fs/): -1 with EISDIR for a folder, EROFS for writing. */
int tree_check_open(const struct snapfs_node *node, bool writing);
/*
 * The node of entry @name that tree_readdir() of @dir listed with @st, where that
 * listing knows its attributes exactly (a guest folder's entries: readdirplus may hand them
 * to the kernel); NULL where it does not.  The caller frees it.
 */
struct snapfs_node *tree_listed_node(const struct snapfs_node *dir, const char *name, const struct stat *st);
