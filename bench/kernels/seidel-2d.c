/*
 * seidel-2d (PolyBench/C 4.2 stencils): TSTEPS in-place Gauss-Seidel sweeps of a
 * 9-point stencil on an N x N double grid; each point depends on the ones just
 * updated, so the loop does not vectorise (a latency-bound kernel).
 * Size: argv[1] = N (TSTEPS fixed at 40).
 * Prints: kernel=seidel-2d ns=<compute region> checksum=<sum of A>.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define DEFAULT_N 900
#define TSTEPS 40
#define MAX_N 16384 /* keeps the N x N double grid inside wasm32's 4 GiB */

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
    if (errno != 0 || end == argv[1] || *end != '\0' || value < 3 || value > MAX_N) {
        fprintf(stderr, "seidel-2d: size must be an integer from 3 to %d\n", MAX_N);
        exit(2);
    }
    return (int)value;
}

int main(int argc, char **argv) {
    int n = size_arg(argc, argv, DEFAULT_N);
    double (*a)[n] = malloc(sizeof(double[n][n]));
    if (a == NULL) {
        fprintf(stderr, "seidel-2d: out of memory\n");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            a[i][j] = ((double)i * (j + 2) + 2) / n;
        }
    }

    long long start = now_ns();
    for (int t = 0; t < TSTEPS; t++) {
        for (int i = 1; i < n - 1; i++) {
            for (int j = 1; j < n - 1; j++) {
                a[i][j] = (a[i - 1][j - 1] + a[i - 1][j] + a[i - 1][j + 1] + a[i][j - 1] +
                           a[i][j] + a[i][j + 1] + a[i + 1][j - 1] + a[i + 1][j] +
                           a[i + 1][j + 1]) /
                          9.0;
            }
        }
    }
    long long elapsed = now_ns() - start;

    double checksum = 0.0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            checksum += a[i][j];
        }
    }
    printf("kernel=seidel-2d ns=%lld checksum=%.17g\n", elapsed, checksum);
    free(a);
    return 0;
}
