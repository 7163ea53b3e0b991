/* Allocates until the allocator fails: a module trying to take all memory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Kept reachable so the compiler cannot elide the allocations. */
char *volatile keep;

int main(void) {
    size_t total = 0;
    for (;;) {
        char *p = malloc(1 << 20);
        if (p == NULL) {
            fprintf(stderr, "membomb: allocation failed after %zu MiB\n", total >> 20);
            abort();
        }
        memset(p, 1, 1 << 20); /* touch it so it is really used */
        *(char **)p = keep;
        keep = p;
        total += 1 << 20;
    }
}
