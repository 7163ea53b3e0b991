/*
 * compute — a deterministic compute kernel: C = A x B for n x n doubles (n from
 * argv[1], default 200), then a checksum of C.
 *
 * The inputs are small integers, so every product and partial sum is an integer
 * well below 2^53 and exactly representable: the checksum is the same on every
 * conforming machine and runtime, whatever the summation order or fused
 * multiply-adds, which makes it a test oracle (native build vs Wasm vs TEE).
 *
 *     clang --target=wasm32-wasi -O2 examples/compute/compute.c -o compute.wasm
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#define DEFAULT_N 200
/* Keeps every sum exact: |entries| <= 3, so |C[i][j]| <= 9 n and the weighted
 * checksum stays below 9 * 5 * n^3 < 2^53 for n up to this bound. */
#define MAX_N 4096

static int parse_size(const char *text, int *n) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < 1 || value > MAX_N) {
        return -1;
    }
    *n = (int)value;
    return 0;
}

int main(int argc, char **argv) {
    int n = DEFAULT_N;
    if (argc > 1 && parse_size(argv[1], &n) != 0) {
        fprintf(stderr, "compute: size must be an integer from 1 to %d\n", MAX_N);
        return 2;
    }

    double (*a)[n] = malloc(sizeof(double[n][n]));
    double (*b)[n] = malloc(sizeof(double[n][n]));
    double (*c)[n] = malloc(sizeof(double[n][n]));
    if (a == NULL || b == NULL || c == NULL) {
        fprintf(stderr, "compute: out of memory for n = %d\n", n);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            a[i][j] = (double)((i * i + 3 * j + 1) % 7 - 3);
            b[i][j] = (double)((2 * i + j * j) % 7 - 3);
            c[i][j] = 0.0;
        }
    }

    for (int i = 0; i < n; i++) {
        for (int k = 0; k < n; k++) {
            double aik = a[i][k];
            for (int j = 0; j < n; j++) {
                c[i][j] += aik * b[k][j];
            }
        }
    }

    /* Weights make the checksum sensitive to where a value lands, not just to the sum. */
    double checksum = 0.0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            checksum += c[i][j] * (double)((i + 2 * j) % 5 + 1);
        }
    }

    printf("n = %d\n", n);
    printf("checksum = %.0f\n", checksum);
    free(a);
    free(b);
    free(c);
    return 0;
}
