/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The guest reader's internals shared by its files: pool, appliances and views. */
/*
 * Who calls whom: each file calls only files below it in this list, never one above, so no
 * two files call each other (checked by listing each file's non-static functions and grepping
 * the others for them).
 *
 *   write.c            changes to a writable view (live/ of a shut-off domain)
 *   xattrs.c, data.c   a view's xattrs; its file data in chunks
 *   paths.c            resolving a view's paths: attributes, listings, links
 *   view-mount.c       entering a view: its appliance chosen, started, the view mounted in it
 *   pool.c             which appliance serves a view; background starts, eviction, idle timer, watchdog
 *   view.c             a view's life cycle (the pool's view table frees views through it)
 *   agent.c            live/ of a running domain: every call of its view through its guest agent
 *   hotplug.c          a view's images added to its domain's running appliance as disks
 *   appliance.c        one appliance: its disks, handle, launch, calls and errors
 *   cache.c            the node, listing and chunk tables under one byte bound
 *   change.c           what a change to a writable view is called
 *   nbd.c, lvm.c, qmp.c   the NBD servers; a look from the host for LVM on an image; an appliance's qemu monitor
 *   image-opts.c       how qemu opens an image read-only and unlocked
 *   launch.c, boot.c, kvm.c   guestfs_launch() within its deadline; how appliances boot; KVM verdicts
 */
#pragma once

#include "snapfs/guest.h"

#include <guestfs.h>
#include <json-glib/json-glib.h>
#include <string.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC(guestfs_h, guestfs_close)
/* libguestfs's answers, freed by its own functions: named so that g_autoptr() takes them. */
typedef struct guestfs_statns guest_statns;
typedef struct guestfs_statns_list guest_statns_list;
typedef struct guestfs_xattr_list guest_xattr_list;
typedef struct guestfs_dirent_list guest_dirent_list;
G_DEFINE_AUTOPTR_CLEANUP_FUNC(guest_statns, guestfs_free_statns)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(guest_statns_list, guestfs_free_statns_list)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(guest_xattr_list, guestfs_free_xattr_list)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(guest_dirent_list, guestfs_free_dirent_list)

/* The little-endian number of @bytes bytes (at most 8) at @p: fields of images and kernels. */
static inline uint64_t guest_le(const guint8 *p, int bytes)
{
    uint64_t v = 0;

    for (int i = bytes - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

#define guest_load64(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define guest_store64(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

/* Requests inside appliances or waiting for one, at most: snapfs runs 64 FUSE threads, the rest serve the tree. */
#define GUEST_MAX_INFLIGHT 48

/* One image added to an appliance, in the order libguestfs names them /dev/sda, sdb, ... */
struct guest_disk {
    char *key;        /* file, format, internal snapshot and whether shared with a writer */
    char *file;
    char *format;
    char *internal;   /* internal snapshot read through qemu-nbd, or NULL */
    bool force_share; /* a live image (a view of it is cached briefly) */
    bool writable;    /* a writable view's: opened read-write and locked */
    char *socket;     /* the NBD server's socket */
};

/* A disk of an appliance with what serves it: the NBD server, its export, the files it opens. */
struct guest_disk_ext {
    struct guest_disk disk;
    GPid nbd;         /* qemu-nbd, reaped here by its pid (never by a child watch some other thread could race) */
    char *export;     /* the NBD export name on the appliance's qemu-storage-daemon */
    char **chain;     /* every file qemu opens for this disk (the disk and its backing files) */
};

/* A guest filesystem mounted for a view. */
struct guest_mount {
    char *mountpoint;   /* within the view: "/", "/boot", "/sda1" */
    char *device;       /* the appliance's device */
};

/* An entry of the pool's caches: its place in the least-recently-used order and what it costs. */
struct guest_cached {
    GList link;           /* in pool->meta_lru or pool->data_lru; data is the entry */
    enum { CACHED_NODE, CACHED_DIR, CACHED_CHUNK } kind;
    struct guest_pool *pool;
    struct guest_view *view;  /* whose node or listing; NULL for file data */
    const char *key;      /* the entry's key in its table (view->nodes, view->dirs, pool->chunks) */
    size_t bytes;         /* what it holds, as counted in pool->cache_bytes */
    guint64 used;         /* pool->cache_tick at its last use */
};

/* What a view knows of one path. */
struct guest_node {
    struct guest_cached cached;
    struct stat st;
    char *link;           /* symlink target, NULL if not known yet */
    GPtrArray *xattrs;    /* struct guest_xattr *; NULL if not fetched */
    gint64 when;
};

/* One extended attribute of a guest file. */
struct guest_xattr {
    char *name;
    GBytes *value;
};

/*
 * A listed directory.  Its entries are fetched in up to three round trips, each
 * when first needed: names and types (readdir: enough for find), then every
 * entry's attributes and link targets (ls -l, lookups), then every entry's
 * xattrs (what ls -l asks next).
 */
struct guest_dir {
    struct guest_cached cached;
    GPtrArray *names;
    GArray *types;        /* mode_t: the type bits readdir gave, 0 if unknown */
    GArray *inos;         /* ino_t readdir gave */
    GHashTable *index;    /* name -> position + 1 */
    bool stats;           /* a guest_node for each name is in view->nodes: evicting one clears this */
    bool xattrs;          /* and each one's xattrs: the same */
    gint64 when;
};

struct guest_view {
    gint refs;
    struct guest_pool *pool;
    char *id;
    char *label;                   /* for log lines: "snapshot 'S' of domain 'H/D'" */
    char *group;
    bool live;
    bool writable;                 /* see guest_view_spec */
    size_t n_drives;
    struct guest_drive *drives;
    GPtrArray *strings;

    GMutex setup_lock;             /* one thread sets the view up */
    GMutex fetch_lock;             /* one thread fetches file data: the kernel's read-ahead asks for a chunk twice */
    struct guest_appliance *app;   /* setup lock: where the view is mounted */
    char *prefix;                  /* setup lock: where, inside the appliance */
    GPtrArray *mounts;             /* struct guest_mount *, shortest mountpoint first */
    bool os;                       /* inspection found an operating system */
    gint want_stats;               /* atomic: a file was looked up, so listings bring attributes along (ls -l) */
    bool empty;                    /* nothing mounted: the root is an empty folder the appliance is not asked about */
    gint labels;                   /* atomic: 0 not known yet, 1 a filesystem root carries an SELinux label, -1 none does */
    gint64 failed_at;              /* atomic: when the view last failed */
    gint failed_errno;             /* atomic: why, 0 once it works; set also by guest_view_leave() */
    int holds;                     /* setup lock: files open for writing (a writable view's) */

    struct guest_agent_view *agent; /* set at creation: a running domain's live/ through its guest agent (agent.c) */

    GMutex lock;                   /* error and dropped_at */
    char *error;
    GHashTable *nodes;             /* pool->cache_lock: path -> struct guest_node * */
    GHashTable *dirs;              /* pool->cache_lock: path -> struct guest_dir * */
    gint64 dropped_at;             /* a live view: when the appliance's caches were last dropped */
};

/* The most disks an appliance takes with its neighbours' views: beyond, only the disks a view needs. */
#define GUEST_MAX_SHARED_DISKS 48

struct guest_appliance {
    GMutex lock;              /* serialises every call on @g: guestfs handles are not thread-safe */
    int refs;                 /* pool lock */
    char *group;
    /*
     * Set at creation: in an appliance of one view's drives alone (its disks hold LVM, see pool.c), the keys
     * of those drives, which name it for that view; NULL in a domain's shared appliances.
     */
    char *own_view_key;
    unsigned serial;
    bool background;          /* set at creation: started in the background with the domain's views (see pool.c) */
    bool writable;            /* set at creation: a writable view's own appliance (its disks read-write) */
    gint holds;               /* atomic: a writable appliance's files open for writing; the idle timer leaves it */
    unsigned cap;             /* set at creation: the disks other views' drives may fill, beyond the asking view's own */
    GPtrArray *disks;         /* struct guest_disk *; pool lock until launching is set; then added to (hotplug.c)
                                 with the app lock and the pool lock held, so either lock is enough to read it */
    bool launching;           /* pool lock: the disk list is fixed */
    gint64 launch_started;    /* pool lock: when the launch under way began (monotonic), 0 otherwise */
    bool launched;            /* app lock */
    gint dead;                /* atomic: closed, killed or failed; views move to a new appliance */
    gint retire;              /* atomic: take no new views, close when not in a call */
    gint stop;                /* atomic, a background appliance's: kill its launch (its images change, or snapfs stops) */
    guestfs_h *g;
    pid_t qemu_pid;
    char **devices;           /* the appliance's whole-disk devices, one per disk, as their labels say */
    char ***disk_fs;          /* per disk, once probed: its filesystems as device, type pairs */
    char **lvs;               /* an own-view appliance's logical volumes as device, type pairs, once listed */
    char **partitions;        /* guestfs_list_partitions(), once a disk without a filesystem of its own needs it */
    char **roots;             /* guestfs_inspect_os(), done once per appliance, when a view may need it */
    GPtrArray *mount_log;     /* device, type, mountpoint of every view's mount, to mount again after inspection */
    unsigned next_prefix;
    gint64 last_used;         /* atomic, monotonic microseconds */
    gint64 call_deadline;     /* atomic, 0 while no call runs: past it the watchdog kills qemu */
    char *killed;             /* atomic pointer, set once: why the watchdog killed qemu */
    char *tmpdir;             /* NBD sockets */
    char *launch_dir;         /* in @tmpdir: libguestfs's own temporary files (guestfs_set_tmpdir) */
    GPid storage_pid;         /* qemu-storage-daemon serving the disks' images */
    char *qmp;                /* app lock: qemu's monitor socket, NULL where its qemu was not given one */
    gint takes_disks;         /* atomic: up, its monitor answered, no adding failed: views are added to it (hotplug.c) */
    unsigned hot_serial;      /* app lock: disks added while it runs, to name their nodes */
};

struct guest_pool {
    struct guest_pool_config config;
    GMutex lock;              /* views, appliances, stats */
    GHashTable *views;        /* id -> struct guest_view * (one reference) */
    GPtrArray *appliances;    /* struct guest_appliance * (one reference each) */
    unsigned serial;
    gint force_tcg;           /* atomic: KVM failed once (here, or before in this boot: kvm.c), appliances use TCG */
    gsize kvm_checked;        /* g_once: kvm.c was asked, before the first launch */
    char *hv;                 /* set once kvm_checked, where KVM may be tried: the qemu libguestfs runs, for kvm.c */
    gint inflight;            /* atomic: requests inside an appliance or waiting for one */
    gint aborting;            /* atomic: snapfs is stopping (guest_pool_abort): no launch goes on, none starts */
    gint kernel_as_shipped;   /* atomic: boot libguestfs's kernel as shipped (the unpacked one cannot be made or failed) */
    unsigned background_running; /* pool lock: background launches under way (guest_pool_free() waits for them) */
    char *boot_path;          /* pool lock: the unpacked appliance the last launch booted, for background launches */
    GCond background_cond;    /* pool lock: signalled when one ends */
    gint qemu_as_shipped;     /* atomic: run libguestfs's qemu as shipped, not through the script that bounds its translated
                                 code under TCG (the script cannot be made or failed to boot) */
    struct guest_pool_stats stats;
    GHashTable *lvm_disks;    /* pool lock: "group\ntarget" of each disk found to hold LVM: its views go alone from the start */
    GHashTable *lvm_looked_for; /* pool lock: "group\ntarget" of each disk whose image was looked at for LVM from the host */
    GThread *timer;
    GThread *spawner;         /* forks the NBD servers: their parent-death signal is tied to this thread */
    GAsyncQueue *spawns;
    GMutex timer_lock;
    GCond timer_cond;
    bool stopping;            /* timer lock: guest_pool_free() stops the timer */
    /*
     * What every view cached, under one byte bound (see the policy atop cache.c).
     * The cache lock is taken last: nothing else is locked while it is held.
     */
    GMutex cache_lock;
    GQueue meta_lru;          /* cache lock: struct guest_cached * of every view's nodes and listings, oldest first */
    GQueue data_lru;          /* cache lock: the same for file data */
    GHashTable *chunks;       /* cache lock: key -> struct guest_chunk * */
    guint64 cache_tick;       /* cache lock: stamps each use, to tell which list's oldest is older */
    size_t cache_bytes;       /* cache lock: everything held */
    size_t data_bytes;        /* cache lock: of which file data */
    size_t cache_peak;        /* cache lock: the most cache_bytes ever held once an insertion was done */
    size_t cache_cap;         /* cache lock: -o cache_size */
    size_t data_cap;          /* cache lock: the share of it file data may take */
};

/*
 * guestfs_launch(@g) within @limits (launch.c); @kvm: the launch may run on KVM; @tmpdir: the
 * handle's guestfs_set_tmpdir(), a directory of snapfs's alone; once the atomic @stopping is set the
 * launch is killed.  -1 with the reason when it failed or was killed; @kvm_stalled (may be NULL):
 * killed because KVM printed nothing.
 */
int guest_launch(guestfs_h *g, const char *tmpdir, bool kvm, const struct guest_launch_limits *limits,
                 const gint *stopping, bool *kvm_stalled);

/*
 * kvm.c: whether an earlier snapfs of this boot saw KVM fail with qemu @hv where TCG then worked
 * (the reason, with the file that says so), else NULL; and writing that down after it happened here.
 */
char *guest_kvm_failed_before(const char *hv);
void guest_kvm_remember_failed(const char *hv, const char *why);

/* The appliance @view should use, with a reference; NULL with the reason. Pool lock not held. */
struct guest_appliance *guest_pool_appliance_for(struct guest_pool *pool, struct guest_view *view);
/*
 * @app, just launched, serves a view: if its domain has views no appliance serves, start in the
 * background one appliance with all of them (see the policy atop pool.c).  App lock held.
 */
void guest_pool_fill_in(struct guest_pool *pool, struct guest_appliance *app);
/* Start @app if it is not started yet: called with app->lock held. */
int guest_appliance_launch(struct guest_pool *pool, struct guest_appliance *app);
void guest_appliance_unref(struct guest_appliance *app);
/* A call failed: record why with errno, noticing a dead appliance. App lock held. */
void guest_appliance_error(struct guest_appliance *app, const char *what, const char *path);
/*
 * Mark the start and end of a step, for the idle timer and the watchdog: past appliance_timeout,
 * plus a second per thousand @items (the names a listing call carries), qemu is killed and the
 * step fails.  busy() also counts a request's call; expect() only moves the deadline (a listing,
 * mounting a view).
 */
void guest_appliance_busy(struct guest_pool *pool, struct guest_appliance *app);
void guest_appliance_expect(struct guest_pool *pool, struct guest_appliance *app, size_t items);
void guest_appliance_idle(struct guest_appliance *app);
/* The filesystems blkid finds on disk @index of @app (the whole disk, else its partitions) as device, type
 * pairs owned by @app, probed on first use; NULL if the appliance failed. App lock held. */
char **guest_appliance_disk_filesystems(struct guest_appliance *app, size_t index);
/* The logical volumes LVM finds on @app's disks, activated, as device, type pairs owned by @app; NULL if the
 * appliance failed.  Only an own-view appliance (own_view_key) may ask: anywhere else, the layers' copies of each volume group clash. */
char **guest_appliance_logical_volumes(struct guest_appliance *app);
/* Why a filesystem of type @type is not mounted ("swap space", ...), or NULL when it is. */
const char *guest_fs_not_shown(const char *type);
/* "a", "b", ... "z", "aa": the letters Linux gives the n-th disk. */
char *guest_disk_letters(unsigned n);
/* The label (letters only, as libguestfs wants) of disk @n of @kind ("boot": added at launch; "plug": added later). */
char *guest_disk_label(const char *kind, unsigned n);
/* The device of the disk labelled @label in @labels (guestfs_list_disk_labels(): label, device pairs), or NULL. */
const char *guest_labelled_device(char *const *labels, const char *label);

/* src/guest/fstab.c: a guest's /etc/fstab, read by snapfs instead of a full inspection where it can. */
#define GUEST_FSTAB_MAX_ENTRIES 64
#define GUEST_FSTAB_MAX_BYTES (256 << 10)
struct guest_fstab_entry {
    char *spec;         /* UUID=..., LABEL=..., /dev/vda1 ..., octal escapes undone */
    char *mountpoint;   /* absolute and plain */
    char *type;
    char *options;
};
void guest_fstab_entry_free(gpointer entry);
/* Whether the comma-separated @options hold @name, or name=... when @prefix. */
bool guest_fstab_has_option(const char *options, const char *name, bool prefix);
/*
 * The entries of fstab @text (@len bytes) that mount a filesystem of the guest's disks, into @entries
 * (freed by guest_fstab_entry_free); false when a line is one snapfs does not understand well enough
 * to go by (a mountpoint with "..", a btrfs subvolume, two filesystems on one folder...): then full
 * inspection decides.
 */
bool guest_fstab_parse(const char *text, size_t len, GPtrArray *entries);
/* If @device lives on appliance disk @whole ("/dev/sdb" or "/dev/sdb2"), its partition suffix ("", "2"); else NULL. */
const char *guest_device_suffix(const char *device, const char *whole);
/* The index in @app of the disk with @key, or -1. */
int guest_appliance_find_disk(struct guest_appliance *app, const char *key);
char *guest_drive_key(const struct guest_drive *drive, bool live);
/* A new appliance of domain @group, not started, with one reference (the pool's).  Pool lock held. */
struct guest_appliance *guest_appliance_new(struct guest_pool *pool, const char *group);
/* Add @view's drives to @app (not launching yet); @neighbours: a view riding along, whose unreadable images are left out. */
void guest_appliance_add_view(struct guest_appliance *app, struct guest_view *view, bool neighbours);
/* Whether @app has every drive of @view. */
bool guest_appliance_has_view(struct guest_appliance *app, struct guest_view *view);
/* Stop @app's qemu and its NBD servers.  Called with app->lock held (or the app unreachable). */
void guest_appliance_close(struct guest_appliance *app);
/* Kill @app's qemu now, from any thread: the call in flight fails and says @why (taken); @warn logs it. */
void guest_appliance_kill(struct guest_appliance *app, char *why, bool warn);

/* ---- agent.c: each public guest_view_ call of a view with an agent is this file's ---- */
struct guest_agent_view;
void guest_agent_view_free(struct guest_view *view);
int guest_agent_getattr(struct guest_view *view, const char *path, struct stat *st);
int guest_agent_readdir(struct guest_view *view, const char *path, guest_dirent_fn fn, void *opaque);
int guest_agent_readlink(struct guest_view *view, const char *path, char **target);
ssize_t guest_agent_read(struct guest_view *view, const char *path, char *buf, size_t size, off_t offset);
ssize_t guest_agent_getxattr(struct guest_view *view, const char *path, const char *name, char *buf, size_t size);
ssize_t guest_agent_listxattr(struct guest_view *view, const char *path, char *buf, size_t size);
int guest_agent_change(struct guest_view *view, const struct guest_change *change);
ssize_t guest_agent_write(struct guest_view *view, const char *path, const char *buf, size_t size, off_t offset);
int guest_agent_flush(struct guest_view *view);
void guest_agent_hold(struct guest_view *view, int delta);
bool guest_agent_ended(struct guest_view *view);

/* ---- hotplug.c, qmp.c ---- */

/*
 * Add the drives of @view that the running @app lacks to it as disks (app lock held), through its qemu's monitor:
 * each image opened read-only and unlocked as the NBD servers open theirs, under an overlay of its own, then
 * plugged in and waited for in the appliance.  -1 with the reason; where the adding itself failed (not the image's
 * chain), the appliance takes no more disks (takes_disks cleared).
 */
int guest_appliance_hot_add(struct guest_pool *pool, struct guest_appliance *app, struct guest_view *view);
/* How long one monitor command may take. */
#define GUEST_QMP_TIMEOUT_MS 5000
/* Run @command on qemu's monitor at @socket within @timeout_ms; its "return" member into *@ret (may be NULL). */
int guest_qmp(const char *socket, JsonNode *command, unsigned timeout_ms, JsonNode **ret);
/* A new disk of @app for @drive (not added to it), with the files of its chain; NULL with the reason. */
struct guest_disk_ext *guest_disk_new(struct guest_appliance *app, const struct guest_drive *drive, bool live,
                                      GPtrArray **chain);
void guest_disk_free(struct guest_disk_ext *ext);

/* ---- nbd.c ---- */

/* The pool's spawner thread: forks what guest_nbd_start_servers() asks until the pool itself is pushed. */
gpointer guest_nbd_spawner(gpointer data);
/* Serve @app's disks over NBD (sockets in app->tmpdir, made here); -1 with the reason.  App lock held. */
int guest_nbd_start_servers(struct guest_pool *pool, struct guest_appliance *app);
/* Stop a server: SIGTERM, SIGKILL after a second, reaped. */
void guest_nbd_stop(GPid pid);

/*
 * The directory of a ready-made appliance to hand guestfs_set_path(): libguestfs's own, refreshed as libguestfs
 * does, with the kernel unpacked so that qemu boots it without its decompressor (seconds under TCG).  NULL with
 * the reason when that cannot be: then libguestfs's appliance boots as it is.
 */
char *guest_boot_appliance(guestfs_h *g);
/*
 * qemu @qemu, booted from the ready-made appliance @fixed, keeps its kernel and initrd mapped to load them again
 * on a reset, which an appliance never does (-no-reboot): about 70 MiB of its RSS, which this pages out.
 */
void guest_boot_release(pid_t qemu, const char *fixed);
/*
 * A script to hand guestfs_set_hv(): it runs libguestfs's qemu, and under TCG bounds the translated code qemu keeps
 * (libguestfs has no way to pass -accel tcg,tb-size=; qemu's default grows to a quarter of the host's RAM, up to
 * 1 GiB, and an appliance's boot alone fills 250 MiB of it).  NULL with the reason: then libguestfs runs qemu itself.
 */
char *guest_boot_qemu(guestfs_h *g);
/* The ELF kernel in the bzImage @image, if xz-compressed and bootable through its PVH entry; NULL with the reason. */
GBytes *guest_boot_unpack(const guint8 *image, size_t len);

/*
 * The --image-opts of @file in @format for qemu-nbd and qemu-io: read-only, shared with a running domain and
 * not locked (see guest_nbd_start_servers()), the name escaped for QemuOpts.
 */
char *guest_image_opts(const char *format, const char *file);
/* @value with its commas doubled, as QemuOpts wants inside a value. */
char *guest_qemu_opts_escape(const char *value);
/*
 * 1 if the image @file (format @format) holds an LVM physical volume on the whole disk or on a primary or GPT
 * partition, 0 if not (logical partitions are not looked at), -1 with the reason if it cannot be read.
 */
int guest_image_holds_lvm(const char *file, const char *format);

/*
 * Disk @target of domain @group holds LVM physical volumes: from now on every view of it gets an
 * appliance of its drives alone.  Each layer of a disk repeats the same volume group, which LVM
 * activates from one copy only.
 */
void guest_pool_mark_lvm(struct guest_pool *pool, const char *group, const char *target);

/* ---- cache.c ---- */

/* Set up and empty the pool's caches (guest_pool_new(), guest_pool_free()). */
void guest_cache_init(struct guest_pool *pool);
void guest_cache_clear(struct guest_pool *pool);
/* Forget cached data of the view with id @id. */
void guest_data_forget(struct guest_pool *pool, const char *id);
/* For tests: a new bound of the pool's caches and of file data's share, in bytes, enforced at once. */
void guest_cache_set_cap(struct guest_pool *pool, size_t bytes, size_t data_bytes);
/* A new view's node and listing tables, and dropping them with everything they count (cache lock taken). */
void guest_cache_view_init(struct guest_view *view);
void guest_cache_view_clear(struct guest_view *view);
/* Drop everything @view cached (nodes, listings, file data): a writable view's, after a change. */
void guest_cache_view_forget(struct guest_view *view);
/* The xattrs of a guestfs_lgetxattrs() answer; lxattrlist's answer split per name (@n_names arrays). */
GPtrArray *guest_xattrs_from_list(const struct guestfs_xattr_list *xl);
GPtrArray **guest_xattrs_split(const struct guestfs_xattr_list *list, size_t n_names);
/* An empty listing, and one more entry of it. */
struct guest_dir *guest_dir_new(void);
void guest_dir_add(struct guest_dir *dir, const char *name, mode_t type, ino_t ino);
/*
 * A copy of @dir's names (and, where asked, its types and inode numbers as GArrays, and its flags),
 * made under the cache lock: the listing may be evicted once it is let go.
 */
GStrv guest_dir_copy(struct guest_dir *dir, bool *stats, bool *xattrs, GArray **types, GArray **inos);
/* Keep what is known of @path, taking @link and @xattrs (cache lock held); it may be evicted at once. */
void guest_cache_put_node(struct guest_view *view, const char *path, const struct stat *st, char *link,
                          GPtrArray *xattrs);
/* Keep the listing @dir of @path (cache lock held); it may be evicted at once. */
void guest_cache_put_dir(struct guest_view *view, const char *path, struct guest_dir *dir);
/* @node's xattrs came: keep them, if it has none yet (cache lock held). */
void guest_cache_set_xattrs(struct guest_node *node, GPtrArray *xattrs);
/* The fresh listing of @path, or NULL (cache lock held). */
struct guest_dir *guest_cache_get_dir(struct guest_view *view, const char *path);
/* Whether @path's fresh listing already holds what is asked (stats, or xattrs too). Takes the cache lock. */
bool guest_cache_dir_has(struct guest_view *view, const char *path, bool xattrs);
/* Mark the listing of @path as holding stats or xattrs too, before the nodes are put (cache lock held). */
void guest_cache_mark_dir(struct guest_view *view, const char *path, bool stats, bool xattrs);
/* Copy what the view knows of @path (st, link, xattrs as asked): 1 known, 0 not, -1 ENOENT.  Takes the cache lock. */
int guest_cache_lookup(struct guest_view *view, const char *path, struct stat *st, char **link, GPtrArray **xattrs);
/* File data under @key, fresh for @view, with a reference, or NULL; keeping it. Each takes the cache lock. */
GBytes *guest_cache_get_data(struct guest_view *view, const char *key);
void guest_cache_put_data(struct guest_view *view, const char *key, GBytes *data);

/* Whether what the view learnt at @when may still be used: always for a frozen view, live_ttl_ms for a live one. */
static inline bool guest_view_fresh(struct guest_view *view, gint64 when)
{
    return !view->live || g_get_monotonic_time() - when < (gint64)view->pool->config.live_ttl_ms * 1000;
}

/* The view path of @name in directory @dir. */
static inline char *guest_child_path(const char *dir, const char *name)
{
    return strcmp(dir, "/") == 0 ? g_strconcat("/", name, NULL) : g_strconcat(dir, "/", name, NULL);
}

/* ---- view.c ---- */

void guest_view_free(struct guest_view *view);
/* Record @message (may be NULL) as why the view cannot be read; guest_view_error() gives it back. */
void guest_view_set_error(struct guest_view *view, const char *message);
/* For tests: qemu's pid of the appliance that serves @view now, or 0. */
pid_t guest_view_qemu_pid(struct guest_view *view);

/* ---- view-mount.c ---- */

/*
 * The appliance serving @view, locked, with a reference for the caller, the request counted in flight;
 * started and the view mounted in it if needed.  NULL with the reason.  guest_view_leave() gives it back.
 */
struct guest_appliance *guest_view_enter(struct guest_view *view);
void guest_view_leave(struct guest_view *view, struct guest_appliance *app);
/* The appliance's path of view path @path (setup lock or an entered view). */
char *guest_view_path(struct guest_view *view, const char *path);
/* The index of the guest filesystem holding @path: st_dev that does not change when an appliance does. */
dev_t guest_view_dev(struct guest_view *view, const char *path);
/*
 * The same inside guest_view_enter() and guest_view_leave(), where the setup lock must not be taken (it comes
 * before the app lock): the view's mounts change only under the lock of the appliance they are in, held there.
 */
dev_t guest_view_dev_entered(struct guest_view *view, const char *path);

/* ---- paths.c ---- */

/* Make sure the view knows @path: from the cache, or by listing its parent.  -1 with the reason. */
int guest_view_resolve(struct guest_view *view, const char *path, struct stat *st, char **link, GPtrArray **xattrs);
/* Every entry of @path's attributes and link targets, in one or two round trips. */
int guest_view_stat_dir(struct guest_view *view, const char *path);
/* The names of @path's listing, listing it first if needed, as guest_dir_copy() gives them; NULL with the reason. */
GStrv guest_view_dir_names(struct guest_view *view, const char *path, bool *stats, bool *xattrs, GArray **types,
                           GArray **inos);
