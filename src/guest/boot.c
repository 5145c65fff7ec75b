/* SPDX-License-Identifier: GPL-2.0-or-later */
/* How snapfs's appliances boot: the kernel unpacked once, qemu's translation cache bounded under TCG. */

#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/spawn.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lzma.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>
#ifdef SNAPFS_HAVE_ZSTD
#include <zstd.h>
#endif

/*
 * Why: libguestfs boots the host's kernel as it is installed, a bzImage whose payload is the kernel
 * compressed (xz on Debian 12, zstd on Debian 13).  Its decompressor runs inside the appliance before the kernel's first
 * line, about 3 s of an 11 s boot under TCG and a tenth of a second on KVM.  qemu also boots an
 * uncompressed ELF kernel that carries a PVH entry note (CONFIG_PVH, set by Debian, Fedora and
 * Ubuntu), and that skips the decompressor altogether.
 *
 * So snapfs keeps a fixed appliance of its own beside libguestfs's: the same initrd and root, as hard
 * links to the files supermin built, and the kernel unpacked.  supermin is run first exactly as
 * libguestfs runs it (--if-newer, under libguestfs's lock), so a host upgrade still rebuilds the
 * appliance; a new build has new files, and a new fixed appliance follows it.  The cost is qemu's
 * copy of the unpacked kernel, about 30 MiB more per appliance than the compressed one.
 */

/* Offsets in the bzImage's setup header (Documentation/x86/boot.rst). */
#define BZ_SETUP_SECTS 0x1f1
#define BZ_MAGIC 0x202
#define BZ_VERSION 0x206
#define BZ_PAYLOAD_OFFSET 0x248
#define BZ_PAYLOAD_LENGTH 0x24c
#define BZ_HEADER_END 0x250

/* The ELF note qemu looks for to boot a kernel through its PVH entry. */
#define PVH_NOTE_NAME "Xen"
#define PVH_NOTE_TYPE 18 /* XEN_ELFNOTE_PHYS32_ENTRY */

/* Translated code qemu keeps under TCG (MiB): its own default is a quarter of the host's RAM, up to 1 GiB. */
#define TCG_CACHE_MB 64

static GMutex kernel_lock; /* one preparation at a time within this process */

/* Whether the ELF image @elf of @len bytes has a PVH entry note in a PT_NOTE segment. */
static bool elf_has_pvh_note(const guint8 *elf, size_t len)
{
    uint64_t phoff;
    unsigned phentsize, phnum;

    if (len < 64 || memcmp(elf, "\177ELF", 4) != 0 || elf[4] != 2 /* 64-bit */ || elf[5] != 1 /* LE */)
        return false;
    phoff = guest_le(elf + 32, 8);
    phentsize = guest_le(elf + 54, 2);
    phnum = guest_le(elf + 56, 2);
    if (phentsize < 56 || phoff > len || (uint64_t)phnum * phentsize > len - phoff)
        return false;
    for (unsigned i = 0; i < phnum; i++) {
        const guint8 *ph = elf + phoff + (uint64_t)i * phentsize;
        uint64_t off = guest_le(ph + 8, 8), size = guest_le(ph + 32, 8);

        if (guest_le(ph, 4) != 4 /* PT_NOTE */ || off > len || size > len - off)
            continue;
        for (uint64_t at = off; size - (at - off) >= 12;) {
            uint64_t namesz = guest_le(elf + at, 4), descsz = guest_le(elf + at + 4, 4);
            uint64_t name_end = at + 12 + namesz, next = at + 12 + ((namesz + 3) & ~3ULL) + ((descsz + 3) & ~3ULL);

            if (name_end > off + size)
                break;
            if (guest_le(elf + at + 8, 4) == PVH_NOTE_TYPE && namesz == sizeof(PVH_NOTE_NAME) &&
                memcmp(elf + at + 12, PVH_NOTE_NAME, sizeof(PVH_NOTE_NAME)) == 0)
                return true;
            if (next > off + size)
                break;
            at = next;
        }
    }
    return false;
}

/* The xz payload @in of @length bytes, unpacked into @out (at most 512 MiB). */
static int unpack_xz(const guint8 *in, size_t length, GByteArray *out)
{
    lzma_stream xz = LZMA_STREAM_INIT;
    lzma_ret r;

    if (lzma_stream_decoder(&xz, UINT64_MAX, 0) != LZMA_OK) {
        error_set(ENOMEM, "cannot start an xz decoder");
        return -1;
    }
    xz.next_in = in;
    xz.avail_in = length;
    do {
        size_t had = out->len;

        /* Kernels unpack to several times their size: grow by the input's size at a time. */
        g_byte_array_set_size(out, had + MAX(length, 1 << 20));
        xz.next_out = out->data + had;
        xz.avail_out = out->len - had;
        r = lzma_code(&xz, LZMA_FINISH);
        g_byte_array_set_size(out, out->len - xz.avail_out);
    } while (r == LZMA_OK && out->len < (512u << 20));
    lzma_end(&xz);
    if (r != LZMA_STREAM_END) {
        error_set(EINVAL, "the kernel's xz payload is damaged (%s)",
                         r == LZMA_OK ? "larger than 512 MiB" : "xz error");
        return -1;
    }
    return 0;
}

#ifdef SNAPFS_HAVE_ZSTD
/* The zstd payload @in of @length bytes (Debian 13's kernels), unpacked into @out (at most 512 MiB).  The
 * kernel's build appends the unpacked size after the frame: the first frame is the whole kernel. */
static int unpack_zstd(const guint8 *in, size_t length, GByteArray *out)
{
    ZSTD_DStream *zs = ZSTD_createDStream();
    ZSTD_inBuffer input = { in, length, 0 };
    size_t r = 1;

    if (!zs) {
        error_set(ENOMEM, "cannot start a zstd decoder");
        return -1;
    }
    /* The kernel's own decompressor allows frames made with --ultra -22 (a window of up to 2^27 bytes). */
    ZSTD_DCtx_setParameter(zs, ZSTD_d_windowLogMax, 27);
    while (r != 0 && out->len < (512u << 20)) {
        size_t had = out->len;
        ZSTD_outBuffer output;

        g_byte_array_set_size(out, had + MAX(length, 1 << 20));
        output = (ZSTD_outBuffer){ out->data + had, out->len - had, 0 };
        r = ZSTD_decompressStream(zs, &output, &input);
        g_byte_array_set_size(out, had + output.pos);
        if (ZSTD_isError(r) || (r != 0 && input.pos == length && output.pos < output.size))
            break;
    }
    ZSTD_freeDStream(zs);
    if (r != 0) {
        error_set(EINVAL, "the kernel's zstd payload is damaged (%s)",
                         ZSTD_isError(r) ? ZSTD_getErrorName(r) : out->len >= (512u << 20) ? "larger than 512 MiB"
                                                                                          : "truncated");
        return -1;
    }
    return 0;
}
#endif

GBytes *guest_boot_unpack(const guint8 *image, size_t len)
{
    size_t setup, start, length;
    g_autoptr(GByteArray) out = g_byte_array_new();

    if (len < BZ_HEADER_END || memcmp(image + BZ_MAGIC, "HdrS", 4) != 0) {
        error_set(EINVAL, "the kernel is not a bzImage");
        return NULL;
    }
    if (guest_le(image + BZ_VERSION, 2) < 0x208) {
        error_set(EINVAL, "the kernel's boot protocol %#x is older than 2.08, which names its payload",
                         (unsigned)guest_le(image + BZ_VERSION, 2));
        return NULL;
    }
    setup = image[BZ_SETUP_SECTS] ? image[BZ_SETUP_SECTS] : 4;
    start = (setup + 1) * 512 + guest_le(image + BZ_PAYLOAD_OFFSET, 4);
    length = guest_le(image + BZ_PAYLOAD_LENGTH, 4);
    if (start > len || length > len - start || length < 6) {
        error_set(EINVAL, "the kernel's payload lies outside the file");
        return NULL;
    }
    /* The payload's format is the one its header names (the kernel's own decompressor goes by it too). */
    if (memcmp(image + start, "\3757zXZ\0", 6) == 0) {
        if (unpack_xz(image + start, length, out) < 0)
            return NULL;
    } else if (memcmp(image + start, "\050\265\057\375", 4) == 0) {
#ifdef SNAPFS_HAVE_ZSTD
        if (unpack_zstd(image + start, length, out) < 0)
            return NULL;
#else
        error_set(ENOTSUP, "the kernel is compressed with zstd, and snapfs was built without libzstd");
        return NULL;
#endif
    } else {
        error_set(ENOTSUP, "the kernel is compressed with a format other than xz and zstd");
        return NULL;
    }
    if (!elf_has_pvh_note(out->data, out->len)) {
        error_set(ENOTSUP, "the unpacked kernel has no PVH entry note (CONFIG_PVH) for qemu to boot it by");
        return NULL;
    }
    return g_byte_array_free_to_bytes(g_steal_pointer(&out));
}

/* Whether @dir is a directory of ours that nobody else can write into (it lives in /var/tmp). */
static bool dir_is_ours(const char *dir)
{
    struct stat st;

    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return false;
    return lstat(dir, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid() && !(st.st_mode & 022);
}

/* snapfs's directory beside libguestfs's cache in @cachedir, made if need be; NULL with the reason. */
static char *cache_dir(const char *cachedir)
{
    g_autofree char *mine = NULL;

    if (!cachedir) {
        error_set(EIO, "libguestfs names no cache directory");
        return NULL;
    }
    mine = g_strdup_printf("%s/.snapfs-%ju", cachedir, (uintmax_t)geteuid());
    if (!dir_is_ours(mine)) {
        error_set(EPERM, "%s is not a directory of user %ju alone", mine, (uintmax_t)geteuid());
        return NULL;
    }
    return g_steal_pointer(&mine);
}

/*
 * Identity of libguestfs's built appliance: device, inode and size of its three files, or NULL.  Not their
 * times: libguestfs touches them at every launch, so that cleaners of /var/tmp leave them.  A new build
 * has new inodes, as supermin writes new files (and our hard links keep the old ones from being reused).
 */
static char *appliance_stamp(const char *built)
{
    static const char *const parts[] = { "kernel", "initrd", "root" };
    g_autoptr(GString) stamp = g_string_new(NULL);

    for (size_t i = 0; i < G_N_ELEMENTS(parts); i++) {
        g_autofree char *file = g_build_filename(built, parts[i], NULL);
        struct stat st;

        if (stat(file, &st) < 0 || !S_ISREG(st.st_mode))
            return NULL;
        g_string_append_printf(stamp, "%ju:%ju:%ju;", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino,
                               (uintmax_t)st.st_size);
    }
    return g_string_free(g_steal_pointer(&stamp), FALSE);
}

/* supermin --if-newer, as libguestfs runs it before each launch: builds or refreshes @built. */
static int appliance_refresh(const char *supermin_d, const char *base, const char *built)
{
    struct utsname u;
    g_autofree char *lock = g_build_filename(base, "lock", NULL);
    g_autofree char *err = NULL;
    int status = 0;

    if (uname(&u) < 0)
        return -1;
    const char *argv[] = { "supermin", "--build", "--if-newer", "--lock", lock, "--copy-kernel", "-f", "ext2",
                           "--host-cpu", u.machine, supermin_d, "-o", built, NULL };
    /* supermin waits for its lock without limit: a wedged build elsewhere must not wedge this start. */
    if (spawn_sync(argv, SPAWN_BUILD_TIMEOUT_S, NULL, &err, &status) < 0)
        return -1;
    if (!g_spawn_check_wait_status(status, NULL)) {
        error_set(EIO, "supermin failed: %s", g_strstrip(err));
        return -1;
    }
    return 0;
}

/* Remove a prepared appliance, or one half made. */
static void remove_appliance(const char *dir)
{
    g_autoptr(GDir) inner = g_dir_open(dir, 0, NULL);
    const char *file;

    while (inner && (file = g_dir_read_name(inner))) {
        g_autofree char *f = g_build_filename(dir, file, NULL);

        unlink(f);
    }
    rmdir(dir);
}

/* Remove every prepared appliance in @mine but @keep: what is left of earlier builds of libguestfs's. */
static void remove_old(const char *mine, const char *keep)
{
    g_autoptr(GDir) dir = g_dir_open(mine, 0, NULL);
    const char *name;

    while (dir && (name = g_dir_read_name(dir))) {
        g_autofree char *path = g_build_filename(mine, name, NULL);

        if (g_str_has_prefix(name, "appliance-") && g_strcmp0(path, keep) != 0)
            remove_appliance(path);
    }
}

/* Whether @dir holds the four files of a ready-made appliance. */
static bool appliance_complete(const char *dir)
{
    static const char *const parts[] = { "kernel", "initrd", "root", "README.fixed" };

    for (size_t i = 0; i < G_N_ELEMENTS(parts); i++) {
        g_autofree char *file = g_build_filename(dir, parts[i], NULL);

        if (!g_file_test(file, G_FILE_TEST_IS_REGULAR))
            return false;
    }
    return true;
}

/* Fill the directory @tmp from @built: hard links to its initrd and root, its kernel unpacked. */
static int fixed_appliance_fill(const char *built, const char *tmp)
{
    g_autofree char *kernel = g_build_filename(built, "kernel", NULL);
    g_autofree char *out = NULL;
    g_autofree char *image = NULL;
    g_autoptr(GBytes) unpacked = NULL;
    g_autoptr(GError) error = NULL;
    gsize len;

    for (const char *const *part = (const char *const[]){ "initrd", "root", NULL }; *part; part++) {
        g_autofree char *from = g_build_filename(built, *part, NULL);
        g_autofree char *to = g_build_filename(tmp, *part, NULL);

        if (link(from, to) < 0) {
            error_set(errno, "cannot link %s to %s: %s", from, to, g_strerror(errno));
            return -1;
        }
    }
    if (!g_file_get_contents(kernel, &image, &len, &error)) {
        error_set(EIO, "cannot read the appliance's kernel: %s", error->message);
        return -1;
    }
    unpacked = guest_boot_unpack((const guint8 *)image, len);
    if (!unpacked)
        return -1;
    out = g_build_filename(tmp, "kernel", NULL);
    if (!g_file_set_contents_full(out, g_bytes_get_data(unpacked, NULL), g_bytes_get_size(unpacked),
                                  G_FILE_SET_CONTENTS_CONSISTENT, 0644, &error)) {
        error_set(EIO, "cannot write the unpacked kernel: %s", error->message);
        return -1;
    }
    /* libguestfs takes a directory with this file in it for a ready-made appliance. */
    g_free(out);
    out = g_build_filename(tmp, "README.fixed", NULL);
    if (!g_file_set_contents(out, "Made by snapfs from libguestfs's appliance, its kernel unpacked.\n", -1, &error)) {
        error_set(EIO, "cannot write %s: %s", out, error->message);
        return -1;
    }
    return 0;
}

/* Make @fixed from @built: hard links to its initrd and root, its kernel unpacked. */
static int appliance_make(const char *built, const char *mine, const char *fixed, const char *stamp)
{
    g_autofree char *tmp = g_build_filename(mine, "appliance.XXXXXX", NULL);
    g_autofree char *again = NULL;
    int rc = -1;

    if (!g_mkdtemp_full(tmp, 0755)) {
        error_set(errno, "cannot make a directory in %s: %s", mine, g_strerror(errno));
        return -1;
    }
    if (fixed_appliance_fill(built, tmp) < 0)
        goto cleanup;
    /* supermin rebuilt the appliance meanwhile: these links may mix two builds. */
    again = appliance_stamp(built);
    if (g_strcmp0(again, stamp) != 0) {
        error_set(EAGAIN, "libguestfs's appliance changed while it was copied");
        goto cleanup;
    }
    if (rename(tmp, fixed) < 0 && errno != EEXIST && errno != ENOTEMPTY) {
        error_set(errno, "cannot rename %s to %s: %s", tmp, fixed, g_strerror(errno));
        goto cleanup;
    }
    rc = 0;

cleanup:
    remove_appliance(tmp);
    remove_old(mine, fixed);
    return rc;
}

char *guest_boot_appliance(guestfs_h *g)
{
    g_autofree char *cachedir = NULL, *base = NULL, *built = NULL, *mine = NULL, *stamp = NULL;
    g_autofree char *fixed = NULL, *sum = NULL, *supermin_d = NULL;
    g_auto(GStrv) path = NULL;
    g_autoptr(GMutexLocker) locker = NULL;

    /* The user chose an appliance or a kernel: theirs. */
    if (g_getenv("LIBGUESTFS_PATH") || g_getenv("SUPERMIN_KERNEL"))
        return NULL;
    path = g_strsplit(guestfs_get_path(g) ? guestfs_get_path(g) : "", ":", -1);
    for (char **p = path; *p && !supermin_d; p++) {
        g_autofree char *d = g_build_filename(*p, "supermin.d", NULL);

        if (g_file_test(d, G_FILE_TEST_IS_DIR))
            supermin_d = g_steal_pointer(&d);
    }
    if (!supermin_d) {
        error_set(ENOENT, "libguestfs has no supermin appliance in %s", guestfs_get_path(g));
        return NULL;
    }
    cachedir = guestfs_get_cachedir(g);
    locker = g_mutex_locker_new(&kernel_lock);
    mine = cache_dir(cachedir);
    if (!mine)
        return NULL;
    /* The names libguestfs gives its cache (lib/appliance.c), shared with every other libguestfs tool. */
    base = g_strdup_printf("%s/.guestfs-%ju", cachedir, (uintmax_t)geteuid());
    built = g_build_filename(base, "appliance.d", NULL);
    if (!dir_is_ours(base)) {
        error_set(EPERM, "%s is not a directory of user %ju alone", base, (uintmax_t)geteuid());
        return NULL;
    }
    if (appliance_refresh(supermin_d, base, built) < 0)
        return NULL;
    stamp = appliance_stamp(built);
    if (!stamp) {
        error_set(ENOENT, "supermin left no kernel, initrd and root in %s", built);
        return NULL;
    }
    sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256, stamp, -1);
    fixed = g_strdup_printf("%s/appliance-%.16s", mine, sum);
    if (!appliance_complete(fixed)) {
        remove_appliance(fixed); /* what another snapfs left half removed */
        if (appliance_make(built, mine, fixed, stamp) < 0)
            return NULL;
        log_info("appliances boot the kernel of %s unpacked, from %s", built, fixed);
    }
    return g_steal_pointer(&fixed);
}

void guest_boot_release(pid_t qemu, const char *fixed)
{
    g_autofree char *maps_file = g_strdup_printf("/proc/%d/maps", (int)qemu);
    g_autofree char *maps = NULL;
    g_autofree char *prefix = g_strconcat(fixed, "/", NULL);
    g_autoptr(GArray) ranges = g_array_new(FALSE, FALSE, sizeof(struct iovec));
    size_t bytes = 0;
    ssize_t released;
    int pidfd;

    if (!g_file_get_contents(maps_file, &maps, NULL, NULL))
        return;
    for (char *line = maps, *next; line && *line; line = next) {
        unsigned long start, end;
        int at = 0;

        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &start, &end, &at) == 2 && at > 0 &&
            g_str_has_prefix(line + at, prefix) && end > start) {
            struct iovec range = { .iov_base = (void *)start, .iov_len = end - start };

            g_array_append_val(ranges, range);
            bytes += range.iov_len;
        }
    }
    if (ranges->len == 0)
        return;
    pidfd = pidfd_open(qemu, 0);
    if (pidfd < 0)
        return;
    released = process_madvise(pidfd, (const struct iovec *)ranges->data, ranges->len, MADV_PAGEOUT, 0);
    close(pidfd);
    if (released < 0)
        log_debug("cannot page out qemu %d's copy of the appliance's kernel: %s", (int)qemu, g_strerror(errno));
    else
        log_debug("qemu %d: %zu MiB of the kernel and initrd it booted paged out", (int)qemu, bytes >> 20);
}

/*
 * The script: qemu refuses -accel beside the "-machine accel=tcg,..." that libguestfs passes (1.48; 1.54 passes
 * "-machine q35,accel=tcg"), so it moves the accelerator into -accel, with the cache's size, whichever of them
 * runs.  "accel=kvm:tcg" (KVM may be there) is left as it is.
 */
static const char qemu_script[] =
    "#!/bin/sh\n"
    "# Made by snapfs: the qemu of its libguestfs appliances, which under TCG keeps %d MiB of translated code.\n"
    "n=$#\n"
    "while [ \"$n\" -gt 0 ]; do\n"
    "    arg=$1; shift; n=$((n - 1))\n"
    "    if [ \"$arg\" = -machine ] && [ \"$n\" -gt 0 ]; then\n"
    "        case $1 in\n"
    "        accel=tcg) shift; n=$((n - 1)); set -- \"$@\" -accel tcg,tb-size=%d; continue ;;\n"
    "        accel=tcg,*) m=${1#accel=tcg,}; shift; n=$((n - 1))\n"
    "            set -- \"$@\" -machine \"$m\" -accel tcg,tb-size=%d; continue ;;\n"
    "        *,accel=tcg) m=${1%%,accel=tcg}; shift; n=$((n - 1))\n"
    "            set -- \"$@\" -machine \"$m\" -accel tcg,tb-size=%d; continue ;;\n"
    "        *,accel=tcg,*) m=\"${1%%%%,accel=tcg,*},${1#*,accel=tcg,}\"; shift; n=$((n - 1))\n"
    "            set -- \"$@\" -machine \"$m\" -accel tcg,tb-size=%d; continue ;;\n"
    "        esac\n"
    "    fi\n"
    "    set -- \"$@\" \"$arg\"\n"
    "done\n"
    "exec '%s' \"$@\"\n";

char *guest_boot_qemu(guestfs_h *g)
{
    g_autofree char *hv = guestfs_get_hv(g), *cachedir = guestfs_get_cachedir(g);
    g_autofree char *mine = NULL, *script = NULL, *sum = NULL, *have = NULL, *path = NULL;
    g_autoptr(GMutexLocker) locker = NULL;
    g_autoptr(GError) error = NULL;
    struct statvfs fs;

    /* The user chose a qemu: theirs. */
    if (g_getenv("LIBGUESTFS_HV")) {
        error_set(EEXIST, "LIBGUESTFS_HV names the qemu to run");
        return NULL;
    }
    if (!hv || !g_path_is_absolute(hv) || strchr(hv, '\'') || strchr(hv, '\n')) {
        error_set(EINVAL, "libguestfs's qemu '%s' cannot be named in a script", hv ? hv : "");
        return NULL;
    }
    locker = g_mutex_locker_new(&kernel_lock);
    mine = cache_dir(cachedir);
    if (!mine)
        return NULL;
    if (statvfs(mine, &fs) == 0 && (fs.f_flag & ST_NOEXEC)) {
        error_set(EPERM, "%s is on a filesystem mounted noexec", mine);
        return NULL;
    }
    script = g_strdup_printf(qemu_script, TCG_CACHE_MB, TCG_CACHE_MB, TCG_CACHE_MB, TCG_CACHE_MB, TCG_CACHE_MB,
                             hv);
    sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256, script, -1);
    path = g_strdup_printf("%s/qemu-%.12s", mine, sum);
    if (g_file_get_contents(path, &have, NULL, NULL) && strcmp(have, script) == 0 &&
        g_file_test(path, G_FILE_TEST_IS_EXECUTABLE))
        return g_steal_pointer(&path);
    if (!g_file_set_contents_full(path, script, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0755, &error)) {
        error_set(EIO, "cannot write %s: %s", path, error->message);
        return NULL;
    }
    log_info("appliances under TCG keep %d MiB of translated code: qemu runs through %s", TCG_CACHE_MB, path);
    return g_steal_pointer(&path);
}
