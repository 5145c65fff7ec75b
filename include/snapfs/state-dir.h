/* SPDX-License-Identifier: GPL-2.0-or-later */
/* snapfs's own directories (the state directory, the lock directory): private to the effective user, opened without following links, locked per process. */
#pragma once

#include <stdbool.h>

/*
 * Opens directory @path (O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) after
 * checking it with lstat() and again with fstat() of what was opened (the
 * same inode): a directory, not a symlink, owned by the effective user and
 * writable by nobody else.  With @create, a missing @path is made 0700,
 * its missing parents too (0700, as g_mkdir_with_parents() makes them).
 * The fd, or -1 with the reason recorded (EACCES unsafe, ENOTDIR not a
 * directory, ENOENT missing, EIO otherwise); nothing is created inside.
 */
int state_dir_open(const char *path, bool create);

/*
 * Takes the exclusive advisory lock (flock) of the directory @fd opened
 * above, held until @fd is closed (by the process's end at the latest), so
 * that one snapfs at a time acts on what it holds.  Waits at most @wait_ms
 * for the process that holds it to end; then -1 with EBUSY recorded,
 * naming that process: "the state directory '/var/lib/snapfs' is in use by
 * snapfs pid 1234 (snapfs -c qemu:///system /mnt)".
 */
int state_dir_lock(int fd, const char *path, unsigned wait_ms);

/* The state directory of a snapfs run as root, when -o state_dir= does not name one. */
#define STATE_DIR_ROOT "/var/lib/snapfs"
/*
 * Where snapfs journals by-hand operations when -o state_dir= does not say: STATE_DIR_ROOT
 * for root, else $XDG_STATE_HOME/snapfs (~/.local/state/snapfs).  Caller frees.
 */
char *state_dir_default(void);

/*
 * snapfs's directory for what lasts a boot (per-domain lock files, what KVM did): /run/snapfs
 * for root, else the user's runtime directory's snapfs/ (a tmpfs: nothing in it survives a boot).
 */
char *state_dir_runtime(void);
