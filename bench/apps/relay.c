/* relay: one end of the event benchmark (bench/events.py).
 *
 * Two instances are connected in a ring (a.out -> b.in, b.out -> a.in). Each event carries
 * the sender's clock (CLOCK_REALTIME, shared by all processes of one machine, so also by
 * two nodes on loopback) and how many hops are left: the receiver records the one-way
 * latency, then sends it on. A burst sends N events at once, to measure throughput: the
 * receiver notes when the first event it counts was sent and when the last one arrived, so
 * the rate comes from the modules' clocks, not from when the bench thought to ask.
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
/* Since the last stats call: the send time of the first event received, the arrival time
 * of the last (CLOCK_REALTIME ns; 0 while none came). */
static uint64_t window_first_sent_ns;
static uint64_t window_last_ns;

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
    uint64_t arrived = now_ns();
    uint64_t took = arrived - h.sent_ns;
    if (window_first_sent_ns == 0) window_first_sent_ns = h.sent_ns;
    window_last_ns = arrived;
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

/* Little-endian: uint32 events received in all, uint32 0, uint64 the window's first send
 * and last arrival (ns), then the latencies recorded since the last call (uint32 us each).
 * Starts a new window. */
#define HEADER_WORDS 6
VERITEE_HANDLER(stats) {
    (void)data;
    (void)len;
    static uint32_t out[HEADER_WORDS + MAX_SAMPLES];
    out[0] = received;
    out[1] = 0;
    memcpy(out + 2, &window_first_sent_ns, 8);
    memcpy(out + 4, &window_last_ns, 8);
    memcpy(out + HEADER_WORDS, samples, n_samples * sizeof samples[0]);
    veritee_respond((const uint8_t *)out, (HEADER_WORDS + n_samples) * (uint32_t)sizeof out[0]);
    n_samples = 0;
    window_first_sent_ns = 0;
    window_last_ns = 0;
}
