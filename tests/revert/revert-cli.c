/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A command-line driver of src/revert*.c, so tests and benchmarks revert domains without a mount. */
#include "snapfs/engine.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/revert.h"

#include <errno.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdio.h>
#include <string.h>

/* Reports as fs/ would: the errno's name, then the sentence. */
static int fail(void)
{
    int err = error_errno();

    fprintf(stderr, "%s: %s\n", strerrorname_np(err) ? strerrorname_np(err) : "?", error_message());
    return 1;
}

static void ignore_error(void *opaque, virErrorPtr err)
{
}

int main(int argc, char **argv)
{
    struct revert_options options = { .keep = true };
    const char *keep = g_getenv("REVERT_KEEP");
    virConnectPtr conn;
    int ret = 0;

    if (argc < 4 || ((strcmp(argv[3], "write") == 0 || strcmp(argv[3], "busy") == 0) && argc < 6)) {
        fprintf(stderr, "usage: revert-cli URI STATE_DIR write DOMAIN REQUEST | busy DOMAIN REQUEST | recover\n"
                        "       (busy: the write while another operation holds the domain's lock)\n"
                        "       (REQUEST is written as given: add the newline yourself; REVERT_KEEP=off)\n");
        return 2;
    }
    log_init(false, g_getenv("REVERT_DEBUG") != NULL);
    virSetErrorFunc(NULL, ignore_error);
    options.state_dir = argv[2];
    options.keep = !(keep && strcmp(keep, "off") == 0);
    conn = virConnectOpen(argv[1]);
    if (!conn) {
        error_from_virt("cannot connect to '%s'", argv[1]);
        return fail();
    }
    if (strcmp(argv[3], "write") == 0) {
        if (revert_write(conn, argv[4], argv[5], strlen(argv[5]), &options) < 0)
            ret = fail();
    } else if (strcmp(argv[3], "busy") == 0) {
        struct domain_lock *lock = domain_lock_acquire_conn(conn, argv[4], "holding the lock for a test", "cannot hold");

        if (revert_write(conn, argv[4], argv[5], strlen(argv[5]), &options) < 0)
            ret = fail();
        domain_lock_release(lock);
    } else if (strcmp(argv[3], "recover") == 0) {
        if (revert_recover(conn, &options) < 0)
            ret = fail();
    } else {
        fprintf(stderr, "unknown command '%s'\n", argv[3]);
        ret = 2;
    }
    virConnectClose(conn);
    return ret;
}
