/*
 * lu (PolyBench/C 4.2 linear-algebra/solvers): in-place LU decomposition without
 * pivoting of an N x N double matrix. PolyBench makes its input positive definite
 * with an O(N^3) product; here the input is strictly diagonally dominant instead,
 * which is as safe without pivoting and keeps set-up cheap.
 * Size: argv[1] = N.
 * Prints: kernel=lu ns=<compute region> checksum=<sum of the factors>.
 */
#include <stdlib.h>

#include "harness.h"

#define KERNEL "lu"

#define DEFAULT_N 900
#define MIN_N 2
#define MAX_N 16384 /* keeps the N x N double matrix inside wasm32's 4 GiB */

int main(int argc, char **argv) {
    int n = harness_size(argc, argv, KERNEL, DEFAULT_N, MIN_N, MAX_N);
    double (*a)[n] = harness_alloc(KERNEL, sizeof(double[n][n]));
    /* Off-diagonal entries lie in [0, 1), the diagonal is n: strictly dominant. */
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            a[i][j] = (double)((i * 7 + j * 13 + i * j) % n) / n;
        }
        a[i][i] = n;
    }

    long long start = harness_now_ns();
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
