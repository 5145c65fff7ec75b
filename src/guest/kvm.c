/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What an earlier snapfs of this boot found of this machine's KVM: a KVM that failed an appliance that TCG then started. */
#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/state-dir.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * A KVM that stalls costs each snapfs kvm_timeout (20 s) of silence before its first appliance
 * falls back to TCG, and one that aborts costs a failed qemu start.  Such a KVM stays broken until
 * the machine or its module changes, so the first snapfs that saw KVM fail while TCG worked writes
 * that down, and a later one of the same boot starts on TCG at once.  The verdict names what it was
 * found with: the boot (boot_id), the qemu binary (path, inode, size, mtime) and the /dev/kvm node
 * (device, inode, ctime: a reloaded module makes a new node); anything else and it does not apply.
 * It lives in a directory of the effective user's alone (checked like the state directory): a
 * verdict can only make snapfs slower, never read other bytes, but nobody else may even do that.
 * Removing the directory's files, or a reboot (/run is a tmpfs), forgets it.
 */
/* SNAPFS_RUNTIME_DIR (for tests), else snapfs's runtime directory, where the per-domain lock files are too. */
static char *verdict_dir(void)
{
    const char *dir = g_getenv("SNAPFS_RUNTIME_DIR");

    return dir && *dir ? g_strdup(dir) : state_dir_runtime();
}

/* "boot ... qemu ... kvm ..." for @hv on this machine now, or NULL when one of them cannot be read. */
static char *verdict_key(const char *hv)
{
    g_autofree char *boot = NULL;
    g_autofree char *path = NULL;
    struct stat qemu, kvm;

    if (!hv || !g_file_get_contents("/proc/sys/kernel/random/boot_id", &boot, NULL, NULL))
        return NULL;
    g_strstrip(boot);
    path = g_find_program_in_path(hv);
    if (!path || stat(path, &qemu) < 0 || stat("/dev/kvm", &kvm) < 0)
        return NULL;
    return g_strdup_printf("boot %s qemu %s %llu:%llu:%lld:%lld.%09ld kvm %llu:%llu:%lld.%09ld", boot, path,
                           (unsigned long long)qemu.st_dev, (unsigned long long)qemu.st_ino,
                           (long long)qemu.st_size, (long long)qemu.st_mtim.tv_sec, qemu.st_mtim.tv_nsec,
                           (unsigned long long)kvm.st_rdev, (unsigned long long)kvm.st_ino,
                           (long long)kvm.st_ctim.tv_sec, kvm.st_ctim.tv_nsec);
}

/* The verdict's file name in its directory: one per key, so that another qemu's verdict stays too. */
static char *verdict_name(const char *key)
{
    g_autofree char *sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256, key, -1);

    return g_strdup_printf("kvm-failed-%.16s", sum);
}

char *guest_kvm_failed_before(const char *hv)
{
    g_autofree char *dir = verdict_dir();
    g_autofree char *key = verdict_key(hv);
    g_autofree char *name = NULL;
    char buf[1024];
    struct stat st;
    ssize_t n;
    int dfd, fd;

    if (!key)
        return NULL;
    dfd = state_dir_open(dir, false);
    if (dfd < 0)
        return NULL;
    name = verdict_name(key);
    fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    close(dfd);
    if (fd < 0)
        return NULL;
    /* Written by this user alone, as it was written: anything else is no verdict. */
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022)) {
        close(fd);
        return NULL;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    /* Line one is the key it was found with, line two why. */
    char *nl = strchr(buf, '\n');

    if (!nl || (size_t)(nl - buf) != strlen(key) || strncmp(buf, key, strlen(key)) != 0)
        return NULL;
    char *why = nl + 1;

    why[strcspn(why, "\n")] = '\0';
    return g_strdup_printf("%s (%s/%s)", *why ? why : "KVM failed", dir, name);
}

void guest_kvm_remember_failed(const char *hv, const char *why)
{
    g_autofree char *dir = verdict_dir();
    g_autofree char *key = verdict_key(hv);
    g_autofree char *name = NULL;
    g_autofree char *text = NULL;
    g_autofree char *line = g_strdelimit(g_strdup(why), "\n", ' ');
    char tmp[] = ".kvm-XXXXXX";
    int dfd, fd = -1;

    if (!key)
        return;
    dfd = state_dir_open(dir, true);
    if (dfd < 0) {
        log_debug("KVM's failure is not remembered: %s", error_message());
        return;
    }
    name = verdict_name(key);
    text = g_strdup_printf("%s\n%s\n", key, line);
    /* A new file renamed over the old: a reader sees a whole verdict or none. */
    for (int attempt = 0; attempt < 5 && fd < 0; attempt++) {
        g_autofree char *rnd = g_strdup_printf("%08x", g_random_int());

        memcpy(tmp + 5, rnd, 6);
        fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    }
    if (fd >= 0) {
        size_t len = strlen(text);
        bool written = write(fd, text, len) == (ssize_t)len;

        if (close(fd) == 0 && written && renameat(dfd, tmp, dfd, name) == 0)
            log_info("KVM failed and TCG worked: later snapfs processes of this boot start on TCG at once "
                        "(%s/%s; remove it to try KVM again)", dir, name);
        else
            unlinkat(dfd, tmp, 0);
    }
    close(dfd);
}
