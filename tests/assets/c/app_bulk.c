/* App test module: large payloads. One instance makes events of a given size, another checks
 * what arrives byte for byte and answers requests with as many bytes as asked. */
#include <stdlib.h>
#include <string.h>
#include "veritee_app.h"

VERITEE_OUTPUT(out);

static uint8_t pattern(uint32_t i) { return (uint8_t)(i * 7u + (i >> 11) + 3u); }

static uint32_t size_of(const uint8_t *data, uint32_t len) {
    uint32_t size = 0;
    if (len >= 4) memcpy(&size, data, 4);
    return size;
}

static uint8_t *filled(uint32_t size) {
    uint8_t *buf = malloc(size ? size : 1);
    if (buf != NULL)
        for (uint32_t i = 0; i < size; i++) buf[i] = pattern(i);
    return buf;
}

/* Emit one event of the size asked (uint32 little-endian). */
VERITEE_INPUT(make) {
    uint32_t size = size_of(data, len);
    uint8_t *buf = filled(size);
    if (buf == NULL) return;
    veritee_emit("out", buf, size);
    free(buf);
}

static uint32_t last_len, last_ok, events;

VERITEE_INPUT(in) {
    uint32_t ok = 1;
    for (uint32_t i = 0; i < len && ok; i++) ok = data[i] == pattern(i);
    last_len = len;
    last_ok = ok;
    events++;
}

/* What arrived last: uint32 events, its length, whether every byte was as made. */
VERITEE_HANDLER(seen) {
    (void)data;
    (void)len;
    uint32_t out[3] = {events, last_len, last_ok};
    veritee_respond((const uint8_t *)out, sizeof out);
}

/* Answer with as many bytes as asked. */
VERITEE_HANDLER(fetch) {
    uint32_t size = size_of(data, len);
    uint8_t *buf = filled(size);
    if (buf == NULL) return;
    veritee_respond(buf, size);
    free(buf);
}
