/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The per-thread record of why the last call of src/ failed, and libvirt's errors mapped to errno. */
#include "snapfs/error.h"

#include <errno.h>
#include <libvirt/virterror.h>
#include <stdarg.h>

struct snapfs_error_state {
    int errnum;
    char *message;
};

static void error_state_free(gpointer data)
{
    struct snapfs_error_state *state = data;

    g_free(state->message);
    g_free(state);
}

static GPrivate error_thread_key = G_PRIVATE_INIT(error_state_free);

static struct snapfs_error_state *error_this_thread(void)
{
    struct snapfs_error_state *state = g_private_get(&error_thread_key);

    if (!state) {
        state = g_new0(struct snapfs_error_state, 1);
        g_private_set(&error_thread_key, state);
    }
    return state;
}

static void error_record(int errnum, char *message)
{
    struct snapfs_error_state *state = error_this_thread();

    g_free(state->message);
    state->errnum = errnum;
    state->message = message;
}

void error_set(int errnum, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    error_record(errnum, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

int error_errno_from_virt_code(int code)
{
    switch (code) {
    case VIR_ERR_NO_DOMAIN:
    case VIR_ERR_NO_DOMAIN_SNAPSHOT:
    case VIR_ERR_NO_STORAGE_VOL:
        return ENOENT;
    case VIR_ERR_OPERATION_DENIED:
    case VIR_ERR_ACCESS_DENIED:
    case VIR_ERR_AUTH_FAILED:
        return EACCES;
    case VIR_ERR_NO_SUPPORT:
    case VIR_ERR_ARGUMENT_UNSUPPORTED:
        return ENOTSUP;
    case VIR_ERR_OPERATION_INVALID:
    case VIR_ERR_OPERATION_TIMEOUT:
    case VIR_ERR_AGENT_UNRESPONSIVE:
        return EBUSY;
    case VIR_ERR_INVALID_ARG:
    case VIR_ERR_XML_ERROR:
        return EINVAL;
    case VIR_ERR_OPERATION_UNSUPPORTED:
    case VIR_ERR_CONFIG_UNSUPPORTED:
        return ENOTSUP;
    default:
        return EIO;
    }
}

void error_from_virt(const char *fmt, ...)
{
    virErrorPtr err = virGetLastError();
    g_autofree char *prefix = NULL;
    va_list ap;

    va_start(ap, fmt);
    prefix = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (!err) {
        error_record(EIO, g_strdup_printf("%s: unknown libvirt error", prefix));
        return;
    }
    error_record(error_errno_from_virt_code(err->code),
                 g_strdup_printf("%s: %s", prefix, err->message ? err->message : "unknown libvirt error"));
}

int error_errno(void)
{
    struct snapfs_error_state *state = error_this_thread();

    return state->errnum > 0 ? state->errnum : EIO;
}

const char *error_message(void)
{
    struct snapfs_error_state *state = error_this_thread();

    return state->message ? state->message : "unknown error";
}

void error_clear(void)
{
    error_record(0, NULL);
}
