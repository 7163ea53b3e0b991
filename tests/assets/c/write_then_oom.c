/* Writes a line to stdout and to stderr, then allocates until the allocator fails and exits
 * with 1 as a C program does: the limit must be reported, and the lines must still arrive. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *volatile keep;

int main(void) {
    printf("before the limit\n");
    fflush(stdout);
    fprintf(stderr, "to stderr before the limit\n");
    for (;;) {
        char *p = malloc(1 << 20);
        if (p == NULL) {
            return 1;
        }
        memset(p, 1, 1 << 20);
        *(char **)p = keep;
        keep = p;
    }
}
