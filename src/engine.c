/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The snapshot engine: create and delete snapshots (being written; the locks are in engine-lock.c). */
#include "snapfs/engine.h"
#include "snapfs/error.h"

#include <errno.h>

int engine_check_name(const char *name)
{
    snapfs_error_set(ENOTSUP, "cannot use '%s' as a snapshot name: the engine is not written yet", name);
    return -1;
}

int engine_snapshot_create(virConnectPtr conn, const char *domain, const char *name,
                           const struct engine_options *options)
{
    snapfs_error_set(ENOTSUP, "cannot create snapshot '%s' of '%s': not written yet", name, domain);
    return -1;
}

int engine_snapshot_delete(virConnectPtr conn, const char *domain, const char *name)
{
    snapfs_error_set(ENOTSUP, "cannot delete snapshot '%s' of '%s': not written yet", name, domain);
    return -1;
}

int engine_snapshot_set_description(virConnectPtr conn, const char *domain, const char *name,
                                    const char *description)
{
    snapfs_error_set(ENOTSUP, "cannot describe snapshot '%s' of '%s': not written yet", name, domain);
    return -1;
}
