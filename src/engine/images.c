/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What the engine reads before it acts (disks and snapshots from libvirt's XML, which images need which), and the new images it makes. */
#include "engine-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/spawn.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libvirt/virterror.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static GMutex notify_mutex;
static void (*notify_fn)(const char *file, void *opaque);
static void *notify_opaque;
static engine_before_change_fn before_fn;
static void *before_opaque;

void engine_set_chain_changed(void (*fn)(const char *file, void *opaque), void *opaque)
{
    g_mutex_lock(&notify_mutex);
    notify_fn = fn;
    notify_opaque = opaque;
    g_mutex_unlock(&notify_mutex);
}

void engine_notify_chain_changed(const char *label, const char *file)
{
    void (*fn)(const char *file, void *opaque);
    void *opaque;

    g_mutex_lock(&notify_mutex);
    fn = notify_fn;
    opaque = notify_opaque;
    g_mutex_unlock(&notify_mutex);
    snapfs_debug("image '%s' of domain '%s' moved or merged", file, label);
    if (fn)
        fn(file, opaque);
}

void engine_set_before_change(engine_before_change_fn fn, void *opaque)
{
    g_mutex_lock(&notify_mutex);
    before_fn = fn;
    before_opaque = opaque;
    g_mutex_unlock(&notify_mutex);
}

int engine_before_change(const char *label, const char *what, const char *const *files)
{
    engine_before_change_fn fn;
    void *opaque;

    g_mutex_lock(&notify_mutex);
    fn = before_fn;
    opaque = before_opaque;
    g_mutex_unlock(&notify_mutex);
    return fn ? fn(label, what, files, opaque) : 0;
}

/* ---- XML ------------------------------------------------------------------------ */

GPtrArray *engine_parse_disks(const char *xml, bool inside_snapshot)
{
    g_autoptr(xmlXPathContext) ctxt = NULL;
    g_autoptr(xmlDoc) doc = snapfs_xml_read(xml, &ctxt);

    if (!doc)
        return NULL;
    return snapfs_xml_disks(ctxt, inside_snapshot ? "/domainsnapshot/domain" : "/domain");
}

bool engine_disk_is_snapshotted(const struct snapfs_disk *disk)
{
    /* libvirt's defaults for a disk-only snapshot: no overlay for read-only or removable media. */
    if (disk->snapshot && strcmp(disk->snapshot, "no") == 0)
        return false;
    if (disk->readonly || strcmp(disk->device, "cdrom") == 0 || strcmp(disk->device, "floppy") == 0)
        return false;
    return disk->target != NULL;
}

void engine_snapshot_info_free(struct engine_snapshot_info *info)
{
    if (!info)
        return;
    g_free(info->name);
    g_free(info->description);
    if (info->disks)
        g_ptr_array_unref(info->disks);
    if (info->domain_disks)
        g_ptr_array_unref(info->domain_disks);
    g_free(info);
}

struct engine_snapshot_info *engine_parse_snapshot(const char *xml)
{
    g_autoptr(xmlXPathContext) ctxt = NULL;
    g_autoptr(xmlDoc) doc = snapfs_xml_read(xml, &ctxt);
    struct engine_snapshot_info *info;

    if (!doc)
        return NULL;
    info = g_new0(struct engine_snapshot_info, 1);
    info->name = snapfs_xml_string(ctxt, NULL, "string(/domainsnapshot/name)");
    info->description = snapfs_xml_string(ctxt, NULL, "string(/domainsnapshot/description)");
    if (!info->description)
        info->description = g_strdup("");
    info->disks = snapfs_xml_snapshot_disks(ctxt);
    for (guint i = 0; i < info->disks->len; i++) {
        struct snapfs_snapshot_disk *disk = g_ptr_array_index(info->disks, i);

        if (strcmp(disk->kind, "external") == 0)
            info->external = true;
    }
    info->domain_disks = snapfs_xml_disks(ctxt, "/domainsnapshot/domain");
    return info;
}

/* ---- images -------------------------------------------------------------------- */

/*
 * Fail closed: who needs an image is read from every domain's disks (live
 * and persistent) and every snapshot of every domain, down each chain by the
 * images' headers.  Whatever cannot be read (a libvirt call, a snapshot's
 * XML, a header) makes the whole answer unknown, and callers refuse to
 * unlink or merge anything rather than guess that nobody needs it.  Only a
 * domain or snapshot that vanished between listing and reading is skipped:
 * it needs nothing any more.
 */

/* A disk or a snapshot's image: where a chain that somebody reads starts. */
struct image_root {
    char *file;
    char *domain;
    char *user;     /* "disk vda of domain 'web02'", "snapshot 's1' of domain 'web02'" */
};

static void image_root_free(gpointer data)
{
    struct image_root *root = data;

    g_free(root->file);
    g_free(root->domain);
    g_free(root->user);
    g_free(root);
}

void engine_images_free(struct engine_images *images)
{
    if (!images)
        return;
    g_hash_table_unref(images->backing);
    g_hash_table_unref(images->tops);
    g_hash_table_unref(images->named);
    g_ptr_array_unref(images->roots);
    g_free(images);
}

struct engine_images *engine_images_new(void)
{
    struct engine_images *images = g_new0(struct engine_images, 1);

    images->backing = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    images->tops = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    images->named = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    images->roots = g_ptr_array_new_with_free_func(image_root_free);
    return images;
}

/* Backing names that are not local files (nbd:, json:{...}, http://...) end what can be followed here. */
static bool backing_is_protocol(const char *backing)
{
    const char *colon = strchr(backing, ':');
    const char *slash = strchr(backing, '/');

    return colon && (!slash || colon < slash);
}

/* EIO for what cannot be read, but ENOTSUP stays ENOTSUP: a format recorded nowhere is a refusal with its own reason. */
static int chain_failure_errno(void)
{
    return snapfs_error_errno() == ENOTSUP ? ENOTSUP : EIO;
}

int engine_images_add_chain(struct engine_images *images, const char *file, const char *format)
{
    g_autofree char *cur = g_strdup(file);
    g_autofree char *fmt = g_strdup(format);

    /* One header at a time, so that a chain shared by many snapshots is read once. */
    for (int depth = 0; cur; depth++) {
        struct snapfs_layer *layer;
        char *below = NULL;

        if (g_hash_table_contains(images->backing, cur))
            return 0;
        if (depth >= 256) {
            snapfs_error_set(EIO, "the backing chain of '%s' is deeper than 256 images", file);
            return -1;
        }
        layer = snapfs_chain_read_layer(cur, fmt);
        if (!layer) {
            /* What an unreadable image stands on is unknown: nothing below it may be taken for unneeded. */
            snapfs_error_set(chain_failure_errno(), "%s", snapfs_error_message());
            return -1;
        }
        if (layer->backing && !backing_is_protocol(layer->backing))
            below = snapfs_chain_resolve(cur, layer->backing);
        g_hash_table_insert(images->backing, g_strdup(cur), g_strdup(below ? below : ""));
        g_free(fmt);
        fmt = g_strdup(layer->backing_format);
        snapfs_layer_free(layer);
        g_free(cur);
        cur = below;
    }
    return 0;
}

GPtrArray *engine_chain_files(const char *top, const char *format)
{
    struct engine_images *images = engine_images_new();
    GPtrArray *files = g_ptr_array_new_with_free_func(g_free);
    const char *cur = top;

    /* What was read before an unreadable image is still the chain as far as it is known. */
    if (engine_images_add_chain(images, top, format) < 0)
        snapfs_debug("cannot read the whole chain of '%s': %s", top, snapfs_error_message());
    g_ptr_array_add(files, g_strdup(top));
    for (cur = g_hash_table_lookup(images->backing, top); cur && *cur && files->len < 256;
         cur = g_hash_table_lookup(images->backing, cur))
        g_ptr_array_add(files, g_strdup(cur));
    engine_images_free(images);
    return files;
}

static void images_add_root(struct engine_images *images, const char *file, const char *domain, char *user)
{
    struct image_root *root = g_new0(struct image_root, 1);

    root->file = g_strdup(file);
    root->domain = g_strdup(domain);
    root->user = user;
    g_ptr_array_add(images->roots, root);
}

static int images_add_disks(struct engine_images *images, GPtrArray *disks, const char *domain,
                            const char *snapshot)
{
    for (guint i = 0; i < disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(disks, i);
        char *user;

        if (!disk->file || strcmp(disk->type, "network") == 0)
            continue;
        user = snapshot ? g_strdup_printf("snapshot '%s' of domain '%s' (disk %s)", snapshot, domain, disk->target)
                        : g_strdup_printf("disk %s of domain '%s'", disk->target, domain);
        if (engine_images_add_chain(images, disk->file, disk->format) < 0) {
            snapfs_error_set(chain_failure_errno(), "cannot tell what %s stands on: %s", user, snapfs_error_message());
            g_free(user);
            return -1;
        }
        if (snapshot)
            g_hash_table_insert(images->named, g_strdup(disk->file), g_strdup_printf("%s/%s", domain, snapshot));
        else
            g_hash_table_insert(images->tops, g_strdup(disk->file), g_strdup_printf("%s %s", domain, disk->target));
        images_add_root(images, disk->file, domain, user);
    }
    return 0;
}

/* Libvirt's last error as the reason of a failed read; true where the object vanished meanwhile (nothing to read). */
static bool images_virt_failed(int gone_code, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static bool images_virt_failed(int gone_code, const char *fmt, ...)
{
    g_autofree char *what = NULL;
    va_list ap;

    if (virGetLastErrorCode() == gone_code)
        return true;
    va_start(ap, fmt);
    what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    snapfs_error_set(EIO, "%s: %s", what, virGetLastErrorMessage());
    return false;
}

/*
 * libvirt's own revert (libvirt 9.9 and later) unlinks the overlays of the snapshot the domain leaves, the state
 * it discards, and keeps naming them in that snapshot's metadata.  Such an overlay is missing, and nothing can
 * stand on a file that is not there: what the snapshot froze is its <domain>'s disk, which is read as ever.  Any
 * other failure to read the overlay's chain still fails closed.
 */
static bool snapshot_overlay_discarded(const struct engine_snapshot_info *info, const struct snapfs_snapshot_disk *disk)
{
    struct snapfs_disk *then = snapfs_disk_find(info->domain_disks, disk->target);
    struct stat st;

    return then && then->file && strcmp(then->file, disk->file) != 0 && lstat(disk->file, &st) < 0 &&
           errno == ENOENT && lstat(then->file, &st) == 0;
}

static int images_add_snapshot(struct engine_images *images, virDomainSnapshotPtr snap, const char *domain)
{
    const char *snap_name = virDomainSnapshotGetName(snap);
    g_autofree char *xml = virDomainSnapshotGetXMLDesc(snap, 0);
    struct engine_snapshot_info *info;
    int ret = -1;

    if (!xml)
        return images_virt_failed(VIR_ERR_NO_DOMAIN_SNAPSHOT, "cannot read snapshot '%s' of domain '%s'",
                                  snap_name, domain) ? 0 : -1;
    info = engine_parse_snapshot(xml);
    if (!info || !info->domain_disks) {
        snapfs_error_set(EIO, "cannot parse snapshot '%s' of domain '%s'", snap_name, domain);
        goto cleanup;
    }
    for (guint d = 0; d < info->disks->len; d++) {
        struct snapfs_snapshot_disk *disk = g_ptr_array_index(info->disks, d);

        if (!disk->file || strcmp(disk->kind, "external") != 0)
            continue;
        if (snapshot_overlay_discarded(info, disk)) {
            snapfs_debug("snapshot '%s' of domain '%s' (disk %s): its overlay '%s' was discarded by a revert; what "
                         "it froze is read from the snapshot's domain", snap_name, domain, disk->target, disk->file);
            continue;
        }
        if (engine_images_add_chain(images, disk->file, disk->format) < 0) {
            snapfs_error_set(chain_failure_errno(), "cannot tell what snapshot '%s' of domain '%s' (disk %s) stands on: %s",
                             snap_name, domain, disk->target, snapfs_error_message());
            goto cleanup;
        }
        g_hash_table_insert(images->named, g_strdup(disk->file), g_strdup_printf("%s/%s", domain, snap_name));
        images_add_root(images, disk->file, domain,
                        g_strdup_printf("snapshot '%s' of domain '%s' (disk %s)", snap_name, domain, disk->target));
    }
    /* The domain as it was: for an internal snapshot, the images that hold it. */
    ret = images_add_disks(images, info->domain_disks, domain, snap_name);

cleanup:
    engine_snapshot_info_free(info);
    return ret;
}

static int images_add_domain(struct engine_images *images, virDomainPtr dom, const char *skip_domain,
                             const char *skip_snapshot)
{
    const char *name = virDomainGetName(dom);
    virDomainSnapshotPtr *snaps = NULL;
    int n, ret = 0;

    /* Live (the same as persistent when shut off) and persistent: a domain that starts or stops meanwhile is seen. */
    for (int inactive = 0; inactive < 2; inactive++) {
        g_autofree char *xml = virDomainGetXMLDesc(dom, inactive ? VIR_DOMAIN_XML_INACTIVE : 0);
        GPtrArray *disks;

        if (!xml)
            return images_virt_failed(VIR_ERR_NO_DOMAIN, "cannot read the XML of domain '%s'", name) ? 0 : -1;
        disks = engine_parse_disks(xml, false);
        if (!disks) {
            snapfs_error_set(EIO, "cannot parse the XML of domain '%s'", name);
            return -1;
        }
        ret = images_add_disks(images, disks, name, NULL);
        g_ptr_array_unref(disks);
        if (ret < 0)
            return -1;
    }
    n = virDomainListAllSnapshots(dom, &snaps, 0);
    if (n < 0)
        return images_virt_failed(VIR_ERR_NO_DOMAIN, "cannot list the snapshots of domain '%s'", name) ? 0 : -1;
    for (int i = 0; i < n; i++) {
        const char *snap_name = virDomainSnapshotGetName(snaps[i]);

        if (ret == 0 && !(skip_snapshot && strcmp(name, skip_domain) == 0 && strcmp(snap_name, skip_snapshot) == 0))
            ret = images_add_snapshot(images, snaps[i], name);
        virDomainSnapshotFree(snaps[i]);
    }
    free(snaps);
    return ret;
}

struct engine_images *engine_images_collect(virConnectPtr conn, const char *domain, const char *skip_snapshot,
                                            const char *what)
{
    struct engine_images *images = engine_images_new();
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(conn, &doms, 0);
    int ret = 0;

    if (n < 0) {
        snapfs_error_set(EIO, "%s: cannot list the domains to see which images they use: %s", what,
                         virGetLastErrorMessage());
        engine_images_free(images);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (ret == 0 && images_add_domain(images, doms[i], domain, skip_snapshot) < 0)
            ret = -1;
        virDomainFree(doms[i]);
    }
    free(doms);
    if (ret < 0) {
        snapfs_error_set(chain_failure_errno(), "%s: %s; snapfs changes nothing while it cannot tell which images are needed",
                         what, snapfs_error_message());
        engine_images_free(images);
        return NULL;
    }
    return images;
}

bool engine_images_reachable(struct engine_images *images, const char *file)
{
    GHashTableIter iter;
    gpointer key;
    GHashTable *roots[] = { images->tops, images->named };

    for (size_t r = 0; r < G_N_ELEMENTS(roots); r++) {
        g_hash_table_iter_init(&iter, roots[r]);
        while (g_hash_table_iter_next(&iter, &key, NULL)) {
            const char *cur = key;

            for (int depth = 0; cur && *cur && depth < 256; depth++) {
                if (strcmp(cur, file) == 0)
                    return true;
                cur = g_hash_table_lookup(images->backing, cur);
            }
        }
    }
    return false;
}

char *engine_images_user(struct engine_images *images, const char *file, const char *except_domain)
{
    for (guint i = 0; i < images->roots->len; i++) {
        struct image_root *root = g_ptr_array_index(images->roots, i);
        const char *cur = root->file;

        if (except_domain && strcmp(root->domain, except_domain) == 0)
            continue;
        for (int depth = 0; cur && *cur && depth < 256; depth++) {
            if (strcmp(cur, file) == 0)
                return g_strdup(root->user);
            cur = g_hash_table_lookup(images->backing, cur);
        }
    }
    return NULL;
}

const char **engine_images_dependents(struct engine_images *images, const char *file)
{
    GPtrArray *out = g_ptr_array_new();
    GHashTableIter iter;
    gpointer key, value;

    g_hash_table_iter_init(&iter, images->backing);
    while (g_hash_table_iter_next(&iter, &key, &value))
        if (strcmp(value, file) == 0)
            g_ptr_array_add(out, key);
    g_ptr_array_add(out, NULL);
    return (const char **)g_ptr_array_free(out, FALSE);
}

/* ---- open files ------------------------------------------------------------------ */

/* Whether process @pid is the qemu of the domain with @uuid (libvirt passes it as -uuid). */
static bool pid_is_domain_qemu(const char *pid, const char *uuid)
{
    g_autofree char *path = g_strdup_printf("/proc/%s/cmdline", pid);
    g_autofree char *cmdline = NULL;
    gsize len = 0;

    if (!uuid || !g_file_get_contents(path, &cmdline, &len, NULL))
        return false;
    for (gsize i = 0; i < len; i += strlen(cmdline + i) + 1) {
        if (strcmp(cmdline + i, "-uuid") == 0 && i + 6 < len && g_ascii_strcasecmp(cmdline + i + 6, uuid) == 0)
            return true;
    }
    return false;
}

static char *pid_comm(const char *pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%s/comm", pid);
    char *comm = NULL;

    if (!g_file_get_contents(path, &comm, NULL, NULL))
        return g_strdup("?");
    g_strchomp(comm);
    return comm;
}

/* The file of @want that process @pid holds open, or NULL; -1 in @err where its files cannot be read. */
static const char *pid_holds(const char *pid, const char *const *files, const struct stat *want, int *err)
{
    g_autofree char *path = g_strdup_printf("/proc/%s/fd", pid);
    DIR *fds = opendir(path);
    const char *found = NULL;
    struct dirent *de;

    *err = 0;
    if (!fds) {
        /* Gone meanwhile; or, run as a user, another user's process, which cannot open the user's 0600 images. */
        if (errno == ENOENT || errno == ESRCH || (errno == EACCES && geteuid() != 0))
            return NULL;
        *err = errno;
        return NULL;
    }
    while (!found && (de = readdir(fds))) {
        struct stat st;

        if (de->d_name[0] == '.' || fstatat(dirfd(fds), de->d_name, &st, 0) < 0)
            continue;
        for (size_t i = 0; files[i]; i++) {
            if (want[i].st_ino && st.st_dev == want[i].st_dev && st.st_ino == want[i].st_ino) {
                found = files[i];
                break;
            }
        }
    }
    closedir(fds);
    return found;
}

int engine_check_not_open(const char *uuid, const char *what, const char *const *files)
{
    size_t n = 0;
    g_autofree struct stat *want = NULL;
    bool any = false;
    DIR *proc;
    struct dirent *de;
    g_autofree char *self = g_strdup_printf("%d", (int)getpid());
    int ret = 0;

    while (files[n])
        n++;
    want = g_new0(struct stat, n + 1);
    for (size_t i = 0; i < n; i++) {
        if (stat(files[i], &want[i]) < 0) {
            if (errno != ENOENT) {
                snapfs_error_set(EIO, "%s: cannot tell who holds '%s' open: %s", what, files[i], g_strerror(errno));
                return -1;
            }
            memset(&want[i], 0, sizeof(want[i]));
            continue;
        }
        any = true;
    }
    if (!any)
        return 0;
    proc = opendir("/proc");
    if (!proc) {
        snapfs_error_set(EIO, "%s: cannot tell who holds its images open: /proc: %s", what, g_strerror(errno));
        return -1;
    }
    while (ret == 0 && (de = readdir(proc))) {
        const char *file;
        int err;

        if (!g_ascii_isdigit(de->d_name[0]) || strcmp(de->d_name, self) == 0)
            continue;
        file = pid_holds(de->d_name, files, want, &err);
        if (err) {
            snapfs_error_set(EIO, "%s: cannot tell whether process %s holds its images open: %s", what, de->d_name,
                             g_strerror(err));
            ret = -1;
        } else if (file && !pid_is_domain_qemu(de->d_name, uuid)) {
            g_autofree char *comm = pid_comm(de->d_name);

            snapfs_error_set(EBUSY, "%s: process %s (%s) holds '%s' open", what, de->d_name, comm, file);
            ret = -1;
        }
    }
    closedir(proc);
    return ret;
}

int engine_check_unused(virConnectPtr conn, const char *domain, const char *what, const char *const *files)
{
    struct engine_images *images = engine_images_collect(conn, domain, NULL, what);
    g_autofree char *uuid = NULL;
    virDomainPtr dom;

    if (!images)
        return -1;
    for (size_t i = 0; files[i]; i++) {
        g_autofree char *user = engine_images_user(images, files[i], domain);

        if (user) {
            snapfs_error_set(EBUSY, "%s: %s stands on '%s'", what, user, files[i]);
            engine_images_free(images);
            return -1;
        }
    }
    engine_images_free(images);
    dom = virDomainLookupByName(conn, domain);
    if (dom) {
        char buf[VIR_UUID_STRING_BUFLEN];

        if (virDomainGetUUIDString(dom, buf) == 0)
            uuid = g_strdup(buf);
        virDomainFree(dom);
    }
    if (!uuid) {
        snapfs_error_set(EIO, "%s: cannot read the domain's UUID: %s", what, virGetLastErrorMessage());
        return -1;
    }
    return engine_check_not_open(uuid, what, files);
}

/* ---- what changed --------------------------------------------------------------- */

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

/* ---- new images -------------------------------------------------------------------- */

bool engine_image_remove_made(const char *file, int fd)
{
    struct stat mine, named;

    /* The fd keeps the inode alive, so its number cannot have gone to another file meanwhile. */
    if (fstat(fd, &mine) < 0 || lstat(file, &named) < 0)
        return false;
    if (mine.st_dev != named.st_dev || mine.st_ino != named.st_ino) {
        snapfs_warn("'%s' is left where it is: it is no longer the file snapfs made under that name", file);
        return false;
    }
    if (unlink(file) < 0) {
        snapfs_warn("cannot remove '%s', which snapfs made: %s", file, g_strerror(errno));
        return false;
    }
    return true;
}

int engine_image_create_overlay(const char *file, const char *backing, const char *backing_format)
{
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;
    g_autofree char *size = NULL;
    struct snapfs_layer *layer;
    struct stat below, made, named;
    int status = 0;
    int fd;

    /* The format goes into the overlay's header, where qemu takes it for the truth: never a guess. */
    if (!backing_format || !snapfs_chain_format_known(backing_format)) {
        snapfs_error_set(ENOTSUP, "cannot create overlay '%s' on '%s': the format of '%s' is %s", file, backing,
                         backing, backing_format ? "not one snapfs accepts" : "recorded neither by libvirt nor by an image");
        return -1;
    }
    layer = snapfs_chain_read_layer(backing, backing_format);
    if (!layer)
        return -1;
    size = g_strdup_printf("%" G_GUINT64_FORMAT, layer->virtual_size);
    snapfs_layer_free(layer);
    if (stat(backing, &below) < 0) {
        snapfs_error_set(errno == ENOENT ? ENOENT : EIO, "cannot create overlay '%s': cannot stat its backing "
                         "image '%s': %s", file, backing, g_strerror(errno));
        return -1;
    }
    fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0) {
        int e = errno;

        snapfs_error_set(e == EEXIST ? EEXIST : EIO, "cannot create overlay '%s': %s", file,
                         e == EEXIST ? "a file of that name exists (snapfs never overwrites one)" : g_strerror(e));
        return -1;
    }
    /* The umask may have taken bits away, never added: 0600 exactly, whatever it is. */
    if (fchown(fd, below.st_uid, below.st_gid) < 0 || fchmod(fd, 0600) < 0) {
        snapfs_error_set(EIO, "cannot give overlay '%s' the owner of '%s': %s", file, backing, g_strerror(errno));
        goto fail;
    }
    {
        /* -u: the backing image is known to be complete; not opening it keeps this fast. */
        const char *argv[] = { "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", backing_format, "-b", backing,
                               file, size, NULL };

        if (snapfs_spawn_sync(argv, SNAPFS_TOOL_TIMEOUT_S, &out, &err, &status) < 0)
            goto fail;
    }
    if (!g_spawn_check_wait_status(status, NULL)) {
        g_strstrip(err);
        snapfs_error_set(EIO, "cannot create overlay '%s' on '%s': %s", file, backing, err);
        goto fail;
    }
    /* qemu-img opened the name: it must still be the file made here, and still private. */
    if (fstat(fd, &made) < 0 || lstat(file, &named) < 0 || made.st_dev != named.st_dev ||
        made.st_ino != named.st_ino || (made.st_mode & 07777) != 0600) {
        snapfs_error_set(EIO, "cannot create overlay '%s': the file changed under snapfs while qemu-img wrote it", file);
        goto fail;
    }
    if (fsync(fd) < 0) {
        snapfs_error_set(EIO, "cannot flush overlay '%s' to disk: %s", file, g_strerror(errno));
        goto fail;
    }
    return fd;

fail:
    engine_image_remove_made(file, fd);
    close(fd);
    return -1;
}
