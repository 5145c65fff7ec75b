/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The guest reader's internals shared by its files: pool, appliances and views. */
#pragma once

#include "snapfs/guest.h"

#include <guestfs.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC(guestfs_h, guestfs_close)

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
    char *socket;     /* the NBD server's socket */
};

struct guest_appliance {
    GMutex lock;              /* serialises every call on @g: guestfs handles are not thread-safe */
    int refs;                 /* pool lock */
    char *group;
    char *alone;              /* an appliance of one view's drives alone (a view of a disk with LVM), else NULL */
    unsigned serial;
    bool behind;              /* set at creation: started in the background with the domain's views (see guest-appliance.c) */
    unsigned cap;             /* set at creation: the disks other views' drives may fill, beyond the asking view's own */
    GPtrArray *disks;         /* struct guest_disk *; pool lock until launching is set */
    bool launching;           /* pool lock: the disk list is fixed */
    gint64 launch_started;    /* pool lock: when the launch under way began (monotonic), 0 otherwise */
    bool launched;            /* app lock */
    gint dead;                /* atomic: closed, killed or failed; views move to a new appliance */
    gint retire;              /* atomic: take no new views, close when not in a call */
    gint stop;                /* atomic, a background appliance's: kill its launch (its images change, or snapfs stops) */
    guestfs_h *g;
    pid_t qemu_pid;
    char **devices;           /* the appliance's whole-disk devices, one per disk, in the order added */
    char ***disk_fs;          /* per disk, once probed: its filesystems as device, type pairs */
    char **lvs;               /* an alone appliance's logical volumes as device, type pairs, once listed */
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
};

struct guest_pool {
    struct guest_pool_config config;
    GMutex lock;              /* views, appliances, stats */
    GHashTable *views;        /* id -> struct guest_view * (one reference) */
    GPtrArray *appliances;    /* struct guest_appliance * (one reference each) */
    unsigned serial;
    gint force_tcg;           /* atomic: KVM failed once (here, or before in this boot: guest-kvm.c), appliances use TCG */
    gsize kvm_checked;        /* g_once: guest-kvm.c was asked, before the first launch */
    char *hv;                 /* set once kvm_checked, where KVM may be tried: the qemu libguestfs runs, for guest-kvm.c */
    gint inflight;            /* atomic: requests inside an appliance or waiting for one */
    gint aborting;            /* atomic: snapfs is stopping (guest_pool_abort): no launch goes on, none starts */
    gint plain_kernel;        /* atomic: the unpacked kernel cannot be made or failed to boot: libguestfs's as it is */
    unsigned behind_running;  /* pool lock: background launches under way (guest_pool_free() waits for them) */
    char *boot_path;          /* pool lock: the unpacked appliance the last launch booted, for background launches */
    GCond behind_cond;        /* pool lock: signalled when one ends */
    gint plain_qemu;          /* atomic: the same for the script that bounds qemu's translated code under TCG */
    struct guest_pool_stats stats;
    GHashTable *lvm_disks;    /* "group\ntarget" of each disk found to hold LVM: its views go alone from the start */
    GHashTable *looked_at;    /* "group\ntarget" of each disk whose image was looked at for LVM from the host */
    GThread *timer;
    GThread *spawner;         /* forks the NBD servers: their parent-death signal is tied to this thread */
    GAsyncQueue *spawns;
    GMutex timer_lock;
    GCond timer_cond;
    bool stopping;
    /*
     * What every view cached, under one byte bound (see the policy atop the cache code in guest.c).
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
 * guestfs_launch(@g) within @limits (guest-launch.c); @kvm: the launch may run on KVM; @tmpdir: the
 * handle's guestfs_set_tmpdir(), a directory of snapfs's alone; once the atomic @stopping is set the
 * launch is killed.  -1 with the reason when it failed or was killed; @kvm_stalled (may be NULL):
 * killed because KVM printed nothing.
 */
int guest_launch(guestfs_h *g, const char *tmpdir, bool kvm, const struct guest_launch_limits *limits,
                 const gint *stopping, bool *kvm_stalled);

/*
 * guest-kvm.c: whether an earlier snapfs of this boot saw KVM fail with qemu @hv where TCG then worked
 * (the reason, with the file that says so), else NULL; and writing that down after it happened here.
 */
char *guest_kvm_failed_before(const char *hv);
void guest_kvm_remember_failed(const char *hv, const char *why);

/* The appliance @view should use, with a reference; NULL with the reason. Pool lock not held. */
struct guest_appliance *guest_pool_appliance_for(struct guest_pool *pool, struct guest_view *view);
/*
 * @app, just launched, serves a view: if its domain has views no appliance serves, start in the
 * background one appliance with all of them (see the policy atop guest-appliance.c).  App lock held.
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
 * appliance failed.  Only an alone appliance may ask: anywhere else, the layers' copies of each volume group clash. */
char **guest_appliance_logical_volumes(struct guest_appliance *app);
/* Why a filesystem of type @type is not mounted ("swap space", ...), or NULL when it is. */
const char *guest_fs_not_shown(const char *type);
/* "a", "b", ... "z", "aa": the letters Linux gives the n-th disk. */
char *guest_disk_letters(unsigned n);
/* If @device lives on appliance disk @whole ("/dev/sdb" or "/dev/sdb2"), its partition suffix ("", "2"); else NULL. */
const char *guest_device_suffix(const char *device, const char *whole);
/* The index in @app of the disk with @key, or -1. */
int guest_appliance_find_disk(struct guest_appliance *app, const char *key);
char *guest_drive_key(const struct guest_drive *drive, bool live);

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
 * not locked (see appliance_start_servers()), the name escaped for QemuOpts.
 */
char *guest_image_opts(const char *format, const char *file);
/*
 * 1 if the image @file (format @format) holds an LVM physical volume on the whole disk or on a primary or GPT
 * partition, 0 if not (logical partitions are not looked at), -1 with the reason if it cannot be read.
 */
int guest_image_holds_lvm(const char *file, const char *format);

/* View internals the appliance side needs. */
const char *guest_view_group(struct guest_view *view);
size_t guest_view_n_drives(struct guest_view *view);
const struct guest_drive *guest_view_drive(struct guest_view *view, size_t i);
bool guest_view_is_live(struct guest_view *view);
/*
 * Disk @target of domain @group holds LVM physical volumes: from now on every view of it gets an
 * appliance of its drives alone.  Each layer of a disk repeats the same volume group, which LVM
 * activates from one copy only.
 */
void guest_pool_mark_lvm(struct guest_pool *pool, const char *group, const char *target);
/* Set up and empty the pool's caches (guest_pool_new(), guest_pool_free()). */
void guest_cache_init(struct guest_pool *pool);
void guest_cache_clear(struct guest_pool *pool);
/* Forget cached data of the view with id @id. */
void guest_data_forget(struct guest_pool *pool, const char *id);
/* For tests: a new bound of the pool's caches and of file data's share, in bytes, enforced at once. */
void guest_cache_set_cap(struct guest_pool *pool, size_t bytes, size_t data_bytes);
void guest_view_free(struct guest_view *view);

/* For tests: qemu's pid of the appliance that serves @view now, or 0. */
pid_t guest_view_qemu_pid(struct guest_view *view);
