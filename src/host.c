/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Connections to libvirt, kept alive and reconnected, and short-lived caches of what they say about domains. */
#include "snapfs/virt.h"
#include "snapfs/error.h"
#include "snapfs/log.h"

#include <errno.h>
#include <libvirt/virterror.h>
#include <libxml/uri.h>
#include <string.h>

/*
 * How long an answer from libvirt is reused.  libvirt 9.0 sends no event
 * when a snapshot is made or deleted, so this bounds how stale the tree is.
 */
#define HOST_CACHE_USEC (400 * 1000)
#define HOST_RECONNECT_USEC (1000 * 1000)
/*
 * How long closing the hosts may wait for their connections to be released.
 * Releasing one talks to its peer (libvirt sends the deregistration of events
 * and the close as calls), and a peer that accepts but never answers keeps such
 * a call, or a virConnectOpen() under way, waiting until keepalive gives up
 * (20 s) or without end: past this, the connections are left to the process's
 * exit, so that an unmount ends snapfs within the 10 s promised (src/README.md,
 * "Bounds and deadlines").
 */
#define HOST_CLOSE_USEC (3 * 1000 * 1000)

/*
 * A host's connections belong to its reconnector thread: it opens them and
 * it releases them, the last ones too once the host is closing, so that only
 * that thread ever waits on a peer.  The host is freed by whichever of
 * host_close_all(), the reconnector and libvirt (for a connection's
 * lifecycle callback) lets go of it last (refs).
 */
struct snapfs_host {
    char *uri;              /* set before the reconnector starts, then only read */
    char *name;             /* the host's folder; guarded by named_lock */
    gint refs;              /* atomic */
    GMutex lock;
    GCond wake;             /* conn, dead, closing or released changed */
    virConnectPtr conn;     /* NULL while disconnected; guarded by lock */
    virConnectPtr dead;     /* a closed connection the reconnector still has to release; guarded by lock */
    char *down_reason;      /* why conn is NULL; guarded by lock */
    GThread *reconnector;   /* set before the host is handed out */
    bool closing;           /* guarded by lock */
    bool released;          /* the reconnector has released every connection; guarded by lock */
    GPtrArray *domain_names;        /* the last listing, sorted; guarded by lock */
    gint64 domain_names_fetched;    /* its g_get_monotonic_time(), 0 once stale; guarded by lock */
    GHashTable *domains;    /* name -> struct snapfs_domain *; guarded by lock */
    int lifecycle_callback; /* libvirt's id of it, -1 if none; only the thread that owns the connections uses it */
};

/* ---- libvirt's event loop ---------------------------------------------- */

static GThread *event_thread;
static gint event_quit;
static int event_wake_timer = -1;

static gpointer events_run_loop(gpointer data)
{
    while (!g_atomic_int_get(&event_quit)) {
        if (virEventRunDefaultImpl() < 0)
            log_warn("libvirt's event loop failed: %s", virGetLastErrorMessage());
    }
    return NULL;
}

static void events_wake_nop(int timer, void *opaque)
{
}

/* libvirt's errors go to the log, at debug level: callers record and log what matters. */
static void libvirt_error_to_log(void *opaque, virErrorPtr err)
{
    if (err && err->message)
        log_debug("libvirt: %s", err->message);
}

int host_start_events(void)
{
    if (event_thread)
        return 0;
    virSetErrorFunc(NULL, libvirt_error_to_log);
    if (virInitialize() < 0 || virEventRegisterDefaultImpl() < 0) {
        error_from_virt("cannot start libvirt's event loop");
        return -1;
    }
    /* A disabled timer that host_stop_events() arms to wake the loop up. */
    event_wake_timer = virEventAddTimeout(-1, events_wake_nop, NULL, NULL);
    event_thread = g_thread_new("snapfs-events", events_run_loop, NULL);
    return 0;
}

void host_stop_events(void)
{
    if (!event_thread)
        return;
    g_atomic_int_set(&event_quit, 1);
    virEventUpdateTimeout(event_wake_timer, 0);
    g_thread_join(event_thread);
    event_thread = NULL;
    virEventRemoveTimeout(event_wake_timer);
}

/* ---- domains and snapshots -------------------------------------------------- */

static void snapshot_info_free(gpointer data)
{
    struct snapfs_snapshot *snap = data;

    g_free(snap->name);
    g_free(snap->parent);
    g_free(snap->description);
    g_free(snap->state);
    g_ptr_array_unref(snap->disks);
    g_free(snap);
}

struct snapfs_domain *host_domain_ref(struct snapfs_domain *domain)
{
    g_atomic_int_inc(&domain->refs);
    return domain;
}

void host_domain_unref(struct snapfs_domain *domain)
{
    if (!domain || !g_atomic_int_dec_and_test(&domain->refs))
        return;
    g_free(domain->name);
    g_free(domain->uuid);
    g_ptr_array_unref(domain->disks);
    g_ptr_array_unref(domain->snapshots);
    g_free(domain);
}

/* The disks snapfs shows: CD-ROMs and floppies hold no guest state worth a layer. */
static void domain_disks_from_xml(struct snapfs_domain *domain, const char *xml)
{
    g_autoptr(xmlDoc) doc = NULL;
    g_autoptr(xmlXPathContext) ctxt = NULL;
    g_autoptr(GPtrArray) disks = NULL;

    doc = xml_read(xml, &ctxt);
    if (!doc)
        return;
    disks = xml_disks(ctxt, "/domain");
    for (guint i = 0; i < disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(disks, i);

        if (strcmp(disk->device, "disk") == 0)
            g_ptr_array_add(domain->disks, g_steal_pointer(&disks->pdata[i]));
    }
}

static struct snapfs_snapshot *snapshot_from_xml(const char *xml)
{
    g_autoptr(xmlDoc) doc = NULL;
    g_autoptr(xmlXPathContext) ctxt = NULL;
    struct snapfs_snapshot *snap;
    g_autofree char *created = NULL;
    g_autofree char *memory = NULL;

    doc = xml_read(xml, &ctxt);
    if (!doc)
        return NULL;
    snap = g_new0(struct snapfs_snapshot, 1);
    snap->name = xml_string(ctxt, NULL, "string(/domainsnapshot/name)");
    snap->parent = xml_string(ctxt, NULL, "string(/domainsnapshot/parent/name)");
    snap->description = xml_string(ctxt, NULL, "string(/domainsnapshot/description)");
    if (!snap->description)
        snap->description = g_strdup("");
    snap->state = xml_string(ctxt, NULL, "string(/domainsnapshot/state)");
    created = xml_string(ctxt, NULL, "string(/domainsnapshot/creationTime)");
    snap->created = created ? g_ascii_strtoll(created, NULL, 10) : 0;
    memory = xml_string(ctxt, NULL, "string(/domainsnapshot/memory/@snapshot)");
    snap->external = memory && strcmp(memory, "external") == 0;
    snap->disks = xml_snapshot_disks(ctxt);
    for (guint i = 0; i < snap->disks->len; i++) {
        struct snapfs_snapshot_disk *disk = g_ptr_array_index(snap->disks, i);

        if (strcmp(disk->kind, "external") == 0)
            snap->external = true;
    }
    if (!snap->name || !snap->state)
        g_clear_pointer(&snap, snapshot_info_free);
    return snap;
}

static gint snapshot_compare_age(gconstpointer a, gconstpointer b)
{
    const struct snapfs_snapshot *x = *(struct snapfs_snapshot *const *)a;
    const struct snapfs_snapshot *y = *(struct snapfs_snapshot *const *)b;

    if (x->created != y->created)
        return x->created < y->created ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* One round of questions to libvirt about one domain.  NULL with the reason recorded. */
static struct snapfs_domain *domain_fetch_from_libvirt(virConnectPtr conn, const char *name)
{
    g_autoptr(virDomain) dom = virDomainLookupByName(conn, name);
    g_autofree virDomainSnapshotPtr *snaps = NULL;
    struct snapfs_domain *domain = NULL;
    g_autofree char *xml = NULL;
    char uuid[VIR_UUID_STRING_BUFLEN];
    int state = 0, n;

    if (!dom) {
        error_from_virt("cannot look up domain '%s'", name);
        return NULL;
    }
    domain = g_new0(struct snapfs_domain, 1);
    domain->refs = 1;
    domain->name = g_strdup(virDomainGetName(dom));
    domain->disks = g_ptr_array_new_with_free_func((GDestroyNotify)xml_disk_free);
    domain->snapshots = g_ptr_array_new_with_free_func(snapshot_info_free);
    if (virDomainGetUUIDString(dom, uuid) == 0)
        domain->uuid = g_strdup(uuid);
    if (virDomainGetState(dom, &state, NULL, 0) < 0 || !(xml = virDomainGetXMLDesc(dom, 0)))
        goto error;
    domain->running = state == VIR_DOMAIN_RUNNING || state == VIR_DOMAIN_PAUSED ||
                      state == VIR_DOMAIN_BLOCKED || state == VIR_DOMAIN_PMSUSPENDED;
    domain_disks_from_xml(domain, xml);

    n = virDomainListAllSnapshots(dom, &snaps, 0);
    if (n < 0)
        goto error;
    for (int i = 0; i < n; i++) {
        g_autoptr(virDomainSnapshot) snapshot = g_steal_pointer(&snaps[i]);
        g_autofree char *snap_xml = virDomainSnapshotGetXMLDesc(snapshot, 0);
        struct snapfs_snapshot *snap = snap_xml ? snapshot_from_xml(snap_xml) : NULL;

        /* A snapshot deleted between the listing and this question is simply gone. */
        if (snap) {
            snap->current = virDomainSnapshotIsCurrent(snapshot, 0) == 1;
            g_ptr_array_add(domain->snapshots, snap);
        }
    }
    g_ptr_array_sort(domain->snapshots, snapshot_compare_age);
    domain->fetched = g_get_monotonic_time();
    return domain;

error:
    error_from_virt("cannot read domain '%s'", name);
    host_domain_unref(domain);
    return NULL;
}

struct snapfs_snapshot *host_domain_find_snapshot(struct snapfs_domain *domain, const char *name)
{
    for (guint i = 0; i < domain->snapshots->len; i++) {
        struct snapfs_snapshot *snap = g_ptr_array_index(domain->snapshots, i);

        if (strcmp(snap->name, name) == 0)
            return snap;
    }
    return NULL;
}

struct snapfs_snapshot *host_domain_current_snapshot(struct snapfs_domain *domain)
{
    for (guint i = 0; i < domain->snapshots->len; i++) {
        struct snapfs_snapshot *snap = g_ptr_array_index(domain->snapshots, i);

        if (snap->current)
            return snap;
    }
    return NULL;
}

struct snapfs_disk *host_domain_find_disk(struct snapfs_domain *domain, const char *target)
{
    return xml_disk_find(domain->disks, target);
}

/* ---- hosts ------------------------------------------------------------------- */

/* The hosts host_name_all() named: log lines about a connection's domains name its folder. */
static GMutex named_lock;
static GPtrArray *named_hosts;   /* struct snapfs_host *, not owned */

static void host_lifecycle_event(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *opaque)
{
    struct snapfs_host *host = opaque;

    static const char *const events[] = { "defined", "undefined", "started", "suspended", "resumed",
                                          "stopped", "shut down", "suspended by the guest", "crashed" };
    g_autofree char *label = host_domain_label(host, virDomainGetName(dom));

    log_debug("domain '%s': %s", label,
                 event >= 0 && event < (int)G_N_ELEMENTS(events) ? events[event] : "lifecycle event");
    host_invalidate(host, virDomainGetName(dom));
}

static void host_conn_closed(virConnectPtr conn, int reason, void *opaque)
{
    struct snapfs_host *host = opaque;
    static const char *const reasons[] = { "an error", "end of file", "keepalive timeout", "a client request" };

    g_mutex_lock(&host->lock);
    if (host->conn == conn) {
        log_warn("%s: the connection to %s was closed by %s; reconnecting", host->name, host->uri,
                    reason >= 0 && reason < (int)G_N_ELEMENTS(reasons) ? reasons[reason] : "libvirt");
        g_free(host->down_reason);
        host->down_reason = g_strdup_printf("the connection to '%s' was lost; reconnecting", host->uri);
        /* A close callback may not unregister itself: the reconnector releases it. */
        host->dead = conn;
        host->conn = NULL;
        g_cond_broadcast(&host->wake);
    }
    g_mutex_unlock(&host->lock);
}

static void host_release_conn(struct snapfs_host *host, virConnectPtr conn)
{
    if (host->lifecycle_callback >= 0)
        virConnectDomainEventDeregisterAny(conn, host->lifecycle_callback);
    host->lifecycle_callback = -1;
    virConnectUnregisterCloseCallback(conn, host_conn_closed);
    virConnectClose(conn);
}

static void host_unref(struct snapfs_host *host);

/* What libvirt calls once a lifecycle callback is gone for good, which may be after its deregistration returned. */
static void host_callback_done(void *opaque)
{
    host_unref(opaque);
}

/* Opens a connection and hooks it up; NULL with the reason recorded. */
static virConnectPtr host_connect(struct snapfs_host *host)
{
    virConnectPtr conn = virConnectOpen(host->uri);

    if (!conn) {
        error_from_virt("cannot connect to '%s'", host->uri ? host->uri : "the default URI");
        return NULL;
    }
    /* Keepalive notices a dead peer; drivers without it (embed, test) refuse, which is fine. */
    if (virConnectSetKeepAlive(conn, 5, 3) < 0)
        virResetLastError();
    virConnectRegisterCloseCallback(conn, host_conn_closed, host, NULL);
    /*
     * An event being dispatched when the callback is deregistered still runs after the deregistration
     * returns (libvirt only marks it deleted): the callback holds a reference on the host until libvirt
     * lets go of it, so that closing the host never frees it under a running callback.
     */
    g_atomic_int_inc(&host->refs);
    host->lifecycle_callback = virConnectDomainEventRegisterAny(conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                                VIR_DOMAIN_EVENT_CALLBACK(host_lifecycle_event),
                                                                host, host_callback_done);
    if (host->lifecycle_callback < 0) {
        host_unref(host);
        virResetLastError();
    }
    return conn;
}

static void host_unref(struct snapfs_host *host)
{
    if (!g_atomic_int_dec_and_test(&host->refs))
        return;
    g_hash_table_unref(host->domains);
    if (host->domain_names)
        g_ptr_array_unref(host->domain_names);
    g_mutex_clear(&host->lock);
    g_cond_clear(&host->wake);
    g_free(host->down_reason);
    g_free(host->uri);
    g_free(host->name);
    g_free(host);
}

/* Retries a lost connection once a second, so that callers never wait for it; releases every connection at the end. */
static gpointer host_reconnect_loop(gpointer data)
{
    struct snapfs_host *host = data;
    virConnectPtr conn, dead;

    g_mutex_lock(&host->lock);
    while (!host->closing) {
        virConnectPtr lost = g_steal_pointer(&host->dead);

        if (lost) {
            g_mutex_unlock(&host->lock);
            host_release_conn(host, lost);
            g_mutex_lock(&host->lock);
            continue;
        }
        if (host->conn) {
            g_cond_wait(&host->wake, &host->lock);
            continue;
        }
        g_mutex_unlock(&host->lock);
        conn = host_connect(host);
        g_mutex_lock(&host->lock);
        if (conn && !host->closing) {
            log_info("%s: reconnected to %s", host->name, host->uri);
            host->conn = conn;
            g_clear_pointer(&host->down_reason, g_free);
            g_hash_table_remove_all(host->domains);
            continue;
        }
        if (conn) {
            host->conn = conn;   /* opened while closing: released below with the rest */
            break;
        }
        g_free(host->down_reason);
        host->down_reason = g_strdup(error_message());
        g_cond_wait_until(&host->wake, &host->lock, g_get_monotonic_time() + HOST_RECONNECT_USEC);
    }
    conn = g_steal_pointer(&host->conn);
    dead = g_steal_pointer(&host->dead);
    g_mutex_unlock(&host->lock);
    if (dead)
        host_release_conn(host, dead);
    if (conn)
        host_release_conn(host, conn);
    g_mutex_lock(&host->lock);
    host->released = true;
    g_cond_broadcast(&host->wake);
    g_mutex_unlock(&host->lock);
    host_unref(host);
    return NULL;
}

/* Whether libvirt's last error has one of the @n @codes. */
static bool libvirt_error_is_one_of(const int *codes, size_t n)
{
    virErrorPtr err = virGetLastError();

    for (size_t i = 0; err && i < n; i++) {
        if (err->code == codes[i])
            return true;
    }
    return false;
}

/*
 * Whether a failed open means "not answering now" rather than "this can never work". A peer that
 * closes the socket mid-handshake answers a read "end of file" (a system error), but a send that
 * comes after libvirt marked the socket closed "client socket is closed", an internal error of the
 * RPC layer: which of the two depends on timing (libvirt 11 meets the second more often).
 */
static bool libvirt_error_means_down(void)
{
    static const int down[] = { VIR_ERR_SYSTEM_ERROR, VIR_ERR_RPC, VIR_ERR_OPERATION_TIMEOUT };
    virErrorPtr err = virGetLastError();

    if (err && err->domain == VIR_FROM_RPC && err->code == VIR_ERR_INTERNAL_ERROR)
        return true;
    return libvirt_error_is_one_of(down, G_N_ELEMENTS(down));
}

struct snapfs_host *host_open(const char *uri, bool tolerate_down)
{
    struct snapfs_host *host = g_new0(struct snapfs_host, 1);
    virConnectPtr conn;
    char *actual;

    host->uri = g_strdup(uri);
    host->refs = 1;
    host->lifecycle_callback = -1;
    g_mutex_init(&host->lock);
    g_cond_init(&host->wake);
    host->domains = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                          (GDestroyNotify)host_domain_unref);
    conn = host_connect(host);
    if (!conn && !(tolerate_down && uri && libvirt_error_means_down())) {
        host_close(host);
        return NULL;
    }
    if (conn) {
        /* Reconnect to what libvirt chose, not to whatever the default is later. */
        actual = virConnectGetURI(conn);
        if (actual) {
            g_free(host->uri);
            host->uri = actual;
        }
        host->conn = conn;
    } else {
        log_warn("%s: not answering yet (%s); retrying in the background", uri, error_message());
        host->down_reason = g_strdup(error_message());
    }
    g_atomic_int_inc(&host->refs);
    host->reconnector = g_thread_new("snapfs-reconnect", host_reconnect_loop, host);
    return host;
}

/* The server @uri names; NULL for none (no URI: libvirt's default, or a URI of this machine's drivers). */
static char *uri_server(const char *uri)
{
    xmlURIPtr parsed = uri ? xmlParseURI(uri) : NULL;
    char *server = parsed && parsed->server && parsed->server[0] ? g_strdup(parsed->server) : NULL;

    xmlFreeURI(parsed);
    return server;
}

bool host_uri_is_local(const char *uri)
{
    g_autofree char *server = uri_server(uri);

    /* A loopback server (a second libvirtd on this machine) sees the same files as snapfs. */
    return !server || strcmp(server, "localhost") == 0 || g_str_has_prefix(server, "127.") ||
           strcmp(server, "::1") == 0 || g_ascii_strcasecmp(server, g_get_host_name()) == 0;
}

bool host_is_local(struct snapfs_host *host)
{
    return host_uri_is_local(host->uri);
}

/* Waits until @deadline for the reconnector to release the host's connections; past it, leaves them to it. */
static void host_finish_close(struct snapfs_host *host, gint64 deadline)
{
    bool released;

    g_mutex_lock(&host->lock);
    while (!host->released && g_cond_wait_until(&host->wake, &host->lock, deadline))
        ;
    released = host->released;
    g_mutex_unlock(&host->lock);
    if (released) {
        g_thread_join(host->reconnector);
    } else {
        log_warn("%s: %s did not answer while its connection was closed; the connection is left to the exit",
                    host_name(host), host->uri);
        g_thread_unref(host->reconnector);
    }
    host_unref(host);
}

void host_close_all(struct snapfs_host **hosts, size_t n)
{
    gint64 deadline = g_get_monotonic_time() + HOST_CLOSE_USEC;

    /* Every host is told first, so that several hosts that do not answer cost one wait, not one each. */
    for (size_t i = 0; i < n; i++) {
        g_mutex_lock(&named_lock);
        if (named_hosts)
            g_ptr_array_remove_fast(named_hosts, hosts[i]);
        g_mutex_unlock(&named_lock);
        g_mutex_lock(&hosts[i]->lock);
        hosts[i]->closing = true;
        g_cond_broadcast(&hosts[i]->wake);
        g_mutex_unlock(&hosts[i]->lock);
    }
    for (size_t i = 0; i < n; i++) {
        if (hosts[i]->reconnector)
            host_finish_close(hosts[i], deadline);
        else
            host_unref(hosts[i]);
    }
}

void host_close(struct snapfs_host *host)
{
    if (host)
        host_close_all(&host, 1);
}

/* A host's folder name before clashes are counted: the URI's server, "localhost" for a local URI. */
static char *uri_folder_name(const char *uri)
{
    char *server = uri_server(uri);

    return server ? server : g_strdup("localhost");
}

void host_name_all(struct snapfs_host **hosts, size_t n)
{
    g_mutex_lock(&named_lock);
    if (!named_hosts)
        named_hosts = g_ptr_array_new();
    for (size_t i = 0; i < n; i++) {
        g_autofree char *base = uri_folder_name(hosts[i]->uri);
        int clash = 1;

        for (size_t j = 0; j < i; j++) {
            if (g_str_has_prefix(hosts[j]->name, base) &&
                (hosts[j]->name[strlen(base)] == '\0' || hosts[j]->name[strlen(base)] == '-'))
                clash++;
        }
        g_free(hosts[i]->name);
        hosts[i]->name = clash > 1 ? g_strdup_printf("%s-%d", base, clash) : g_strdup(base);
        if (!g_ptr_array_find(named_hosts, hosts[i], NULL))
            g_ptr_array_add(named_hosts, hosts[i]);
    }
    g_mutex_unlock(&named_lock);
}

char *host_domain_label(struct snapfs_host *host, const char *name)
{
    char *label;

    g_mutex_lock(&named_lock);
    if (host->name) {
        label = g_strdup_printf("%s/%s", host->name, name);
    } else {
        g_autofree char *base = uri_folder_name(host->uri);

        label = g_strdup_printf("%s/%s", base, name);
    }
    g_mutex_unlock(&named_lock);
    return label;
}

char *host_conn_domain_label(virConnectPtr conn, const char *name)
{
    g_autofree char *uri = conn ? virConnectGetURI(conn) : NULL;
    g_autofree char *base = NULL;

    g_mutex_lock(&named_lock);
    for (guint i = 0; uri && named_hosts && i < named_hosts->len; i++) {
        struct snapfs_host *host = g_ptr_array_index(named_hosts, i);

        if (host->uri && strcmp(host->uri, uri) == 0) {
            base = g_strdup(host->name);
            break;
        }
    }
    g_mutex_unlock(&named_lock);
    if (!base)
        base = uri_folder_name(uri);
    return g_strdup_printf("%s/%s", base, name);
}

const char *host_name(struct snapfs_host *host)
{
    return host->name ? host->name : "localhost";
}

const char *host_uri(struct snapfs_host *host)
{
    return host->uri;
}

virConnectPtr host_conn(struct snapfs_host *host)
{
    virConnectPtr conn = NULL;

    g_mutex_lock(&host->lock);
    if (host->conn) {
        conn = host->conn;
        virConnectRef(conn);
    } else {
        error_set(EIO, "%s", host->down_reason ? host->down_reason : "not connected to libvirt");
    }
    g_mutex_unlock(&host->lock);
    return conn;
}

char *host_error(struct snapfs_host *host)
{
    char *reason;

    g_mutex_lock(&host->lock);
    reason = host->conn ? NULL : g_strdup(host->down_reason);
    g_mutex_unlock(&host->lock);
    return reason;
}

/* Whether a failed question means the connection went away, so that the last answer may still serve. */
static bool libvirt_error_means_lost(void)
{
    static const int lost[] = { VIR_ERR_SYSTEM_ERROR, VIR_ERR_RPC, VIR_ERR_NO_CONNECT, VIR_ERR_INVALID_CONN };

    return libvirt_error_is_one_of(lost, G_N_ELEMENTS(lost));
}

static gint domain_name_compare(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

GPtrArray *host_list_domains(struct snapfs_host *host)
{
    g_autoptr(virConnect) conn = NULL;
    g_autofree virDomainPtr *doms = NULL;
    GPtrArray *names;
    int n;

    g_mutex_lock(&host->lock);
    if (host->domain_names && g_get_monotonic_time() - host->domain_names_fetched < HOST_CACHE_USEC) {
        names = g_ptr_array_ref(host->domain_names);
        g_mutex_unlock(&host->lock);
        return names;
    }
    g_mutex_unlock(&host->lock);

    conn = host_conn(host);
    n = conn ? virConnectListAllDomains(conn, &doms, 0) : -1;
    if (n < 0) {
        if (conn)
            error_from_virt("cannot list the domains of '%s'", host->uri);
        /* While libvirt is away, the last answer is better than nothing. */
        g_mutex_lock(&host->lock);
        names = host->domain_names ? g_ptr_array_ref(host->domain_names) : NULL;
        g_mutex_unlock(&host->lock);
        return names;
    }
    names = g_ptr_array_new_with_free_func(g_free);
    for (int i = 0; i < n; i++) {
        g_autoptr(virDomain) dom = g_steal_pointer(&doms[i]);

        g_ptr_array_add(names, g_strdup(virDomainGetName(dom)));
    }
    g_ptr_array_sort(names, domain_name_compare);

    g_mutex_lock(&host->lock);
    if (host->domain_names)
        g_ptr_array_unref(host->domain_names);
    host->domain_names = g_ptr_array_ref(names);
    host->domain_names_fetched = g_get_monotonic_time();
    g_mutex_unlock(&host->lock);
    return names;
}

struct snapfs_domain *host_get_domain(struct snapfs_host *host, const char *name)
{
    struct snapfs_domain *domain, *cached;
    g_autoptr(virConnect) conn = NULL;

    g_mutex_lock(&host->lock);
    cached = g_hash_table_lookup(host->domains, name);
    if (cached && g_get_monotonic_time() - cached->fetched < HOST_CACHE_USEC) {
        host_domain_ref(cached);
        g_mutex_unlock(&host->lock);
        return cached;
    }
    if (cached)
        host_domain_ref(cached);
    g_mutex_unlock(&host->lock);

    conn = host_conn(host);
    domain = conn ? domain_fetch_from_libvirt(conn, name) : NULL;
    if (!domain) {
        bool lost = !conn || libvirt_error_means_lost();

        if (lost && cached)
            return cached;
        host_domain_unref(cached);
        if (error_errno() == ENOENT) {
            g_mutex_lock(&host->lock);
            g_hash_table_remove(host->domains, name);
            g_mutex_unlock(&host->lock);
        }
        return NULL;
    }
    host_domain_unref(cached);
    g_mutex_lock(&host->lock);
    g_hash_table_replace(host->domains, g_strdup(name), host_domain_ref(domain));
    g_mutex_unlock(&host->lock);
    return domain;
}

void host_invalidate(struct snapfs_host *host, const char *name)
{
    g_mutex_lock(&host->lock);
    if (name)
        g_hash_table_remove(host->domains, name);
    else
        g_hash_table_remove_all(host->domains);
    host->domain_names_fetched = 0;
    g_mutex_unlock(&host->lock);
}
