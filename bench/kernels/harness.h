/*
 * harness.h: what every kernel in this folder shares around its compute region:
 * the clock, the size argument, allocation and the one output line that
 * bench/compute.py parses. Header-only (static inline), so a kernel still builds
 * from its own file alone: `gcc -O2 k.c -lm`, `clang --target=wasm32-wasi -O2 k.c`.
 */
#ifndef HARNESS_H
#define HARNESS_H

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Monotonic time in nanoseconds; kernels read it just before and just after their
 * compute region, so set-up, the checksum and start-up are not timed. */
static inline long long harness_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* The problem size: `fallback` without argv[1], else argv[1] as a decimal integer
 * from `min` to `max`; anything else prints "<name>: size must be an integer from
 * <min> to <max>" to stderr and exits with status 2. */
static inline int harness_size(int argc, char **argv, const char *name, int fallback, int min,
                               int max) {
    if (argc < 2) {
        return fallback;
    }
    char *end;
    errno = 0;
    long value = strtol(argv[1], &end, 10);
    if (errno != 0 || end == argv[1] || *end != '\0' || value < min || value > max) {
        fprintf(stderr, "%s: size must be an integer from %d to %d\n", name, min, max);
        exit(2);
    }
    return (int)value;
}

/* malloc(bytes), or "<name>: out of memory" on stderr and exit status 1. */
static inline void *harness_alloc(const char *name, size_t bytes) {
    void *p = malloc(bytes);
    if (p == NULL) {
        fprintf(stderr, "%s: out of memory\n", name);
        exit(1);
    }
    return p;
}

/* The result line, `kernel=<name> ns=<end_ns - start_ns> checksum=<checksum>`, with
 * the checksum as %.17g: enough digits to carry a double exactly, so native and Wasm
 * runs can be compared to the bit. */
static inline void harness_report(const char *name, long long start_ns, long long end_ns,
                                  double checksum) {
    printf("kernel=%s ns=%lld checksum=%.17g\n", name, end_ns - start_ns, checksum);
}

/* The same line for an integer checksum, printed exactly (%lld). */
static inline void harness_report_int(const char *name, long long start_ns, long long end_ns,
                                      long long checksum) {
    printf("kernel=%s ns=%lld checksum=%lld\n", name, end_ns - start_ns, checksum);
}

#endif /* HARNESS_H */
