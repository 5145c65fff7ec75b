/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A running domain's qemu-guest-agent through libvirt: guest-exec and guest-file-*, each with a deadline. */

/*
 * Policy.  The agent is a program in the guest: it may be missing, blocked by the guest's own
 * configuration (RHEL's blocks guest-exec and guest-file-* by default), slow, or gone when the
 * guest stops.  So it is asked once what it allows (guest-info) and refused with the reason
 * when a command live/ needs is missing, every command waits at most the deadline it was
 * opened with, and a program it runs that does not finish by then answers EIO (it may still
 * run in the guest: the agent of Debian 12 cannot kill it).  Text the guest sends (errors,
 * output) is data: it only ever becomes a message or an errno.
 */
#include "snapfs/agent.h"
#include "snapfs/error.h"
#include "snapfs/log.h"
#include "snapfs/virt.h"

#include <errno.h>
#include <json-glib/json-glib.h>
#include <libvirt/libvirt-qemu.h>
#include <string.h>

struct snapfs_agent {
    GMutex lock;           /* one command at a time: a guest-exec and its status polls stay together */
    virDomainPtr dom;
    char *label;
    unsigned timeout_s;
};

/* What live/ needs the agent to allow. */
static const char *const agent_needed[] = {
    "guest-exec", "guest-exec-status", "guest-file-open", "guest-file-close",
    "guest-file-read", "guest-file-write", "guest-file-seek", "guest-file-flush",
};

int agent_errno_of(const char *text)
{
    static const int known[] = {
        ENOENT, ENOTDIR, EISDIR, EEXIST, ENOTEMPTY, EACCES, EPERM, EROFS, ENOSPC, EDQUOT, EXDEV,
        EINVAL, ELOOP, ENAMETOOLONG, EBUSY, EFBIG, EMLINK, ETXTBSY, EOPNOTSUPP, ENODATA, ERANGE, E2BIG,
    };

    for (size_t i = 0; text && i < G_N_ELEMENTS(known); i++) {
        if (strstr(text, strerror(known[i])))
            return known[i];
    }
    return EIO;
}

/* {"execute": @execute, "arguments": @args} as JSON text; @args is taken. */
static char *agent_command_text(const char *execute, JsonNode *args)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonNode) root = NULL;

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "execute");
    json_builder_add_string_value(b, execute);
    if (args) {
        json_builder_set_member_name(b, "arguments");
        json_builder_add_value(b, args);
    }
    json_builder_end_object(b);
    root = json_builder_get_root(b);
    json_generator_set_root(gen, root);
    return json_generator_to_data(gen, NULL);
}

/*
 * @execute with @args (taken) sent to the agent: its "return" member (caller frees), or NULL with the
 * reason (libvirt's, or the agent's own error text).  Agent lock held.
 */
static JsonNode *agent_call(struct snapfs_agent *agent, const char *execute, JsonNode *args)
{
    g_autofree char *cmd = agent_command_text(execute, args);
    g_autofree char *reply = virDomainQemuAgentCommand(agent->dom, cmd, (int)agent->timeout_s, 0);
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) err = NULL;
    JsonObject *top;

    if (!reply) {
        error_from_virt("the guest agent of domain '%s' did not answer %s", agent->label, execute);
        return NULL;
    }
    if (!json_parser_load_from_data(parser, reply, -1, &err) || !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(parser))) {
        error_set(EIO, "the guest agent of domain '%s' answered %s with what is not JSON", agent->label, execute);
        return NULL;
    }
    top = json_node_get_object(json_parser_get_root(parser));
    if (json_object_has_member(top, "error")) {
        JsonObject *e = json_object_get_object_member(top, "error");
        const char *desc = e && json_object_has_member(e, "desc") ? json_object_get_string_member(e, "desc") : NULL;

        error_set(agent_errno_of(desc), "the guest agent of domain '%s' refused %s: %s", agent->label, execute,
                  desc ? desc : "no reason given");
        return NULL;
    }
    if (!json_object_has_member(top, "return")) {
        error_set(EIO, "the guest agent of domain '%s' answered %s without a result", agent->label, execute);
        return NULL;
    }
    return json_node_copy(json_object_get_member(top, "return"));
}

/* An object member of @ret as an integer, or -1 (and an error) where it is missing or not one. */
static gint64 agent_int_member(struct snapfs_agent *agent, JsonNode *ret, const char *execute, const char *name)
{
    JsonObject *o = ret && JSON_NODE_HOLDS_OBJECT(ret) ? json_node_get_object(ret) : NULL;
    JsonNode *m = o ? json_object_get_member(o, name) : NULL;

    if (!m || !JSON_NODE_HOLDS_VALUE(m) || json_node_get_value_type(m) != G_TYPE_INT64) {
        error_set(EIO, "the guest agent of domain '%s' answered %s without '%s'", agent->label, execute, name);
        return -1;
    }
    return json_node_get_int(m);
}

/* Which of agent_needed the agent's guest-info lacks or has disabled, as a list; "" if none. */
static char *agent_missing(JsonNode *info)
{
    JsonObject *o = JSON_NODE_HOLDS_OBJECT(info) ? json_node_get_object(info) : NULL;
    JsonArray *cmds = o && json_object_has_member(o, "supported_commands")
                          ? json_object_get_array_member(o, "supported_commands") : NULL;
    GString *missing = g_string_new(NULL);

    for (size_t i = 0; i < G_N_ELEMENTS(agent_needed); i++) {
        bool enabled = false;

        for (guint j = 0; cmds && j < json_array_get_length(cmds); j++) {
            JsonObject *c = json_array_get_object_element(cmds, j);

            if (c && g_strcmp0(json_object_get_string_member_with_default(c, "name", ""), agent_needed[i]) == 0)
                enabled = json_object_get_boolean_member_with_default(c, "enabled", false);
        }
        if (!enabled)
            g_string_append_printf(missing, "%s%s", missing->len ? ", " : "", agent_needed[i]);
    }
    return g_string_free(missing, FALSE);
}

struct snapfs_agent *agent_open(virConnectPtr conn, const char *name, const char *label, unsigned probe_s,
                                unsigned timeout_s)
{
    g_autoptr(snapfs_agent) agent = g_new0(struct snapfs_agent, 1);
    g_autoptr(JsonNode) info = NULL;
    g_autofree char *missing = NULL;

    g_mutex_init(&agent->lock);
    agent->label = g_strdup(label);
    agent->timeout_s = probe_s;
    agent->dom = virDomainLookupByName(conn, name);
    if (!agent->dom) {
        error_from_virt("domain '%s'", label);
        return NULL;
    }
    g_mutex_lock(&agent->lock);
    info = agent_call(agent, "guest-info", NULL);
    g_mutex_unlock(&agent->lock);
    if (!info) {
        g_autofree char *why = g_strdup(error_message());

        error_set(EROFS, "its guest agent does not answer (%s)", why);
        return NULL;
    }
    missing = agent_missing(info);
    if (*missing) {
        error_set(EROFS, "its guest agent does not allow %s", missing);
        return NULL;
    }
    agent->timeout_s = timeout_s;
    return g_steal_pointer(&agent);
}

void agent_free(struct snapfs_agent *agent)
{
    if (!agent)
        return;
    if (agent->dom)
        virDomainFree(agent->dom);
    g_free(agent->label);
    g_mutex_clear(&agent->lock);
    g_free(agent);
}

void agent_exec_clear(struct agent_exec *exec)
{
    if (exec->out)
        g_bytes_unref(exec->out);
    g_free(exec->err);
    memset(exec, 0, sizeof(*exec));
}

/* A base64 member of @o decoded, or an empty GBytes where it is missing. */
static GBytes *agent_b64_member(JsonObject *o, const char *name)
{
    const char *text = json_object_get_string_member_with_default(o, name, NULL);
    gsize len = 0;
    guchar *data = text && *text ? g_base64_decode(text, &len) : NULL;

    return g_bytes_new_take(data, len);
}

/* guest-exec-status of @pid until it exited, polled ever less often up to 100 ms, until @deadline.  Agent lock held. */
static int agent_wait(struct snapfs_agent *agent, gint64 pid, const char *program, gint64 deadline,
                      struct agent_exec *exec)
{
    gulong pause_us = 2000;

    for (;;) {
        g_autoptr(JsonBuilder) b = json_builder_new();
        g_autoptr(JsonNode) ret = NULL;
        JsonObject *o;

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "pid");
        json_builder_add_int_value(b, pid);
        json_builder_end_object(b);
        ret = agent_call(agent, "guest-exec-status", json_builder_get_root(b));
        if (!ret)
            return -1;
        o = JSON_NODE_HOLDS_OBJECT(ret) ? json_node_get_object(ret) : NULL;
        if (o && json_object_get_boolean_member_with_default(o, "exited", false)) {
            exec->status = json_object_has_member(o, "exitcode") ? (int)json_object_get_int_member(o, "exitcode") : -1;
            exec->out = agent_b64_member(o, "out-data");
            g_autoptr(GBytes) err = agent_b64_member(o, "err-data");
            exec->err = g_strndup(g_bytes_get_data(err, NULL), g_bytes_get_size(err));
            if (json_object_get_boolean_member_with_default(o, "out-truncated", false)) {
                error_set(EIO, "'%s' in domain '%s' wrote more than the guest agent keeps", program, agent->label);
                return -1;
            }
            return 0;
        }
        if (g_get_monotonic_time() > deadline) {
            error_set(EIO, "'%s' in domain '%s' did not finish within %u s (it may still run in the guest)",
                      program, agent->label, agent->timeout_s);
            return -1;
        }
        g_usleep(pause_us);
        pause_us = MIN(pause_us * 2, 100000);
    }
}

int agent_run(struct snapfs_agent *agent, const char *const *argv, GBytes *input, struct agent_exec *exec)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) ret = NULL;
    gint64 deadline = g_get_monotonic_time() + (gint64)agent->timeout_s * G_USEC_PER_SEC;
    gint64 pid;
    int r;

    memset(exec, 0, sizeof(*exec));
    for (guint i = 0; argv[i]; i++) {
        if (!g_utf8_validate(argv[i], -1, NULL)) {
            error_set(EINVAL, "'%s' is not UTF-8, which the guest agent's JSON cannot carry", argv[i]);
            return -1;
        }
    }
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "path");
    json_builder_add_string_value(b, argv[0]);
    json_builder_set_member_name(b, "arg");
    json_builder_begin_array(b);
    for (guint i = 1; argv[i]; i++)
        json_builder_add_string_value(b, argv[i]);
    json_builder_end_array(b);
    json_builder_set_member_name(b, "env");
    json_builder_begin_array(b);
    json_builder_add_string_value(b, "LC_ALL=C");
    json_builder_add_string_value(b, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    json_builder_end_array(b);
    if (input) {
        g_autofree char *data = g_base64_encode(g_bytes_get_data(input, NULL), g_bytes_get_size(input));

        json_builder_set_member_name(b, "input-data");
        json_builder_add_string_value(b, data);
    }
    json_builder_set_member_name(b, "capture-output");
    json_builder_add_boolean_value(b, true);
    json_builder_end_object(b);

    g_mutex_lock(&agent->lock);
    ret = agent_call(agent, "guest-exec", json_builder_get_root(b));
    pid = ret ? agent_int_member(agent, ret, "guest-exec", "pid") : -1;
    r = pid < 0 ? -1 : agent_wait(agent, pid, argv[0], deadline, exec);
    g_mutex_unlock(&agent->lock);
    return r;
}

/* @execute with one member "handle" = @handle and, if @name is set, one more: its "return", or NULL with the reason. */
static JsonNode *agent_handle_call(struct snapfs_agent *agent, const char *execute, gint64 handle, const char *name,
                                   JsonNode *value)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    JsonNode *ret;

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "handle");
    json_builder_add_int_value(b, handle);
    if (name) {
        json_builder_set_member_name(b, name);
        json_builder_add_value(b, value);
    }
    json_builder_end_object(b);
    g_mutex_lock(&agent->lock);
    ret = agent_call(agent, execute, json_builder_get_root(b));
    g_mutex_unlock(&agent->lock);
    return ret;
}

gint64 agent_file_open(struct snapfs_agent *agent, const char *path, const char *mode)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) ret = NULL;
    gint64 handle;

    if (!g_utf8_validate(path, -1, NULL)) {
        error_set(EINVAL, "'%s' is not UTF-8, which the guest agent's JSON cannot carry", path);
        return -1;
    }
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "path");
    json_builder_add_string_value(b, path);
    json_builder_set_member_name(b, "mode");
    json_builder_add_string_value(b, mode);
    json_builder_end_object(b);
    g_mutex_lock(&agent->lock);
    ret = agent_call(agent, "guest-file-open", json_builder_get_root(b));
    g_mutex_unlock(&agent->lock);
    if (!ret)
        return -1;
    /* The handle is the whole answer, a number. */
    if (!JSON_NODE_HOLDS_VALUE(ret) || json_node_get_value_type(ret) != G_TYPE_INT64) {
        error_set(EIO, "the guest agent of domain '%s' answered guest-file-open without a handle", agent->label);
        return -1;
    }
    handle = json_node_get_int(ret);
    return handle;
}

int agent_file_seek(struct snapfs_agent *agent, gint64 handle, off_t offset)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) ret = NULL;
    gint64 at;

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "handle");
    json_builder_add_int_value(b, handle);
    json_builder_set_member_name(b, "offset");
    json_builder_add_int_value(b, offset);
    json_builder_set_member_name(b, "whence");
    json_builder_add_string_value(b, "set");
    json_builder_end_object(b);
    g_mutex_lock(&agent->lock);
    ret = agent_call(agent, "guest-file-seek", json_builder_get_root(b));
    at = ret ? agent_int_member(agent, ret, "guest-file-seek", "position") : -1;
    g_mutex_unlock(&agent->lock);
    if (at >= 0 && at != offset) {
        error_set(EIO, "the guest agent of domain '%s' sought to %" G_GINT64_FORMAT " for %lld", agent->label, at,
                  (long long)offset);
        return -1;
    }
    return at < 0 ? -1 : 0;
}

ssize_t agent_file_read(struct snapfs_agent *agent, gint64 handle, char *buf, size_t size)
{
    g_autoptr(JsonNode) count = json_node_init_int(json_node_alloc(), (gint64)MIN(size, AGENT_FILE_CHUNK));
    g_autoptr(JsonNode) ret = agent_handle_call(agent, "guest-file-read", handle, "count", g_steal_pointer(&count));
    g_autoptr(GBytes) data = NULL;

    if (!ret)
        return -1;
    if (!JSON_NODE_HOLDS_OBJECT(ret)) {
        error_set(EIO, "the guest agent of domain '%s' answered a read without data", agent->label);
        return -1;
    }
    data = agent_b64_member(json_node_get_object(ret), "buf-b64");
    if (g_bytes_get_size(data) > size) {
        error_set(EIO, "the guest agent of domain '%s' answered a read of %zu bytes with %zu", agent->label, size,
                  g_bytes_get_size(data));
        return -1;
    }
    if (g_bytes_get_size(data))
        memcpy(buf, g_bytes_get_data(data, NULL), g_bytes_get_size(data));
    return (ssize_t)g_bytes_get_size(data);
}

ssize_t agent_file_write(struct snapfs_agent *agent, gint64 handle, const char *buf, size_t size)
{
    size_t done = 0;

    while (done < size) {
        size_t n = MIN(size - done, AGENT_FILE_CHUNK);
        g_autofree char *text = g_base64_encode((const guchar *)buf + done, n);
        g_autoptr(JsonNode) ret = agent_handle_call(agent, "guest-file-write", handle, "buf-b64",
                                                    json_node_init_string(json_node_alloc(), text));
        gint64 wrote = ret ? agent_int_member(agent, ret, "guest-file-write", "count") : -1;

        if (wrote < 0)
            return -1;
        if (wrote == 0 || (size_t)wrote > n) {
            error_set(EIO, "the guest agent of domain '%s' wrote %" G_GINT64_FORMAT " of %zu bytes", agent->label,
                      wrote, n);
            return -1;
        }
        done += (size_t)wrote;
    }
    return (ssize_t)done;
}

int agent_file_flush(struct snapfs_agent *agent, gint64 handle)
{
    g_autoptr(JsonNode) ret = agent_handle_call(agent, "guest-file-flush", handle, NULL, NULL);

    return ret ? 0 : -1;
}

int agent_file_close(struct snapfs_agent *agent, gint64 handle)
{
    g_autoptr(JsonNode) ret = agent_handle_call(agent, "guest-file-close", handle, NULL, NULL);

    return ret ? 0 : -1;
}
