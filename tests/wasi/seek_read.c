/* lseek from each origin, reads at the offsets it gives, and pread leaving the offset alone. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

int main(void) {
    int fd = open("fs-tests.dir/digits.txt", O_RDONLY); /* "0123456789" */
    CHECK(fd >= 0);
    char c;
    CHECK(lseek(fd, 4, SEEK_SET) == 4);
    CHECK(read(fd, &c, 1) == 1 && c == '4');
    CHECK(lseek(fd, 0, SEEK_CUR) == 5);
    CHECK(lseek(fd, 2, SEEK_CUR) == 7);
    CHECK(read(fd, &c, 1) == 1 && c == '7');
    CHECK(lseek(fd, -2, SEEK_END) == 8);
    CHECK(read(fd, &c, 1) == 1 && c == '8');
    CHECK(lseek(fd, 100, SEEK_SET) == 100);
    CHECK(read(fd, &c, 1) == 0); /* past the end: end of file, not an error */
    errno = 0;
    CHECK(lseek(fd, -1, SEEK_SET) == -1 && errno == EINVAL);

    char buf[4] = {0};
    CHECK(lseek(fd, 1, SEEK_SET) == 1);
    CHECK(pread(fd, buf, 3, 2) == 3 && memcmp(buf, "234", 3) == 0);
    CHECK(lseek(fd, 0, SEEK_CUR) == 1);
    CHECK(pread(fd, buf, 3, 9) == 1 && buf[0] == '9');

    errno = 0;
    CHECK(write(fd, "x", 1) == -1 && errno == EBADF); /* opened read-only */
    CHECK(close(fd) == 0);
    errno = 0;
    CHECK(read(fd, &c, 1) == -1 && errno == EBADF);
    puts("seek and read ok");
    return 0;
}
