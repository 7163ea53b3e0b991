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
/* The secret service refused the request (appraisal or its policy said no);
 * the reason is written to the module's stderr by the secure world. */
#define VERITEE_ERR_REFUSED (-5)
/* The secret's envelope is not signed by the service key the module gave, or
 * does not decrypt for this module: the relay or the service is not genuine. */
#define VERITEE_ERR_NOT_AUTHENTIC (-6)
/* The normal world could not relay the request (no --attest-to given, the
 * service unreachable, or an unreadable answer). */
#define VERITEE_ERR_RELAY (-7)
/* -8 and below are reserved for functions added later. */

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

/* ---- attestation and secrets (WASI-RA) ----------------------------------- */

/* Length of a P-256 public key in uncompressed form (0x04 || X || Y). */
#define VERITEE_SERVICE_KEY_LEN 65u
/* Flag for veritee_secret: use the hybrid post-quantum suite (ML-KEM-768 + X25519). */
#define VERITEE_SECRET_PQ 1u

/*
 * Produce evidence for this module over a verifier's challenge: the platform,
 * vtee and module tokens (CBOR), with nonce (8 to 64 bytes) and optional
 * user_data (up to 1024 bytes, e.g. a digest of a key this module owns) in
 * the module token. The secure world signs; the module never sees a key.
 *
 * Returns the evidence length, or VERITEE_ERR_BAD_ARG (bad pointers, nonce or
 * user_data size), VERITEE_ERR_SHORT_BUFFER (evidence is a few KiB).
 */
VERITEE_IMPORT("evidence")
int32_t veritee_evidence(const uint8_t *nonce, uint32_t nonce_len, const uint8_t *user_data,
                         uint32_t user_data_len, uint8_t *out, uint32_t out_cap);

/*
 * Obtain the secret called name from the secret service that this run was
 * wired to (veritee run --attest-to URL), in one remote-attestation handshake:
 * the secure world fetches a challenge, answers it with this module's
 * evidence, checks that the returned envelope is signed by service_key (the
 * service's P-256 key, uncompressed, 65 bytes: embed it in the module so it is
 * part of what is measured) and decrypts it (HPKE to this module's key). The
 * normal world only relays bytes and learns nothing. Each call is fresh: the
 * secure world binds the answer to a nonce of its own for this call, so an
 * answer the relay recorded earlier is refused (VERITEE_ERR_NOT_AUTHENTIC).
 *
 * Returns the secret's length, or VERITEE_ERR_BAD_ARG, VERITEE_ERR_SHORT_BUFFER,
 * VERITEE_ERR_REFUSED, VERITEE_ERR_NOT_AUTHENTIC, VERITEE_ERR_RELAY.
 */
VERITEE_IMPORT("secret")
int32_t veritee_secret(const uint8_t *service_key, uint32_t service_key_len, const char *name,
                       uint32_t name_len, uint8_t *out, uint32_t out_cap, uint32_t flags);

/*
 * AES-256-GCM decryption inside the secure world (as the GlobalPlatform TEE
 * Internal API offers): in = iv (12) || ciphertext || tag (16), no associated
 * data. Returns the plaintext length, or VERITEE_ERR_UNSEAL if it does not
 * authenticate, VERITEE_ERR_BAD_ARG, VERITEE_ERR_SHORT_BUFFER.
 */
VERITEE_IMPORT("aes_gcm_open")
int32_t veritee_aes_gcm_open(const uint8_t key[32], const uint8_t *in, uint32_t in_len,
                             uint8_t *out, uint32_t out_cap);

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
    case VERITEE_ERR_REFUSED:
        return "the secret service refused";
    case VERITEE_ERR_NOT_AUTHENTIC:
        return "the secret did not come from the expected service";
    case VERITEE_ERR_RELAY:
        return "the normal world could not relay the request";
    default:
        return code >= 0 ? "success" : "unknown error";
    }
}

#ifdef __cplusplus
}
#endif

#endif /* VERITEE_H */
