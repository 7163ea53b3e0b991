/*
 * veritee_app.h: endpoints of a module in a distributed Veritee application.
 *
 * A module declares its endpoints in source; each becomes a Wasm export whose name says its
 * kind, and `veritee build` records the endpoint table in the binary (custom section
 * "veritee.endpoints"), which the deployer reads from the binary itself:
 *
 *   VERITEE_OUTPUT(name);            asynchronous events this module emits (many-to-many)
 *   VERITEE_REQUEST(name);           synchronous calls this module makes (one handler answers)
 *   VERITEE_INPUT(name) { ... }      called with each event that arrives on the input
 *   VERITEE_HANDLER(name) { ... }    called with each request; answers with veritee_respond()
 *   VERITEE_ENTRY(name) { ... }      called by the deployer or an authorised user
 *   VERITEE_PUBLIC(name) { ... }     called with an UNAUTHENTICATED request from anyone
 *                                    (e.g. HTTP through the node agent); answer with
 *                                    veritee_respond(). Treat its input as hostile.
 *
 * Bodies receive `const uint8_t *data, uint32_t len`. Build as a WASI reactor
 * (`veritee build` does: -mexec-model=reactor when this header is used). Include it in
 * exactly one C file of the module.
 */
#ifndef VERITEE_APP_H
#define VERITEE_APP_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "veritee.h"

#define VERITEE_EXPORT(name) __attribute__((export_name(name), used))

/* Events arrive in batches: the secure world checks each event, then calls the export
 * "veritee_batch" once with all the accepted ones (one hop into the module, not one per
 * event), which dispatches each to its endpoint in order. What a module emits while an
 * endpoint runs is buffered and handed to the secure world in one call when the endpoint
 * (or the batch) returns, before a request, or when the buffer fills. Each endpoint also
 * stays an export of its own (veritee_input_NAME, ...), called for single events. */
typedef void (*veritee_endpoint_fn)(const uint8_t *data, uint32_t len);

#define VERITEE_MAX_ENDPOINTS 256            /* = MAX_ENDPOINTS in veritee/wasm/endpoints.py */
#define VERITEE_EMIT_BUFFER (1024u * 1024u)  /* emitted events kept before they are handed over */
#define VERITEE_EVENTS_OUTPUT "veritee:events" /* the output name a buffer of events travels under */

static struct {
    const char *name;
    veritee_endpoint_fn fn;
} veritee__endpoints[VERITEE_MAX_ENDPOINTS];
static uint32_t veritee__n_endpoints;
static const char *veritee__outputs[VERITEE_MAX_ENDPOINTS];
static uint32_t veritee__n_outputs;
static uint8_t *veritee__buf;
static uint32_t veritee__buf_len;
static int veritee__buffering;

static void veritee__register(const char *name, veritee_endpoint_fn fn) {
    if (veritee__n_endpoints < VERITEE_MAX_ENDPOINTS) {
        veritee__endpoints[veritee__n_endpoints].name = name;
        veritee__endpoints[veritee__n_endpoints].fn = fn;
        veritee__n_endpoints++;
    }
}

static void veritee__register_output(const char *name) {
    if (veritee__n_outputs < VERITEE_MAX_ENDPOINTS) veritee__outputs[veritee__n_outputs++] = name;
}

/* The secure world's import behind veritee_emit (one event, or a buffer of them). */
VERITEE_IMPORT("output")
int32_t veritee_output_raw(const char *name, uint32_t name_len, const uint8_t *data,
                           uint32_t len);

/* Call request `name` and wait for the handler's answer (at most out_cap bytes).
 * Returns the answer's length, or a negative VERITEE_ERR_* (VERITEE_ERR_RELAY if the
 * connection is down or the answer was refused). */
VERITEE_IMPORT("request")
int32_t veritee_request_raw(const char *name, uint32_t name_len, const uint8_t *data,
                            uint32_t len, uint8_t *out, uint32_t out_cap);

/* From inside a handler or a public endpoint: the answer to the request being handled. */
VERITEE_IMPORT("respond")
int32_t veritee_respond(const uint8_t *data, uint32_t len);

static void veritee__put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static uint32_t veritee__get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Hand the buffered events to the secure world (records: name length, name, data length,
 * data; lengths 32-bit little-endian). */
static int32_t veritee__flush(void) {
    if (veritee__buf_len == 0) return 0;
    uint32_t n = veritee__buf_len;
    veritee__buf_len = 0;
    return veritee_output_raw(VERITEE_EVENTS_OUTPUT, (uint32_t)strlen(VERITEE_EVENTS_OUTPUT),
                              veritee__buf, n);
}

/* Emit an event on output `name`: the secure world seals it for every connection of that
 * output. While an endpoint runs, events are buffered and handed over when it returns (or
 * before a request, or when the buffer fills), in the order emitted. Returns 0, or
 * VERITEE_ERR_RELAY for an output the module does not declare, or a negative
 * VERITEE_ERR_* from handing over earlier events. */
static inline int32_t veritee_emit(const char *name, const void *data, uint32_t len) {
    uint32_t name_len = (uint32_t)strlen(name);
    int declared = 0;
    for (uint32_t i = 0; i < veritee__n_outputs; i++) {
        if (strcmp(veritee__outputs[i], name) == 0) declared = 1;
    }
    if (!declared) return VERITEE_ERR_RELAY; /* the secure world would refuse it too */
    uint32_t record = 8 + name_len + len;
    if (!veritee__buffering || record > VERITEE_EMIT_BUFFER || record < len) {
        int32_t rc = veritee__flush();
        int32_t direct = veritee_output_raw(name, name_len, (const uint8_t *)data, len);
        return rc < 0 ? rc : direct;
    }
    if (veritee__buf == NULL) veritee__buf = (uint8_t *)malloc(VERITEE_EMIT_BUFFER);
    if (veritee__buf == NULL) return veritee_output_raw(name, name_len, (const uint8_t *)data, len);
    int32_t rc = 0;
    if (veritee__buf_len + record > VERITEE_EMIT_BUFFER) rc = veritee__flush();
    uint8_t *p = veritee__buf + veritee__buf_len;
    veritee__put32(p, name_len);
    memcpy(p + 4, name, name_len);
    veritee__put32(p + 4 + name_len, len);
    if (len) memcpy(p + 8 + name_len, data, len);
    veritee__buf_len += record;
    return rc;
}

static inline int32_t veritee_call(const char *name, const void *data, uint32_t len,
                                   void *out, uint32_t out_cap) {
    veritee__flush(); /* events emitted before the request go first */
    return veritee_request_raw(name, (uint32_t)strlen(name), (const uint8_t *)data, len,
                               (uint8_t *)out, out_cap);
}

static void veritee__run(veritee_endpoint_fn fn, const uint8_t *data, uint32_t len) {
    veritee__buffering = 1;
    fn(data, len);
    veritee__buffering = 0;
    veritee__flush();
}

#define VERITEE_ENDPOINT_FN(kind, name)                                                \
    static void veritee__##kind##_##name(const uint8_t *data, uint32_t len);          \
    VERITEE_EXPORT("veritee_" #kind "_" #name)                                         \
    void veritee_##kind##_##name(const uint8_t *data, uint32_t len) {                  \
        veritee__run(veritee__##kind##_##name, data, len);                             \
    }                                                                                  \
    __attribute__((constructor)) static void veritee__register_##kind##_##name(void) { \
        veritee__register("veritee_" #kind "_" #name, veritee__##kind##_##name);      \
    }                                                                                  \
    static void veritee__##kind##_##name(const uint8_t *data, uint32_t len)

#define VERITEE_INPUT(name) VERITEE_ENDPOINT_FN(input, name)
#define VERITEE_HANDLER(name) VERITEE_ENDPOINT_FN(handler, name)
#define VERITEE_ENTRY(name) VERITEE_ENDPOINT_FN(entry, name)
#define VERITEE_PUBLIC(name) VERITEE_ENDPOINT_FN(public, name)
/* Outputs and requests are declarations: an empty export names them in the binary. */
#define VERITEE_OUTPUT(name)                                                           \
    VERITEE_EXPORT("veritee_output_" #name) void veritee_output_decl_##name(void) {}   \
    __attribute__((constructor)) static void veritee__register_output_##name(void) {   \
        veritee__register_output(#name);                                               \
    }
#define VERITEE_REQUEST(name) \
    VERITEE_EXPORT("veritee_request_" #name) void veritee_request_decl_##name(void) {}

/* A batch of events, each record: export name length, export name, payload length,
 * payload (lengths 32-bit little-endian). Records that do not parse end the batch. */
VERITEE_EXPORT("veritee_batch") void veritee_batch(const uint8_t *data, uint32_t len) {
    uint32_t i = 0;
    veritee__buffering = 1;
    while (len - i >= 4) {
        uint32_t n = veritee__get32(data + i);
        i += 4;
        if (n > len - i || len - i - n < 4) break;
        const char *name = (const char *)(data + i);
        i += n;
        uint32_t m = veritee__get32(data + i);
        i += 4;
        if (m > len - i) break;
        for (uint32_t k = 0; k < veritee__n_endpoints; k++) {
            const char *e = veritee__endpoints[k].name;
            if (strlen(e) == n && memcmp(e, name, n) == 0) {
                veritee__endpoints[k].fn(data + i, m);
                break;
            }
        }
        i += m;
    }
    veritee__buffering = 0;
    veritee__flush();
}

/* The secure world takes room for events' payloads in module memory with this allocator,
 * once, and writes each event there: a handler's data is valid only while it runs. */
VERITEE_EXPORT("veritee_alloc") void *veritee_alloc(uint32_t size) { return malloc(size ? size : 1); }
VERITEE_EXPORT("veritee_free") void veritee_free(void *p) { free(p); }

#endif /* VERITEE_APP_H */
