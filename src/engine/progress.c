/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What a long snapshot operation is doing, readable while it runs: a merge's percentage, polled from libvirt's block jobs. */
#include "engine-priv.h"
#include "snapfs/log.h"
#include "snapfs/virt.h"

#include <string.h>

static GMutex progress_mutex;
static GHashTable *progress;   /* domain key -> sentence; guarded by progress_mutex */

static void progress_set(const char *key, char *text)
{
    g_mutex_lock(&progress_mutex);
    if (!progress)
        progress = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    if (text)
        g_hash_table_insert(progress, g_strdup(key), text);
    else
        g_hash_table_remove(progress, key);
    g_mutex_unlock(&progress_mutex);
}

char *engine_progress(virConnectPtr conn, const char *domain)
{
    g_autofree char *key = domain_lock_key(conn, domain);
    char *text = NULL;

    g_mutex_lock(&progress_mutex);
    if (progress)
        text = g_strdup(g_hash_table_lookup(progress, key));
    g_mutex_unlock(&progress_mutex);
    /* Between the steps that report a percentage, what holds the domain's lock. */
    return text ? text : domain_lock_holder(key);
}

/* All but @stop are set before the poller starts and only read until it is joined. */
struct engine_progress {
    char *key;
    char *what;           /* "deleting snapshot 's2'" */
    char *label;          /* the domain, as the log names it */
    virDomainPtr dom;     /* a reference of the poller's own */
    GPtrArray *targets;   /* disks whose block jobs tell the percentage */
    GThread *thread;
    GMutex mutex;
    GCond cond;
    bool stop;            /* guarded by mutex */
};

/*
 * libvirt runs a merge as block jobs and answers nothing until they end:
 * a thread of our own asks for their progress meanwhile, on the same
 * connection (libvirt's are thread-safe).
 */
static gpointer progress_poll(gpointer data)
{
    struct engine_progress *p = data;
    int logged = -1;

    g_mutex_lock(&p->mutex);
    while (!p->stop) {
        unsigned long long cur = 0, end = 0;
        gint64 deadline = g_get_monotonic_time() + 250 * G_TIME_SPAN_MILLISECOND;

        g_mutex_unlock(&p->mutex);
        for (guint i = 0; i < p->targets->len; i++) {
            virDomainBlockJobInfo info;

            if (virDomainGetBlockJobInfo(p->dom, g_ptr_array_index(p->targets, i), &info, 0) > 0) {
                cur += info.cur;
                end += info.end;
            }
        }
        if (end > 0) {
            int percent = (int)(cur * 100 / end);

            progress_set(p->key, g_strdup_printf("%s: merging, %d%%", p->what, percent));
            if (percent / 10 != logged) {
                logged = percent / 10;
                log_info("%s of domain '%s': merging, %d%%", p->what, p->label, percent);
            }
        }
        g_mutex_lock(&p->mutex);
        while (!p->stop && g_cond_wait_until(&p->cond, &p->mutex, deadline))
            ;
    }
    g_mutex_unlock(&p->mutex);
    return NULL;
}

struct engine_progress *engine_progress_begin(virConnectPtr conn, virDomainPtr dom, const char *domain,
                                              const char *what, GPtrArray *targets)
{
    struct engine_progress *p = g_new0(struct engine_progress, 1);

    p->key = domain_lock_key(conn, domain);
    p->what = g_strdup(what);
    p->label = host_conn_domain_label(conn, domain);
    progress_set(p->key, g_strdup(what));
    if (!dom || !targets || targets->len == 0)
        return p;
    virDomainRef(dom);
    p->dom = dom;
    p->targets = g_ptr_array_ref(targets);
    g_mutex_init(&p->mutex);
    g_cond_init(&p->cond);
    p->thread = g_thread_new("snapfs-progress", progress_poll, p);
    return p;
}

void engine_progress_end(struct engine_progress *p)
{
    if (!p)
        return;
    if (p->thread) {
        g_mutex_lock(&p->mutex);
        p->stop = true;
        g_cond_signal(&p->cond);
        g_mutex_unlock(&p->mutex);
        g_thread_join(p->thread);
        g_mutex_clear(&p->mutex);
        g_cond_clear(&p->cond);
        g_ptr_array_unref(p->targets);
        virDomainFree(p->dom);
    }
    progress_set(p->key, NULL);
    g_free(p->key);
    g_free(p->what);
    g_free(p->label);
    g_free(p);
}
