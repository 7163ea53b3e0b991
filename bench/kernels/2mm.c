/*
 * 2mm (PolyBench/C 4.2 linear-algebra/kernels): D = alpha * A * B * C + beta * D,
 * computed as tmp = alpha * A * B, then D = beta * D + tmp * C; square N x N doubles.
 * Size: argv[1] = N.
 * Prints: kernel=2mm ns=<compute region> checksum=<sum of D>.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define DEFAULT_N 480
#define MAX_N 8192 /* keeps five N x N double arrays well inside wasm32's 4 GiB */

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
        fprintf(stderr, "2mm: size must be an integer from 2 to %d\n", MAX_N);
        exit(2);
    }
    return (int)value;
}

int main(int argc, char **argv) {
    int n = size_arg(argc, argv, DEFAULT_N);
    double alpha = 1.5, beta = 1.2;
    double (*tmp)[n] = malloc(sizeof(double[n][n]));
    double (*a)[n] = malloc(sizeof(double[n][n]));
    double (*b)[n] = malloc(sizeof(double[n][n]));
    double (*c)[n] = malloc(sizeof(double[n][n]));
    double (*d)[n] = malloc(sizeof(double[n][n]));
    if (tmp == NULL || a == NULL || b == NULL || c == NULL || d == NULL) {
        fprintf(stderr, "2mm: out of memory\n");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            a[i][j] = (double)((i * j + 1) % n) / n;
            b[i][j] = (double)(i * (j + 1) % n) / n;
            c[i][j] = (double)((i * (j + 3) + 1) % n) / n;
            d[i][j] = (double)(i * (j + 2) % n) / n;
        }
    }

    long long start = now_ns();
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
    long long elapsed = now_ns() - start;

    double checksum = 0.0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            checksum += d[i][j];
        }
    }
    printf("kernel=2mm ns=%lld checksum=%.17g\n", elapsed, checksum);
    free(tmp);
    free(a);
    free(b);
    free(c);
    free(d);
    return 0;
}
