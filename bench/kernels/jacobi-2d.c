/*
 * jacobi-2d (PolyBench/C 4.2 stencils): TSTEPS sweeps of a 5-point Jacobi stencil
 * on an N x N double grid, ping-ponging between A and B.
 * Size: argv[1] = N (TSTEPS fixed at 100).
 * Prints: kernel=jacobi-2d ns=<compute region> checksum=<sum of A>.
 */
#include <stdlib.h>

#include "harness.h"

#define KERNEL "jacobi-2d"

#define DEFAULT_N 1000
#define TSTEPS 100
#define MIN_N 3
#define MAX_N 16384 /* keeps two N x N double grids inside wasm32's 4 GiB */

int main(int argc, char **argv) {
    int n = harness_size(argc, argv, KERNEL, DEFAULT_N, MIN_N, MAX_N);
    double (*a)[n] = harness_alloc(KERNEL, sizeof(double[n][n]));
    double (*b)[n] = harness_alloc(KERNEL, sizeof(double[n][n]));
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            a[i][j] = ((double)i * (j + 2) + 2) / n;
            b[i][j] = ((double)i * (j + 3) + 3) / n;
        }
    }

    long long start = harness_now_ns();
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
    long long end = harness_now_ns();

    double checksum = 0.0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            checksum += a[i][j];
        }
    }
    harness_report(KERNEL, start, end, checksum);
    free(a);
    free(b);
    return 0;
}
