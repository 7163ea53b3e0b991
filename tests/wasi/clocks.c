/* clock_getres and clock_gettime on both clocks; a sleep advances the monotonic clock. */
#include <time.h>

#include "check.h"

static long long ns(struct timespec t) { return (long long)t.tv_sec * 1000000000LL + t.tv_nsec; }

int main(void) {
    struct timespec res, a, b, wall;
    CHECK(clock_getres(CLOCK_MONOTONIC, &res) == 0);
    CHECK(ns(res) > 0 && ns(res) <= 1000000000LL);
    CHECK(clock_getres(CLOCK_REALTIME, &res) == 0);
    CHECK(ns(res) > 0 && ns(res) <= 1000000000LL);

    CHECK(clock_gettime(CLOCK_REALTIME, &wall) == 0);
    CHECK(wall.tv_sec > 1577836800); /* after 2020-01-01: the host's wall clock */

    CHECK(clock_gettime(CLOCK_MONOTONIC, &a) == 0);
    struct timespec nap = {0, 20 * 1000 * 1000};
    CHECK(nanosleep(&nap, NULL) == 0); /* poll_oneoff on a clock subscription */
    CHECK(clock_gettime(CLOCK_MONOTONIC, &b) == 0);
    CHECK(ns(b) - ns(a) >= 20 * 1000 * 1000);
    puts("clocks ok");
    return 0;
}
