/* SPDX-License-Identifier: GPL-2.0-or-later */
/* snapfs --check: whether this host can run snapfs, said in plain words with how to fix what is wrong. */
#pragma once

#include <stddef.h>
#include <stdio.h>

/* Checks /dev/fuse, each connection (NULL: libvirt's default) and one libguestfs appliance launch. Returns the number of problems. */
int check_run(const char *const *uris, size_t n_uris, FILE *out);
