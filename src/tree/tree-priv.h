/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What the files of the tree share: struct snapfs_tree, the operations of a node kind, and the helpers every kind uses. */
#pragma once

#include "snapfs/tree.h"
#include "snapfs/agent.h"

#define XATTR_PREFIX "user.snapfs."

struct snapfs_tree {
    struct snapfs_host **hosts;
    size_t n_hosts;
    struct snapfs_tree_config config;
    struct guest_pool *guests;
    time_t mounted;
    GMutex lock;
    GHashTable *inos;          /* lock: node key -> inode number shown in st_ino */
    guint64 next_ino;          /* lock */
    GHashTable *last_errors;   /* lock: "host/domain" -> the last refusal's reason */
    GHashTable *views;         /* lock: view key -> struct tree_view *: what a node reads, found once */
    GHashTable *images;        /* lock: file -> struct view_image: the state views were last made on */
    GHashTable *handles;       /* lock: the set of struct snapfs_handle * open now */
    GHashTable *changing;      /* lock: file -> GThread * of the rmdir or revert changing it now */
    GHashTable *writers;       /* lock: "host/domain" -> struct tree_view * of live/ being written (restore.c) */
    GHashTable *written;       /* lock: "host/domain" -> tree_images_signature() of the tops its last writer left */
    GHashTable *agentless;     /* lock: "host/domain" -> gint64 *: when its running domain's agent last did not answer */
    unsigned writers_made;     /* restore lock */
    GMutex restore_lock;       /* one writer starts at a time (its pre-restore snapshot is taken once) */
    void (*stale_fn)(guint64 cookie, void *opaque);   /* set once, before the first open */
    void *stale_opaque;
};

/*
 * Locks: tree->lock is never held while calling libvirt, the engine or the guest reader,
 * with one exception: a view reference dropped under it (a table entry replaced or removed)
 * may free a guest view, which takes the pool's cache lock, the last lock of all
 * (src/README.md, "Locks and their order").
 */

/* The user.snapfs.* attributes snapfs shows on one node, in the order they are listed. */
struct tree_xattrs {
    GPtrArray *names;    /* full names, "user.snapfs.state" */
    GPtrArray *values;
};


/*
 * What one kind of node does (OpenZFS's ctldir gives each kind of node its own table
 * too): the public calls of tree.h look the kind up in one table (kinds.c) and call
 * these.  Each returns -1 after recording errno and reason.  A NULL entry: lookup finds
 * nothing (ENOENT), readdir lists nothing, xattrs shows none, read is EISDIR, readlink
 * EINVAL, write EROFS; getattr is never NULL.
 */
struct tree_kind {
    /* Snapshots, layers, live and guest files: content, read-only (EROFS); snapfs's own folders refuse with EPERM. */
    bool content;
    /* How long the kernel may keep what the node says (FOREVER is LIVE below the live top layer and live). */
    enum snapfs_cache cache;
    /* A domain's folder: mkdir and rmdir in it make and delete snapshots. */
    bool holds_snapshots;
    /* A snapshot's folder: user.snapfs.description can be set on it. */
    bool describable;
    int (*lookup)(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name,
                  struct snapfs_node **child);
    /* Fills @st, st_ino included. */
    int (*getattr)(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st);
    int (*readdir)(struct snapfs_tree *tree, const struct snapfs_node *node, snapfs_dirent_fn fn, void *opaque);
    int (*xattrs)(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list);
    /* Where a kind has xattrs of its own (the guest's) instead of the list above. */
    ssize_t (*getxattr)(struct snapfs_tree *tree, const struct snapfs_node *node, const char *name,
                        char *buf, size_t size);
    ssize_t (*listxattr)(struct snapfs_tree *tree, const struct snapfs_node *node, char *buf, size_t size);
    ssize_t (*read)(struct snapfs_tree *tree, const struct snapfs_node *node, char *buf, size_t size, off_t offset);
    int (*readlink)(struct snapfs_tree *tree, const struct snapfs_node *node, char **target);
    int (*write)(struct snapfs_tree *tree, const struct snapfs_node *node, const char *buf, size_t size,
                 off_t offset, bool first);
    /* tree_listed_node(): where a listing of this kind knows its entries' attributes exactly. */
    struct snapfs_node *(*listed_node)(const struct snapfs_node *dir, const char *name, const struct stat *st);
};

/* hosts.c; and the names a domain's folder keeps for itself, which no snapshot shown there may take. */
extern const struct tree_kind tree_kind_root, tree_kind_host, tree_kind_domain;
/* control.c */
extern const struct tree_kind tree_kind_revert;
/* layers.c */
extern const struct tree_kind tree_kind_layers, tree_kind_disk, tree_kind_layer;
/* snapshots.c */
extern const struct tree_kind tree_kind_snapshot;
/* guest-files.c */
extern const struct tree_kind tree_kind_guest;
/* live.c; and why live/ of @node's domain (@domain as libvirt says it now) takes no changes, or NULL (restore.c asks). */
extern const struct tree_kind tree_kind_live;
char *tree_live_read_only(struct snapfs_tree *tree, const struct snapfs_node *node, struct snapfs_domain *domain,
                          struct snapfs_agent **agent);   /* a running domain's agent, asked for the answer, if @agent */

/* kinds.c: the kind of @node; whether it is content (a snapshot, a layer, live or a guest file). */
const struct tree_kind *tree_kind_of(const struct snapfs_node *node);
bool tree_is_content(const struct snapfs_node *node);
/* Hands the entry @child, called @name, to a readdir callback, with its type and inode number only. */
int tree_list_entry(struct snapfs_tree *tree, const struct snapfs_node *child, const char *name,
                    snapfs_dirent_fn fn, void *opaque);

/* ---- core.c: nodes, inode numbers, folders' attributes, xattr lists, refusals remembered ---- */

/* Appends user.snapfs.@name with @value (taken). */
void tree_xattr_put(struct tree_xattrs *list, const char *name, char *value);

struct snapfs_host *tree_host(struct snapfs_tree *tree, const struct snapfs_node *node);
/* The node's domain as libvirt says it now (a reference), or NULL with the reason. */
struct snapfs_domain *tree_domain(struct snapfs_tree *tree, const struct snapfs_node *node);
/* Layers and guest files are read from the image files: -1 with ENOTSUP where the host is not this machine. */
int tree_check_local(struct snapfs_tree *tree, const struct snapfs_node *node);
/* A copy of @parent that is of @kind: the start of every child node. */
struct snapfs_node *tree_child_of_kind(const struct snapfs_node *parent, enum snapfs_node_kind kind);
/* -1 with ENOENT: @name names nothing in its folder. */
int tree_no_such_entry(const char *name);
void tree_key_add(GString *key, const char *field);
char *tree_key_of(const struct snapfs_node *node);
ino_t tree_ino(struct snapfs_tree *tree, const char *key);
/* A folder of snapfs's own, owned by the mounting user; st_ino is left 0 (tree_stat_ino() sets it). */
void tree_stat_dir(struct snapfs_tree *tree, struct stat *st, mode_t mode, time_t when);
/* getattr of a read-only folder of snapfs's own in a domain (layers, a disk's, live): present while the domain is. */
int tree_domain_folder_getattr(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st);
/* Gives @st the inode number of @node's key: stable while snapfs runs. */
void tree_stat_ino(struct snapfs_tree *tree, const struct snapfs_node *node, struct stat *st);
void tree_remember_error(struct snapfs_tree *tree, const struct snapfs_node *node, const char *what,
                         const char *snapshot);

/* ---- identity.c: what views are made of ---- */

/* The backing chain of disk @target of @domain, base first; NULL with the reason. */
GPtrArray *tree_disk_chain(struct snapfs_domain *domain, const char *target);
/* The layer a LAYER node (or a guest file below one) stands for, checked against the chain now, which *@chain_out holds. */
struct snapfs_layer *tree_layer_of(struct snapfs_domain *domain, const struct snapfs_node *node, GPtrArray **chain_out);
char *tree_layer_identity(const struct snapfs_layer *layer, bool live);
char *tree_snapshot_identity(const struct snapfs_snapshot *snap);
/* What DOMAIN/live reads now: each disk's top image. */
char *tree_live_identity(const struct snapfs_domain *domain);

/* ---- views.c: the views of snapshots, layers and live (src/README.md, "Caches: lifetime and bound") ---- */

struct tree_view;
typedef struct tree_view tree_view;
struct tree_view *tree_view_ref(struct tree_view *tv);
void tree_view_unref(struct tree_view *tv);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(tree_view, tree_view_unref)
/* The view behind a SNAPSHOT, LAYER, LIVE or GUEST node (a reference), or NULL with the reason. */
struct tree_view *tree_view_entry(struct snapfs_tree *tree, const struct snapfs_node *node);
/* The guest reader's view behind a content node (a reference), or NULL with the reason. */
struct guest_view *tree_guest_view(struct snapfs_tree *tree, const struct snapfs_node *node);
struct guest_view *tree_view_guest(const struct tree_view *tv);
const char *tree_view_label(const struct tree_view *tv);
/* Whether @tv still reads what it was made on; if not, it and what was opened on it is stale. */
bool tree_view_current(struct snapfs_tree *tree, struct tree_view *tv);
/* Whether @tv reads any of @files (NULL-terminated). */
bool tree_view_reads(const struct tree_view *tv, const char *const *files);
/* The guest reader's group of a domain: "host/domain". */
char *tree_group(struct snapfs_tree *tree, const struct snapfs_node *node);
void tree_forget_views(struct snapfs_tree *tree);
void tree_view_image_free(gpointer data);
/*
 * Writers (live/ written, restore.c): started (with @agent, a running domain's), found, ended before a snapshot
 * operation.  A running domain's is started by the first read of its live/ already (tree_view_entry()), without
 * its pre-restore snapshot: restore.c takes that before the first change (tree_writer_restorable()).
 */
struct tree_view *tree_writer_start(struct snapfs_tree *tree, const struct snapfs_node *node,
                                    struct snapfs_domain *domain, struct snapfs_agent *agent, bool restorable);
bool tree_writer_restorable(struct tree_view *tv);
void tree_writer_set_restorable(struct tree_view *tv);
/* The guest agent live/ of @node's running domain is read and written through (guest-info within 5 s); NULL with EROFS and why. */
struct snapfs_agent *tree_live_agent(struct snapfs_tree *tree, const struct snapfs_node *node);
struct tree_view *tree_writer_of(struct snapfs_tree *tree, const struct snapfs_node *node);
int tree_writer_end(struct snapfs_tree *tree, const char *group, const char *what);
unsigned tree_writer_open_files(struct snapfs_tree *tree, struct tree_view *tv);
/* Each of @files (NULL-terminated) as it is now: inode and mtime; any change to one changes it. */
char *tree_images_signature(const char *const *files);

/* A file or directory open: it reads through the view it was opened on, or fails. */
struct snapfs_handle {
    struct snapfs_node *node;
    struct tree_view *tv;   /* NULL where no guest content is behind it (a remote host's snapshot) */
    guint64 cookie;         /* handed to tree->stale_fn when the view's images change */
    bool writing;           /* open for writing in live/: @tv is the writer, which it holds (restore.c) */
    guint64 written;        /* bytes written through it, for the log line at its release */
};

/* ---- handles.c: open files and folders, and the changes they hold off ---- */

void tree_release_all(struct snapfs_tree *tree);
int tree_before_change(const char *label, const char *what, const char *const *files, void *opaque);
void tree_changes_done(struct snapfs_tree *tree);

/* restore.c: a handle open for writing in live/ is released (what it wrote is logged; it holds the writer no more). */
void tree_restore_release(struct snapfs_tree *tree, struct snapfs_handle *handle);
/* A new handle of @node on @tv (a reference taken), in the table of open ones. */
struct snapfs_handle *tree_handle_new(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_view *tv,
                                      guint64 cookie);

/* ---- changes.c: what acts on a domain ---- */

/* Take snapshot @name of @node's domain now, as mkdir does (the pre-restore snapshot): 0, or -1 with the reason. */
int tree_snapshot_now(struct snapfs_tree *tree, const struct snapfs_node *node, const char *name);

/* The revert kind's write: a request to revert the domain (tree_write()). */
int tree_revert_write(struct snapfs_tree *tree, const struct snapfs_node *node, const char *buf, size_t size,
                      off_t offset, bool first);

/* ---- guest-files.c ---- */

/* The path inside the view of a content node: "/" at a snapshot's or a layer's root. */
const char *tree_guest_path(const struct snapfs_node *node);
/* The guest file @name in content folder @dir. */
struct snapfs_node *tree_guest_child(const struct snapfs_node *dir, const char *name);
/* Lookup and readdir of every content kind (snapshot, layer, guest file): the guest's files. */
int tree_content_lookup(struct snapfs_tree *tree, const struct snapfs_node *parent, const char *name,
                        struct snapfs_node **child);
int tree_content_readdir(struct snapfs_tree *tree, const struct snapfs_node *node, snapfs_dirent_fn fn,
                         void *opaque);
/* Readdir of a snapshot's, a layer's or live's root: a remote host's is an empty folder (user.snapfs.error says why). */
int tree_content_root_readdir(struct snapfs_tree *tree, const struct snapfs_node *node, snapfs_dirent_fn fn,
                              void *opaque);
/* user.snapfs.error of a snapshot, a layer or live: why its root shows nothing, if it does not. */
void tree_content_put_error(struct snapfs_tree *tree, const struct snapfs_node *node, struct tree_xattrs *list);
