/*
 * veritee.h — host functions the Veritee secure world offers to Wasm modules.
 *
 * Modules are built with clang for wasm32-wasi:
 *
 *     clang --target=wasm32-wasi -O2 -I sdk app.c -o app.wasm
 *
 * Every function below is imported from the Wasm module "veritee". A module that
 * imports a name the secure world does not provide fails to instantiate, so
 * importing only what a program calls keeps it runnable on older secure worlds
 * (clang drops imports of functions that are never called).
 *
 * Conventions, shared by every function here:
 *   - Pointers are offsets into the module's own linear memory. A range that does
 *     not lie entirely inside that memory is rejected with VERITEE_ERR_BAD_ARG;
 *     the secure world never reads or writes outside it.
 *   - A non-negative return value is a length in bytes; a negative one is one of
 *     the VERITEE_ERR_* codes. After an error the contents of an output buffer
 *     are unspecified: do not use them.
 *
 * The ABI is fixed: existing names, signatures and error numbers do not change.
 * New functions (attestation, secret provisioning, events) are added under new
 * import names, and new error codes take the next free negative numbers.
 */
#ifndef VERITEE_H
#define VERITEE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if !defined(__wasm__)
#error "veritee.h declares Wasm host imports: build with clang --target=wasm32-wasi"
#endif

#define VERITEE_IMPORT(name) __attribute__((import_module("veritee"), import_name(name)))

/* ---- errors ------------------------------------------------------------- */

/* A pointer/length pair lies (partly) outside the module's linear memory. */
#define VERITEE_ERR_BAD_ARG (-1)
/* out_cap is smaller than the result; nothing was written. */
#define VERITEE_ERR_SHORT_BUFFER (-2)
/* The blob fails authentication: it was altered, truncated, or sealed by a
 * different module (other measurement) or on a different TEE. */
#define VERITEE_ERR_UNSEAL (-3)
/* This secure world does not offer the operation (e.g. its backend lacks it). */
#define VERITEE_ERR_NOT_SUPPORTED (-4)
/* -5 and below are reserved for functions added later. */

/* ---- sizes -------------------------------------------------------------- */

/* Bytes a sealed blob adds to its plaintext (the AEAD's nonce and tag and a
 * header): veritee_seal(in, n, ...) returns exactly n + VERITEE_SEAL_OVERHEAD. */
#define VERITEE_SEAL_OVERHEAD 29u

/* Length of a module measurement: a SHA-256 digest. */
#define VERITEE_MEASUREMENT_LEN 32u

/* ---- sealing ------------------------------------------------------------ */

/*
 * Seal `in[0..in_len)` into `out`.
 *
 * The result is authenticated-encrypted (AEAD) under a key derived inside the
 * secure world from the TEE's hardware-unique key and this module's measurement:
 * only the same module (bit-identical Wasm binary) on the same TEE can unseal it.
 * Any later change to the module, even a rebuild with other flags, yields another
 * key. Each call uses a fresh nonce, so sealing the same input twice gives
 * different blobs. Sealing hides contents and detects tampering; it does NOT
 * detect rollback: an old blob still unseals, so a program that needs freshness
 * must check it itself.
 *
 * Returns the sealed length, in_len + VERITEE_SEAL_OVERHEAD, or
 *   VERITEE_ERR_BAD_ARG       `in` or `out` range outside memory;
 *   VERITEE_ERR_SHORT_BUFFER  out_cap < in_len + VERITEE_SEAL_OVERHEAD;
 *   VERITEE_ERR_NOT_SUPPORTED the secure world has no sealing key.
 */
VERITEE_IMPORT("seal")
int32_t veritee_seal(const uint8_t *in, uint32_t in_len, uint8_t *out, uint32_t out_cap);

/*
 * Unseal a blob produced by veritee_seal into `out`.
 *
 * Succeeds only if the blob is intact and was sealed by this same module on this
 * same TEE. The plaintext length is in_len - VERITEE_SEAL_OVERHEAD, so an output
 * buffer of that size always suffices.
 *
 * Returns the plaintext length, or
 *   VERITEE_ERR_BAD_ARG       `in` or `out` range outside memory;
 *   VERITEE_ERR_SHORT_BUFFER  out_cap too small for the plaintext;
 *   VERITEE_ERR_UNSEAL        blob altered, truncated (including in_len <
 *                             VERITEE_SEAL_OVERHEAD), or sealed by another
 *                             module or TEE (one code for all: a module cannot
 *                             tell tampering from a foreign key);
 *   VERITEE_ERR_NOT_SUPPORTED the secure world has no sealing key.
 */
VERITEE_IMPORT("unseal")
int32_t veritee_unseal(const uint8_t *in, uint32_t in_len, uint8_t *out, uint32_t out_cap);

/* ---- identity ----------------------------------------------------------- */

/*
 * Write this module's measurement, the SHA-256 of its Wasm binary as the secure
 * world loaded it, to out[0..32). This is the value that attestation reports
 * and that sealing keys are bound to.
 *
 * Returns VERITEE_MEASUREMENT_LEN (32), or VERITEE_ERR_BAD_ARG if the 32-byte
 * range is outside memory.
 */
VERITEE_IMPORT("measurement")
int32_t veritee_measurement(uint8_t out[VERITEE_MEASUREMENT_LEN]);

/* ---- attestation, secrets: reserved for a later version ----------------- */

/* ---- helpers (header-only, no import) ----------------------------------- */

/* A short English description of a VERITEE_ERR_* code, for error messages. */
static inline const char *veritee_strerror(int32_t code) {
    switch (code) {
    case VERITEE_ERR_BAD_ARG:
        return "argument outside the module's memory";
    case VERITEE_ERR_SHORT_BUFFER:
        return "output buffer too small";
    case VERITEE_ERR_UNSEAL:
        return "sealed data was altered or sealed by another module or TEE";
    case VERITEE_ERR_NOT_SUPPORTED:
        return "not supported by this secure world";
    default:
        return code >= 0 ? "success" : "unknown error";
    }
}

#ifdef __cplusplus
}
#endif

#endif /* VERITEE_H */
