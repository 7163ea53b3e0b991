/* relay: one end of the event benchmark (bench/events.py).
 *
 * Two instances are connected in a ring (a.out -> b.in, b.out -> a.in). Each event carries
 * the sender's clock (CLOCK_REALTIME, shared by all processes of one machine, so also by
 * two nodes on loopback) and how many hops are left: the receiver records the one-way
 * latency, then sends it on. A burst sends N events at once, to measure throughput.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "veritee_app.h"

#define MAX_SAMPLES 20000

VERITEE_OUTPUT(out);

static uint32_t samples[MAX_SAMPLES]; /* one-way latency, microseconds */
static uint32_t n_samples;
static uint32_t received;

struct hop {
    uint64_t sent_ns;
    uint32_t left;
    uint32_t pad;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void send(uint32_t left) {
    struct hop h = {now_ns(), left, 0};
    veritee_emit("out", &h, sizeof h);
}

VERITEE_INPUT(in) {
    received++;
    if (len < sizeof(struct hop)) return;
    struct hop h;
    memcpy(&h, data, sizeof h);
    uint64_t took = now_ns() - h.sent_ns;
    if (n_samples < MAX_SAMPLES) samples[n_samples++] = (uint32_t)(took / 1000);
    if (h.left > 0) send(h.left - 1);
}

/* Start a ping-pong of `hops` hops (4-byte little-endian count in the payload). */
VERITEE_INPUT(start) {
    uint32_t hops = 0;
    if (len >= 4) memcpy(&hops, data, 4);
    if (hops > 0) send(hops - 1);
}

/* Send `count` events at once (the receiver sends none on). */
VERITEE_INPUT(burst) {
    uint32_t count = 0;
    if (len >= 4) memcpy(&count, data, 4);
    for (uint32_t i = 0; i < count; i++) send(0);
}

/* The latencies recorded so far (uint32 microseconds each), and the count of events. */
VERITEE_HANDLER(stats) {
    (void)data;
    (void)len;
    static uint32_t out[MAX_SAMPLES + 1];
    out[0] = received;
    memcpy(out + 1, samples, n_samples * sizeof samples[0]);
    veritee_respond((const uint8_t *)out, (n_samples + 1) * (uint32_t)sizeof out[0]);
    n_samples = 0;
}
