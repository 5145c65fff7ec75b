/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Connections to libvirt (one per -c URI), kept alive and reconnected, and what they say about domains. */
#pragma once

#include "snapfs/xml.h"

#include <glib.h>
#include <libvirt/libvirt.h>
#include <stdbool.h>

/* libvirt's objects released by g_autoptr, as virsh's util header does. */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(virConnect, virConnectClose)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(virDomain, virDomainFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(virDomainSnapshot, virDomainSnapshotFree)

struct snapfs_snapshot {
    char *name;
    char *parent;        /* NULL for a root */
    char *description;   /* "" if none */
    char *state;         /* "shutoff", "running", "disk-snapshot", ... */
    long long created;   /* seconds since the epoch */
    bool external;
    bool current;
    GPtrArray *disks;    /* struct snapfs_snapshot_disk * */
};

/* What libvirt said about a domain at one moment; shared and never modified. */
struct snapfs_domain {
    gint refs;
    char *name;
    char *uuid;
    bool running;
    GPtrArray *disks;      /* struct snapfs_disk * of device 'disk', in the XML's order */
    GPtrArray *snapshots;  /* struct snapfs_snapshot *, oldest first */
    gint64 fetched;        /* g_get_monotonic_time() of the answer */
};

struct snapfs_host;

/* Must run before the first host is opened: libvirt's event loop on a thread of its own. */
int host_start_events(void);
void host_stop_events(void);

/*
 * Opens @uri (NULL: libvirt's default); NULL with the reason if it cannot be
 * opened now.  With @tolerate_down, a host that exists but does not answer
 * (connection refused, timed out) is returned disconnected and reconnected
 * in the background; an unknown driver or a malformed URI is still refused.
 */
struct snapfs_host *host_open(const char *uri, bool tolerate_down);
/*
 * Closes @hosts within a few seconds whatever their connections do: a
 * connection whose peer does not answer is left to the process's exit.
 */
void host_close_all(struct snapfs_host **hosts, size_t n);
void host_close(struct snapfs_host *host);

/* The folder name of each host: its server name, "localhost" for local URIs, "-2", "-3"... on clashes. */
void host_name_all(struct snapfs_host **hosts, size_t n);
const char *host_name(struct snapfs_host *host);
const char *host_uri(struct snapfs_host *host);

/*
 * How every log line names domain @name: "HOST/NAME", HOST being the folder
 * host_name_all() gave its host (for a connection of no named host: its
 * URI's server, or "localhost").  Caller frees.  host_conn_domain_label() asks
 * libvirt for the connection's URI, which resets libvirt's last error: take
 * it before an operation, not between a failure and reading its reason.
 */
char *host_domain_label(struct snapfs_host *host, const char *name);
char *host_conn_domain_label(virConnectPtr conn, const char *name);

/* Whether @uri names this machine (no server, or a loopback or own name), so that its images are files here. */
bool host_uri_is_local(const char *uri);
/* The same for the host's URI: only then can layers and guest files be read. */
bool host_is_local(struct snapfs_host *host);

/* The live connection (a reference the caller drops with virConnectClose), or NULL with EIO while down. */
virConnectPtr host_conn(struct snapfs_host *host);
/* Why the host is unreachable, or NULL when it is connected. Caller frees. */
char *host_error(struct snapfs_host *host);

/* Names of all domains, running or not, sorted. */
GPtrArray *host_list_domains(struct snapfs_host *host);

/* What libvirt says about domain @name, at most a short while old; NULL with ENOENT or EIO. */
struct snapfs_domain *host_get_domain(struct snapfs_host *host, const char *name);
/* Forget what is cached about @name (NULL: every domain), after changing it. */
void host_invalidate(struct snapfs_host *host, const char *name);

struct snapfs_domain *host_domain_ref(struct snapfs_domain *domain);
void host_domain_unref(struct snapfs_domain *domain);
struct snapfs_snapshot *host_domain_find_snapshot(struct snapfs_domain *domain, const char *name);
struct snapfs_snapshot *host_domain_current_snapshot(struct snapfs_domain *domain);
struct snapfs_disk *host_domain_find_disk(struct snapfs_domain *domain, const char *target);
