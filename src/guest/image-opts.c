/* SPDX-License-Identifier: GPL-2.0-or-later */
/* How qemu (qemu-nbd, qemu-storage-daemon, qemu-io) is told to open an image read-only and unlocked. */
#include "guest-priv.h"

char *guest_qemu_opts_escape(const char *value)
{
    g_auto(GStrv) parts = g_strsplit(value, ",", -1);

    return g_strjoinv(",,", parts);   /* QemuOpts doubles a comma inside a value */
}

char *guest_image_opts(const char *format, const char *file)
{
    g_autofree char *escaped = guest_qemu_opts_escape(file);

    return g_strdup_printf("driver=%s,read-only=on,force-share=on,file.driver=file,file.filename=%s,"
                           "file.locking=off", format, escaped);
}

