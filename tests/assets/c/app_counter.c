/* App test module: counts events, answers requests and public HTTP-like queries. */
#include <stdio.h>
#include "veritee_app.h"

static unsigned count;
static unsigned bytes;

VERITEE_INPUT(pressed) {
    (void)data;
    count++;
    bytes += len;
}

VERITEE_HANDLER(count) {
    (void)data;
    (void)len;
    char out[32];
    int n = snprintf(out, sizeof out, "%u", count);
    veritee_respond((const uint8_t *)out, (uint32_t)n);
}

VERITEE_PUBLIC(http) {
    char out[96];
    int n = snprintf(out, sizeof out, "count=%u bytes=%u (asked %.*s)", count, bytes,
                     (int)(len < 16 ? len : 16), (const char *)data);
    veritee_respond((const uint8_t *)out, (uint32_t)n);
}
