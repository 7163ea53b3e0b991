/*
 * seidel-2d (PolyBench/C 4.2 stencils): TSTEPS in-place Gauss-Seidel sweeps of a
 * 9-point stencil on an N x N double grid; each point depends on the ones just
 * updated, so the loop does not vectorise (a latency-bound kernel).
 * Size: argv[1] = N (TSTEPS fixed at 40).
 * Prints: kernel=seidel-2d ns=<compute region> checksum=<sum of A>.
 */
#include <stdlib.h>

#include "harness.h"

#define KERNEL "seidel-2d"

#define DEFAULT_N 900
#define TSTEPS 40
#define MIN_N 3
#define MAX_N 16384 /* keeps the N x N double grid inside wasm32's 4 GiB */

int main(int argc, char **argv) {
    int n = harness_size(argc, argv, KERNEL, DEFAULT_N, MIN_N, MAX_N);
    double (*a)[n] = harness_alloc(KERNEL, sizeof(double[n][n]));
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            a[i][j] = ((double)i * (j + 2) + 2) / n;
        }
    }

    long long start = harness_now_ns();
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
    long long end = harness_now_ns();

    double checksum = 0.0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            checksum += a[i][j];
        }
    }
    harness_report(KERNEL, start, end, checksum);
    free(a);
    return 0;
}
