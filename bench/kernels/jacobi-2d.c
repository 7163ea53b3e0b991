/*
 * jacobi-2d (PolyBench/C 4.2 stencils): TSTEPS sweeps of a 5-point Jacobi stencil
 * on an N x N double grid, ping-ponging between A and B.
 * Size: argv[1] = N (TSTEPS fixed at 100).
 * Prints: kernel=jacobi-2d ns=<compute region> checksum=<sum of A>.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define DEFAULT_N 1000
#define TSTEPS 100
#define MAX_N 16384 /* keeps two N x N double grids inside wasm32's 4 GiB */

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
        fprintf(stderr, "jacobi-2d: size must be an integer from 3 to %d\n", MAX_N);
        exit(2);
    }
    return (int)value;
}

int main(int argc, char **argv) {
    int n = size_arg(argc, argv, DEFAULT_N);
    double (*a)[n] = malloc(sizeof(double[n][n]));
    double (*b)[n] = malloc(sizeof(double[n][n]));
    if (a == NULL || b == NULL) {
        fprintf(stderr, "jacobi-2d: out of memory\n");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            a[i][j] = ((double)i * (j + 2) + 2) / n;
            b[i][j] = ((double)i * (j + 3) + 3) / n;
        }
    }

    long long start = now_ns();
    for (int t = 0; t < TSTEPS; t++) {
        for (int i = 1; i < n - 1; i++) {
            for (int j = 1; j < n - 1; j++) {
                b[i][j] = 0.2 * (a[i][j] + a[i][j - 1] + a[i][j + 1] + a[i + 1][j] + a[i - 1][j]);
            }
        }
        for (int i = 1; i < n - 1; i++) {
            for (int j = 1; j < n - 1; j++) {
                a[i][j] = 0.2 * (b[i][j] + b[i][j - 1] + b[i][j + 1] + b[i + 1][j] + b[i - 1][j]);
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
    printf("kernel=jacobi-2d ns=%lld checksum=%.17g\n", elapsed, checksum);
    free(a);
    free(b);
    return 0;
}
