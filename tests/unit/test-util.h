/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What the unit tests share: running a shell command in their scratch directory, and removing that directory. */
#pragma once

#include <glib.h>
#include <stdio.h>
#include <stdlib.h>

/* Runs @cmd (quietly) in @dir; a command that fails ends the test program with its text. */
static inline void test_shell(const char *dir, const char *cmd)
{
    g_autofree char *full = g_strdup_printf("cd '%s' && %s >/dev/null 2>&1", dir, cmd);

    if (system(full) != 0) {
        fprintf(stderr, "command failed: %s\n", cmd);
        exit(1);
    }
}

/* Removes @dir and everything below it; 0, or 1 (a failing exit status) if that did not work. */
static inline int test_remove_dir(const char *dir)
{
    g_autofree char *rm = g_strdup_printf("rm -rf '%s'", dir);

    return system(rm) == 0 ? 0 : 1;
}
