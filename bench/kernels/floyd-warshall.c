/*
 * floyd-warshall (PolyBench/C 4.2 medley): all-pairs shortest paths on an N-node
 * graph with integer edge weights, in place on the N x N distance matrix.
 * Integer-only, so its checksum is exact on every runtime.
 * Size: argv[1] = N.
 * Prints: kernel=floyd-warshall ns=<compute region> checksum=<sum of distances>.
 */
#include <stdlib.h>

#include "harness.h"

#define KERNEL "floyd-warshall"

#define DEFAULT_N 700
#define MIN_N 2
#define MAX_N 16384 /* keeps the N x N int matrix inside wasm32's 4 GiB */
#define NO_EDGE 999 /* PolyBench's "infinite" weight; paths stay far below INT_MAX */

int main(int argc, char **argv) {
    int n = harness_size(argc, argv, KERNEL, DEFAULT_N, MIN_N, MAX_N);
    int (*path)[n] = harness_alloc(KERNEL, sizeof(int[n][n]));
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            path[i][j] = i * j % 7 + 1;
            if ((i + j) % 13 == 0 || (i + j) % 7 == 0 || (i + j) % 11 == 0) {
                path[i][j] = NO_EDGE;
            }
        }
    }

    long long start = harness_now_ns();
    for (int k = 0; k < n; k++) {
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < n; j++) {
                int through_k = path[i][k] + path[k][j];
                path[i][j] = path[i][j] < through_k ? path[i][j] : through_k;
            }
        }
    }
    long long end = harness_now_ns();

    long long checksum = 0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            checksum += path[i][j];
        }
    }
    harness_report_int(KERNEL, start, end, checksum);
    free(path);
    return 0;
}
