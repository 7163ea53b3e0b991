/* Files written in a granted directory: pwrite, append, truncate, rename, unlink, mkdir. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

int main(void) {
    const char *path = "fs-tests.dir/writeable/out.txt";
    int fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK(write(fd, "hello world", 11) == 11);
    CHECK(pwrite(fd, "WORLD", 5, 6) == 5);
    CHECK(lseek(fd, 0, SEEK_CUR) == 11); /* pwrite leaves the offset */
    char buf[16] = {0};
    CHECK(pread(fd, buf, sizeof buf, 0) == 11 && memcmp(buf, "hello WORLD", 11) == 0);
    CHECK(ftruncate(fd, 5) == 0);
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_size == 5);
    CHECK(close(fd) == 0);

    fd = open(path, O_WRONLY | O_APPEND);
    CHECK(fd >= 0);
    CHECK(write(fd, "!", 1) == 1);
    CHECK(fstat(fd, &st) == 0 && st.st_size == 6);
    CHECK(close(fd) == 0);

    CHECK(rename(path, "fs-tests.dir/writeable/moved.txt") == 0);
    errno = 0;
    CHECK(open(path, O_RDONLY) == -1 && errno == ENOENT);
    CHECK(unlink("fs-tests.dir/writeable/moved.txt") == 0);
    CHECK(mkdir("fs-tests.dir/writeable/sub", 0755) == 0);
    errno = 0;
    CHECK(mkdir("fs-tests.dir/writeable/sub", 0755) == -1 && errno == EEXIST);
    CHECK(rmdir("fs-tests.dir/writeable/sub") == 0);
    puts("write back ok");
    return 0;
}
