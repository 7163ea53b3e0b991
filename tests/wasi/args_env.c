/* Arguments and environment arrive as given, nothing more. */
#include <string.h>

#include "check.h"

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) puts(argv[i]);
    const char *greeting = getenv("GREETING");
    CHECK(greeting != NULL);
    puts(greeting);
    CHECK(getenv("HOME") == NULL); /* the host's environment does not leak in */
    CHECK(getenv("PATH") == NULL);
    return 0;
}
