/* SPDX-License-Identifier: GPL-2.0-or-later */
/* New private overlays snapfs makes itself (O_EXCL, 0600, owned as the image below), and their removal. */
#include "engine-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

bool engine_image_remove_made(const char *file, int fd)
{
    struct stat mine, named;

    /* The fd keeps the inode alive, so its number cannot have gone to another file meanwhile. */
    if (fstat(fd, &mine) < 0 || lstat(file, &named) < 0)
        return false;
    if (mine.st_dev != named.st_dev || mine.st_ino != named.st_ino) {
        log_warn("'%s' is left where it is: it is no longer the file snapfs made under that name", file);
        return false;
    }
    if (unlink(file) < 0) {
        log_warn("cannot remove '%s', which snapfs made: %s", file, g_strerror(errno));
        return false;
    }
    return true;
}

/* What went wrong after the file was made: it is removed (if still the one made) and closed. */
static void overlay_discard(const char *file, int fd)
{
    engine_image_remove_made(file, fd);
    close(fd);
}

/*
 * The overlay's file, empty and private before a byte is written into it:
 * O_EXCL and O_NOFOLLOW, owned as @backing is, 0600.  Its fd, or -1 with the
 * reason and nothing left of it.
 */
static int overlay_open_private(const char *file, const char *backing)
{
    struct stat below;
    int fd;

    if (stat(backing, &below) < 0) {
        error_set(errno == ENOENT ? ENOENT : EIO, "cannot create overlay '%s': cannot stat its backing "
                         "image '%s': %s", file, backing, g_strerror(errno));
        return -1;
    }
    fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0) {
        int e = errno;

        error_set(e == EEXIST ? EEXIST : EIO, "cannot create overlay '%s': %s", file,
                         e == EEXIST ? "a file of that name exists (snapfs never overwrites one)" : g_strerror(e));
        return -1;
    }
    /* The umask may have taken bits away, never added: 0600 exactly, whatever it is. */
    if (fchown(fd, below.st_uid, below.st_gid) < 0 || fchmod(fd, 0600) < 0) {
        error_set(EIO, "cannot give overlay '%s' the owner of '%s': %s", file, backing, g_strerror(errno));
        overlay_discard(file, fd);
        return -1;
    }
    return fd;
}

/* qemu-img writes the qcow2 header into the file @fd holds, by its name @file: 0, or -1 with the reason. */
static int overlay_write_header(int fd, const char *file, const char *backing, const char *backing_format,
                                const char *size)
{
    g_autofree char *out = NULL;
    g_autofree char *err = NULL;
    struct stat made, named;
    int status = 0;
    /* -u: the backing image is known to be complete; not opening it keeps this fast. */
    const char *argv[] = { "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", backing_format, "-b", backing,
                           file, size, NULL };

    if (spawn_sync(argv, SPAWN_TOOL_TIMEOUT_S, &out, &err, &status) < 0)
        return -1;
    if (!g_spawn_check_wait_status(status, NULL)) {
        g_strstrip(err);
        error_set(EIO, "cannot create overlay '%s' on '%s': %s", file, backing, err);
        return -1;
    }
    /* qemu-img opened the name: it must still be the file made here, and still private. */
    if (fstat(fd, &made) < 0 || lstat(file, &named) < 0 || made.st_dev != named.st_dev ||
        made.st_ino != named.st_ino || (made.st_mode & 07777) != 0600) {
        error_set(EIO, "cannot create overlay '%s': the file changed under snapfs while qemu-img wrote it", file);
        return -1;
    }
    if (fsync(fd) < 0) {
        error_set(EIO, "cannot flush overlay '%s' to disk: %s", file, g_strerror(errno));
        return -1;
    }
    return 0;
}

int engine_image_create_overlay(const char *file, const char *backing, const char *backing_format)
{
    g_autofree char *size = NULL;
    struct snapfs_layer *layer;
    int fd;

    /* The format goes into the overlay's header, where qemu takes it for the truth: never a guess. */
    if (!backing_format || !chain_format_known(backing_format)) {
        error_set(ENOTSUP, "cannot create overlay '%s' on '%s': the format of '%s' is %s", file, backing,
                         backing, backing_format ? "not one snapfs accepts" : "recorded neither by libvirt nor by an image");
        return -1;
    }
    layer = chain_read_layer(backing, backing_format);
    if (!layer)
        return -1;
    size = g_strdup_printf("%" G_GUINT64_FORMAT, layer->virtual_size);
    chain_layer_free(layer);
    fd = overlay_open_private(file, backing);
    if (fd < 0)
        return -1;
    if (overlay_write_header(fd, file, backing, backing_format, size) < 0) {
        overlay_discard(file, fd);
        return -1;
    }
    return fd;
}
