/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Reading a view's file data: 2 MiB chunks fetched once, kept in the pool's cache. */
#include "guest-priv.h"

#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

/* Bytes fetched per appliance call: one round trip serves sixteen 128 KiB FUSE reads. */
#define GUEST_CHUNK (2u << 20)

/* Chunk @index of @path (a file of @size bytes), from the cache or one pread of up to GUEST_CHUNK bytes. */
static GBytes *view_chunk(struct guest_view *view, const char *path, off_t size, uint64_t index)
{
    /* Lengths first: a guest's file names may hold newlines. */
    g_autofree char *key = g_strdup_printf("%zu:%s%zu:%s%" PRIu64, strlen(view->id), view->id, strlen(path), path,
                                           index);
    struct guest_appliance *app;
    g_autofree char *apath = NULL;
    char *bytes;
    size_t got = 0;
    GBytes *data = guest_cache_get_data(view, key);

    if (data)
        return data;
    /* A read the kernel makes ahead and the read itself often want the same chunk at once: fetch it once. */
    g_mutex_lock(&view->fetch_lock);
    data = guest_cache_get_data(view, key);
    if (data) {
        g_mutex_unlock(&view->fetch_lock);
        return data;
    }
    app = guest_view_enter(view);
    if (!app) {
        g_mutex_unlock(&view->fetch_lock);
        return NULL;
    }
    apath = guest_view_path(view, path);
    /* No more than the file holds: the appliance allocates what is asked. */
    bytes = guestfs_pread(app->g, apath, (int)MIN((uint64_t)GUEST_CHUNK, (uint64_t)size - index * GUEST_CHUNK),
                          (int64_t)(index * GUEST_CHUNK), &got);
    if (!bytes)
        guest_appliance_error(app, "read", path);
    guest_view_leave(view, app);
    if (bytes) {
        data = g_bytes_new_take(bytes, got);
        guest_cache_put_data(view, key, data);
    }
    g_mutex_unlock(&view->fetch_lock);
    return data;
}

ssize_t guest_view_read(struct guest_view *view, const char *path, char *buf, size_t size, off_t offset)
{
    if (view->agent)
        return guest_agent_read(view, path, buf, size, offset);
    struct stat st;
    size_t done = 0;

    if (guest_view_resolve(view, path, &st, NULL, NULL) < 0)
        return -1;
    if (S_ISDIR(st.st_mode)) {
        error_set(EISDIR, "'%s' is a directory in the guest", path);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        error_set(EINVAL, "'%s' is not a regular file in the guest", path);
        return -1;
    }
    if (offset < 0) {
        error_set(EINVAL, "negative offset reading '%s'", path);
        return -1;
    }
    if (offset >= st.st_size)
        return 0;
    size = MIN(size, (size_t)(st.st_size - offset));
    while (done < size) {
        uint64_t pos = (uint64_t)offset + done;
        uint64_t index = pos / GUEST_CHUNK;
        size_t within = (size_t)(pos % GUEST_CHUNK), have, n;
        g_autoptr(GBytes) data = view_chunk(view, path, st.st_size, index);
        const char *bytes;

        if (!data)
            return done > 0 ? (ssize_t)done : -1;
        bytes = g_bytes_get_data(data, &have);
        if (within >= have)
            break;   /* the file is shorter than its stat said (a live view) */
        n = MIN(have - within, size - done);
        memcpy(buf + done, bytes + within, n);
        done += n;
        if (have < GUEST_CHUNK && within + n >= have)
            break;
    }
    return (ssize_t)done;
}

