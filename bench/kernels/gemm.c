/*
 * gemm (PolyBench/C 4.2 linear-algebra/blas): C = alpha * A * B + beta * C,
 * square N x N doubles. Size: argv[1] = N.
 * Prints: kernel=gemm ns=<compute region> checksum=<sum of C>.
 */
#include <stdlib.h>

#include "harness.h"

#define KERNEL "gemm"

#define DEFAULT_N 900
#define MIN_N 2
#define MAX_N 8192 /* keeps N * N * sizeof(double) * 3 inside wasm32's 4 GiB */

int main(int argc, char **argv) {
    int n = harness_size(argc, argv, KERNEL, DEFAULT_N, MIN_N, MAX_N);
    double alpha = 1.5, beta = 1.2;
    double (*a)[n] = harness_alloc(KERNEL, sizeof(double[n][n]));
    double (*b)[n] = harness_alloc(KERNEL, sizeof(double[n][n]));
    double (*c)[n] = harness_alloc(KERNEL, sizeof(double[n][n]));
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            a[i][j] = (double)(i * (j + 1) % n) / n;
            b[i][j] = (double)(i * (j + 2) % n) / n;
            c[i][j] = (double)((i * j + 1) % n) / n;
        }
    }

    long long start = harness_now_ns();
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
    long long end = harness_now_ns();

    double checksum = 0.0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            checksum += c[i][j];
        }
    }
    harness_report(KERNEL, start, end, checksum);
    free(a);
    free(b);
    free(c);
    return 0;
}
