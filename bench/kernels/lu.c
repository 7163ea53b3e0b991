/*
 * lu (PolyBench/C 4.2 linear-algebra/solvers): in-place LU decomposition without
 * pivoting of an N x N double matrix. PolyBench makes its input positive definite
 * with an O(N^3) product; here the input is strictly diagonally dominant instead,
 * which is as safe without pivoting and keeps set-up cheap.
 * Size: argv[1] = N.
 * Prints: kernel=lu ns=<compute region> checksum=<sum of the factors>.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define DEFAULT_N 900
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
        fprintf(stderr, "lu: size must be an integer from 2 to %d\n", MAX_N);
        exit(2);
    }
    return (int)value;
}

int main(int argc, char **argv) {
    int n = size_arg(argc, argv, DEFAULT_N);
    double (*a)[n] = malloc(sizeof(double[n][n]));
    if (a == NULL) {
        fprintf(stderr, "lu: out of memory\n");
        return 1;
    }
    /* Off-diagonal entries lie in [0, 1), the diagonal is n: strictly dominant. */
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            a[i][j] = (double)((i * 7 + j * 13 + i * j) % n) / n;
        }
        a[i][i] = n;
    }

    long long start = now_ns();
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < i; j++) {
            for (int k = 0; k < j; k++) {
                a[i][j] -= a[i][k] * a[k][j];
            }
            a[i][j] /= a[j][j];
        }
        for (int j = i; j < n; j++) {
            for (int k = 0; k < i; k++) {
                a[i][j] -= a[i][k] * a[k][j];
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
    printf("kernel=lu ns=%lld checksum=%.17g\n", elapsed, checksum);
    free(a);
    return 0;
}
