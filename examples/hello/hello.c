/*
 * hello — what a module sees of the world through plain WASI: its arguments, its
 * environment, the wall clock and the random source. Exits with `--exit N`'s N.
 *
 *     clang --target=wasm32-wasi -O2 examples/hello/hello.c -o hello.wasm
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* Parse the value of --exit; returns 0 on success. WASI exit codes are 0..255. */
static int parse_exit_code(const char *text, int *code) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < 0 || value > 255) {
        return -1;
    }
    *code = (int)value;
    return 0;
}

int main(int argc, char **argv) {
    int exit_code = 0;

    printf("argc = %d\n", argc);
    for (int i = 0; i < argc; i++) {
        printf("argv[%d] = %s\n", i, argv[i]);
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--exit") == 0) {
            if (i + 1 >= argc || parse_exit_code(argv[i + 1], &exit_code) != 0) {
                fprintf(stderr, "hello: --exit needs a number from 0 to 255\n");
                return 2;
            }
            i++;
        }
    }

    int env_count = 0;
    for (char **var = environ; var != NULL && *var != NULL; var++) {
        printf("env: %s\n", *var);
        env_count++;
    }
    if (env_count == 0) {
        printf("env: (empty)\n");
    }

    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) != 0) {
        perror("hello: clock_gettime");
        return 1;
    }
    char when[64];
    struct tm utc;
    if (gmtime_r(&now.tv_sec, &utc) != NULL &&
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &utc) > 0) {
        printf("time = %lld.%09ld (%s)\n", (long long)now.tv_sec, (long)now.tv_nsec, when);
    } else {
        printf("time = %lld.%09ld\n", (long long)now.tv_sec, (long)now.tv_nsec);
    }

    unsigned char random_bytes[16];
    if (getentropy(random_bytes, sizeof random_bytes) != 0) {
        perror("hello: getentropy");
        return 1;
    }
    printf("random = ");
    for (size_t i = 0; i < sizeof random_bytes; i++) {
        printf("%02x", random_bytes[i]);
    }
    printf("\n");

    return exit_code;
}
