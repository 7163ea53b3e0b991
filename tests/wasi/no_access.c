/* Without a granted directory, no path opens: not a relative one, not an absolute one. */
#include <errno.h>
#include <fcntl.h>

#include "check.h"

int main(void) {
    errno = 0;
    CHECK(fopen("fs-tests.dir/digits.txt", "r") == NULL);
    CHECK(errno == ENOTCAPABLE);
    errno = 0;
    CHECK(open("/etc/passwd", O_RDONLY) == -1);
    CHECK(errno == ENOTCAPABLE);
    puts("no access ok");
    return 0;
}
