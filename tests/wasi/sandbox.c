/* A module cannot leave the directory it was granted: not by "..", not through a symlink
 * that points out of it, not by an absolute path. The file it tries sits beside the grant. */
#include <fcntl.h>

#include "check.h"

int main(void) {
    CHECK(open("fs-tests.dir/digits.txt", O_RDONLY) >= 0); /* the grant itself works */
    CHECK(open("fs-tests.dir/../outside.txt", O_RDONLY) == -1);
    CHECK(open("fs-tests.dir/listing.dir/../../outside.txt", O_RDONLY) == -1);
    CHECK(open("fs-tests.dir/up/outside.txt", O_RDONLY) == -1); /* up -> .. */
    CHECK(open("fs-tests.dir/up/fs-tests.dir/digits.txt", O_RDONLY) == -1);
    CHECK(open("/outside.txt", O_RDONLY) == -1);
    CHECK(open("fs-tests.dir/up/escape.txt", O_CREAT | O_WRONLY, 0644) == -1);
    puts("sandbox ok");
    return 0;
}
