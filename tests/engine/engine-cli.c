/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A command-line driver of the snapshot engine, so tests and benchmarks reach src/engine*.c without a mount. */
#include "snapfs/engine.h"
#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdio.h>
#include <string.h>

static void print_changed(const char *file, void *opaque)
{
    printf("changed %s\n", file);
    fflush(stdout);
}

/* Reports like fs/ would: the errno's name, then the sentence. */
static int fail(void)
{
    int err = error_errno();

    fprintf(stderr, "%s: %s\n", strerrorname_np(err) ? strerrorname_np(err) : "?", error_message());
    return err;
}

struct racer {
    virConnectPtr conn;
    const char *domain;
    const char *name;
    int result;
};

static gpointer race(gpointer data)
{
    struct racer *r = data;
    struct engine_options options = { ENGINE_QUIESCE_OFF };

    r->result = engine_snapshot_create(r->conn, r->domain, r->name, &options) < 0 ? error_errno() : 0;
    return NULL;
}

struct deleter {
    virConnectPtr conn;
    const char *domain;
    const char *name;
    gint done;
    int result;
};

static gpointer delete_thread(gpointer data)
{
    struct deleter *d = data;

    d->result = engine_snapshot_delete(d->conn, d->domain, d->name) < 0 ? fail() : 0;
    g_atomic_int_set(&d->done, 1);
    return NULL;
}

/* Deletes in a thread and prints what engine_progress() says meanwhile, each new sentence once. */
static int delete_watching(virConnectPtr conn, const char *domain, const char *name)
{
    struct deleter d = { conn, domain, name, 0, 0 };
    GThread *thread = g_thread_new("delete", delete_thread, &d);
    g_autofree char *last = NULL;

    while (!g_atomic_int_get(&d.done)) {
        char *now = engine_progress(conn, domain);

        if (now && g_strcmp0(now, last) != 0) {
            printf("progress %s\n", now);
            fflush(stdout);
            g_free(last);
            last = now;
        } else {
            g_free(now);
        }
        g_usleep(20 * 1000);
    }
    g_thread_join(thread);
    g_free(last);
    last = engine_progress(conn, domain);
    printf("after %s\n", last ? last : "nothing");
    return d.result;
}

static void ignore_error(void *opaque, virErrorPtr err)
{
}

int main(int argc, char **argv)
{
    virConnectPtr conn;
    const char *cmd;
    int ret = 0;

    if (argc < 3) {
        fprintf(stderr, "usage: engine-cli URI check NAME | create DOMAIN NAME [auto|on|off] | delete DOMAIN NAME |\n"
                        "       delete-watch DOMAIN NAME | describe DOMAIN NAME TEXT | race DOMAIN NAME\n");
        return 2;
    }
    log_init(false, g_getenv("ENGINE_DEBUG") != NULL);
    virSetErrorFunc(NULL, ignore_error);
    cmd = argv[2];
    if (strcmp(cmd, "check") == 0 && argc == 4)
        return engine_check_name(argv[3]) < 0 ? fail() : 0;
    conn = virConnectOpen(argv[1]);
    if (!conn) {
        fprintf(stderr, "cannot open %s\n", argv[1]);
        return 2;
    }
    engine_set_chain_changed(print_changed, NULL);
    if (strcmp(cmd, "create") == 0 && argc >= 5) {
        struct engine_options options = { ENGINE_QUIESCE_AUTO };

        if (argc > 5 && strcmp(argv[5], "on") == 0)
            options.quiesce = ENGINE_QUIESCE_ON;
        else if (argc > 5 && strcmp(argv[5], "off") == 0)
            options.quiesce = ENGINE_QUIESCE_OFF;
        ret = engine_snapshot_create(conn, argv[3], argv[4], &options) < 0 ? fail() : 0;
    } else if (strcmp(cmd, "delete") == 0 && argc == 5) {
        ret = engine_snapshot_delete(conn, argv[3], argv[4]) < 0 ? fail() : 0;
    } else if (strcmp(cmd, "delete-watch") == 0 && argc == 5) {
        ret = delete_watching(conn, argv[3], argv[4]);
    } else if (strcmp(cmd, "describe") == 0 && argc == 6) {
        ret = engine_snapshot_set_description(conn, argv[3], argv[4], argv[5]) < 0 ? fail() : 0;
    } else if (strcmp(cmd, "race") == 0 && argc == 5) {
        struct racer racers[2] = { { conn, argv[3], argv[4], 0 }, { conn, argv[3], argv[4], 0 } };
        GThread *threads[2];

        for (int i = 0; i < 2; i++)
            threads[i] = g_thread_new("racer", race, &racers[i]);
        for (int i = 0; i < 2; i++)
            g_thread_join(threads[i]);
        for (int i = 0; i < 2; i++)
            printf("%s\n", racers[i].result ? strerrorname_np(racers[i].result) : "OK");
    } else {
        fprintf(stderr, "engine-cli: unknown command or wrong arguments\n");
        ret = 2;
    }
    virConnectClose(conn);
    return ret;
}
