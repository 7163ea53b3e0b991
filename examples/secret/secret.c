/*
 * An attested module receives a key from a secret service and decrypts data it was handed
 * encrypted (WASI-RA).
 *
 * The service's public key is compiled in (VERITEE_SECRET_SERVICE_KEY, 130 hex digits:
 * the uncompressed P-256 point that `veritee secrets key` prints), so it is part of this
 * module's measurement: a normal world that relays to an impostor gets nothing accepted.
 *
 *   veritee build -O2 secret.c -o secret.wasm   (with -DVERITEE_SECRET_SERVICE_KEY=...)
 *   veritee run --attest-to http://127.0.0.1:8444 --dir data::/in secret.wasm -- /in/msg.enc
 *
 * The file holds iv (12) || ciphertext || tag (16), AES-256-GCM under the secret
 * "data-key". Pass --pq to ask for the hybrid post-quantum suite.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "veritee.h"

#ifndef VERITEE_SECRET_SERVICE_KEY
#error "define VERITEE_SECRET_SERVICE_KEY (hex of the service's P-256 public key)"
#endif
#define STR2(x) #x
#define STR(x) STR2(x)

#define MAX_DATA (64 * 1024)

static int unhex(const char *hex, uint8_t *out, size_t n) {
    if (strlen(hex) != 2 * n) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (uint8_t)v;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *path = NULL;
    uint32_t flags = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--pq") == 0) flags |= VERITEE_SECRET_PQ;
        else path = argv[i];
    }
    if (path == NULL) {
        fprintf(stderr, "usage: secret [--pq] ENCRYPTED-FILE\n");
        return 2;
    }

    uint8_t service_key[VERITEE_SERVICE_KEY_LEN];
    if (unhex(STR(VERITEE_SECRET_SERVICE_KEY), service_key, sizeof service_key) != 0) {
        fprintf(stderr, "secret: VERITEE_SECRET_SERVICE_KEY is not 130 hex digits\n");
        return 2;
    }

    static const char name[] = "data-key";
    uint8_t key[64];
    int32_t n = veritee_secret(service_key, sizeof service_key, name, sizeof name - 1, key,
                               sizeof key, flags);
    if (n != 32) {
        fprintf(stderr, "secret: no key: %s\n", n < 0 ? veritee_strerror(n) : "wrong length");
        return 1;
    }

    static uint8_t data[MAX_DATA], plain[MAX_DATA];
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    size_t len = fread(data, 1, sizeof data, f);
    fclose(f);
    int32_t m = veritee_aes_gcm_open(key, data, (uint32_t)len, plain, sizeof plain);
    memset(key, 0, sizeof key);
    if (m < 0) {
        fprintf(stderr, "secret: cannot decrypt %s: %s\n", path, veritee_strerror(m));
        return 1;
    }
    printf("decrypted %d bytes with the provisioned key: %.*s\n", (int)m, (int)m, plain);
    return 0;
}
