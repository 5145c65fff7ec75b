/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A running domain's qemu-guest-agent, through libvirt: its file and exec commands, each bounded. */
#pragma once

#include <glib.h>
#include <libvirt/libvirt.h>
#include <stdbool.h>
#include <sys/types.h>

/*
 * One running domain's agent.  Every command has a deadline (the agent or the guest may hang);
 * commands are one at a time.  libvirt marks a domain whose agent got commands this way
 * ("custom-ga-command" in its log): README.md says so.
 */
struct snapfs_agent;
typedef struct snapfs_agent snapfs_agent;   /* for g_autoptr() */

/*
 * The agent of running domain @name on @conn, if it answers guest-info within @probe_s and allows what
 * live/ needs (guest-exec, guest-file-*): NULL with EROFS and the reason otherwise.  @label names the
 * domain in messages; each later command waits at most @timeout_s.
 */
struct snapfs_agent *agent_open(virConnectPtr conn, const char *name, const char *label, unsigned probe_s,
                                unsigned timeout_s);
void agent_free(struct snapfs_agent *agent);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(snapfs_agent, agent_free)

/* What a program run in the guest did: exit status (-1 if killed by a signal), its output. */
struct agent_exec {
    int status;
    GBytes *out;
    char *err;
};
void agent_exec_clear(struct agent_exec *exec);

/*
 * Run @argv (argv[0] looked up in the guest's PATH, LC_ALL=C) with @input on its stdin (or none) and wait
 * for it: 0 and what it did, or -1 with the reason (no answer within the deadline: EIO).
 */
int agent_run(struct snapfs_agent *agent, const char *const *argv, GBytes *input, struct agent_exec *exec);

/* Files in the guest by the agent's handles: open (fopen(3)'s @mode), seek (from the start), read, write, flush
 * (fflush(3): what was written is the guest's file's, not yet on its disk), close. */
gint64 agent_file_open(struct snapfs_agent *agent, const char *path, const char *mode);
int agent_file_seek(struct snapfs_agent *agent, gint64 handle, off_t offset);
ssize_t agent_file_read(struct snapfs_agent *agent, gint64 handle, char *buf, size_t size);
ssize_t agent_file_write(struct snapfs_agent *agent, gint64 handle, const char *buf, size_t size);
int agent_file_flush(struct snapfs_agent *agent, gint64 handle);
int agent_file_close(struct snapfs_agent *agent, gint64 handle);

/* The most one read or write command carries (base64 in the JSON): Debian 13's 1 MiB FUSE writes, sent whole, made its agent stop answering; 128 KiB chunks are what Debian 12's FUSE sends. */
#define AGENT_FILE_CHUNK (128 * 1024)

/* The errno an error text of the guest names (strerror(3)'s words, as LC_ALL=C writes them), EIO if none. */
int agent_errno_of(const char *text);
