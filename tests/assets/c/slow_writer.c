/* Writes a line, waits, writes another: the first must reach the user before the second. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("first\n");
    fflush(stdout);
    fprintf(stderr, "err first\n");
    sleep(3);
    printf("second\n");
    return 0;
}
