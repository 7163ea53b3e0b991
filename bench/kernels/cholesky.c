/*
 * cholesky (PolyBench/C 4.2 linear-algebra/solvers): in-place Cholesky
 * factorisation A = L * L^T of an N x N symmetric positive-definite double
 * matrix (lower triangle). PolyBench builds its input with an O(N^3) product;
 * here it is symmetric and strictly diagonally dominant with a positive diagonal,
 * hence positive definite, and cheap to set up.
 * Size: argv[1] = N.
 * Prints: kernel=cholesky ns=<compute region> checksum=<sum of L>.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define DEFAULT_N 1200
#define MAX_N 16384 /* keeps the N x N double matrix inside wasm32's 4 GiB */

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
        fprintf(stderr, "cholesky: size must be an integer from 2 to %d\n", MAX_N);
        exit(2);
    }
    return (int)value;
}

int main(int argc, char **argv) {
    int n = size_arg(argc, argv, DEFAULT_N);
    double (*a)[n] = malloc(sizeof(double[n][n]));
    if (a == NULL) {
        fprintf(stderr, "cholesky: out of memory\n");
        return 1;
    }
    /* Off-diagonal entries lie in [0, 1), the diagonal is n: strictly dominant. */
    for (int i = 0; i < n; i++) {
        for (int j = 0; j <= i; j++) {
            a[i][j] = a[j][i] = (double)((i * 7 + j * 7 + i * j) % n) / n;
        }
        a[i][i] = n;
    }

    long long start = now_ns();
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < i; j++) {
            for (int k = 0; k < j; k++) {
                a[i][j] -= a[i][k] * a[j][k];
            }
            a[i][j] /= a[j][j];
        }
        for (int k = 0; k < i; k++) {
            a[i][i] -= a[i][k] * a[i][k];
        }
        a[i][i] = sqrt(a[i][i]);
    }
    long long elapsed = now_ns() - start;

    double checksum = 0.0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j <= i; j++) {
            checksum += a[i][j];
        }
    }
    printf("kernel=cholesky ns=%lld checksum=%.17g\n", elapsed, checksum);
    free(a);
    return 0;
}
