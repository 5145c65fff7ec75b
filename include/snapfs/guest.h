/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The guest reader: a snapshot's or a layer's guest files, read through pooled libguestfs appliances. */
#pragma once

#include <glib.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/types.h>

/* One disk of a view: opened read-only, unless the view is writable. */
struct guest_drive {
    const char *file;              /* image path (the top of the chain to read) */
    const char *format;            /* "qcow2", "raw", ...; never probed */
    const char *internal_snapshot; /* qcow2 internal snapshot to read, or NULL */
    const char *target;            /* disk target in the domain ("vda"), for names and messages */
};

/* What one snapshot or layer directory shows. */
struct guest_view_spec {
    const char *group;   /* views of one group (a domain) share appliances where possible */
    const char *id;      /* unique and stable id of this view, e.g. "host/web01/snap/before" */
    const char *label;   /* what log lines call it: "snapshot 'before' of domain 'host/web01'" */
    bool live;           /* content changes under us (a running domain's top layer): cache briefly */
    /*
     * live/ of a shut-off domain being written (src/tree/restore.c): an appliance of its own that opens the
     * images read-write and locked, mounts the filesystems read-write, ends once it is idle and nothing holds it,
     * and is never started again (a new writable view is made then).  Implies live.
     */
    bool writable;
    size_t n_drives;
    const struct guest_drive *drives;
};

/* The deadlines of an appliance: past them it is killed and the request answers EIO. */
struct guest_launch_limits {
    unsigned timeout_seconds;  /* -o appliance_timeout: a launch (default 120) */
    unsigned call_seconds;     /* -o call_timeout: one step of a request (default: timeout_seconds) */
    unsigned kvm_seconds;      /* -o kvm_timeout: a KVM launch silent this long is stalled: TCG from then on (20) */
};

struct guest_pool_config {
    unsigned max_appliances;   /* -o max_appliances: a hard limit */
    unsigned idle_seconds;     /* -o appliance_idle */
    unsigned live_ttl_ms;      /* how long a live view's answers may be reused */
    struct guest_launch_limits limits;
    size_t cache_bytes;        /* -o cache_size: every view's cached metadata and file data together; 0: the default */
};

#define GUEST_DEFAULT_TIMEOUT_S 120
#define GUEST_DEFAULT_KVM_TIMEOUT_S 20

/*
 * Start one appliance with a scratch disk, as --check does: 0 and how long it took, or -1 with the
 * reason; @kvm_stalled says the launch was killed because KVM ran no guest.  Bounded by @limits.
 */
int guest_try_launch(bool force_tcg, const struct guest_launch_limits *limits, double *seconds, bool *kvm_stalled);

/*
 * The default bound of the caches: about 600,000 files' attributes and names, or several walks of a
 * large guest's snapshots, and about 1% of a 24 GiB host, less than one appliance takes.
 */
#define GUEST_CACHE_DEFAULT_MIB 256

struct guest_pool;
struct guest_view;

struct guest_pool *guest_pool_new(const struct guest_pool_config *config);
void guest_pool_free(struct guest_pool *pool);
/*
 * snapfs is stopping: kill every appliance's qemu now, launching or in a call, so that the
 * requests waiting on them answer EIO at once; no appliance starts from now on.  Safe from any thread.
 */
void guest_pool_abort(struct guest_pool *pool);

/*
 * The view for @spec, created on first use (no appliance is started here).
 * The same id returns the same view.  The caller owns one reference.
 * A group's first read starts an appliance with the view read and a few
 * others, and then one in the background with every view the pool knows of
 * the group, so calling this for all of a domain's snapshots before their
 * content is read lets that one serve them all.
 */
struct guest_view *guest_pool_view(struct guest_pool *pool, const struct guest_view_spec *spec);
struct guest_view *guest_view_ref(struct guest_view *view);
void guest_view_unref(struct guest_view *view);

/*
 * True once any view of @group exists.  The tree uses it to register, on the
 * first view of a domain, the views of all its snapshots and layers (with
 * guest_pool_view() and guest_view_unref(), which start nothing): an
 * appliance cannot take disks after it started, so only the views known
 * when the group's background appliance starts share it.
 */
bool guest_pool_has_group(struct guest_pool *pool, const char *group);

/*
 * Paths are absolute within the view ("/" is its root).  Each returns -1
 * after error_set() on failure (ENOENT, EIO, ...).
 * st_dev is the index of the guest filesystem within the view (stable),
 * st_ino the guest's inode number: together unique within a view.
 */
int guest_view_getattr(struct guest_view *view, const char *path, struct stat *st);

/*
 * Calls @fn for every entry of directory @path (not "." or ".."); stops early if @fn returns non-zero.
 * An entry whose attributes were not fetched yet (a plain listing costs one round trip, attributes
 * another) comes with only the type bits of st_mode, st_ino and st_dev set, and st_nlink 0.
 */
typedef int (*guest_dirent_fn)(void *opaque, const char *name, const struct stat *st);
int guest_view_readdir(struct guest_view *view, const char *path, guest_dirent_fn fn, void *opaque);

int guest_view_readlink(struct guest_view *view, const char *path, char **target);
ssize_t guest_view_read(struct guest_view *view, const char *path, char *buf, size_t size, off_t offset);
/* Like getxattr(2)/listxattr(2): size 0 asks for the length. */
ssize_t guest_view_getxattr(struct guest_view *view, const char *path, const char *name, char *buf, size_t size);
ssize_t guest_view_listxattr(struct guest_view *view, const char *path, char *buf, size_t size);

/*
 * A change to a writable view (write.c): the guest's own calls, made in its appliance, path within the view.
 * The view's caches are dropped after each one.
 */
enum guest_change_op {
    GUEST_CREATE,     /* an empty regular file of @mode (type bits ignored) */
    GUEST_MKDIR,      /* @mode */
    GUEST_MKNOD,      /* a FIFO, socket or device of @mode, @rdev */
    GUEST_UNLINK,
    GUEST_RMDIR,
    GUEST_RENAME,     /* @path to @other */
    GUEST_SYMLINK,    /* @path, pointing to @other (stored as given, never resolved) */
    GUEST_LINK,       /* @path, a hard link to the existing @other */
    GUEST_CHMOD,      /* @mode's permission bits */
    GUEST_CHOWN,      /* @uid and @gid, -1 to keep one; a symlink itself, never its target */
    GUEST_TRUNCATE,   /* to @size */
    GUEST_UTIMENS,    /* @times as utimensat(2) takes them (UTIME_NOW, UTIME_OMIT), a symlink itself */
    GUEST_SETXATTR,   /* @name to @value of @size bytes, a symlink itself */
    GUEST_REMOVEXATTR,
};

struct guest_change {
    enum guest_change_op op;
    const char *path;
    const char *other;
    mode_t mode;
    dev_t rdev;
    uid_t uid;
    gid_t gid;
    off_t size;
    struct timespec times[2];
    const char *name;
    const void *value;
};

/* What @change is, for log lines and errors: "create a file", "rename". */
const char *guest_change_name(enum guest_change_op op);
/* Carry @change out in @view (writable): 0, or -1 with the guest's errno and the reason. */
int guest_view_change(struct guest_view *view, const struct guest_change *change);
/* Write @size bytes of @buf at @offset of file @path: the bytes written, or -1 with the reason. */
ssize_t guest_view_write(struct guest_view *view, const char *path, const char *buf, size_t size, off_t offset);
/* Everything written so far is on the host's disk (the guest's sync, flushed through qemu): 0, or -1 with the reason. */
int guest_view_flush(struct guest_view *view);
/* Files open for writing in @view (+1 when one opens, -1 when it closes): its appliance stays while any is. */
void guest_view_hold(struct guest_view *view, int delta);
/*
 * Whether the appliance of a writable view ended (idle, killed, closed): the view takes no more calls, and
 * whatever was written through it is on disk.  False for a view that never started one.
 */
bool guest_view_ended(struct guest_view *view);
/*
 * live/ of a running domain while it is written (src/tree/restore.c): a view whose reads and changes are
 * the guest's own, through @agent (taken; snapfs/agent.h), never through an appliance.  It ends as a
 * writable view does, GUEST_WRITER_IDLE_S after its last call once no file holds it.
 */
struct snapfs_agent;
struct guest_view *guest_agent_view_new(struct snapfs_agent *agent, const char *group, const char *label);

/* A writable appliance lets go of its images this long after its last call, once no file holds it. */
#define GUEST_WRITER_IDLE_S 5

/*
 * Why the view's root shows nothing (no filesystem found, image unreadable),
 * or NULL.  Never starts an appliance: NULL until the view's content was
 * first read.  Caller frees.
 */
char *guest_view_error(struct guest_view *view);

/*
 * A chain changed: drop every view and appliance that reads @file (content
 * caches of unchanged files may stay).  Appliances are closed before this
 * returns (waiting for a call in flight).
 */
void guest_pool_forget_file(struct guest_pool *pool, const char *file);

/*
 * Close every appliance of @group now; views and caches stay, and the next
 * read starts an appliance again.  Call it BEFORE rmdir/revert of that domain:
 * an appliance's qemu holds read locks on the backing images it reads, and a
 * commit (block-commit, qemu-img commit) into them fails with "Failed to get
 * write lock" while it runs.
 */
void guest_pool_release_group(struct guest_pool *pool, const char *group);

/* What @group's appliances are doing that takes long ("starting ... 12 s so far"), or NULL. Caller frees. */
char *guest_pool_progress(struct guest_pool *pool, const char *group);

/* Counters for tests, benchmarks and --check. */
struct guest_pool_stats {
    unsigned launches;        /* appliances started since the pool was made */
    unsigned disks_added;     /* disks added to running appliances (a view asked for after its domain's appliance was up) */
    unsigned running;         /* appliances running now */
    unsigned calls;           /* calls made into appliances */
    unsigned inspections;     /* full inspections (guestfs_inspect_os), where a root's fstab did not tell */
    size_t data_cached;       /* bytes of file data held */
    size_t cached;            /* bytes held by every cache, file data included */
    size_t cache_peak;        /* the most they ever held */
    size_t cache_cap;         /* their bound */
};
void guest_pool_get_stats(struct guest_pool *pool, struct guest_pool_stats *stats);
