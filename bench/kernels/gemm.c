/*
 * gemm (PolyBench/C 4.2 linear-algebra/blas): C = alpha * A * B + beta * C,
 * square N x N doubles. Size: argv[1] = N.
 * Prints: kernel=gemm ns=<compute region> checksum=<sum of C>.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define DEFAULT_N 900
#define MAX_N 8192 /* keeps N * N * sizeof(double) * 3 inside wasm32's 4 GiB */

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int size_arg(int argc, char **argv, int fallback) {
    if (argc < 2) {
        return fallback;
    }
    char *end;
    errno = 0;
    long value = strtol(argv[1], &end, 10);
    if (errno != 0 || end == argv[1] || *end != '\0' || value < 2 || value > MAX_N) {
        fprintf(stderr, "gemm: size must be an integer from 2 to %d\n", MAX_N);
        exit(2);
    }
    return (int)value;
}

int main(int argc, char **argv) {
    int n = size_arg(argc, argv, DEFAULT_N);
    double alpha = 1.5, beta = 1.2;
    double (*a)[n] = malloc(sizeof(double[n][n]));
    double (*b)[n] = malloc(sizeof(double[n][n]));
    double (*c)[n] = malloc(sizeof(double[n][n]));
    if (a == NULL || b == NULL || c == NULL) {
        fprintf(stderr, "gemm: out of memory\n");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            a[i][j] = (double)(i * (j + 1) % n) / n;
            b[i][j] = (double)(i * (j + 2) % n) / n;
            c[i][j] = (double)((i * j + 1) % n) / n;
        }
    }

    long long start = now_ns();
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            c[i][j] *= beta;
        }
        for (int k = 0; k < n; k++) {
            for (int j = 0; j < n; j++) {
                c[i][j] += alpha * a[i][k] * b[k][j];
            }
        }
    }
    long long elapsed = now_ns() - start;

    double checksum = 0.0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            checksum += c[i][j];
        }
    }
    printf("kernel=gemm ns=%lld checksum=%.17g\n", elapsed, checksum);
    free(a);
    free(b);
    free(c);
    return 0;
}
