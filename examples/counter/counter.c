/*
 * counter — a counter that survives restarts, kept in sealed storage.
 *
 * The secure world preopens this module's private storage at /data. The count is
 * stored there sealed (veritee_seal), so the untrusted host that keeps the file
 * can neither read nor change it: a tampered file, or one sealed by another
 * module, fails to unseal and the program stops instead of starting over.
 * Sealing does not stop the host from handing back an older copy of the file
 * (rollback); a monotonic counter in the secure world would, and is out of scope.
 *
 *     clang --target=wasm32-wasi -O2 -I sdk examples/counter/counter.c -o counter.wasm
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "veritee.h"

#define STATE_PATH "/data/counter.sealed"
#define STATE_TMP_PATH "/data/counter.sealed.tmp"

/* The plaintext is the count as 8 bytes, little-endian. */
#define PLAIN_LEN 8u
#define SEALED_LEN (PLAIN_LEN + VERITEE_SEAL_OVERHEAD)

enum load_result { LOAD_OK, LOAD_ABSENT, LOAD_FAILED };

static void put_u64_le(uint8_t out[PLAIN_LEN], uint64_t value) {
    for (unsigned i = 0; i < PLAIN_LEN; i++) {
        out[i] = (uint8_t)(value >> (8 * i));
    }
}

static uint64_t get_u64_le(const uint8_t in[PLAIN_LEN]) {
    uint64_t value = 0;
    for (unsigned i = 0; i < PLAIN_LEN; i++) {
        value |= (uint64_t)in[i] << (8 * i);
    }
    return value;
}

/* Read and unseal the stored count. A missing file is the only case that may
 * start from zero; everything else is reported and fails. */
static enum load_result load_count(uint64_t *count) {
    FILE *file = fopen(STATE_PATH, "rb");
    if (file == NULL) {
        if (errno == ENOENT) {
            return LOAD_ABSENT;
        }
        fprintf(stderr, "counter: cannot open %s: %s\n", STATE_PATH, strerror(errno));
        return LOAD_FAILED;
    }
    /* One byte more than a valid blob, to tell an oversized file from a good one. */
    uint8_t sealed[SEALED_LEN + 1];
    size_t sealed_len = fread(sealed, 1, sizeof sealed, file);
    int read_failed = ferror(file);
    fclose(file);
    if (read_failed) {
        fprintf(stderr, "counter: cannot read %s\n", STATE_PATH);
        return LOAD_FAILED;
    }

    uint8_t plain[PLAIN_LEN];
    int32_t plain_len = veritee_unseal(sealed, (uint32_t)sealed_len, plain, sizeof plain);
    if (plain_len < 0) {
        fprintf(stderr,
                "counter: %s cannot be unsealed (%s).\n"
                "counter: refusing to reset the counter; remove the file to start again from 0.\n",
                STATE_PATH, veritee_strerror(plain_len));
        return LOAD_FAILED;
    }
    if ((uint32_t)plain_len != PLAIN_LEN) {
        fprintf(stderr, "counter: %s unsealed to %" PRId32 " bytes, expected %u\n", STATE_PATH,
                plain_len, PLAIN_LEN);
        return LOAD_FAILED;
    }
    *count = get_u64_le(plain);
    return LOAD_OK;
}

/* Seal and store the count. Writing a temporary file and renaming it over the
 * old one means a crash leaves either the old or the new count, never a torn file. */
static int store_count(uint64_t count) {
    uint8_t plain[PLAIN_LEN];
    uint8_t sealed[SEALED_LEN];
    put_u64_le(plain, count);
    int32_t sealed_len = veritee_seal(plain, sizeof plain, sealed, sizeof sealed);
    if (sealed_len < 0) {
        fprintf(stderr, "counter: cannot seal the count: %s\n", veritee_strerror(sealed_len));
        return -1;
    }

    FILE *file = fopen(STATE_TMP_PATH, "wb");
    if (file == NULL) {
        fprintf(stderr, "counter: cannot create %s: %s\n", STATE_TMP_PATH, strerror(errno));
        return -1;
    }
    int failed = fwrite(sealed, 1, (size_t)sealed_len, file) != (size_t)sealed_len;
    failed |= fflush(file) != 0;
    failed |= fsync(fileno(file)) != 0;
    failed |= fclose(file) != 0;
    if (failed) {
        fprintf(stderr, "counter: cannot write %s: %s\n", STATE_TMP_PATH, strerror(errno));
        unlink(STATE_TMP_PATH);
        return -1;
    }
    if (rename(STATE_TMP_PATH, STATE_PATH) != 0) {
        fprintf(stderr, "counter: cannot rename %s to %s: %s\n", STATE_TMP_PATH, STATE_PATH,
                strerror(errno));
        unlink(STATE_TMP_PATH);
        return -1;
    }
    return 0;
}

int main(void) {
    uint64_t count = 0;
    switch (load_count(&count)) {
    case LOAD_OK:
        break;
    case LOAD_ABSENT:
        count = 0;
        break;
    case LOAD_FAILED:
        return 1;
    }
    if (count == UINT64_MAX) {
        fprintf(stderr, "counter: the count is at its maximum\n");
        return 1;
    }
    count++;
    if (store_count(count) != 0) {
        return 1;
    }
    printf("count = %" PRIu64 "\n", count);
    return 0;
}
