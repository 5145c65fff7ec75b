/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A revert request: parsed, checked with nothing changed yet, the domain stopped where asked, then handed to the external or internal revert (revert_write(), the entry). */
#include "revert-priv.h"
#include "snapfs/engine.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/revert.h"
#include "snapfs/virt.h"

#include <errno.h>
#include <string.h>

#define FORCE_SUFFIX " --force"

void revert_request_clear(struct revert_request *request)
{
    g_clear_pointer(&request->name, g_free);
    request->force = false;
}

int revert_parse(const char *buf, size_t len, struct revert_request *request)
{
    g_autofree char *text = NULL;
    size_t n;

    request->name = NULL;
    request->force = false;
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    if (len == 0) {
        error_set(EINVAL, "a revert request names a snapshot: nothing was written");
        return -1;
    }
    if (memchr(buf, '\n', len)) {
        error_set(EINVAL, "a revert request names one snapshot on one line");
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f) {
            error_set(EINVAL, "a revert request cannot hold control characters");
            return -1;
        }
    }
    text = g_strndup(buf, len);
    if (strlen(text) != len || !g_utf8_validate(text, -1, NULL)) {
        error_set(EINVAL, "a revert request must be UTF-8 text");
        return -1;
    }
    n = strlen(text);
    if (g_str_has_suffix(text, FORCE_SUFFIX)) {
        request->force = true;
        n -= strlen(FORCE_SUFFIX);
        text[n] = '\0';
    }
    if (n == 0 || text[0] == ' ' || text[n - 1] == ' ') {
        error_set(EINVAL, "a revert request is 'NAME' or 'NAME --force', without blanks around NAME");
        return -1;
    }
    if (g_str_has_prefix(text, "--")) {
        error_set(EINVAL, "'%s': options follow the snapshot name ('NAME --force')", text);
        return -1;
    }
    /* A last word that looks like an option and is not --force. */
    {
        const char *last = strrchr(text, ' ');

        if (last && g_str_has_prefix(last, " --")) {
            error_set(EINVAL, "unknown option '%s' in a revert request (only --force)", last + 1);
            return -1;
        }
    }
    request->name = g_steal_pointer(&text);
    return 0;
}

static int revert_stop(virDomainPtr dom, const char *domain, const char *label, const char *target)
{
    log_info("stopping domain '%s' to revert it to snapshot '%s', as asked", label, target);
    if (virDomainDestroyFlags(dom, VIR_DOMAIN_DESTROY_GRACEFUL) < 0 && virDomainDestroy(dom) < 0) {
        error_from_virt("cannot stop domain '%s' to revert it to '%s'", domain, target);
        return -1;
    }
    return 0;
}

/* A name the request did not find: a prefix of it that is a snapshot means trailing garbage. */
static int revert_not_found(virDomainPtr dom, const char *domain, const char *name)
{
    g_autofree char *prefix = g_strdup(name);
    char *space;

    while ((space = strrchr(prefix, ' '))) {
        *space = '\0';
        if (revert_snapshot_exists(dom, prefix)) {
            error_set(EINVAL, "cannot revert '%s': unexpected text after snapshot name '%s'", domain, prefix);
            return -1;
        }
    }
    error_set(ENOENT, "cannot revert '%s' to '%s': there is no such snapshot", domain, name);
    return -1;
}

/*
 * Before the first change: every disk reads otherwise afterwards (its top is
 * left behind, unlinked, or rewritten by an internal revert), so whoever
 * reads the tops now (open files in the live layers) may refuse it.
 */
static int revert_ask(struct revert_state *st, const char *name)
{
    g_autoptr(GPtrArray) tops = g_ptr_array_new();
    g_autofree char *what = g_strdup_printf("cannot revert '%s' to '%s'", st->name, name);

    for (guint i = 0; i < st->disks->len; i++) {
        struct snapfs_disk *disk = g_ptr_array_index(st->disks, i);

        if (revert_disk_is_local(disk))
            g_ptr_array_add(tops, disk->file);
    }
    g_ptr_array_add(tops, NULL);
    return engine_before_change(st->label, what, (const char *const *)tops->pdata);
}

/* An external snapshot: the plan (in @plan, @noop when only its name is missing) and the local images it needs. */
static int prepare_external(struct revert_state *st, struct revert_snapshot *target, const char *what,
                            const char *path, const struct revert_options *options, struct revert_journal **plan,
                            bool *noop)
{
    GHashTableIter it;
    gpointer key;

    if (g_hash_table_size(target->frozen) == 0) {
        error_set(EIO, "%s: the snapshot names no image it froze", what);
        return -1;
    }
    g_hash_table_iter_init(&it, target->overlay);
    while (g_hash_table_iter_next(&it, &key, NULL)) {
        if (!g_hash_table_contains(target->frozen, key)) {
            error_set(EIO, "%s: cannot tell which image of disk %s the snapshot froze", what,
                             (const char *)key);
            return -1;
        }
    }
    *plan = revert_plan_external(st, target, path, options, noop);
    if (!*plan)
        return -1;
    /* Keeping the state left behind makes overlays here, and so does the by-hand revert. */
    if (!*noop && ((*plan)->keep_name || !revert_native_possible(st, *plan)) && revert_check_local(st, target) < 0) {
        g_clear_pointer(plan, revert_journal_free);
        return -1;
    }
    /* The overlays it makes: names free, formats recorded. */
    if (!*noop && host_uri_is_local(st->uri) && revert_check_images(st, target, *plan) < 0) {
        g_clear_pointer(plan, revert_journal_free);
        return -1;
    }
    return 0;
}

/* An internal snapshot: what libvirt would rewrite, and that nobody else stands on it. */
static int prepare_internal(struct revert_state *st, struct revert_snapshot *target, const char *what)
{
    g_autoptr(GPtrArray) files = NULL;

    if (revert_internal_check(st, target) < 0)
        return -1;
    if (!host_uri_is_local(st->uri))
        return 0;
    /* qemu-img snapshot -c (pre-revert) and -a rewrite every image that holds it. */
    files = g_ptr_array_new();
    for (guint i = 0; target->domain_disks && i < target->domain_disks->len; i++) {
        struct snapfs_disk *then = g_ptr_array_index(target->domain_disks, i);

        if (then->file && revert_disk_is_local(then))
            g_ptr_array_add(files, then->file);
    }
    g_ptr_array_add(files, NULL);
    return engine_check_unused(st->conn, st->name, what, (const char *const *)files->pdata) < 0 ? -1 : 0;
}

/*
 * Every check that could refuse the revert to @target, with nothing changed
 * yet, so that a running domain is stopped only once they all passed.
 */
static int revert_prepare(struct revert_state *st, struct revert_snapshot *target, const char *path,
                          const struct revert_options *options, struct revert_journal **plan, bool *noop)
{
    g_autofree char *what = g_strdup_printf("cannot revert '%s' to '%s'", st->name, target->name);

    *plan = NULL;
    *noop = false;
    if (target->external)
        return prepare_external(st, target, what, path, options, plan, noop);
    return prepare_internal(st, target, what);
}

/*
 * The journal's path for @domain, its directory made, and an earlier revert
 * of it that was cut short settled before anything else; NULL with the reason.
 */
static char *request_journal_path(virConnectPtr conn, virDomainPtr dom, const char *domain,
                                  const struct revert_options *options)
{
    g_autofree char *uri = virConnectGetURI(conn);
    g_autofree char *path = NULL;

    if (!uri) {
        error_from_virt("cannot revert '%s'", domain);
        return NULL;
    }
    if (revert_journal_prepare_dir(revert_state_dir(options)) < 0)
        return NULL;
    path = revert_journal_path(revert_state_dir(options), uri, domain);
    if (g_file_test(path, G_FILE_TEST_EXISTS)) {
        g_autoptr(revert_journal) old = revert_journal_load(path);
        g_autoptr(revert_state) before = old ? revert_state_read(conn, dom) : NULL;

        if (!before || revert_settle(before, old) < 0)
            return NULL;
    }
    return g_steal_pointer(&path);
}

/*
 * Whether @dom may be reverted as @request asks: 0 with whether it runs
 * (*@active) and holds a managed save (*@saved), or -1 with the reason.
 */
static int request_check_domain(virDomainPtr dom, const char *domain, const struct revert_request *request,
                                int *active, bool *saved)
{
    *active = virDomainIsActive(dom);
    if (*active < 0) {
        error_from_virt("cannot revert '%s'", domain);
        return -1;
    }
    if (virDomainIsPersistent(dom) == 0) {
        /* Stopping it would make it vanish, and redefining it would change what kind of domain it is. */
        error_set(ENOTSUP, "cannot revert '%s' to '%s': it is a transient domain (revert needs a "
                         "defined one, as virsh define makes it)", domain, request->name);
        return -1;
    }
    if (*active && !request->force) {
        error_set(EBUSY, "cannot revert '%s' to '%s': the domain is running (write '%s --force' "
                         "to stop it first)", domain, request->name, request->name);
        return -1;
    }
    *saved = virDomainHasManagedSaveImage(dom, 0) == 1;
    if (*saved && !request->force) {
        error_set(EBUSY, "cannot revert '%s' to '%s': it has a saved memory state that would not "
                         "match the reverted disks (write '%s --force' to discard it)",
                         domain, request->name, request->name);
        return -1;
    }
    return 0;
}

/* The domain as libvirt describes it now (in *@st) and its snapshot @name; NULL with the reason. */
static struct revert_snapshot *request_read_target(virConnectPtr conn, virDomainPtr dom, const char *domain,
                                                   const char *name, struct revert_state **st)
{
    struct revert_snapshot *target;

    *st = revert_state_read(conn, dom);
    target = *st ? revert_state_snapshot(*st, name) : NULL;
    if (*st && !target)
        error_set(ENOENT, "cannot revert '%s' to '%s': there is no such snapshot", domain, name);
    return target;
}

/* Under the domain's lock: @request carried out on @dom, from the first check to the last step. */
static int request_carry_out(virConnectPtr conn, virDomainPtr dom, const char *domain, const char *label,
                             const struct revert_request *request, const struct revert_options *options)
{
    g_autoptr(revert_state) st = NULL;
    g_autoptr(revert_journal) plan = NULL;
    g_autofree char *path = NULL;
    struct revert_snapshot *target;
    bool saved = false, noop = false;
    int active = 0, ret;

    if (!revert_snapshot_exists(dom, request->name))
        return revert_not_found(dom, domain, request->name);
    path = request_journal_path(conn, dom, domain, options);
    if (!path || request_check_domain(dom, domain, request, &active, &saved) < 0)
        return -1;
    target = request_read_target(conn, dom, domain, request->name, &st);
    if (!target || revert_ask(st, request->name) < 0 || revert_prepare(st, target, path, options, &plan, &noop) < 0)
        return -1;
    if (active) {
        /* Every check passed: only now is the domain stopped, and then looked at again as it is stopped. */
        if (revert_stop(dom, domain, label, request->name) < 0)
            return -1;
        g_clear_pointer(&plan, revert_journal_free);
        g_clear_pointer(&st, revert_state_free);
        target = request_read_target(conn, dom, domain, request->name, &st);
        if (!target || revert_prepare(st, target, path, options, &plan, &noop) < 0)
            return -1;
    }
    if (saved && virDomainManagedSaveRemove(dom, 0) < 0) {
        error_from_virt("cannot discard the saved memory state of '%s'", domain);
        return -1;
    }
    ret = target->external ? revert_external(st, target, plan, noop) : revert_internal(st, target, path, options);
    if (ret == 0)
        log_info("reverted domain '%s' to snapshot '%s'", label, request->name);
    return ret;
}

int revert_write(virConnectPtr conn, const char *domain, const char *buf, size_t len,
                 const struct revert_options *options)
{
    struct revert_request request = { 0 };
    struct domain_lock *lock = NULL;
    g_autoptr(virDomain) dom = NULL;
    g_autofree char *label = NULL;
    int ret = -1;

    if (revert_parse(buf, len, &request) < 0)
        return -1;
    label = host_conn_domain_label(conn, domain);
    {
        g_autofree char *doing = g_strdup_printf("reverting to snapshot '%s'", request.name);
        g_autofree char *what = g_strdup_printf("cannot revert '%s' to '%s'", domain, request.name);

        lock = domain_lock_acquire_conn(conn, domain, doing, what);
    }
    if (lock) {
        dom = virDomainLookupByName(conn, domain);
        if (!dom)
            error_from_virt("cannot revert '%s'", domain);
        else
            ret = request_carry_out(conn, dom, domain, label, &request, options);
    }
    g_clear_pointer(&dom, virDomainFree);
    domain_lock_release(lock);
    revert_request_clear(&request);
    return ret;
}
