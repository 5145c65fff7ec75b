/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Views of snapshots, layers and live: which images a content node reads, found once, and checked against the images before every read. */
#include "tree-priv.h"
#include "snapfs/chain.h"
#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <string.h>

/*
 * What a view reads must be what it read when it was made: a merge (rmdir,
 * revert, or virsh and others behind snapfs's back) rewrites frozen images in
 * place.  So every view knows each image file of its chains as it found it
 * (device, inode, size, mtime; of the live top only which file it is, since
 * a running guest writes it), and is checked against them before and after
 * every read: once one differs, everything opened on the view answers EIO
 * and the kernel is told to drop what it cached of those files; a fresh
 * lookup makes a new view.  snapfs's own rmdir and revert never get there:
 * they refuse (EBUSY) while anything is open in a view of what they change
 * (tree_before_change()).
 */
struct view_image {
    char *file;
    bool moving;      /* the top of a disk's chain: only which file it is counts */
    bool missing;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

/* A view and the images behind it, shared by the tree's cache and the handles opened on it. */
struct tree_view {
    gint refs;
    struct guest_view *view;
    char *label;      /* "snapshot 's2' of domain 'localhost/web'" */
    GArray *images;   /* struct view_image */
    gint stale;       /* atomic: an image changed since it was made */
    bool restorable;  /* a writer: its pre-restore snapshot is taken, or none is wanted (restore lock) */
};

static void view_image_clear(gpointer data)
{
    g_free(((struct view_image *)data)->file);
}

void tree_view_image_free(gpointer data)
{
    view_image_clear(data);
    g_free(data);
}

static void view_image_stat(struct view_image *img)
{
    struct stat st;

    img->missing = stat(img->file, &st) < 0;
    if (img->missing)
        return;
    img->dev = st.st_dev;
    img->ino = st.st_ino;
    img->size = st.st_size;
    img->mtime = st.st_mtim;
}

static bool view_image_same(const struct view_image *a, const struct view_image *b, bool moving)
{
    if (a->missing || b->missing)
        return a->missing == b->missing;
    return a->dev == b->dev && a->ino == b->ino &&
           (moving || (a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec));
}

struct tree_view *tree_view_ref(struct tree_view *tv)
{
    g_atomic_int_inc(&tv->refs);
    return tv;
}

void tree_view_unref(struct tree_view *tv)
{
    if (!tv || !g_atomic_int_dec_and_test(&tv->refs))
        return;
    guest_view_unref(tv->view);
    g_array_unref(tv->images);
    g_free(tv->label);
    g_free(tv);
}

bool tree_view_reads(const struct tree_view *tv, const char *const *files)
{
    for (guint i = 0; i < tv->images->len; i++) {
        if (g_strv_contains(files, g_array_index(tv->images, struct view_image, i).file))
            return true;
    }
    return false;
}

/*
 * Whether @img, as seen now, is news: another state of the file than the one
 * views were last made on.  Records it.  Tree lock held.
 */
static bool tree_image_news(struct snapfs_tree *tree, const struct view_image *img)
{
    struct view_image *known = g_hash_table_lookup(tree->images, img->file);
    /* A frozen image that became a top (merged into behind snapfs's back) counts its mtime still. */
    bool news = known && !view_image_same(known, img, known->moving && img->moving);

    if (!known || news || known->moving != img->moving) {
        known = g_memdup2(img, sizeof(*img));
        known->file = g_strdup(img->file);
        g_hash_table_replace(tree->images, known->file, known);
    }
    return news;
}

/*
 * @files (NULL-terminated) changed behind the views that read them: those
 * views are stale, what was opened on them fails from now on, the kernel
 * drops its cache of those files, and the guest reader lets go of them.
 */
static void tree_files_changed(struct snapfs_tree *tree, const char *const *files)
{
    g_autoptr(GArray) cookies = g_array_new(FALSE, FALSE, sizeof(guint64));
    GHashTableIter iter;
    gpointer value;

    g_mutex_lock(&tree->lock);
    g_hash_table_iter_init(&iter, tree->views);
    while (g_hash_table_iter_next(&iter, NULL, &value)) {
        if (tree_view_reads(value, files)) {
            g_atomic_int_set(&((struct tree_view *)value)->stale, 1);
            g_hash_table_iter_remove(&iter);
        }
    }
    g_hash_table_iter_init(&iter, tree->handles);
    while (g_hash_table_iter_next(&iter, &value, NULL)) {
        struct snapfs_handle *handle = value;

        if (handle->tv && tree_view_reads(handle->tv, files)) {
            g_atomic_int_set(&handle->tv->stale, 1);
            g_array_append_val(cookies, handle->cookie);
        }
    }
    g_mutex_unlock(&tree->lock);
    for (guint i = 0; files[i]; i++) {
        log_warn("image '%s' changed behind snapfs (merged, moved or rewritten): what is open in views of it "
                    "answers EIO from now on", files[i]);
        guest_pool_forget_file(tree->guests, files[i]);
    }
    for (guint i = 0; tree->stale_fn && i < cookies->len; i++)
        tree->stale_fn(g_array_index(cookies, guint64, i), tree->stale_opaque);
}

/* Whether @tv still reads what it was made on; if not, it and everything of its changed images is stale. */
bool tree_view_current(struct snapfs_tree *tree, struct tree_view *tv)
{
    g_autoptr(GPtrArray) news = g_ptr_array_new_with_free_func(g_free);

    if (g_atomic_int_get(&tv->stale))
        return false;
    for (guint i = 0; i < tv->images->len; i++) {
        struct view_image *then = &g_array_index(tv->images, struct view_image, i);
        struct view_image now = *then;

        view_image_stat(&now);
        if (view_image_same(then, &now, then->moving))
            continue;
        g_atomic_int_set(&tv->stale, 1);
        g_mutex_lock(&tree->lock);
        if (tree_image_news(tree, &now))
            g_ptr_array_add(news, g_strdup(now.file));
        g_mutex_unlock(&tree->lock);
    }
    if (news->len > 0) {
        g_ptr_array_add(news, NULL);
        tree_files_changed(tree, (const char *const *)news->pdata);
    }
    return !g_atomic_int_get(&tv->stale);
}

struct view_drives {
    GPtrArray *strings;   /* owns what the drives point to */
    GArray *drives;       /* struct guest_drive */
    GArray *images;       /* struct view_image: every file of the drives' chains */
    GString *id;
};

static void view_drives_init(struct view_drives *v)
{
    v->strings = g_ptr_array_new_with_free_func(g_free);
    v->drives = g_array_new(FALSE, TRUE, sizeof(struct guest_drive));
    v->images = g_array_new(FALSE, TRUE, sizeof(struct view_image));
    g_array_set_clear_func(v->images, view_image_clear);
    v->id = g_string_new(NULL);
}

static void view_drives_clear(struct view_drives *v)
{
    g_ptr_array_unref(v->strings);
    g_array_unref(v->drives);
    if (v->images)
        g_array_unref(v->images);
    g_string_free(v->id, TRUE);
}

static const char *views_keep_string(struct view_drives *v, char *s)
{
    if (s)
        g_ptr_array_add(v->strings, s);
    return s;
}

/* Layer @index of @chain (from the base) as a drive, and every image it reads through. */
static void views_add_layer(struct view_drives *v, const char *target, GPtrArray *chain, guint index, char *internal)
{
    struct snapfs_layer *layer = g_ptr_array_index(chain, index);
    struct guest_drive drive = {
        .target = views_keep_string(v, g_strdup(target)),
        .file = views_keep_string(v, g_strdup(layer->file)),
        .format = views_keep_string(v, g_strdup(layer->format)),
        .internal_snapshot = views_keep_string(v, internal),
    };

    g_string_append_printf(v->id, "|%s:%s:%s", target, layer->file, internal ? internal : "");
    g_array_append_val(v->drives, drive);
    for (guint i = 0; i <= index; i++) {
        struct view_image img = {
            .file = g_strdup(((struct snapfs_layer *)g_ptr_array_index(chain, i))->file),
            .moving = i == chain->len - 1,
        };

        view_image_stat(&img);
        g_array_append_val(v->images, img);
    }
}

/* The index in @chain of the image holding internal snapshot @name: the lowest layer that has it; -1 if none. */
static int views_internal_holder(GPtrArray *chain, const char *name)
{
    for (guint i = 0; i < chain->len; i++) {
        struct snapfs_layer *layer = g_ptr_array_index(chain, i);
        g_autoptr(GPtrArray) names = chain_internal_snapshots(layer->file);

        for (guint j = 0; names && j < names->len; j++) {
            if (strcmp(g_ptr_array_index(names, j), name) == 0)
                return (int)i;
        }
    }
    return -1;
}

/* The drives of snapshot @snap: for each disk, the image it froze (external) or holds it (internal). */
static int views_snapshot_drives(struct snapfs_domain *domain, struct snapfs_snapshot *snap, struct view_drives *v)
{
    for (guint i = 0; i < snap->disks->len; i++) {
        struct snapfs_snapshot_disk *sd = g_ptr_array_index(snap->disks, i);

        if (strcmp(sd->kind, "external") == 0 && sd->file) {
            g_autoptr(GPtrArray) chain = chain_read(sd->file, sd->format);

            if (!chain || chain->len < 2) {
                if (chain)
                    error_set(EIO, "the overlay '%s' of snapshot '%s' has no backing image", sd->file, snap->name);
                return -1;
            }
            views_add_layer(v, sd->target, chain, chain->len - 2, NULL);
        } else if (strcmp(sd->kind, "internal") == 0) {
            g_autoptr(GPtrArray) chain = tree_disk_chain(domain, sd->target);
            int holder = chain ? views_internal_holder(chain, snap->name) : -1;

            if (holder < 0) {
                if (chain)
                    error_set(EIO, "no image of disk '%s' holds internal snapshot '%s'", sd->target, snap->name);
                return -1;
            }
            views_add_layer(v, sd->target, chain, (guint)holder, g_strdup(snap->name));
        }
    }
    return 0;
}

/* The guest reader's group of a domain: views of one group share appliances; it names the domain in log lines. */
char *tree_group(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    return g_strdup_printf("%s/%s", host_name(tree_host(tree, node)), node->domain);
}

/*
 * The images of @v as they are now go into the view's id, so that other
 * content never shares a view (and its caches) with the old; an image seen
 * in another state than views were made on is news to everything of it.
 * EBUSY while a snapshot operation is changing one of them.
 */
static int view_stamp(struct snapfs_tree *tree, struct view_drives *v, const char *label)
{
    g_autoptr(GPtrArray) news = g_ptr_array_new_with_free_func(g_free);

    g_mutex_lock(&tree->lock);
    for (guint i = 0; i < v->images->len; i++) {
        struct view_image *img = &g_array_index(v->images, struct view_image, i);

        if (g_hash_table_contains(tree->changing, img->file)) {
            g_mutex_unlock(&tree->lock);
            error_set(EBUSY, "%s cannot be read now: a snapshot operation is changing its image '%s'",
                             label, img->file);
            return -1;
        }
        if (!img->moving && !img->missing)
            g_string_append_printf(v->id, "#%llx:%llx:%lld:%lld.%09ld", (unsigned long long)img->dev,
                                   (unsigned long long)img->ino, (long long)img->size,
                                   (long long)img->mtime.tv_sec, img->mtime.tv_nsec);
        if (tree_image_news(tree, img))
            g_ptr_array_add(news, g_strdup(img->file));
    }
    g_mutex_unlock(&tree->lock);
    if (news->len > 0) {
        g_ptr_array_add(news, NULL);
        tree_files_changed(tree, (const char *const *)news->pdata);
    }
    return 0;
}

/* The drives, id and label of snapshot @snap's view; the label, or NULL with the reason. */
static char *views_of_snapshot(struct view_drives *v, const char *group, struct snapfs_domain *domain,
                               struct snapfs_snapshot *snap)
{
    tree_key_add(v->id, group);
    g_string_append(v->id, "/snapshot/");
    tree_key_add(v->id, snap->name);
    g_string_append_printf(v->id, "@%lld", snap->created);
    if (views_snapshot_drives(domain, snap, v) < 0)
        return NULL;
    return g_strdup_printf("snapshot '%s' of domain '%s'", snap->name, group);
}

/* The drives, id and label of the view of layer @index of @chain, of disk @target. */
static char *views_of_layer(struct view_drives *v, const char *group, const char *target, GPtrArray *chain,
                            guint index)
{
    struct snapfs_layer *layer = g_ptr_array_index(chain, index);
    g_autofree char *identity = tree_layer_identity(layer, index == chain->len - 1);

    tree_key_add(v->id, group);
    g_string_append(v->id, "/layer/");
    tree_key_add(v->id, identity);
    views_add_layer(v, target, chain, index, NULL);
    return g_strdup_printf("layer %u (%s) of disk '%s' of domain '%s'", index, layer->file, target, group);
}

/*
 * The drives, id and label of live's view: every disk of @domain with an image, as its XML lists
 * them now, each read through its whole chain from its top (what a snapshot made now would hold).
 */
static char *views_of_live(struct view_drives *v, const char *group, struct snapfs_domain *domain)
{
    g_autofree char *identity = tree_live_identity(domain);

    tree_key_add(v->id, group);
    g_string_append(v->id, "/live/");
    tree_key_add(v->id, identity);
    for (guint i = 0; i < domain->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(domain->disks, i);
        g_autoptr(GPtrArray) chain = NULL;

        if (!disk->file)
            continue;
        chain = chain_read(disk->file, disk->format);
        if (!chain)
            return NULL;
        views_add_layer(v, disk->target, chain, chain->len - 1, NULL);
    }
    return g_strdup_printf("live of domain '%s'", group);
}

/*
 * The guest reader's view of @v, stamped with its images as they are now; NULL with the reason.  With
 * @agent (taken), a view through that guest agent, which reads no image itself.
 */
static struct tree_view *views_open(struct snapfs_tree *tree, const char *group, struct view_drives *v,
                                    const char *label, bool live, bool writable, struct snapfs_agent *agent)
{
    struct tree_view *tv;

    /* The guest's own calls read no image: nothing qemu or a snapshot does to them makes the view stale. */
    if (agent)
        g_array_set_size(v->images, 0);
    if (view_stamp(tree, v, label) < 0) {
        agent_free(agent);
        return NULL;
    }
    tv = g_new0(struct tree_view, 1);
    tv->refs = 1;
    tv->view = agent ? guest_agent_view_new(agent, group, label) : guest_pool_view(tree->guests, &(struct guest_view_spec){
        .group = group,
        .id = v->id->str,
        .label = label,
        .live = live,
        .writable = writable,
        .n_drives = v->drives->len,
        .drives = (const struct guest_drive *)v->drives->data,
    });
    tv->label = g_strdup(label);
    tv->images = g_steal_pointer(&v->images);
    return tv;
}

/* The view of snapshot @snap; of layer @index of @chain (of disk @target) when @snap is NULL; of live with no @chain either. */
static struct tree_view *tree_make_view(struct snapfs_tree *tree, const char *group, struct snapfs_domain *domain,
                                        struct snapfs_snapshot *snap, const char *target, GPtrArray *chain,
                                        guint index)
{
    struct tree_view *tv = NULL;
    struct view_drives v;
    g_autofree char *label = NULL;

    view_drives_init(&v);
    if (snap)
        label = views_of_snapshot(&v, group, domain, snap);
    else if (chain)
        label = views_of_layer(&v, group, target, chain, index);
    else
        label = views_of_live(&v, group, domain);
    if (label)
        tv = views_open(tree, group, &v, label, !snap && (!chain || index == chain->len - 1), false, NULL);
    view_drives_clear(&v);
    return tv;
}

/* ---- writers: live/ of a domain being written (restore.c) ---- */

/*
 * A new writable view of live of @domain, and the view live reads from now on in place of the
 * read-only one; NULL with the reason.  Shut off, every disk's top is read-write in an appliance
 * of its own; running, everything goes through its guest @agent (taken).  A writer lives as long
 * as its appliance or its agent's calls: each gets an id of its own, so no cache of an earlier one
 * is reused.  Restore lock held.
 */
struct tree_view *tree_writer_start(struct snapfs_tree *tree, const struct snapfs_node *node,
                                    struct snapfs_domain *domain, struct snapfs_agent *agent, bool restorable)
{
    g_autofree char *group = tree_group(tree, node);
    g_autofree char *label = NULL;
    struct tree_view *tv = NULL;
    struct view_drives v;

    view_drives_init(&v);
    label = views_of_live(&v, group, domain);
    if (label) {
        g_string_append_printf(v.id, "/writable/%u", ++tree->writers_made);
        g_free(label);
        label = g_strdup_printf(agent ? "live of domain '%s' (written through its guest agent)"
                                      : "live of domain '%s' (written)", group);
        tv = views_open(tree, group, &v, label, true, true, g_steal_pointer(&agent));
    }
    agent_free(agent);
    view_drives_clear(&v);
    if (!tv)
        return NULL;
    tv->restorable = restorable;
    g_mutex_lock(&tree->lock);
    g_hash_table_replace(tree->writers, g_strdup(group), tree_view_ref(tv));
    g_mutex_unlock(&tree->lock);
    return tv;
}

bool tree_writer_restorable(struct tree_view *tv)
{
    return tv->restorable;
}

void tree_writer_set_restorable(struct tree_view *tv)
{
    tv->restorable = true;
}

/* ---- live/ of a running domain through its guest agent ---- */

/* How long guest-info may take where the agent is only asked whether it answers. */
#define VIEWS_AGENT_PROBE_S 5
/* How long a running domain whose agent did not answer reads live/ from its disks before its agent is asked again. */
#define VIEWS_AGENT_RETRY_S 30

struct snapfs_agent *tree_live_agent(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    g_autoptr(virConnect) conn = host_conn(tree_host(tree, node));
    g_autofree char *label = tree_group(tree, node);
    unsigned timeout_s = tree->config.guest.limits.call_seconds;

    if (!conn)
        return NULL;
    return agent_open(conn, node->domain, label, VIEWS_AGENT_PROBE_S,
                      timeout_s ? timeout_s : GUEST_DEFAULT_TIMEOUT_S);
}

/* Whether @group's agent did not answer within the last VIEWS_AGENT_RETRY_S.  Tree lock held. */
static bool views_agent_refused_lately(struct snapfs_tree *tree, const char *group)
{
    gint64 *when = g_hash_table_lookup(tree->agentless, group);

    return when && g_get_monotonic_time() - *when < (gint64)VIEWS_AGENT_RETRY_S * G_USEC_PER_SEC;
}

/*
 * live of @node's domain read through its guest agent, where the domain runs and the agent answers: made
 * the domain's writer (what live/ reads while it lives), without its pre-restore snapshot yet.  NULL where
 * live/ reads the disks: shut off, -o ro, a remote host, no agent (asked again VIEWS_AGENT_RETRY_S later).
 */
static struct tree_view *views_agent_reader(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    g_autofree char *group = tree_group(tree, node);
    struct snapfs_domain *domain;
    struct tree_view *tv = NULL;
    bool skip;

    if (tree->config.read_only || !host_is_local(tree_host(tree, node)))
        return NULL;
    g_mutex_lock(&tree->lock);
    skip = views_agent_refused_lately(tree, group);
    g_mutex_unlock(&tree->lock);
    domain = skip ? NULL : tree_domain(tree, node);
    if (!domain || !domain->running) {
        if (domain)
            host_domain_unref(domain);
        return NULL;
    }
    g_mutex_lock(&tree->restore_lock);
    tv = tree_writer_of(tree, node);
    if (!tv) {
        struct snapfs_agent *agent = tree_live_agent(tree, node);

        if (agent) {
            tv = tree_writer_start(tree, node, domain, agent, false);
        } else {
            gint64 *now = g_new(gint64, 1);

            *now = g_get_monotonic_time();
            log_debug("domain '%s': live/ reads the disks: %s", group, error_message());
            g_mutex_lock(&tree->lock);
            g_hash_table_replace(tree->agentless, g_strdup(group), now);
            g_mutex_unlock(&tree->lock);
        }
    }
    g_mutex_unlock(&tree->restore_lock);
    host_domain_unref(domain);
    return tv;
}

/* The top images a writer wrote (NULL-terminated), and the writer gone from the table.  Tree lock held. */
static GStrv writer_take(struct snapfs_tree *tree, const char *group, struct tree_view *tv)
{
    GPtrArray *tops = g_ptr_array_new();

    for (guint i = 0; i < tv->images->len; i++) {
        struct view_image *img = &g_array_index(tv->images, struct view_image, i);

        if (img->moving)
            g_ptr_array_add(tops, g_strdup(img->file));
    }
    g_ptr_array_add(tops, NULL);
    g_hash_table_remove(tree->writers, group);
    return (GStrv)g_ptr_array_free(tops, FALSE);
}

/*
 * Let the images that @group's writer wrote go: its appliance unmounts, syncs and ends (if it has not),
 * and every other view and appliance that read those images is dropped, so that live and the top layer
 * are read afresh.  No lock held.
 */
static void writer_let_go(struct snapfs_tree *tree, const char *group, GStrv tops)
{
    tree_forget_views(tree);
    for (guint i = 0; tops && tops[i]; i++)
        guest_pool_forget_file(tree->guests, tops[i]);
    /* As the writer left them: until anything else changes them, its pre-restore snapshot still undoes it all. */
    g_mutex_lock(&tree->lock);
    g_hash_table_replace(tree->written, g_strdup(group), tree_images_signature((const char *const *)tops));
    g_mutex_unlock(&tree->lock);
}

char *tree_images_signature(const char *const *files)
{
    GString *s = g_string_new(NULL);

    for (guint i = 0; files && files[i]; i++) {
        struct stat st;

        if (stat(files[i], &st) == 0)
            g_string_append_printf(s, "%s:%llu:%lld.%09ld;", files[i], (unsigned long long)st.st_ino,
                                   (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    }
    return g_string_free(s, FALSE);
}

/*
 * The writer of @node's domain, if one is running (a reference); NULL if none.  One whose
 * appliance ended is let go here: live reads the disks read-only again.
 */
struct tree_view *tree_writer_of(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    g_autofree char *group = tree_group(tree, node);
    g_autofree char *label = NULL;
    g_auto(GStrv) tops = NULL;
    struct tree_view *tv;

    g_mutex_lock(&tree->lock);
    tv = g_hash_table_lookup(tree->writers, group);
    if (tv && guest_view_ended(tv->view)) {
        label = g_strdup(tv->label);
        tops = writer_take(tree, group, tv);
        tv = NULL;
    } else if (tv) {
        tree_view_ref(tv);
    }
    g_mutex_unlock(&tree->lock);
    if (tops) {
        log_info("domain '%s': writing into live/ ended (%s): live/ reads the disks again", group, label);
        writer_let_go(tree, group, tops);
    }
    return tv;
}

/*
 * Before a snapshot operation on @group: its writer, if any, ends first (its appliance unmounts and lets go
 * of the images); -1 with EBUSY while files are open for writing in live/.
 */
int tree_writer_end(struct snapfs_tree *tree, const char *group, const char *what)
{
    g_auto(GStrv) tops = NULL;
    struct tree_view *tv;

    g_mutex_lock(&tree->lock);
    tv = g_hash_table_lookup(tree->writers, group);
    if (tv && tree_writer_open_files(tree, tv) > 0) {
        g_mutex_unlock(&tree->lock);
        error_set(EBUSY, "%s: files are open for writing in live/ of domain '%s'; close them and try again",
                  what, group);
        return -1;
    }
    if (tv)
        tops = writer_take(tree, group, tv);
    g_mutex_unlock(&tree->lock);
    if (tops)
        writer_let_go(tree, group, tops);
    return 0;
}

/* How many handles open for writing use @tv.  Tree lock held. */
unsigned tree_writer_open_files(struct snapfs_tree *tree, struct tree_view *tv)
{
    GHashTableIter iter;
    gpointer key;
    unsigned n = 0;

    g_hash_table_iter_init(&iter, tree->handles);
    while (g_hash_table_iter_next(&iter, &key, NULL)) {
        struct snapfs_handle *handle = key;

        n += handle->writing && handle->tv == tv;
    }
    return n;
}

/*
 * An appliance takes its disks when it starts: on the first view of a
 * domain, make the views of all its snapshots and layers known (this starts
 * nothing), so that one appliance serves every one of them.
 */
static void tree_register_group(struct snapfs_tree *tree, const char *group, struct snapfs_domain *domain)
{
    for (guint i = 0; i < domain->snapshots->len; i++)
        tree_view_unref(tree_make_view(tree, group, domain, g_ptr_array_index(domain->snapshots, i), NULL, NULL, 0));
    for (guint i = 0; i < domain->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(domain->disks, i);
        g_autoptr(GPtrArray) chain = disk->file ? chain_read(disk->file, disk->format) : NULL;

        for (guint j = 0; chain && j < chain->len; j++)
            tree_view_unref(tree_make_view(tree, group, domain, NULL, disk->target, chain, j));
    }
    error_clear();
}

/*
 * The view behind a SNAPSHOT, LAYER, LIVE or GUEST node, found from libvirt and
 * the images; NULL with the reason.  A node stands for what it showed when it
 * was looked up: inside a snapshot deleted or a layer changed since (a shell's
 * working directory, which holds no handle), EIO.  But live is what the disks
 * hold now, whenever it was looked up: a chain change there is no reason to
 * fail a shell standing in it.
 */
static struct tree_view *tree_find_view(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    g_autoptr(GPtrArray) chain = NULL;
    struct snapfs_domain *domain = tree_domain(tree, node);
    struct tree_view *view = NULL;
    g_autofree char *group = NULL;
    g_autofree char *now = NULL;
    int gone = node->kind == SNAPFS_NODE_GUEST ? EIO : ENOENT;

    if (!domain)
        return NULL;
    if (tree_check_local(tree, node) < 0)
        goto cleanup;
    group = tree_group(tree, node);
    if (!guest_pool_has_group(tree->guests, group))
        tree_register_group(tree, group, domain);
    if (node->snapshot) {
        struct snapfs_snapshot *snap = host_domain_find_snapshot(domain, node->snapshot);

        now = snap ? tree_snapshot_identity(snap) : NULL;
        if (!snap || (node->identity && strcmp(now, node->identity) != 0))
            error_set(gone, "snapshot '%s' of domain '%s' was deleted since '%s' was looked up",
                             node->snapshot, group, node->path ? node->path : "/");
        else
            view = tree_make_view(tree, group, domain, snap, NULL, NULL, 0);
    } else if (tree_node_in_live(node)) {
        view = tree_make_view(tree, group, domain, NULL, NULL, NULL, 0);
    } else if (tree_layer_of(domain, node, &chain)) {
        struct snapfs_layer *layer = g_ptr_array_index(chain, node->layer);

        now = tree_layer_identity(layer, (guint)node->layer == chain->len - 1);
        if (node->identity && strcmp(now, node->identity) != 0)
            error_set(gone, "layer %d of disk '%s' of domain '%s' changed since '%s' was looked up",
                             node->layer, node->disk, group, node->path ? node->path : "/");
        else
            view = tree_make_view(tree, group, domain, NULL, node->disk, chain, (guint)node->layer);
    } else if (gone == EIO) {
        error_set(EIO, "%s", error_message());
    }

cleanup:
    host_domain_unref(domain);
    return view;
}

/* The key of a content node's view in tree->views: what it shows, not where in the guest it is. */
static char *views_key_of(const struct snapfs_node *node)
{
    GString *key = g_string_new(NULL);

    g_string_append_printf(key, "%d/", node->host);
    tree_key_add(key, node->domain);
    tree_key_add(key, node->snapshot);
    tree_key_add(key, node->disk);
    tree_key_add(key, node->identity);
    return g_string_free(key, FALSE);
}

/*
 * The view behind a content node.  A node's identity says what it shows
 * (a snapshot's name and creation time, a layer's image and its mtime), so
 * its view is found once and kept until a chain changes or its images do:
 * reading a file or its xattrs then asks neither libvirt nor the image
 * headers again, only stat(2) of the images.
 */
struct tree_view *tree_view_entry(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    g_autofree char *key = NULL;
    struct tree_view *tv;

    /*
     * While live is written, it is read through the writer, never cached as the read-only view is; a running
     * domain's live/ is read through its guest agent where one answers (what its page cache holds, not its disks).
     */
    if (tree_node_in_live(node) && ((tv = tree_writer_of(tree, node)) || (tv = views_agent_reader(tree, node))))
        return tv;
    if (!node->identity)
        return tree_find_view(tree, node);
    key = views_key_of(node);
    g_mutex_lock(&tree->lock);
    tv = g_hash_table_lookup(tree->views, key);
    if (tv)
        tree_view_ref(tv);
    g_mutex_unlock(&tree->lock);
    if (tv && tree_view_current(tree, tv))
        return tv;
    tree_view_unref(tv);
    tv = tree_find_view(tree, node);
    if (tv) {
        g_mutex_lock(&tree->lock);
        g_hash_table_replace(tree->views, g_steal_pointer(&key), tree_view_ref(tv));
        g_mutex_unlock(&tree->lock);
    }
    return tv;
}

/* A chain changed: which images a snapshot, a layer or live reads must be found again. */
void tree_forget_views(struct snapfs_tree *tree)
{
    g_mutex_lock(&tree->lock);
    g_hash_table_remove_all(tree->views);
    g_mutex_unlock(&tree->lock);
}

struct guest_view *tree_view_guest(const struct tree_view *tv)
{
    return tv->view;
}

const char *tree_view_label(const struct tree_view *tv)
{
    return tv->label;
}

struct guest_view *tree_guest_view(struct snapfs_tree *tree, const struct snapfs_node *node)
{
    struct tree_view *tv = tree_view_entry(tree, node);
    struct guest_view *view = tv ? guest_view_ref(tv->view) : NULL;

    tree_view_unref(tv);
    return view;
}
