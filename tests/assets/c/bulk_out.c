/* Writes argv[1] MiB of a counted pattern to stdout, then "end" to stderr. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    static char block[1 << 20];
    long mib = argc > 1 ? atol(argv[1]) : 64;
    for (long i = 0; i < mib; i++) {
        for (int j = 0; j < (1 << 20); j++) {
            block[j] = (char)('a' + (i + j) % 26);
        }
        fwrite(block, 1, sizeof block, stdout);
    }
    fflush(stdout);
    fprintf(stderr, "end\n");
    return 0;
}
