/* readdir of a granted directory lists exactly its files, with the inodes fstatat gives. */
#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"

int main(void) {
    DIR *dir = opendir("fs-tests.dir/listing.dir");
    CHECK(dir != NULL);
    int seen = 0;
    ino_t inodes[2] = {0, 0};
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
        int which = strcmp(entry->d_name, "file-0") == 0   ? 0
                    : strcmp(entry->d_name, "file-1") == 0 ? 1
                                                           : -1;
        CHECK(which >= 0);
        CHECK((seen & (1 << which)) == 0);
        seen |= 1 << which;
        struct stat st;
        CHECK(fstatat(dirfd(dir), entry->d_name, &st, 0) == 0);
        CHECK(entry->d_ino == st.st_ino);
        CHECK(S_ISREG(st.st_mode));
        inodes[which] = st.st_ino;
    }
    CHECK(seen == 3);
    CHECK(inodes[0] != inodes[1]);
    CHECK(closedir(dir) == 0);
    puts("listing ok");
    return 0;
}
