/* SPDX-License-Identifier: GPL-2.0-or-later */
/* getxattr(2)'s and listxattr(2)'s answer from a value, shared by the tree's own attributes and the guest's. */
#pragma once

#include "snapfs/error.h"

#include <errno.h>
#include <string.h>
#include <sys/types.h>

/* The size alone when @size is 0 (the caller asks how much room to make); ERANGE when @buf is too small. */
static inline ssize_t xattr_copy_out(const void *value, size_t len, char *buf, size_t size)
{
    if (size == 0)
        return (ssize_t)len;
    if (size < len) {
        error_set(ERANGE, "the buffer is too small for the attribute");
        return -1;
    }
    memcpy(buf, value, len);
    return (ssize_t)len;
}
