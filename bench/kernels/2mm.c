/*
 * 2mm (PolyBench/C 4.2 linear-algebra/kernels): D = alpha * A * B * C + beta * D,
 * computed as tmp = alpha * A * B, then D = beta * D + tmp * C; square N x N doubles.
 * Size: argv[1] = N.
 * Prints: kernel=2mm ns=<compute region> checksum=<sum of D>.
 */
#include <stdlib.h>

#include "harness.h"

#define KERNEL "2mm"

#define DEFAULT_N 480
#define MIN_N 2
#define MAX_N 8192 /* keeps five N x N double arrays well inside wasm32's 4 GiB */

int main(int argc, char **argv) {
    int n = harness_size(argc, argv, KERNEL, DEFAULT_N, MIN_N, MAX_N);
    double alpha = 1.5, beta = 1.2;
    double (*tmp)[n] = harness_alloc(KERNEL, sizeof(double[n][n]));
    double (*a)[n] = harness_alloc(KERNEL, sizeof(double[n][n]));
    double (*b)[n] = harness_alloc(KERNEL, sizeof(double[n][n]));
    double (*c)[n] = harness_alloc(KERNEL, sizeof(double[n][n]));
    double (*d)[n] = harness_alloc(KERNEL, sizeof(double[n][n]));
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            a[i][j] = (double)((i * j + 1) % n) / n;
            b[i][j] = (double)(i * (j + 1) % n) / n;
            c[i][j] = (double)((i * (j + 3) + 1) % n) / n;
            d[i][j] = (double)(i * (j + 2) % n) / n;
        }
    }

    long long start = harness_now_ns();
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            tmp[i][j] = 0.0;
            for (int k = 0; k < n; k++) {
                tmp[i][j] += alpha * a[i][k] * b[k][j];
            }
        }
    }
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            d[i][j] *= beta;
            for (int k = 0; k < n; k++) {
                d[i][j] += tmp[i][k] * c[k][j];
            }
        }
    }
    long long end = harness_now_ns();

    double checksum = 0.0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            checksum += d[i][j];
        }
    }
    harness_report(KERNEL, start, end, checksum);
    free(tmp);
    free(a);
    free(b);
    free(c);
    free(d);
    return 0;
}
