/*
 * floyd-warshall (PolyBench/C 4.2 medley): all-pairs shortest paths on an N-node
 * graph with integer edge weights, in place on the N x N distance matrix.
 * Integer-only, so its checksum is exact on every runtime.
 * Size: argv[1] = N.
 * Prints: kernel=floyd-warshall ns=<compute region> checksum=<sum of distances>.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define DEFAULT_N 700
#define MAX_N 16384 /* keeps the N x N int matrix inside wasm32's 4 GiB */
#define NO_EDGE 999 /* PolyBench's "infinite" weight; paths stay far below INT_MAX */

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
        fprintf(stderr, "floyd-warshall: size must be an integer from 2 to %d\n", MAX_N);
        exit(2);
    }
    return (int)value;
}

int main(int argc, char **argv) {
    int n = size_arg(argc, argv, DEFAULT_N);
    int (*path)[n] = malloc(sizeof(int[n][n]));
    if (path == NULL) {
        fprintf(stderr, "floyd-warshall: out of memory\n");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            path[i][j] = i * j % 7 + 1;
            if ((i + j) % 13 == 0 || (i + j) % 7 == 0 || (i + j) % 11 == 0) {
                path[i][j] = NO_EDGE;
            }
        }
    }

    long long start = now_ns();
    for (int k = 0; k < n; k++) {
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < n; j++) {
                int through_k = path[i][k] + path[k][j];
                path[i][j] = path[i][j] < through_k ? path[i][j] : through_k;
            }
        }
    }
    long long elapsed = now_ns() - start;

    long long checksum = 0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            checksum += path[i][j];
        }
    }
    printf("kernel=floyd-warshall ns=%lld checksum=%lld\n", elapsed, checksum);
    free(path);
    return 0;
}
