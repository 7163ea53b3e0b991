/* db: the smart home's press counter (node "home-server").
 *
 * Counts increment_presses events and answers get_presses (requests from the webserver, or
 * the user's direct connection "get-presses"). The count is sealed with veritee_seal into
 * the module's private storage (/data), so it survives a restart of its node; only this
 * exact binary on this TEE can unseal it.
 */
#include <stdio.h>
#include <string.h>
#include "veritee_app.h"

#define COUNT_FILE "/data/presses.sealed"

static unsigned long long count;
static int loaded;

static void load(void) {
    if (loaded) return;
    loaded = 1;
    uint8_t sealed[64];
    FILE *f = fopen(COUNT_FILE, "rb");
    if (!f) return;
    size_t n = fread(sealed, 1, sizeof sealed, f);
    fclose(f);
    uint8_t plain[sizeof count];
    int32_t m = veritee_unseal(sealed, (uint32_t)n, plain, sizeof plain);
    if (m == (int32_t)sizeof count) {
        memcpy(&count, plain, sizeof count);
    } else {
        printf("db: sealed count does not open (%d): starting from 0\n", m);
    }
}

static void save(void) {
    uint8_t sealed[sizeof count + VERITEE_SEAL_OVERHEAD];
    int32_t n = veritee_seal((const uint8_t *)&count, sizeof count, sealed, sizeof sealed);
    if (n < 0) {
        printf("db: sealing failed (%d)\n", n);
        return;
    }
    FILE *f = fopen(COUNT_FILE ".tmp", "wb");
    if (!f) return;
    fwrite(sealed, 1, (size_t)n, f);
    fclose(f);
    rename(COUNT_FILE ".tmp", COUNT_FILE);
}

VERITEE_INPUT(increment_presses) {
    (void)data;
    (void)len;
    load();
    count++;
    save();
}

VERITEE_HANDLER(get_presses) {
    (void)data;
    (void)len;
    load();
    char out[24];
    int n = snprintf(out, sizeof out, "%llu", count);
    veritee_respond((const uint8_t *)out, (uint32_t)n);
}
