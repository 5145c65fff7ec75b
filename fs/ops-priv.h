/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What the files of the FUSE handlers share: admission, the errno and entry replies, the listing cache, revert files. */
#pragma once

#include "fs.h"

/*
 * The errnos in each handler's comment (src/README.md, "Errors", says which failure gets
 * which).  "Node errnos": every handler that finds its node by id answers EACCES to a
 * caller fs_may_enter() turns away and ESTALE for an id the kernel should no longer hold
 * (fs_node()).  "View errnos": whatever reads a snapshot's or a layer's content may answer
 * what the tree's views and the guest reader do: ENOENT, ENOTDIR, EIO (an appliance that
 * failed or was killed past its deadline, images changed under a view, a host not
 * connected), EAGAIN (every appliance busy), EBUSY (a snapshot operation is changing its
 * images), ENOTSUP (images on another host, a format nobody recorded), ELOOP (a chain that
 * loops), and the guest's own errno as libguestfs reports it.  Libvirt's errors come mapped
 * by error_errno_from_virt_code() (ENOENT, EACCES, EBUSY, EINVAL, ENOTSUP, else EIO).
 *
 * The handlers are declared below, by the file that holds them, for fs/ops.c's table; what each
 * exposes and which errnos it answers is said where it is defined.
 */

/* Frozen content never changes: let the kernel keep it for as long as it likes. */
#define FS_FOREVER (365.0 * 86400.0)

/* The mount's context (fuse_session_new()'s userdata): take it before answering, the request goes with the answer. */
static inline struct fs_context *fs_ctx(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

/* ---- fs/access.c: who may enter, and who may change things ------------------------------- */

/* Answers EACCES to a caller who may not enter (allow_users=, allow_groups=); true when it did. */
bool fs_refused(fuse_req_t req);
/* Finds the node of @ino, or answers ESTALE for an id the kernel should no longer hold, EACCES to one who may not enter. */
struct snapfs_node *fs_node(fuse_req_t req, fuse_ino_t ino);
/* Only root and the mounting user may take, delete or revert snapshots. */
bool fs_may_administer(fuse_req_t req);

/* ---- fs/reply.c: replies every handler shares -------------------------------------------- */

/* How long the kernel may keep @node's entry and attributes. */
double fs_timeout(const struct snapfs_node *node);
/* The one place where a failure of src/ becomes an errno for the kernel (and a debug line). */
void fs_reply_error(fuse_req_t req, const char *op, const struct snapfs_node *node);
/* Answers a lookup (or mkdir) of @name in @parent with @node and its attributes, counting the lookup. */
void fs_entry(fuse_req_t req, fuse_ino_t parent, const char *name, const struct snapfs_node *node,
              const struct stat *st);
/* Entry @name was just made in folder @dir (id @parent): answers it as a lookup would, or @op's error. */
void fs_reply_made(fuse_req_t req, fuse_ino_t parent, const struct snapfs_node *dir, const char *name, const char *op);
/* Answers an open and counts the handle until its release; false when the opener was interrupted (no release comes). */
bool fs_reply_open(struct fs_context *ctx, fuse_req_t req, struct fuse_file_info *fi);

/* ---- fs/dir.c: folders and the listing cache --------------------------------------------- */

/* The kernel forgot folder @ino for good: its last listing goes too (listings_lock taken). */
void fs_listing_forget(struct fs_context *ctx, fuse_ino_t ino);

void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, struct fuse_file_info *fi);
void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, struct fuse_file_info *fi);
void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

/* ---- fs/control.c: open revert files ----------------------------------------------------- */

/* One open revert file's state (its own lock guards it). */
struct fs_control;

/* Opens a revert file (the caller checked who may write): its state is kept until the release. */
void fs_control_open(struct fs_context *ctx, fuse_req_t req, struct fuse_file_info *fi);
/* The control state behind @fh, or NULL where @fh is a guest file's handle (listings_lock taken, not the control's). */
struct fs_control *fs_control_of(struct fs_context *ctx, uint64_t fh);
/* The release of a revert file: a request still gathering is dropped with a warning, the state freed. */
void fs_control_release(struct fs_context *ctx, struct fs_control *control);

void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t offset,
              struct fuse_file_info *fi);
void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

/* ---- fs/file.c --------------------------------------------------------------------------- */

void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, struct fuse_file_info *fi);
void fs_readlink(fuse_req_t req, fuse_ino_t ino);
void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

/* ---- fs/lookup.c ------------------------------------------------------------------------- */

void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
void fs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets);
void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

/* ---- fs/changes.c ------------------------------------------------------------------------ */

void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
               const char *newname, unsigned int flags);
void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi);

/* ---- fs/live.c: restoring into live/ ------------------------------------------------------ */

/* The parts of mkdir, rmdir, rename, setattr, setxattr, removexattr and a writing open inside live/ (@node there). */
void fs_live_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void fs_live_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_live_rename(fuse_req_t req, fuse_ino_t parent, struct snapfs_node *dir, const char *name,
                    fuse_ino_t newparent, const char *newname, unsigned int flags);
void fs_live_setattr(fuse_req_t req, struct snapfs_node *node, struct stat *attr, int to_set);
void fs_live_xattr(fuse_req_t req, struct snapfs_node *node, const char *name, const char *value, size_t size,
                   bool remove);
void fs_live_open_write(fuse_req_t req, fuse_ino_t ino, struct snapfs_node *node, struct fuse_file_info *fi);
void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
void fs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);
void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi);
void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name);
void fs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char *name);

/* ---- fs/xattr.c -------------------------------------------------------------------------- */

void fs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
void fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags);
void fs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);
