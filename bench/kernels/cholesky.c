/*
 * cholesky (PolyBench/C 4.2 linear-algebra/solvers): in-place Cholesky
 * factorisation A = L * L^T of an N x N symmetric positive-definite double
 * matrix (lower triangle). PolyBench builds its input with an O(N^3) product;
 * here it is symmetric and strictly diagonally dominant with a positive diagonal,
 * hence positive definite, and cheap to set up.
 * Size: argv[1] = N.
 * Prints: kernel=cholesky ns=<compute region> checksum=<sum of L>.
 */
#include <math.h>
#include <stdlib.h>

#include "harness.h"

#define KERNEL "cholesky"

#define DEFAULT_N 1200
#define MIN_N 2
#define MAX_N 16384 /* keeps the N x N double matrix inside wasm32's 4 GiB */

int main(int argc, char **argv) {
    int n = harness_size(argc, argv, KERNEL, DEFAULT_N, MIN_N, MAX_N);
    double (*a)[n] = harness_alloc(KERNEL, sizeof(double[n][n]));
    /* Off-diagonal entries lie in [0, 1), the diagonal is n: strictly dominant. */
    for (int i = 0; i < n; i++) {
        for (int j = 0; j <= i; j++) {
            a[i][j] = a[j][i] = (double)((i * 7 + j * 7 + i * j) % n) / n;
        }
        a[i][i] = n;
    }

    long long start = harness_now_ns();
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
    long long end = harness_now_ns();

    double checksum = 0.0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j <= i; j++) {
            checksum += a[i][j];
        }
    }
    harness_report(KERNEL, start, end, checksum);
    free(a);
    return 0;
}
