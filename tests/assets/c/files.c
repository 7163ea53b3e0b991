/* Exercises WASI preview 1 file system, clocks and exit: what ordinary programs use. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: files DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    char path[512];
    snprintf(path, sizeof path, "%s/sub", dir);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) { perror("mkdir"); return 1; }
    snprintf(path, sizeof path, "%s/sub/note.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f) { perror("fopen w"); return 1; }
    fprintf(f, "written from inside the TEE\n");
    fclose(f);
    char buf[128] = {0};
    f = fopen(path, "r");
    if (!f || !fgets(buf, sizeof buf, f)) { perror("fopen r"); return 1; }
    fclose(f);
    printf("read back: %s", buf);

    snprintf(path, sizeof path, "%s/sub", dir);
    DIR *d = opendir(path);
    if (!d) { perror("opendir"); return 1; }
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') printf("entry: %s\n", e->d_name);
    closedir(d);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct timespec nap = {0, 50 * 1000 * 1000}; /* poll_oneoff underneath */
    nanosleep(&nap, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    printf("slept: %s\n", ms >= 45 ? "yes" : "no");

    FILE *outside = fopen("/etc/passwd", "r");
    printf("host file reachable: %s\n", outside ? "yes" : "no");
    exit(7); /* proc_exit with a code */
}
