/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Fail-closed checks before an image is changed: no other domain, snapshot or process may need it. */
#include "engine-priv.h"
#include "snapfs/error.h"
#include "snapfs/virt.h"

#include <dirent.h>
#include <errno.h>
#include <libvirt/virterror.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
                error_set(EIO, "%s: cannot tell who holds '%s' open: %s", what, files[i], g_strerror(errno));
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
        error_set(EIO, "%s: cannot tell who holds its images open: /proc: %s", what, g_strerror(errno));
        return -1;
    }
    while (ret == 0 && (de = readdir(proc))) {
        const char *file;
        int err;

        if (!g_ascii_isdigit(de->d_name[0]) || strcmp(de->d_name, self) == 0)
            continue;
        file = pid_holds(de->d_name, files, want, &err);
        if (err) {
            error_set(EIO, "%s: cannot tell whether process %s holds its images open: %s", what, de->d_name,
                             g_strerror(err));
            ret = -1;
        } else if (file && !pid_is_domain_qemu(de->d_name, uuid)) {
            g_autofree char *comm = pid_comm(de->d_name);

            error_set(EBUSY, "%s: process %s (%s) holds '%s' open", what, de->d_name, comm, file);
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
    g_autoptr(virDomain) dom = NULL;

    if (!images)
        return -1;
    for (size_t i = 0; files[i]; i++) {
        g_autofree char *user = engine_images_user(images, files[i], domain);

        if (user) {
            error_set(EBUSY, "%s: %s stands on '%s'", what, user, files[i]);
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
    }
    if (!uuid) {
        error_set(EIO, "%s: cannot read the domain's UUID: %s", what, virGetLastErrorMessage());
        return -1;
    }
    return engine_check_not_open(uuid, what, files);
}
