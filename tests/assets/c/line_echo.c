/* Answers each line of stdin as it comes ("got: LINE"), then counts them at EOF: an
 * interactive module, for a client that writes the next line only after the answer. */
#include <stdio.h>

int main(void) {
    char line[256];
    int n = 0;
    while (fgets(line, sizeof line, stdin) != NULL) {
        printf("got: %s", line);
        fflush(stdout);
        n++;
    }
    printf("eof after %d lines\n", n);
    return 0;
}
