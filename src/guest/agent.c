/* SPDX-License-Identifier: GPL-2.0-or-later */
/* live/ of a running domain while it is written: a view whose reads and changes are the guest's own, through its agent. */
#include "guest-priv.h"

#include "snapfs/agent.h"
#include "snapfs/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>

/*
 * Policy.  A running guest's filesystems change under any reader of its disks, and what it has
 * not written back yet is in its own page cache: a file written through the agent would not be
 * on the disks a read-only appliance reads.  So while live/ of a running domain is written (from
 * the first change until GUEST_WRITER_IDLE_S after the last, once no file is open), everything in
 * live/ is asked of the guest itself, through its agent: nothing of it is cached here, the
 * kernel keeps it as briefly as any live answer.  Afterwards live/ reads the disks again, from
 * the writes' own fsync on (flush).
 *
 * The guest does the work as root, with its own programs: find(1) for attributes and listings
 * (GNU find's -printf), the coreutils for changes, each given its paths as arguments, never in a
 * shell's text.  Only what lies on a filesystem of the guest's disks is read or changed: /proc,
 * /sys, /dev, /run and other memory filesystems show as empty folders and refuse (EACCES), as
 * their mountpoints on the disks would (nothing below them is found: ENOENT).  Xattrs are the guest's getfattr(1) and setfattr(1)
 * (the attr package): the agent has no call for them.  A guest without them shows no POSIX ACL
 * (ENODATA: the kernel, which checks permissions with them, then goes by the mode alone, as the
 * guest would without ACLs) and answers ENOTSUP for every other xattr.
 */

struct guest_agent_view {
    struct snapfs_agent *agent;
    GMutex io_lock;        /* reads, writes, flushes and changes one at a time: the kernel sends a file's chunks from
                              several threads, and a handle's seek and read must stay together (before lock) */
    GMutex lock;           /* the fields below */
    GHashTable *devs;      /* guest st_dev -> index + 1, small and stable for the view's life */
    GHashTable *open;      /* path -> agent handle (gint64 *) of files written since their last flush */
    GHashTable *reading;   /* path -> struct agent_reading: a file read lately, kept open for its next chunk */
    int holds;             /* files open for writing */
    gint64 last_call;      /* monotonic: when a call last ended */
    bool ended;            /* idle or the domain stopped: no more calls */
};

/* Filesystems of disks: anything else (proc, sysfs, tmpfs, nfs ...) is not what live/ shows. */
static const char *const agent_disk_fs[] = {
    "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "msdos", "exfat", "f2fs", "jfs", "reiserfs",
    "ntfs", "ntfs3", "hfsplus", "ufs", "minix", NULL,
};

/* The find(1) record of one file: type, mode, owners, size, links, inode, device, blocks, times, fs type; name, link. */
#define AGENT_FIND_FORMAT "%y %m %U %G %s %n %i %D %b %A@ %T@ %C@ %F\\0%f\\0%l\\0"
#define AGENT_FIND_FIELDS 13

/* Exit status of the check that refuses a path off the guest's disks (agent_change's script). */
#define AGENT_NOT_ON_DISK 125

static bool agent_fs_on_disk(const char *type)
{
    for (size_t i = 0; agent_disk_fs[i]; i++) {
        if (strcmp(type, agent_disk_fs[i]) == 0)
            return true;
    }
    return false;
}

static void agent_handle_free(gpointer data)
{
    g_free(data);
}

/* A file kept open for reading: the kernel reads a file in chunks, each would cost a lookup, an open and a close. */
struct agent_reading {
    gint64 handle;
    gint64 opened;   /* monotonic */
};

/* How long a file opened for reading serves further chunks: a file the guest replaces since is read anew. */
#define AGENT_READING_US (1 * G_USEC_PER_SEC)

struct guest_view *guest_agent_view_new(struct snapfs_agent *agent, const char *group, const char *label)
{
    struct guest_view *view = g_new0(struct guest_view, 1);
    struct guest_agent_view *av = g_new0(struct guest_agent_view, 1);

    view->refs = 1;
    view->id = g_strdup_printf("%s/live/agent", group);
    view->label = g_strdup(label);
    view->group = g_strdup(group);
    view->live = true;
    view->writable = true;
    g_mutex_init(&view->setup_lock);
    g_mutex_init(&view->fetch_lock);
    g_mutex_init(&view->lock);
    av->agent = agent;
    g_mutex_init(&av->lock);
    g_mutex_init(&av->io_lock);
    av->devs = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
    av->open = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, agent_handle_free);
    av->reading = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    av->last_call = g_get_monotonic_time();
    view->agent = av;
    return view;
}

void guest_agent_view_free(struct guest_view *view)
{
    struct guest_agent_view *av = view->agent;

    /*
     * No call to the agent here (the tree may hold its lock): what is still open was closed by the flushes and
     * agent_close_reading() (an ended view has no handle of its own open), or failed to close then.
     */
    g_hash_table_unref(av->open);
    g_hash_table_unref(av->reading);
    g_hash_table_unref(av->devs);
    agent_free(av->agent);
    g_mutex_clear(&av->lock);
    g_mutex_clear(&av->io_lock);
    g_free(av);
    g_free(view->id);
    g_free(view->label);
    g_free(view->group);
    g_free(view->error);
    g_mutex_clear(&view->setup_lock);
    g_mutex_clear(&view->fetch_lock);
    g_mutex_clear(&view->lock);
    g_free(view);
}

/* The view takes calls (not ended): 0, or -1 with EIO; every call brackets itself with this and agent_done(). */
static int agent_enter(struct guest_view *view)
{
    struct guest_agent_view *av = view->agent;
    bool ended;

    g_mutex_lock(&av->lock);
    ended = av->ended;
    g_mutex_unlock(&av->lock);
    if (ended) {
        error_set(EIO, "%s: writing through the guest agent ended (idle, or the domain stopped)", view->label);
        return -1;
    }
    return 0;
}

static void agent_done(struct guest_view *view)
{
    g_mutex_lock(&view->agent->lock);
    view->agent->last_call = g_get_monotonic_time();
    g_mutex_unlock(&view->agent->lock);
}

/* @argv run in the guest; its output (caller frees) or NULL with the guest's errno and words (or why it did not run). */
static GBytes *agent_output(struct guest_view *view, const char *const *argv, const char *what, const char *path)
{
    struct agent_exec exec;
    GBytes *out;

    if (agent_run(view->agent->agent, argv, NULL, &exec) < 0)
        return NULL;
    if (exec.status != 0) {
        g_autofree char *words = g_strstrip(g_strdup(exec.err ? exec.err : ""));

        if (exec.status == AGENT_NOT_ON_DISK)
            error_set(EACCES, "cannot %s '%s' in %s: it is not on a filesystem of the guest's disks", what, path,
                      view->label);
        else
            error_set(agent_errno_of(words), "cannot %s '%s' in %s: %s", what, path, view->label,
                      *words ? words : "the guest's program failed");
        agent_exec_clear(&exec);
        return NULL;
    }
    out = g_steal_pointer(&exec.out);
    agent_exec_clear(&exec);
    return out;
}

/* find(1)'s seconds with a fraction ("1700000000.1234567890") as a timespec. */
static struct timespec agent_time(const char *text)
{
    struct timespec t = { .tv_sec = strtoll(text, NULL, 10) };
    const char *dot = strchr(text, '.');

    if (dot) {
        long ns = 0;
        int digits = 0;

        for (const char *p = dot + 1; *p >= '0' && *p <= '9' && digits < 9; p++, digits++)
            ns = ns * 10 + (*p - '0');
        for (; digits < 9; digits++)
            ns *= 10;
        t.tv_nsec = ns;
    }
    return t;
}

static mode_t agent_type(char y)
{
    switch (y) {
    case 'f': return S_IFREG;
    case 'd': return S_IFDIR;
    case 'l': return S_IFLNK;
    case 'b': return S_IFBLK;
    case 'c': return S_IFCHR;
    case 'p': return S_IFIFO;
    case 's': return S_IFSOCK;
    default: return 0;
    }
}

/* One record of AGENT_FIND_FORMAT. */
struct agent_entry {
    struct stat st;
    bool on_disk;
    const char *name;   /* into the output */
    const char *link;
};

/* The guest's device number as a small index of this view (st_dev of guest_view_getattr()). */
static dev_t agent_dev_index(struct guest_agent_view *av, gint64 dev)
{
    gpointer found;
    dev_t index;

    g_mutex_lock(&av->lock);
    found = g_hash_table_lookup(av->devs, &dev);
    if (!found) {
        gint64 *key = g_new(gint64, 1);

        *key = dev;
        found = GUINT_TO_POINTER(g_hash_table_size(av->devs) + 1);
        g_hash_table_insert(av->devs, key, found);
    }
    index = GPOINTER_TO_UINT(found) - 1;
    g_mutex_unlock(&av->lock);
    return index;
}

/* The record at *@at of @out (@end its end), moved past it: 0, or -1 if it is not one. */
static int agent_parse(struct guest_agent_view *av, const char **at, const char *end, struct agent_entry *e)
{
    const char *fields = *at, *name, *link;
    g_auto(GStrv) f = NULL;
    g_autofree char *head = NULL;

    name = memchr(fields, '\0', (size_t)(end - fields));
    if (!name)
        return -1;
    name++;
    link = memchr(name, '\0', (size_t)(end - name));
    if (!link || !memchr(link + 1, '\0', (size_t)(end - link - 1)))
        return -1;
    link++;
    head = g_strdup(fields);
    f = g_strsplit(head, " ", AGENT_FIND_FIELDS);
    if (g_strv_length(f) != AGENT_FIND_FIELDS || strlen(f[0]) != 1 || !agent_type(f[0][0]))
        return -1;
    memset(e, 0, sizeof(*e));
    e->st.st_mode = agent_type(f[0][0]) | (mode_t)(strtoul(f[1], NULL, 8) & 07777);
    e->st.st_uid = (uid_t)strtoul(f[2], NULL, 10);
    e->st.st_gid = (gid_t)strtoul(f[3], NULL, 10);
    e->st.st_size = strtoll(f[4], NULL, 10);
    e->st.st_nlink = (nlink_t)strtoul(f[5], NULL, 10);
    e->st.st_ino = (ino_t)strtoull(f[6], NULL, 10);
    e->st.st_dev = agent_dev_index(av, strtoll(f[7], NULL, 10));
    e->st.st_blocks = strtoll(f[8], NULL, 10);
    e->st.st_blksize = 4096;
    e->st.st_atim = agent_time(f[9]);
    e->st.st_mtim = agent_time(f[10]);
    e->st.st_ctim = agent_time(f[11]);
    e->on_disk = agent_fs_on_disk(f[12]);
    e->name = name;
    e->link = link;
    *at = link + strlen(link) + 1;
    return 0;
}

/*
 * What was written through the agent's handles is in its stdio buffers until a flush: before the guest is
 * asked for attributes or data, they go to its files (fflush, no sync), so it answers what was written.
 */
static int agent_flush_open(struct guest_view *view)
{
    struct guest_agent_view *av = view->agent;
    GHashTableIter iter;
    gpointer value;
    int r = 0;

    g_mutex_lock(&av->lock);
    g_hash_table_iter_init(&iter, av->open);
    while (g_hash_table_iter_next(&iter, NULL, &value)) {
        if (agent_file_flush(av->agent, *(gint64 *)value) < 0)
            r = -1;
    }
    g_mutex_unlock(&av->lock);
    return r;
}

/* A device's numbers (find has none): stat(1)'s, in hex. */
static int agent_rdev(struct guest_view *view, const char *path, struct stat *st)
{
    const char *argv[] = { "stat", "-c", "%t %T", "--", path, NULL };
    g_autoptr(GBytes) out = agent_output(view, argv, "read the attributes of", path);
    g_autofree char *text = NULL;
    unsigned maj, min;

    if (!out)
        return -1;
    text = g_strndup(g_bytes_get_data(out, NULL), g_bytes_get_size(out));
    if (sscanf(text, "%x %x", &maj, &min) != 2) {
        error_set(EIO, "%s: no device numbers for '%s'", view->label, path);
        return -1;
    }
    st->st_rdev = makedev(maj, min);
    return 0;
}

/* @path's own record (lstat), with @out holding the names it points into. */
static int agent_lstat(struct guest_view *view, const char *path, GBytes **out, struct agent_entry *e)
{
    g_autofree char *parent = g_path_get_dirname(path);
    /* The folder's record too (second): below a mountpoint of no disk, nothing is shown. */
    const char *argv[] = { "find", path, parent, "-maxdepth", "0", "-printf", AGENT_FIND_FORMAT, NULL };
    struct agent_entry up;
    const char *at, *end;
    gsize size;

    if (agent_flush_open(view) < 0)
        return -1;
    *out = agent_output(view, argv, "read the attributes of", path);
    if (!*out)
        return -1;
    at = g_bytes_get_data(*out, &size);
    end = at + size;
    if (!at || agent_parse(view->agent, &at, end, e) < 0 || agent_parse(view->agent, &at, end, &up) < 0) {
        error_set(EIO, "%s: the guest gave no attributes for '%s'", view->label, path);
        return -1;
    }
    if (!e->on_disk && !up.on_disk && strcmp(path, "/") != 0) {
        error_set(ENOENT, "'%s' in %s is not on a filesystem of the guest's disks", path, view->label);
        return -1;
    }
    if ((S_ISBLK(e->st.st_mode) || S_ISCHR(e->st.st_mode)) && agent_rdev(view, path, &e->st) < 0)
        return -1;
    return 0;
}

/* agent_lstat() as a call of its own: the view entered, and its last call noted. */
static int agent_lstat_call(struct guest_view *view, const char *path, GBytes **out, struct agent_entry *e)
{
    int r;

    if (agent_enter(view) < 0)
        return -1;
    r = agent_lstat(view, path, out, e);
    agent_done(view);
    return r;
}

int guest_agent_getattr(struct guest_view *view, const char *path, struct stat *st)
{
    g_autoptr(GBytes) out = NULL;
    struct agent_entry e;

    if (agent_lstat_call(view, path, &out, &e) < 0)
        return -1;
    *st = e.st;
    return 0;
}

int guest_agent_readdir(struct guest_view *view, const char *path, guest_dirent_fn fn, void *opaque)
{
    const char *argv[] = { "find", path, "-maxdepth", "1", "-printf", AGENT_FIND_FORMAT, NULL };
    g_autoptr(GBytes) out = NULL;
    const char *at, *end;
    struct agent_entry self;
    gsize size;

    if (agent_enter(view) < 0)
        return -1;
    if (agent_flush_open(view) == 0)
        out = agent_output(view, argv, "list", path);
    agent_done(view);
    if (!out)
        return -1;
    at = g_bytes_get_data(out, &size);
    end = at + size;
    /* find names the folder itself first. */
    if (!at || agent_parse(view->agent, &at, end, &self) < 0 || !S_ISDIR(self.st.st_mode)) {
        error_set(at ? ENOTDIR : EIO, "'%s' is not a directory in %s", path, view->label);
        return -1;
    }
    if (!self.on_disk)
        return 0;
    while (at < end) {
        struct agent_entry e;

        if (agent_parse(view->agent, &at, end, &e) < 0) {
            error_set(EIO, "%s: the guest's listing of '%s' is cut short", view->label, path);
            return -1;
        }
        /* A device's numbers need one more question: left to its lookup. */
        if (S_ISBLK(e.st.st_mode) || S_ISCHR(e.st.st_mode))
            e.st.st_nlink = 0;
        if (fn(opaque, e.name, &e.st) != 0)
            break;
    }
    return 0;
}

int guest_agent_readlink(struct guest_view *view, const char *path, char **target)
{
    g_autoptr(GBytes) out = NULL;
    struct agent_entry e;

    if (agent_lstat_call(view, path, &out, &e) < 0)
        return -1;
    if (!S_ISLNK(e.st.st_mode)) {
        error_set(EINVAL, "'%s' is not a symlink in %s", path, view->label);
        return -1;
    }
    *target = g_strdup(e.link);
    return 0;
}

/* @path is a regular file on the guest's disks, which the agent may open without waiting on a writer (a FIFO). */
static int agent_regular(struct guest_view *view, const char *path, const char *what)
{
    g_autoptr(GBytes) out = NULL;
    struct agent_entry e;

    if (agent_lstat(view, path, &out, &e) < 0)
        return -1;
    if (!e.on_disk) {
        error_set(EACCES, "cannot %s '%s' in %s: it is not on a filesystem of the guest's disks", what, path,
                  view->label);
        return -1;
    }
    if (!S_ISREG(e.st.st_mode)) {
        error_set(S_ISDIR(e.st.st_mode) ? EISDIR : EINVAL, "cannot %s '%s' in %s: it is not a regular file", what,
                  path, view->label);
        return -1;
    }
    return 0;
}

/* Close the files kept open for reading (all, or those older than AGENT_READING_US).  io lock held. */
static void agent_close_reading(struct guest_view *view, bool all)
{
    struct guest_agent_view *av = view->agent;
    g_autoptr(GArray) close = g_array_new(FALSE, FALSE, sizeof(gint64));
    gint64 now = g_get_monotonic_time();
    GHashTableIter iter;
    gpointer value;

    g_mutex_lock(&av->lock);
    g_hash_table_iter_init(&iter, av->reading);
    while (g_hash_table_iter_next(&iter, NULL, &value)) {
        struct agent_reading *r = value;

        if (all || now - r->opened > AGENT_READING_US) {
            g_array_append_val(close, r->handle);
            g_hash_table_iter_remove(&iter);
        }
    }
    g_mutex_unlock(&av->lock);
    for (guint i = 0; i < close->len; i++)
        agent_file_close(av->agent, g_array_index(close, gint64, i));
}

/* The agent's handle on @path for reading: kept from a read a moment ago, or opened after the checks; -1 with why.  io lock held. */
static gint64 agent_read_handle(struct guest_view *view, const char *path)
{
    struct guest_agent_view *av = view->agent;
    struct agent_reading *r;
    gint64 handle = -1;

    agent_close_reading(view, false);
    g_mutex_lock(&av->lock);
    r = g_hash_table_lookup(av->reading, path);
    if (r)
        handle = r->handle;
    g_mutex_unlock(&av->lock);
    if (handle >= 0)
        return handle;
    if (agent_regular(view, path, "read") < 0 || (handle = agent_file_open(av->agent, path, "r")) < 0)
        return -1;
    r = g_new(struct agent_reading, 1);
    r->handle = handle;
    r->opened = g_get_monotonic_time();
    g_mutex_lock(&av->lock);
    g_hash_table_replace(av->reading, g_strdup(path), r);
    g_mutex_unlock(&av->lock);
    return handle;
}

ssize_t guest_agent_read(struct guest_view *view, const char *path, char *buf, size_t size, off_t offset)
{
    struct snapfs_agent *agent = view->agent->agent;
    size_t done = 0;
    gint64 handle;

    if (agent_enter(view) < 0)
        return -1;
    g_mutex_lock(&view->agent->io_lock);
    /* What its handles wrote and did not flush yet is read too. */
    if (agent_flush_open(view) < 0 || (handle = agent_read_handle(view, path)) < 0) {
        g_mutex_unlock(&view->agent->io_lock);
        agent_done(view);
        return -1;
    }
    if (agent_file_seek(agent, handle, offset) == 0) {
        while (done < size) {
            ssize_t n = agent_file_read(agent, handle, buf + done, size - done);

            if (n <= 0) {
                if (n < 0)
                    done = (size_t)-1;
                break;
            }
            done += (size_t)n;
        }
    } else {
        done = (size_t)-1;
    }
    /* Read to its end (or failed): no next chunk comes, and a view that ends leaves no handle open in the agent. */
    if (done < size)
        agent_close_reading(view, true);
    g_mutex_unlock(&view->agent->io_lock);
    agent_done(view);
    return (ssize_t)done;
}

/* The agent's handle on @path for writing, opened on first use and kept until the next flush.  -1 with the reason. */
static gint64 agent_write_handle(struct guest_view *view, const char *path)
{
    struct guest_agent_view *av = view->agent;
    gint64 *found, handle;

    g_mutex_lock(&av->lock);
    found = g_hash_table_lookup(av->open, path);
    handle = found ? *found : -1;
    g_mutex_unlock(&av->lock);
    if (handle >= 0)
        return handle;
    if (agent_regular(view, path, "write") < 0 || (handle = agent_file_open(av->agent, path, "r+")) < 0)
        return -1;
    found = g_new(gint64, 1);
    *found = handle;
    g_mutex_lock(&av->lock);
    g_hash_table_replace(av->open, g_strdup(path), found);
    g_mutex_unlock(&av->lock);
    return handle;
}

ssize_t guest_agent_write(struct guest_view *view, const char *path, const char *buf, size_t size, off_t offset)
{
    gint64 handle;
    ssize_t n = -1;

    if (agent_enter(view) < 0)
        return -1;
    g_mutex_lock(&view->agent->io_lock);
    agent_close_reading(view, true);
    handle = agent_write_handle(view, path);
    if (handle >= 0 && agent_file_seek(view->agent->agent, handle, offset) == 0)
        n = agent_file_write(view->agent->agent, handle, buf, size);
    g_mutex_unlock(&view->agent->io_lock);
    agent_done(view);
    return n;
}

/* Close every handle written through and fsync their files in the guest (sync(1) with names): 0, or -1 with the reason. */
static int agent_sync(struct guest_view *view)
{
    struct guest_agent_view *av = view->agent;
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GBytes) out = NULL;
    GHashTableIter iter;
    gpointer key, value;
    int r = 0;

    g_ptr_array_add(argv, g_strdup("sync"));
    g_ptr_array_add(argv, g_strdup("--"));
    g_mutex_lock(&av->lock);
    g_hash_table_iter_init(&iter, av->open);
    while (g_hash_table_iter_next(&iter, &key, &value)) {
        if (agent_file_close(av->agent, *(gint64 *)value) < 0)
            r = -1;
        g_ptr_array_add(argv, g_strdup(key));
        g_hash_table_iter_remove(&iter);
    }
    g_mutex_unlock(&av->lock);
    if (r < 0 || argv->len == 2)
        return r;
    g_ptr_array_add(argv, NULL);
    out = agent_output(view, (const char *const *)argv->pdata, "sync", (const char *)argv->pdata[2]);
    return out ? 0 : -1;
}

int guest_agent_flush(struct guest_view *view)
{
    int r;

    if (agent_enter(view) < 0)
        return -1;
    g_mutex_lock(&view->agent->io_lock);
    r = agent_sync(view);
    agent_close_reading(view, true);
    g_mutex_unlock(&view->agent->io_lock);
    agent_done(view);
    return r;
}

void guest_agent_hold(struct guest_view *view, int delta)
{
    g_mutex_lock(&view->agent->lock);
    view->agent->holds += delta;
    view->agent->last_call = g_get_monotonic_time();
    g_mutex_unlock(&view->agent->lock);
}

bool guest_agent_ended(struct guest_view *view)
{
    struct guest_agent_view *av = view->agent;
    bool ended;

    /* Every file written was flushed (synced) when it was closed: ending is only taking no more calls. */
    g_mutex_lock(&av->lock);
    if (!av->ended && av->holds == 0 &&
        g_get_monotonic_time() - av->last_call > (gint64)GUEST_WRITER_IDLE_S * G_USEC_PER_SEC)
        av->ended = true;
    ended = av->ended;
    g_mutex_unlock(&av->lock);
    return ended;
}

/* Whether the guest's answer says it has no such program (the agent's spawn, or the shell's 127). */
static bool agent_no_program(void)
{
    return strstr(error_message(), "No such file or directory") && strstr(error_message(), "guest-exec");
}

/* getfattr's words for "no such attribute" (ENODATA), which strerror(3) calls otherwise. */
static int agent_xattr_errno(void)
{
    return strstr(error_message(), "No such attribute") ? ENODATA : error_errno();
}

/* An xattr name as getfattr(1) prints it, its escapes (\ooo, \\) undone. */
static char *agent_unescape(const char *text)
{
    GString *out = g_string_new(NULL);

    for (const char *p = text; *p; p++) {
        if (p[0] == '\\' && p[1] >= '0' && p[1] <= '7' && p[2] >= '0' && p[2] <= '7' && p[3] >= '0' && p[3] <= '7') {
            g_string_append_c(out, (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0')));
            p += 3;
        } else if (p[0] == '\\' && p[1] == '\\') {
            g_string_append_c(out, '\\');
            p++;
        } else {
            g_string_append_c(out, *p);
        }
    }
    return g_string_free(out, FALSE);
}

/* Like getxattr(2) and listxattr(2): @data (its @len bytes) into @buf of @size, or only the length for size 0. */
static ssize_t agent_xattr_reply(const char *data, size_t len, char *buf, size_t size)
{
    if (size == 0)
        return (ssize_t)len;
    if (len > size) {
        error_set(ERANGE, "the value is %zu bytes, more than the %zu asked for", len, size);
        return -1;
    }
    if (len)
        memcpy(buf, data, len);
    return (ssize_t)len;
}

static bool agent_acl_name(const char *name)
{
    return strcmp(name, "system.posix_acl_access") == 0 || strcmp(name, "system.posix_acl_default") == 0;
}

ssize_t guest_agent_getxattr(struct guest_view *view, const char *path, const char *name, char *buf, size_t size)
{
    const char *argv[] = { "getfattr", "-h", "--absolute-names", "--only-values", "-n", name, "--", path, NULL };
    g_autoptr(GBytes) out = NULL;

    if (agent_enter(view) < 0)
        return -1;
    out = agent_output(view, argv, "read an xattr of", path);
    agent_done(view);
    if (!out) {
        if (agent_no_program()) {
            error_set(agent_acl_name(name) ? ENODATA : ENOTSUP, "%s: the guest has no getfattr to read '%s' with",
                      view->label, name);
            return -1;
        }
        error_set(agent_xattr_errno(), "%s", error_message());
        return -1;
    }
    return agent_xattr_reply(g_bytes_get_data(out, NULL), g_bytes_get_size(out), buf, size);
}

ssize_t guest_agent_listxattr(struct guest_view *view, const char *path, char *buf, size_t size)
{
    const char *argv[] = { "getfattr", "-h", "--absolute-names", "-m", "-", "--", path, NULL };
    g_autoptr(GBytes) out = NULL;
    g_autoptr(GString) names = g_string_new(NULL);
    g_auto(GStrv) lines = NULL;

    if (agent_enter(view) < 0)
        return -1;
    out = agent_output(view, argv, "list the xattrs of", path);
    agent_done(view);
    if (!out) {
        if (agent_no_program())
            return 0;   /* none known: the guest has no getfattr */
        return -1;
    }
    lines = g_strsplit(g_bytes_get_size(out) ? g_bytes_get_data(out, NULL) : "", "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        g_autofree char *name = NULL;

        if (!*lines[i] || lines[i][0] == '#')
            continue;
        name = agent_unescape(lines[i]);
        g_string_append_len(names, name, (gssize)strlen(name) + 1);
    }
    return agent_xattr_reply(names->str, names->len, buf, size);
}

/* "@S.@NS" for touch(1)'s -d, "now" for UTIME_NOW, "" for UTIME_OMIT. */
static char *agent_touch_time(const struct timespec *t)
{
    if (t->tv_nsec == UTIME_NOW)
        return g_strdup("now");
    if (t->tv_nsec == UTIME_OMIT)
        return g_strdup("");
    return g_strdup_printf("@%lld.%09ld", (long long)t->tv_sec, t->tv_nsec);
}

/*
 * The script every change runs in: its first argument says how many paths follow that must be on a
 * filesystem of the guest's disks (AGENT_NOT_ON_DISK otherwise), then the command to run.  Its case
 * pattern is agent_disk_fs, joined once.
 */
static const char *agent_check_script(void)
{
    static gsize made;
    static char *script;

    if (g_once_init_enter(&made)) {
        g_autofree char *types = g_strjoinv("|", (char **)agent_disk_fs);

        script = g_strdup_printf("n=$1; shift\n"
                                 "while [ \"$n\" -gt 0 ]; do\n"
                                 "  t=$(find \"$1\" -maxdepth 0 -printf %%F) || exit 1\n"
                                 "  case $t in %s) ;; *) exit %d ;; esac\n"
                                 "  shift; n=$((n - 1))\n"
                                 "done\n"
                                 "exec \"$@\"\n", types, AGENT_NOT_ON_DISK);
        g_once_init_leave(&made, 1);
    }
    return script;
}

int guest_agent_change(struct guest_view *view, const struct guest_change *c)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *parent = g_path_get_dirname(c->path);   /* "/" for a name in the root */
    g_autofree char *other_parent = c->other ? g_path_get_dirname(c->other) : NULL;
    g_autoptr(GBytes) out = NULL;

#define ARG(s) g_ptr_array_add(argv, g_strdup(s))
#define ARGF(...) g_ptr_array_add(argv, g_strdup_printf(__VA_ARGS__))
    ARG("sh");
    ARG("-c");
    ARG(agent_check_script());
    ARG("sh");
    /* What must be on the guest's disks: the folder of what is made, the thing itself where it exists. */
    switch (c->op) {
    case GUEST_CREATE: case GUEST_MKDIR: case GUEST_MKNOD: case GUEST_SYMLINK:
        ARG("1"); ARG(parent);
        break;
    case GUEST_RENAME:   /* @path to @other */
        ARG("2"); ARG(c->path); ARG(other_parent);
        break;
    case GUEST_LINK:     /* @path to the existing @other */
        ARG("2"); ARG(c->other); ARG(parent);
        break;
    default:
        ARG("1"); ARG(c->path);
        break;
    }
    switch (c->op) {
    case GUEST_CREATE:
        ARG("sh"); ARG("-c"); ARG("set -C && : >\"$1\" && chmod \"$2\" -- \"$1\""); ARG("sh"); ARG(c->path);
        ARGF("%o", (unsigned)(c->mode & 07777));
        break;
    case GUEST_MKDIR:
        ARG("mkdir"); ARG("-m"); ARGF("%o", (unsigned)(c->mode & 07777)); ARG("--"); ARG(c->path);
        break;
    case GUEST_MKNOD:
        if (S_ISSOCK(c->mode)) {
            error_set(ENOTSUP, "cannot make the socket '%s' in %s through the guest agent", c->path, view->label);
            return -1;
        }
        ARG("mknod"); ARG("-m"); ARGF("%o", (unsigned)(c->mode & 07777)); ARG("--"); ARG(c->path);
        if (S_ISFIFO(c->mode)) {
            ARG("p");
        } else {
            ARG(S_ISBLK(c->mode) ? "b" : "c");
            ARGF("%u", major(c->rdev));
            ARGF("%u", minor(c->rdev));
        }
        break;
    case GUEST_UNLINK:
        ARG("unlink"); ARG("--"); ARG(c->path);
        break;
    case GUEST_RMDIR:
        ARG("rmdir"); ARG("--"); ARG(c->path);
        break;
    case GUEST_RENAME:
        ARG("mv"); ARG("-T"); ARG("--"); ARG(c->path); ARG(c->other);
        break;
    case GUEST_SYMLINK:
        ARG("ln"); ARG("-s"); ARG("-T"); ARG("--"); ARG(c->other); ARG(c->path);
        break;
    case GUEST_LINK:
        ARG("ln"); ARG("-P"); ARG("-T"); ARG("--"); ARG(c->other); ARG(c->path);
        break;
    case GUEST_CHMOD:
        ARG("chmod"); ARGF("%o", (unsigned)(c->mode & 07777)); ARG("--"); ARG(c->path);
        break;
    case GUEST_CHOWN:
        if (c->uid == (uid_t)-1 && c->gid == (gid_t)-1)
            return 0;
        ARG("chown"); ARG("-h");
        if (c->uid == (uid_t)-1)
            ARGF(":%u", (unsigned)c->gid);
        else if (c->gid == (gid_t)-1)
            ARGF("%u", (unsigned)c->uid);
        else
            ARGF("%u:%u", (unsigned)c->uid, (unsigned)c->gid);
        ARG("--"); ARG(c->path);
        break;
    case GUEST_TRUNCATE:
        ARG("truncate"); ARG("-s"); ARGF("%lld", (long long)c->size); ARG("--"); ARG(c->path);
        break;
    case GUEST_UTIMENS:
        ARG("sh"); ARG("-c");
        ARG("[ -z \"$2\" ] || touch -h -c -a -d \"$2\" -- \"$1\" || exit\n"
            "[ -z \"$3\" ] || touch -h -c -m -d \"$3\" -- \"$1\"");
        ARG("sh"); ARG(c->path);
        g_ptr_array_add(argv, agent_touch_time(&c->times[0]));
        g_ptr_array_add(argv, agent_touch_time(&c->times[1]));
        break;
    case GUEST_SETXATTR: {
        g_autofree char *value = g_base64_encode(c->value, (gsize)c->size);

        ARG("setfattr"); ARG("-h"); ARG("-n"); ARG(c->name); ARG("-v"); ARGF("0s%s", value); ARG("--"); ARG(c->path);
        break;
    }
    case GUEST_REMOVEXATTR:
        ARG("setfattr"); ARG("-h"); ARG("-x"); ARG(c->name); ARG("--"); ARG(c->path);
        break;
    }
#undef ARG
#undef ARGF
    g_ptr_array_add(argv, NULL);
    if (agent_enter(view) < 0)
        return -1;
    /*
     * A file written through a handle is closed (and synced) before it is renamed, truncated or unlinked; what
     * its handles buffer reaches the guest's files before anything else changes them (a later write would move
     * the mtime cp -a just set).
     */
    g_mutex_lock(&view->agent->io_lock);
    agent_close_reading(view, true);
    if (c->op == GUEST_RENAME || c->op == GUEST_UNLINK || c->op == GUEST_TRUNCATE)
        agent_sync(view);
    else
        agent_flush_open(view);
    out = agent_output(view, (const char *const *)argv->pdata, guest_change_name(c->op), c->path);
    g_mutex_unlock(&view->agent->io_lock);
    agent_done(view);
    if (!out && (c->op == GUEST_SETXATTR || c->op == GUEST_REMOVEXATTR)) {
        if (agent_no_program())
            error_set(ENOTSUP, "cannot %s '%s' in %s: the guest has no setfattr", guest_change_name(c->op), c->path,
                      view->label);
        else
            error_set(agent_xattr_errno(), "%s", error_message());
    }
    return out ? 0 : -1;
}
