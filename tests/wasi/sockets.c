/* sock_shutdown answers with an error, not a trap: EBADF for a closed descriptor, ENOTSOCK
 * for a file. */
#include <errno.h>
#include <sys/socket.h>

#include "check.h"

int main(void) {
    errno = 0;
    CHECK(shutdown(999, SHUT_RDWR) == -1 && errno == EBADF);
    errno = 0;
    CHECK(shutdown(1, SHUT_RD) == -1 && errno == ENOTSOCK);
    errno = 0;
    CHECK(shutdown(2, SHUT_WR) == -1 && errno == ENOTSOCK);
    puts("sockets ok");
    return 0;
}
