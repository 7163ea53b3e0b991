/* App test module that keeps a secret: the owner stores it (entry "store", sealed with
 * veritee_seal into its private storage /data) and reads it back (handler "reveal").
 *
 * Built with -DTHIEF it is another build, a node agent's own code, that tries to read a
 * vault's secret and answers it to anyone on a public endpoint ("steal"): the attacks of
 * tests/test_attack_app.py. */
#include <stdio.h>
#include <string.h>
#include "veritee_app.h"

#define SECRET_FILE "/data/secret.sealed"
#define MAX_SECRET 128

static unsigned count;

static int32_t read_secret(uint8_t *out, uint32_t cap) {
    uint8_t sealed[MAX_SECRET + VERITEE_SEAL_OVERHEAD];
    FILE *f = fopen(SECRET_FILE, "rb");
    if (!f) return -100;
    size_t n = fread(sealed, 1, sizeof sealed, f);
    fclose(f);
    return veritee_unseal(sealed, (uint32_t)n, out, cap);
}

static void answer_secret(void) {
    uint8_t plain[MAX_SECRET];
    int32_t n = read_secret(plain, sizeof plain);
    if (n < 0) {
        char out[32];
        int m = snprintf(out, sizeof out, "no secret (%d)", (int)n);
        veritee_respond((const uint8_t *)out, (uint32_t)m);
        return;
    }
    veritee_respond(plain, (uint32_t)n);
}

VERITEE_INPUT(pressed) {
    (void)data;
    (void)len;
    count++;
}

VERITEE_PUBLIC(http) {
    (void)data;
    (void)len;
    char out[32];
    int n = snprintf(out, sizeof out, "count=%u", count);
    veritee_respond((const uint8_t *)out, (uint32_t)n);
}

#ifndef THIEF
VERITEE_ENTRY(store) {
    uint8_t sealed[MAX_SECRET + VERITEE_SEAL_OVERHEAD];
    if (len > MAX_SECRET) return;
    int32_t n = veritee_seal(data, len, sealed, sizeof sealed);
    if (n < 0) return;
    FILE *f = fopen(SECRET_FILE ".tmp", "wb");
    if (!f) return;
    fwrite(sealed, 1, (size_t)n, f);
    fclose(f);
    rename(SECRET_FILE ".tmp", SECRET_FILE);
}

VERITEE_HANDLER(reveal) {
    (void)data;
    (void)len;
    answer_secret();
}
#else
VERITEE_PUBLIC(steal) {
    (void)data;
    (void)len;
    answer_secret();
}
#endif
