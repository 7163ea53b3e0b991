/* Never returns: a module that would hold its thread forever. */
#include <stdio.h>

int main(void) {
    volatile unsigned long n = 0;
    printf("spinning\n");
    fflush(stdout);
    for (;;) n++;
}
