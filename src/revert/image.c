/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The images a revert makes and inspects: empty qcow2 overlays made through the engine, backing files read through chain.c, and their names. */
#include "revert-priv.h"
#include "snapfs/chain.h"
#include "snapfs/engine.h"
#include "snapfs/error.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

/* The image @file (of @file_format) is backed by, as an absolute path (and its recorded format), or NULL. */
char *revert_image_backing(const char *file, const char *file_format, char **format)
{
    struct snapfs_layer *layer = chain_read_layer(file, file_format);
    char *backing = NULL;

    if (format)
        *format = NULL;
    if (!layer)
        return NULL;
    if (layer->backing) {
        backing = chain_resolve(layer->file, layer->backing);
        if (format)
            *format = g_strdup(layer->backing_format);
    }
    chain_layer_free(layer);
    return backing;
}

int revert_image_create_overlay(const char *file, const char *backing, const char *backing_format)
{
    int fd = engine_image_create_overlay(file, backing, backing_format);

    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

/* A file name made of what a person can read in @name (snapshot names may hold anything). */
static char *file_part(const char *name)
{
    GString *out = g_string_new(NULL);

    for (const char *p = name; *p; p++)
        g_string_append_c(out, g_ascii_isalnum(*p) || *p == '-' || *p == '_' || *p == '.' ? *p : '_');
    return g_string_free(out, FALSE);
}

/* @dir/@domain.@target.@what.qcow2, or with -2, -3... if that exists already. */
char *revert_image_name(const char *dir, const char *domain, const char *target, const char *what)
{
    g_autofree char *dom = file_part(domain);
    g_autofree char *w = file_part(what);

    for (int n = 1;; n++) {
        g_autofree char *base = n == 1 ? g_strdup_printf("%s.%s.%s.qcow2", dom, target, w)
                                       : g_strdup_printf("%s.%s.%s-%d.qcow2", dom, target, w, n);
        char *path = g_build_filename(dir, base, NULL);

        if (!g_file_test(path, G_FILE_TEST_EXISTS))
            return path;
        g_free(path);
    }
}

bool revert_image_is_named(const char *file, const char *domain, const char *target, const char *what_prefix)
{
    g_autofree char *dom = file_part(domain);
    g_autofree char *base = g_path_get_basename(file);
    g_autofree char *start = g_strdup_printf("%s.%s.%s", dom, target, what_prefix);
    const char *rest;
    size_t n;

    if (!g_path_is_absolute(file) || strchr(target, '/') || !g_str_has_prefix(base, start) ||
        !g_str_has_suffix(base, ".qcow2"))
        return false;
    rest = base + strlen(start);
    if (strlen(rest) <= strlen(".qcow2"))
        return false;
    n = strlen(rest) - strlen(".qcow2");
    /* What file_part() leaves of a snapshot name, a stamp, a "-2": nothing else. */
    for (size_t i = 0; i < n; i++) {
        if (!g_ascii_isalnum(rest[i]) && rest[i] != '-' && rest[i] != '_' && rest[i] != '.')
            return false;
    }
    return true;
}
