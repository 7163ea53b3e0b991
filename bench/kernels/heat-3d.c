/*
 * heat-3d (PolyBench/C 4.2 stencils): TSTEPS steps of a 7-point heat-equation
 * stencil on an N x N x N double grid, ping-ponging between A and B.
 * Size: argv[1] = N (TSTEPS fixed at 50).
 * Prints: kernel=heat-3d ns=<compute region> checksum=<sum of A>.
 */
#include <stdlib.h>

#include "harness.h"

#define KERNEL "heat-3d"

#define DEFAULT_N 120
#define TSTEPS 50
#define MIN_N 3
#define MAX_N 512 /* keeps two N^3 double grids inside wasm32's 4 GiB */

int main(int argc, char **argv) {
    int n = harness_size(argc, argv, KERNEL, DEFAULT_N, MIN_N, MAX_N);
    double (*a)[n][n] = harness_alloc(KERNEL, sizeof(double[n][n][n]));
    double (*b)[n][n] = harness_alloc(KERNEL, sizeof(double[n][n][n]));
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            for (int k = 0; k < n; k++) {
                /* PolyBench's linear i + j + (n - k) is a fixed point of the stencil (its
                 * Laplacian is zero), so its checksum would not change; this one does. */
                a[i][j][k] = b[i][j][k] = (double)((i * j + k * k) % n) * 10 / n;
            }
        }
    }

    long long start = harness_now_ns();
    for (int t = 1; t <= TSTEPS; t++) {
        for (int i = 1; i < n - 1; i++) {
            for (int j = 1; j < n - 1; j++) {
                for (int k = 1; k < n - 1; k++) {
                    b[i][j][k] = 0.125 * (a[i + 1][j][k] - 2.0 * a[i][j][k] + a[i - 1][j][k]) +
                                 0.125 * (a[i][j + 1][k] - 2.0 * a[i][j][k] + a[i][j - 1][k]) +
                                 0.125 * (a[i][j][k + 1] - 2.0 * a[i][j][k] + a[i][j][k - 1]) +
                                 a[i][j][k];
                }
            }
        }
        for (int i = 1; i < n - 1; i++) {
            for (int j = 1; j < n - 1; j++) {
                for (int k = 1; k < n - 1; k++) {
                    a[i][j][k] = 0.125 * (b[i + 1][j][k] - 2.0 * b[i][j][k] + b[i - 1][j][k]) +
                                 0.125 * (b[i][j + 1][k] - 2.0 * b[i][j][k] + b[i][j - 1][k]) +
                                 0.125 * (b[i][j][k + 1] - 2.0 * b[i][j][k] + b[i][j][k - 1]) +
                                 b[i][j][k];
                }
            }
        }
    }
    long long end = harness_now_ns();

    double checksum = 0.0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            for (int k = 0; k < n; k++) {
                checksum += a[i][j][k];
            }
        }
    }
    harness_report(KERNEL, start, end, checksum);
    free(a);
    free(b);
    return 0;
}
