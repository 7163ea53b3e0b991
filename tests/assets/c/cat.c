/* Prints each file named on its command line, as `cat` does: what a client asks of it. */
#include <stdio.h>

#ifndef CAT_BANNER /* tests define it for a build of another measurement */
#define CAT_BANNER ""
#endif

int main(int argc, char **argv) {
    int status = 0;
    fputs(CAT_BANNER, stderr);
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (f == NULL) {
            perror(argv[i]);
            status = 1;
            continue;
        }
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
        fclose(f);
    }
    return status;
}
