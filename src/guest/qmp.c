/* SPDX-License-Identifier: GPL-2.0-or-later */
/* An appliance's qemu monitor (QMP): one command per connection, every wait bounded. */
#include "guest-priv.h"

#include "snapfs/error.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* The longest line qemu's monitor may send (query-named-block-nodes of many disks): past it, the answer is refused. */
#define QMP_MAX_LINE (4 << 20)

struct qmp_conn {
    int fd;
    gint64 deadline;
    GString *buf;
};

/* The next line qemu sends, into @line (without its end); false with the reason. */
static bool qmp_read_line(struct qmp_conn *conn, GString *line)
{
    for (;;) {
        char *nl = memchr(conn->buf->str, '\n', conn->buf->len);
        char chunk[65536];
        struct pollfd pfd = { .fd = conn->fd, .events = POLLIN };
        gint64 left = conn->deadline - g_get_monotonic_time();
        ssize_t n;

        if (nl) {
            g_string_truncate(line, 0);
            g_string_append_len(line, conn->buf->str, nl - conn->buf->str);
            g_string_erase(conn->buf, 0, nl - conn->buf->str + 1);
            return true;
        }
        if (conn->buf->len > QMP_MAX_LINE) {
            error_set(EIO, "qemu's monitor sent a line of over %d bytes", QMP_MAX_LINE);
            return false;
        }
        if (left <= 0) {
            error_set(ETIMEDOUT, "qemu's monitor did not answer in time");
            return false;
        }
        n = poll(&pfd, 1, (int)MAX(1, left / 1000));
        if (n > 0)
            n = read(conn->fd, chunk, sizeof(chunk));
        else if (n == 0)
            continue;   /* the deadline is checked above */
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            error_set(EIO, "qemu's monitor %s", n == 0 ? "closed the connection" : g_strerror(errno));
            return false;
        }
        g_string_append_len(conn->buf, chunk, n);
    }
}

/* Send @text, a line, within the deadline; false with the reason. */
static bool qmp_send(struct qmp_conn *conn, const char *text)
{
    size_t len = strlen(text), done = 0;

    while (done < len) {
        struct pollfd pfd = { .fd = conn->fd, .events = POLLOUT };
        gint64 left = conn->deadline - g_get_monotonic_time();
        ssize_t n;

        if (left <= 0) {
            error_set(ETIMEDOUT, "qemu's monitor did not take a command in time");
            return false;
        }
        if (poll(&pfd, 1, (int)MAX(1, left / 1000)) <= 0)
            continue;
        n = send(conn->fd, text + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0) {
            error_set(EIO, "cannot write to qemu's monitor: %s", g_strerror(errno));
            return false;
        }
        done += (size_t)n;
    }
    return true;
}

/*
 * The answer to the command just sent: its "return" member (a reference) into *@ret; an "error" answer
 * is EIO with qemu's own description.  Events that come between are skipped.
 */
static bool qmp_answer(struct qmp_conn *conn, JsonNode **ret)
{
    g_autoptr(GString) line = g_string_new(NULL);

    for (;;) {
        g_autoptr(JsonParser) parser = json_parser_new();
        JsonObject *obj;

        if (!qmp_read_line(conn, line))
            return false;
        if (!json_parser_load_from_data(parser, line->str, (gssize)line->len, NULL) ||
            !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(parser))) {
            error_set(EIO, "qemu's monitor sent something that is not a JSON object");
            return false;
        }
        obj = json_node_get_object(json_parser_get_root(parser));
        if (json_object_has_member(obj, "return")) {
            if (ret)
                *ret = json_node_copy(json_object_get_member(obj, "return"));
            return true;
        }
        if (json_object_has_member(obj, "error")) {
            JsonNode *err = json_object_get_member(obj, "error");
            const char *desc = JSON_NODE_HOLDS_OBJECT(err) ?
                json_object_get_string_member_with_default(json_node_get_object(err), "desc", NULL) : NULL;

            error_set(EIO, "qemu refused: %s", desc ? desc : "no reason given");
            return false;
        }
        /* An event, or the greeting: not the answer. */
    }
}

int guest_qmp(const char *socket_path, JsonNode *command, unsigned timeout_ms, JsonNode **ret)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    struct qmp_conn conn = { .fd = -1 };
    g_autoptr(GString) line = g_string_new(NULL);
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autofree char *text = NULL;
    int result = -1;

    if (ret)
        *ret = NULL;
    if (strlen(socket_path) >= sizeof(addr.sun_path)) {
        error_set(ENAMETOOLONG, "the monitor socket '%s' has too long a name", socket_path);
        return -1;
    }
    strcpy(addr.sun_path, socket_path);
    conn.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (conn.fd < 0 || connect(conn.fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        error_set(EIO, "cannot reach qemu's monitor: %s", g_strerror(errno));
        goto out;
    }
    conn.deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    conn.buf = g_string_new(NULL);
    json_generator_set_root(gen, command);
    text = json_generator_to_data(gen, NULL);
    /* The greeting, then capabilities negotiation, then the command. */
    if (!qmp_read_line(&conn, line) || !qmp_send(&conn, "{\"execute\": \"qmp_capabilities\"}\n") ||
        !qmp_answer(&conn, NULL) || !qmp_send(&conn, text) || !qmp_send(&conn, "\n") || !qmp_answer(&conn, ret))
        goto out;
    result = 0;
out:
    if (conn.fd >= 0)
        close(conn.fd);
    if (conn.buf)
        g_string_free(conn.buf, TRUE);
    return result;
}
