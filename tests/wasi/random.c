/* random_get fills what it is asked to, differently each time. */
#include <string.h>
#include <unistd.h>

#include "check.h"

int main(void) {
    unsigned char a[32], b[32], zero[32] = {0};
    CHECK(getentropy(a, sizeof a) == 0);
    CHECK(getentropy(b, sizeof b) == 0);
    CHECK(memcmp(a, zero, sizeof a) != 0);
    CHECK(memcmp(a, b, sizeof a) != 0);
    puts("random ok");
    return 0;
}
