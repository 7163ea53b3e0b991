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

#define VERITEE_ENDPOINT_FN(kind, name)                                                \
    VERITEE_EXPORT("veritee_" #kind "_" #name)                                         \
    void veritee_##kind##_##name(const uint8_t *data, uint32_t len)

#define VERITEE_INPUT(name) VERITEE_ENDPOINT_FN(input, name)
#define VERITEE_HANDLER(name) VERITEE_ENDPOINT_FN(handler, name)
#define VERITEE_ENTRY(name) VERITEE_ENDPOINT_FN(entry, name)
#define VERITEE_PUBLIC(name) VERITEE_ENDPOINT_FN(public, name)
/* Outputs and requests are declarations: an empty export names them in the binary. */
#define VERITEE_OUTPUT(name) \
    VERITEE_EXPORT("veritee_output_" #name) void veritee_output_decl_##name(void) {}
#define VERITEE_REQUEST(name) \
    VERITEE_EXPORT("veritee_request_" #name) void veritee_request_decl_##name(void) {}

/* Emit an event on output `name`: the secure world seals it for every connection of that
 * output. Returns 0, or a negative VERITEE_ERR_*. */
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

static inline int32_t veritee_emit(const char *name, const void *data, uint32_t len) {
    return veritee_output_raw(name, (uint32_t)strlen(name), (const uint8_t *)data, len);
}

static inline int32_t veritee_call(const char *name, const void *data, uint32_t len,
                                   void *out, uint32_t out_cap) {
    return veritee_request_raw(name, (uint32_t)strlen(name), (const uint8_t *)data, len,
                               (uint8_t *)out, out_cap);
}

/* The secure world places each event's payload in module memory with this allocator. */
VERITEE_EXPORT("veritee_alloc") void *veritee_alloc(uint32_t size) { return malloc(size ? size : 1); }
VERITEE_EXPORT("veritee_free") void veritee_free(void *p) { free(p); }

#endif /* VERITEE_APP_H */
