/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit test of the guest reader: views of ext4 images in raw and qcow2 chains, an internal snapshot, an OS, faults. */
#include "snapfs/error.h"
#include "snapfs/guest.h"
#include "snapfs/log.h"
#include "../../src/guest/guest-priv.h"

#include <dirent.h>
#include <errno.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

static int failures;
static unsigned checked;
/* The caches' bound is smaller than a listing: a second listing may give some entries without their attributes. */
static bool bounded;

#define CHECK(cond, ...) do { \
        checked++; \
        if (!(cond)) { \
            failures++; \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__); \
            fprintf(stderr, "\n"); \
        } \
    } while (0)

static int collect(void *opaque, const char *name, const struct stat *st)
{
    g_hash_table_insert(opaque, g_strdup(name), g_memdup2(st, sizeof(*st)));
    return 0;
}

static GBytes *read_all(struct guest_view *view, const char *path, off_t size)
{
    GByteArray *out = g_byte_array_new();
    char buf[131072];
    off_t off = 0;

    for (;;) {
        ssize_t n = guest_view_read(view, path, buf, sizeof(buf), off);

        if (n < 0) {
            g_byte_array_unref(out);
            return NULL;
        }
        if (n == 0)
            break;
        g_byte_array_append(out, (guint8 *)buf, (guint)n);
        off += n;
        if (off > size + (off_t)sizeof(buf))
            break;
    }
    return g_byte_array_free_to_bytes(out);
}

/* Compare view path @vpath with host path @hpath, recursively: names, modes, owners, sizes, times, bytes, links, xattrs. */
static void compare_tree(struct guest_view *view, const char *hpath, const char *vpath, GHashTable *inodes)
{
    g_autoptr(GHashTable) entries = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    g_autoptr(GPtrArray) host_names = g_ptr_array_new_with_free_func(g_free);
    DIR *dir = opendir(hpath);
    struct dirent *de;

    CHECK(guest_view_readdir(view, vpath, collect, entries) == 0, "readdir %s: %s", vpath, error_message());
    while (dir && (de = readdir(dir))) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0 && strcmp(de->d_name, "lost+found") != 0)
            g_ptr_array_add(host_names, g_strdup(de->d_name));
    }
    closedir(dir);
    g_hash_table_remove(entries, "lost+found");
    CHECK(g_hash_table_size(entries) == host_names->len, "%s: %u entries in the guest, %u on the host", vpath,
          g_hash_table_size(entries), host_names->len);
    for (guint i = 0; i < host_names->len; i++) {
        const char *name = g_ptr_array_index(host_names, i);
        g_autofree char *h = g_build_filename(hpath, name, NULL);
        g_autofree char *v = strcmp(vpath, "/") == 0 ? g_strconcat("/", name, NULL) : g_strconcat(vpath, "/", name, NULL);
        struct stat *listed = g_hash_table_lookup(entries, name);
        struct stat hs, gs;
        char key[64];
        ino_t *seen;

        CHECK(listed != NULL, "'%s' missing from the listing", v);
        if (!listed || lstat(h, &hs) < 0)
            continue;
        CHECK(guest_view_getattr(view, v, &gs) == 0, "getattr '%s': %s", v, error_message());
        /* A listing without attributes yet (st_nlink 0) still gives the type and the inode. */
        CHECK(gs.st_ino == listed->st_ino && (listed->st_nlink == 0 ? (gs.st_mode & S_IFMT) == listed->st_mode
                                                                    : gs.st_mode == listed->st_mode),
              "'%s': readdir (ino %lu, mode %o, nlink %lu) and getattr (ino %lu, mode %o) disagree", v,
              (unsigned long)listed->st_ino, listed->st_mode, (unsigned long)listed->st_nlink, (unsigned long)gs.st_ino,
              gs.st_mode);
        CHECK(gs.st_mode == hs.st_mode, "'%s': mode %o, host %o", v, gs.st_mode, hs.st_mode);
        CHECK(gs.st_uid == hs.st_uid && gs.st_gid == hs.st_gid, "'%s': owner %u:%u, host %u:%u", v, gs.st_uid,
              gs.st_gid, hs.st_uid, hs.st_gid);
        CHECK(S_ISDIR(hs.st_mode) || gs.st_nlink == hs.st_nlink, "'%s': nlink %lu, host %lu", v,
              (unsigned long)gs.st_nlink, (unsigned long)hs.st_nlink);
        CHECK(S_ISDIR(hs.st_mode) || gs.st_size == hs.st_size, "'%s': size %lld, host %lld", v,
              (long long)gs.st_size, (long long)hs.st_size);
        /* mke2fs -d keeps whole seconds only: the guest holds no nanoseconds to show. */
        CHECK(gs.st_mtim.tv_sec == hs.st_mtim.tv_sec && gs.st_mtim.tv_nsec == 0,
              "'%s': mtime %lld.%09ld, host %lld.%09ld", v, (long long)gs.st_mtim.tv_sec, gs.st_mtim.tv_nsec,
              (long long)hs.st_mtim.tv_sec, hs.st_mtim.tv_nsec);
        if (S_ISCHR(hs.st_mode) || S_ISBLK(hs.st_mode))
            CHECK(gs.st_rdev == hs.st_rdev, "'%s': rdev %lx, host %lx", v, (unsigned long)gs.st_rdev, (unsigned long)hs.st_rdev);
        /* Hard links: one guest inode for one host inode. */
        snprintf(key, sizeof(key), "%lu", (unsigned long)hs.st_ino);
        seen = g_hash_table_lookup(inodes, key);
        if (seen)
            CHECK(*seen == gs.st_ino, "'%s': hard link shows inode %lu, its twin %lu", v, (unsigned long)gs.st_ino,
                  (unsigned long)*seen);
        else
            g_hash_table_insert(inodes, g_strdup(key), g_memdup2(&gs.st_ino, sizeof(gs.st_ino)));

        if (S_ISREG(hs.st_mode)) {
            g_autoptr(GBytes) got = read_all(view, v, hs.st_size);
            g_autofree char *want = NULL;
            gsize want_len = 0;

            g_file_get_contents(h, &want, &want_len, NULL);
            CHECK(got && g_bytes_get_size(got) == want_len &&
              (want_len == 0 || memcmp(g_bytes_get_data(got, NULL), want, want_len) == 0),
                  "'%s': bytes differ (%zu read, %zu on the host): %s", v, got ? g_bytes_get_size(got) : 0, want_len,
                  got ? "" : error_message());
            /* A read at an offset inside a chunk, across a chunk boundary. */
            if (want_len > (3u << 20)) {
                char buf[8192];
                off_t off = (2 << 20) - 100;

                CHECK(guest_view_read(view, v, buf, sizeof(buf), off) == sizeof(buf) && memcmp(buf, want + off, sizeof(buf)) == 0,
                      "'%s': read across a chunk boundary differs", v);
            }
        } else if (S_ISLNK(hs.st_mode)) {
            char target[4096];
            ssize_t n = readlink(h, target, sizeof(target) - 1);
            g_autofree char *got = NULL;

            target[n < 0 ? 0 : n] = '\0';
            CHECK(guest_view_readlink(view, v, &got) == 0 && strcmp(got, target) == 0, "'%s': link '%s', host '%s'", v,
                  got ? got : error_message(), target);
        } else if (S_ISDIR(hs.st_mode)) {
            compare_tree(view, h, v, inodes);
        }
        {
            char names[4096];
            ssize_t hn = llistxattr(h, names, sizeof(names));

            for (ssize_t k = 0; k < hn; k += (ssize_t)strlen(names + k) + 1) {
                char hv[1024], gv[1024];
                ssize_t hl = lgetxattr(h, names + k, hv, sizeof(hv));
                ssize_t gl = guest_view_getxattr(view, v, names + k, gv, sizeof(gv));

                if (strncmp(names + k, "user.", 5) != 0)
                    continue;
                CHECK(gl == hl && memcmp(hv, gv, (size_t)hl) == 0, "'%s': xattr %s differs (%zd, host %zd): %s", v,
                      names + k, gl, hl, gl < 0 ? error_message() : "");
            }
        }
    }
    /* Once an entry was looked up, the listing gives its attributes too, as getattr does. */
    {
        g_autoptr(GHashTable) again = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        GHashTableIter iter;
        gpointer name, value;

        CHECK(guest_view_readdir(view, vpath, collect, again) == 0, "readdir %s again: %s", vpath, error_message());
        g_hash_table_iter_init(&iter, again);
        while (g_hash_table_iter_next(&iter, &name, &value)) {
            const struct stat *listed = value;
            g_autofree char *v = strcmp(vpath, "/") == 0 ? g_strconcat("/", name, NULL)
                                                         : g_strconcat(vpath, "/", name, NULL);
            struct stat gs;

            if (bounded && listed->st_nlink == 0)
                continue;
            CHECK(listed->st_nlink > 0 && guest_view_getattr(view, v, &gs) == 0 && gs.st_mode == listed->st_mode &&
                  gs.st_size == listed->st_size && gs.st_nlink == listed->st_nlink,
                  "'%s': the second listing does not give the attributes getattr gives", v);
        }
    }
}

static void compare_view(struct guest_view *view, const char *host)
{
    g_autoptr(GHashTable) inodes = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);

    g_autoptr(GHashTable) root = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);

    /* No OS on these disks: one folder per filesystem, named after its device. */
    CHECK(guest_view_readdir(view, "/", collect, root) == 0 && g_hash_table_size(root) == 1 &&
          g_hash_table_contains(root, "sda"), "the root holds exactly 'sda' (%u entries): %s", g_hash_table_size(root),
          error_message());
    compare_tree(view, host, "/sda", inodes);
}

/* Everything a user could do to every entry of a damaged filesystem; only answers, never a crash or a hang. */
static void walk_hostile(struct guest_view *view, const char *path, int depth, unsigned *ok, unsigned *bad)
{
    g_autoptr(GHashTable) entries = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    GHashTableIter iter;
    gpointer name;

    if (depth > 6 || *ok + *bad > 3000)
        return;
    if (guest_view_readdir(view, path, collect, entries) < 0) {
        (*bad)++;
        return;
    }
    (*ok)++;
    g_hash_table_iter_init(&iter, entries);
    while (g_hash_table_iter_next(&iter, &name, NULL)) {
        g_autofree char *child = strcmp(path, "/") == 0 ? g_strconcat("/", (char *)name, NULL)
                                                        : g_strconcat(path, "/", (char *)name, NULL);
        g_autofree char *target = NULL;
        char buf[65536];
        struct stat st;

        if (guest_view_getattr(view, child, &st) < 0) {
            (*bad)++;
            continue;
        }
        guest_view_listxattr(view, child, buf, sizeof(buf)) < 0 ? (*bad)++ : (*ok)++;
        if (S_ISDIR(st.st_mode))
            walk_hostile(view, child, depth + 1, ok, bad);
        else if (S_ISREG(st.st_mode))
            guest_view_read(view, child, buf, sizeof(buf), 0) < 0 ? (*bad)++ : (*ok)++;
        else if (S_ISLNK(st.st_mode))
            guest_view_readlink(view, child, &target) < 0 ? (*bad)++ : (*ok)++;
    }
}

static struct guest_view *view_of(struct guest_pool *pool, const char *group, const char *id, bool live,
                                  const struct guest_drive *drives, size_t n)
{
    struct guest_view_spec spec = { .group = group, .id = id, .live = live, .n_drives = n, .drives = drives };

    return guest_pool_view(pool, &spec);
}

static void expect_errno(int ret, int err, const char *what)
{
    CHECK(ret < 0 && error_errno() == err, "%s: %d, errno %d (%s), want %d", what, ret, error_errno(),
          error_message(), err);
}

static unsigned calls(struct guest_pool *pool)
{
    struct guest_pool_stats stats;

    guest_pool_get_stats(pool, &stats);
    return stats.calls;
}

static unsigned launches(struct guest_pool *pool)
{
    struct guest_pool_stats stats;

    guest_pool_get_stats(pool, &stats);
    return stats.launches;
}

static unsigned disks_added(struct guest_pool *pool)
{
    struct guest_pool_stats stats;

    guest_pool_get_stats(pool, &stats);
    return stats.disks_added;
}

int main(int argc, char **argv)
{
    g_autofree char *dir = g_strdup_printf("/var/tmp/snapfs-b-test-%d", (int)getpid());
    g_autofree char *fixture = g_build_filename(SOURCE_DIR, "guest-fixture.sh", NULL);
    g_autofree char *cmd = NULL;
    /* Room for every byte of the images, so that the second walk below must be free. */
    struct guest_pool_config config = { .max_appliances = 3, .idle_seconds = 600, .live_ttl_ms = 500,
                                        .cache_bytes = (size_t)1 << 30 };
    struct guest_pool *pool;
    struct guest_view *layer0, *layer1, *layer2, *internal, *current, *os, *os2, *missing, *fuzz, *again;
    g_autofree char *f_base = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *f_l1 = g_build_filename(dir, "layer1.qcow2", NULL);
    g_autofree char *f_l2 = g_build_filename(dir, "layer2.qcow2", NULL);
    g_autofree char *f_int = g_build_filename(dir, "internal.qcow2", NULL);
    g_autofree char *f_root = g_build_filename(dir, "osroot.raw", NULL);
    g_autofree char *f_boot = g_build_filename(dir, "osboot.qcow2", NULL);
    g_autofree char *f_root2 = g_build_filename(dir, "osroot2.raw", NULL);
    g_autofree char *f_missing = g_build_filename(dir, "missing.qcow2", NULL);
    g_autofree char *f_fuzz = g_build_filename(dir, "fuzz.raw", NULL);
    g_autofree char *h0 = g_build_filename(dir, "src0", NULL);
    g_autofree char *h1 = g_build_filename(dir, "src1", NULL);
    g_autofree char *h2 = g_build_filename(dir, "src2", NULL);
    g_autofree char *hA = g_build_filename(dir, "srcA", NULL);
    g_autofree char *hB = g_build_filename(dir, "srcB", NULL);
    g_autofree char *error = NULL;
    g_autofree char *mkfs = g_find_program_in_path("mkfs.ext4");
    g_autofree char *nbd = g_find_program_in_path("qemu-nbd");
    int status = 0;
    gint64 t0;

    if (geteuid() != 0 || !mkfs || !nbd) {
        fprintf(stderr, "SKIP: needs root, mkfs.ext4 and qemu-nbd\n");
        return 77;
    }
    g_setenv("LIBGUESTFS_BACKEND", "direct", FALSE);
    /* The data cache may take all of the bound. */
    g_setenv("SNAPFS_DATA_CACHE_MB", "1024", TRUE);
    log_init(false, g_getenv("GUEST_DEBUG") != NULL);
    cmd = g_strdup_printf("sh %s %s >/dev/null 2>&1", fixture, dir);
    if (!g_spawn_command_line_sync(cmd, NULL, NULL, &status, NULL) || !g_spawn_check_wait_status(status, NULL)) {
        fprintf(stderr, "FAIL: cannot build the test images with %s\n", cmd);
        return 1;
    }

    pool = guest_pool_new(&config);
    {
        struct guest_drive d0 = { f_base, "raw", NULL, "vda" };
        struct guest_drive d1 = { f_l1, "qcow2", NULL, "vda" };
        struct guest_drive d2 = { f_l2, "qcow2", NULL, "vda" };
        struct guest_drive dA = { f_int, "qcow2", "snapA", "vda" };
        struct guest_drive dB = { f_int, "qcow2", NULL, "vda" };
        struct guest_drive dos[2] = { { f_root, "raw", NULL, "vda" }, { f_boot, "qcow2", NULL, "vdb" } };
        struct guest_drive dos2 = { f_root2, "raw", NULL, "vda" };
        struct guest_drive dm = { f_missing, "qcow2", NULL, "vda" };
        struct guest_drive df = { f_fuzz, "raw", NULL, "vda" };

        /*
         * Every view of the group is known before the first read: the first one read starts an appliance of a few
         * disks (its own, then the newest images: the fixture makes layer0, layer1 and layer2 first), and the views
         * left out are added to it as disks when they are asked for.
         */
        layer0 = view_of(pool, "g1", "layer0", false, &d0, 1);
        layer1 = view_of(pool, "g1", "layer1", false, &d1, 1);
        layer2 = view_of(pool, "g1", "layer2", false, &d2, 1);
        internal = view_of(pool, "g1", "internal-snapA", false, &dA, 1);
        current = view_of(pool, "g1", "internal-now", true, &dB, 1);
        os = view_of(pool, "g1", "os", false, dos, 2);
        os2 = view_of(pool, "g1", "os-partuuid", false, &dos2, 1);
        missing = view_of(pool, "g2", "missing", false, &dm, 1);
        fuzz = view_of(pool, "g3", "fuzz", false, &df, 1);
        again = view_of(pool, "g1", "layer0-again", false, &d0, 1);
    }
    CHECK(view_of(pool, "g1", "layer0", false, NULL, 0) == layer0, "the same id gives the same view");
    guest_view_unref(layer0);
    CHECK(launches(pool) == 0, "no appliance before content is read");
    CHECK(guest_view_error(layer0) == NULL, "no error before content is read");

    t0 = g_get_monotonic_time();
    compare_view(layer0, h0);
    fprintf(stderr, "layer0 (raw base) compared in %.1f s\n", (double)(g_get_monotonic_time() - t0) / 1e6);
    compare_view(layer1, h1);
    compare_view(layer2, h2);
    compare_view(internal, hA);
    compare_view(current, hB);
    fprintf(stderr, "5 views compared in %.1f s, %u appliance calls\n", (double)(g_get_monotonic_time() - t0) / 1e6,
            calls(pool));

    /* SELinux labels: given where a file has one; ENOTSUP where the filesystems carry none at all (ls stops asking). */
    {
        char label[256];
        ssize_t n = guest_view_getxattr(internal, "/sda/which", "security.selinux", label, sizeof(label));

        CHECK(n > 0 && g_strstr_len(label, n, "etc_t") != NULL, "a labelled file's label: %s",
              n < 0 ? error_message() : "wrong value");
        expect_errno(guest_view_getxattr(internal, "/sda/plain", "security.selinux", label, sizeof(label)), ENODATA,
                     "an unlabelled file of a labelled filesystem");
        expect_errno(guest_view_getxattr(layer0, "/sda/small.txt", "security.selinux", label, sizeof(label)), ENOTSUP,
                     "a file of a filesystem without labels");
        expect_errno(guest_view_getxattr(layer0, "/sda/small.txt", "user.nothing", label, sizeof(label)), ENODATA,
                     "a missing user attribute");
    }

    /* The OS: root and /boot from two disks, mounted as fstab says. */
    {
        struct stat root, boot, kernel, note;
        g_autoptr(GBytes) data = NULL;

        CHECK(guest_view_getattr(os, "/", &root) == 0 && S_ISDIR(root.st_mode), "os: stat /: %s", error_message());
        CHECK(guest_view_getattr(os, "/boot", &boot) == 0 && S_ISDIR(boot.st_mode), "os: stat /boot: %s", error_message());
        CHECK(boot.st_dev != root.st_dev, "os: /boot is its own filesystem (dev %lu and %lu)", (unsigned long)boot.st_dev,
              (unsigned long)root.st_dev);
        CHECK(guest_view_getattr(os, "/boot/vmlinuz-test", &kernel) == 0, "os: /boot/vmlinuz-test: %s", error_message());
        CHECK(guest_view_getattr(os, "/root/note", &note) == 0, "os: /root/note: %s", error_message());
        data = read_all(os, "/etc/hostname", 100);
        CHECK(data && g_bytes_get_size(data) == 9 && memcmp(g_bytes_get_data(data, NULL), "testhost\n", 9) == 0,
              "os: /etc/hostname");
        expect_errno(guest_view_getattr(os, "/sda1", &note), ENOENT, "os: no device folders when an OS is found");
    }
    /* Its fstab names both filesystems by UUID: read by snapfs, no full inspection of the appliance's disks. */
    {
        struct guest_pool_stats stats;

        guest_pool_get_stats(pool, &stats);
        CHECK(stats.inspections == 0, "the OS's fstab told where /boot goes, yet %u inspections ran", stats.inspections);
    }
    /* A PARTUUID in fstab: full inspection of the appliance's disks decides, once, and every view reads on after it. */
    {
        struct guest_pool_stats stats;
        g_autoptr(GBytes) host = read_all(os2, "/etc/hostname", 100);
        g_autoptr(GBytes) boot = NULL;
        unsigned before;

        CHECK(host && g_bytes_get_size(host) == 10 && memcmp(g_bytes_get_data(host, NULL), "otherhost\n", 10) == 0,
              "os-partuuid: /etc/hostname: %s", host ? "wrong bytes" : error_message());
        guest_pool_get_stats(pool, &stats);
        CHECK(stats.inspections == 1, "a PARTUUID root: %u inspections, not 1", stats.inspections);
        /* Bytes not read before: the appliance is asked, and /boot is mounted again (the live view's next read, below,
         * asks again too). */
        before = calls(pool);
        boot = read_all(os, "/boot/vmlinuz-test", 100);
        CHECK(boot && g_bytes_get_size(boot) == 7 && memcmp(g_bytes_get_data(boot, NULL), "kernel\n", 7) == 0,
              "os: /boot mounted again after the inspection: %s", boot ? "wrong bytes" : error_message());
        CHECK(calls(pool) > before, "os: the kernel's bytes came from the appliance");
    }
    CHECK(launches(pool) == 1 && disks_added(pool) == 2, "one appliance served 7 views of one group, two of them "
          "(layer1, layer2) added to it while it ran (%u started, %u disks added)", launches(pool), disks_added(pool));
    /* The live view's answers expire: it asks the appliance again. */
    {
        g_autoptr(GBytes) data = NULL;
        unsigned before = calls(pool);

        g_usleep(600000);
        data = read_all(current, "/sda/which", 100);
        CHECK(data && g_bytes_get_size(data) == 17 && memcmp(g_bytes_get_data(data, NULL), "after snapshot A\n", 17) == 0,
              "the live view read again: %s", data ? "wrong bytes" : error_message());
        CHECK(calls(pool) > before, "the live view asked the appliance again");
    }

    /* Errors a user sees. */
    {
        struct stat st;
        char buf[16], *target = NULL;

        expect_errno(guest_view_getattr(layer2, "/sda/nope", &st), ENOENT, "getattr of a missing name");
        expect_errno(guest_view_getattr(layer2, "/sda/small.txt/x", &st), ENOTDIR, "getattr below a file");
        expect_errno(guest_view_read(layer2, "/sda/dir", buf, sizeof(buf), 0), EISDIR, "read of a directory");
        expect_errno(guest_view_readlink(layer2, "/sda/small.txt", &target), EINVAL, "readlink of a file");
        expect_errno(guest_view_getxattr(layer2, "/sda/small.txt", "user.none", buf, sizeof(buf)), ENODATA, "missing xattr");
        expect_errno(guest_view_getxattr(layer0, "/sda/small.txt", "user.snapfs_test", buf, 2), ERANGE, "small xattr buffer");
        CHECK(guest_view_getxattr(layer0, "/sda/small.txt", "user.snapfs_test", NULL, 0) == 10, "xattr size query");
        CHECK(guest_view_read(layer2, "/sda/small.txt", buf, sizeof(buf), 1000) == 0, "read past the end");
    }

    /* A frozen view answers from its cache: a second walk costs no appliance call. */
    {
        unsigned before = calls(pool);

        compare_view(layer2, h2);
        compare_view(layer0, h0);
        CHECK(calls(pool) == before, "a second walk of frozen views made %u appliance calls", calls(pool) - before);
    }

    /*
     * A bound smaller than one listing's nodes (dir holds 200 files): the walk evicts as it goes, the
     * count stays within the bound, and what was evicted is asked again and answered as the host has it.
     */
    {
        const size_t small = 48 << 10;
        g_autofree char *hdir = g_build_filename(h0, "dir", NULL);
        g_autoptr(GHashTable) inodes = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        struct guest_pool_stats stats;
        unsigned before = calls(pool);
        gint64 start = g_get_monotonic_time();
        g_autofree char *hsmall = g_build_filename(h0, "small.txt", NULL);
        struct stat st, hs;
        char value[64];

        guest_pool_get_stats(pool, &stats);
        CHECK(stats.cached > 4 * small, "the walks cached %zu bytes", stats.cached);
        guest_cache_set_cap(pool, 0, 0);
        guest_pool_get_stats(pool, &stats);
        CHECK(stats.cached == 0 && stats.data_cached == 0, "a bound of 0 leaves %zu bytes", stats.cached);
        guest_cache_set_cap(pool, small, small / 4);
        /* Cached before the bound shrank, and evicted since. */
        CHECK(lstat(hsmall, &hs) == 0 && guest_view_getattr(layer0, "/sda/small.txt", &st) == 0 &&
              st.st_size == hs.st_size && st.st_mtim.tv_sec == hs.st_mtim.tv_sec, "small.txt again: %s",
              error_message());
        CHECK(guest_view_getxattr(layer0, "/sda/small.txt", "user.snapfs_test", value, sizeof(value)) == 10 &&
              memcmp(value, "some value", 10) == 0, "small.txt's xattr again: %s", error_message());
        CHECK(calls(pool) > before, "an evicted entry was asked again");
        bounded = true;
        compare_tree(layer0, hdir, "/sda/dir", inodes);
        bounded = false;
        guest_pool_get_stats(pool, &stats);
        CHECK(stats.cache_peak <= small && stats.data_cached <= small / 4,
              "the caches held up to %zu bytes (%zu of data), over their bound of %zu", stats.cache_peak,
              stats.data_cached, small);
        CHECK(stats.cached > small / 2, "the caches are in use under the bound: %zu bytes", stats.cached);
        fprintf(stderr, "with a %zu KiB bound: %u calls in %.1f s, %zu bytes held at most\n", small >> 10,
                calls(pool) - before, (double)(g_get_monotonic_time() - start) / 1e6, stats.cache_peak);
        guest_cache_set_cap(pool, (size_t)1 << 30, (size_t)1 << 30);
    }

    /* A missing image: EIO and the reason, without disturbing anything else. */
    {
        g_autoptr(GHashTable) entries = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);

        expect_errno(guest_view_readdir(missing, "/", collect, entries), EIO, "readdir of a view of a missing image");
        error = guest_view_error(missing);
        CHECK(error && strstr(error, "missing.qcow2"), "the reason names the image: %s", error ? error : "(none)");
        g_clear_pointer(&error, g_free);
        CHECK(launches(pool) == 1, "a missing image starts no appliance");
    }

    /* qemu of the appliance dies: the next call fails with EIO quickly, the one after starts a new appliance. */
    {
        pid_t pid = guest_view_qemu_pid(layer0);
        char buf[65536];
        struct stat st;
        gint64 start;
        ssize_t n;

        CHECK(pid > 0, "the appliance has a qemu pid");
        if (pid > 0)
            kill(pid, SIGKILL);
        g_usleep(200000);
        start = g_get_monotonic_time();
        n = guest_view_read(again, "/sda/big.bin", buf, sizeof(buf), 0);
        CHECK(n < 0 && error_errno() == EIO, "a read after qemu died: %zd (%s)", n, error_message());
        CHECK(g_get_monotonic_time() - start < 10 * G_USEC_PER_SEC, "the failing read took %.1f s",
              (double)(g_get_monotonic_time() - start) / 1e6);
        n = guest_view_read(again, "/sda/big.bin", buf, sizeof(buf), 0);
        CHECK(n == (ssize_t)sizeof(buf), "the next read starts a new appliance: %zd (%s)", n, error_message());
        /* The new one alone: the other views are added to it when asked for. */
        CHECK(launches(pool) == 2, "%u appliances started", launches(pool));
        CHECK(guest_view_getattr(layer2, "/sda/newdir/new2.txt", &st) == 0, "cached answers survive the appliance");
    }

    /* A hostile filesystem: errors, never a crash or a hang. */
    {
        unsigned ok = 0, bad = 0;
        gint64 start = g_get_monotonic_time();

        walk_hostile(fuzz, "/", 0, &ok, &bad);
        error = guest_view_error(fuzz);
        fprintf(stderr, "fuzzed ext4: %u answers, %u errors in %.1f s, reason: %s\n", ok, bad,
                (double)(g_get_monotonic_time() - start) / 1e6, error ? error : "(none)");
        CHECK(ok + bad > 0, "the fuzzed image was walked");
        g_clear_pointer(&error, g_free);
    }

    /* An appliance holds no lock that stops a commit into a layer it reads (rmdir, revert merge into layers). */
    {
        g_autofree char *io = g_strdup_printf("qemu-io -f qcow2 -c 'write -P 0 0 512' %s", f_l1);
        g_autofree char *err = NULL;
        int st = 0;

        g_autoptr(GBytes) now = NULL;

        /*
         * The domain's appliances moved since those views were read (the first look's retired once the one behind
         * it, which holds every disk, was up): the live view asks again after its second and comes to that one.
         */
        g_usleep(1100000);
        now = read_all(current, "/sda/which", 100);
        CHECK(guest_view_qemu_pid(layer2) > 0 || guest_view_qemu_pid(again) > 0 || guest_view_qemu_pid(current) > 0,
              "an appliance reads layer1 now");
        CHECK(g_spawn_command_line_sync(io, NULL, &err, &st, NULL) && g_spawn_check_wait_status(st, NULL),
              "qemu-io could not write into a layer an appliance reads: %s", err ? err : "");
    }

    /* forget_file: views of that image go, the next call sets up afresh and still answers. */
    {
        struct stat st;

        guest_pool_forget_file(pool, f_l1);
        guest_view_unref(layer1);
        layer1 = view_of(pool, "g1", "layer1", false, &(struct guest_drive){ f_l1, "qcow2", NULL, "vda" }, 1);
        CHECK(guest_view_getattr(layer1, "/sda/new1.txt", &st) == 0, "layer1 after forget_file: %s", error_message());
    }

    guest_view_unref(layer0);
    guest_view_unref(layer1);
    guest_view_unref(layer2);
    guest_view_unref(internal);
    guest_view_unref(current);
    guest_view_unref(os);
    guest_view_unref(os2);
    guest_view_unref(missing);
    guest_view_unref(fuzz);
    guest_view_unref(again);
    t0 = g_get_monotonic_time();
    guest_pool_free(pool);
    fprintf(stderr, "pool freed in %.1f s\n", (double)(g_get_monotonic_time() - t0) / 1e6);
    CHECK(g_get_monotonic_time() - t0 < 10 * G_USEC_PER_SEC, "closing the pool took %.1f s",
          (double)(g_get_monotonic_time() - t0) / 1e6);
    if (!g_getenv("GUEST_KEEP")) {
        g_autofree char *rm = g_strdup_printf("rm -rf %s", dir);
        g_spawn_command_line_sync(rm, NULL, NULL, NULL, NULL);
    }
    fprintf(stderr, "%u checks, %d failed\n", checked, failures);
    return failures ? 1 : 0;
}
