/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What a change to a writable view is called, in log lines and errors (write.c's and agent.c's). */
#include "guest-priv.h"

const char *guest_change_name(enum guest_change_op op)
{
    static const char *const names[] = {
        [GUEST_CREATE] = "create a file",  [GUEST_MKDIR] = "make a directory",
        [GUEST_MKNOD] = "make a special file", [GUEST_UNLINK] = "unlink",
        [GUEST_RMDIR] = "remove a directory", [GUEST_RENAME] = "rename",
        [GUEST_SYMLINK] = "make a symlink", [GUEST_LINK] = "make a hard link",
        [GUEST_CHMOD] = "change the mode of", [GUEST_CHOWN] = "change the owner of",
        [GUEST_TRUNCATE] = "truncate", [GUEST_UTIMENS] = "set the times of",
        [GUEST_SETXATTR] = "set an xattr of", [GUEST_REMOVEXATTR] = "remove an xattr of",
    };

    return op < G_N_ELEMENTS(names) && names[op] ? names[op] : "change";
}
