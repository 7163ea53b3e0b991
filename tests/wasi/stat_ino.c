/* stat: files of one directory share a device and differ in inode; sizes and kinds hold. */
#include <sys/stat.h>

#include "check.h"

int main(void) {
    struct stat digits, listed, dir;
    CHECK(stat("fs-tests.dir/digits.txt", &digits) == 0);
    CHECK(stat("fs-tests.dir/listing.dir/file-0", &listed) == 0);
    CHECK(stat("fs-tests.dir/listing.dir", &dir) == 0);
    CHECK(digits.st_dev == listed.st_dev);
    CHECK(digits.st_ino != listed.st_ino);
    CHECK(S_ISREG(digits.st_mode) && digits.st_size == 10);
    CHECK(S_ISDIR(dir.st_mode));
    puts("stat ok");
    return 0;
}
