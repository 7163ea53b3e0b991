/* Load generator for bench/attestation.py: attestations over keep-alive connections.
 *
 * The benchmark's clients run on the same two cores as the verifier, so every microsecond a
 * client spends is taken from the server. This one costs a few tens of microseconds per
 * attestation, against a few hundred for the Python client, as wrk does for plain requests.
 * One thread drives every connection through epoll, each its own sequence:
 *
 *   POST /challenge-response/v1/newSession?nonce=N  -> 201, Location: session/ID
 *   POST /challenge-response/v1/session/ID (evidence) -> 200, a complete session with a result
 *
 * The bench opens and spreads the connections, then hands them over as inherited file
 * descriptors, and writes each connection's work to a file:
 *
 *   repeated: u32 nonce length, nonce (base64url text), u32 evidence length, evidence (CBOR)
 *   (lengths big-endian)
 *
 * Usage: loadgen HOST FD:WORKFILE [FD:WORKFILE ...]
 * It reads one byte on stdin before it starts (so set-up is not timed). Every TICK seconds
 * it prints how many attestations are done so far, and at the end the totals:
 *   tick done=N
 *   done=N seconds=S cpu=C
 * A response other than the expected one ends the run with a message on stderr and exit 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SESSION_TYPE "application/vnd.veraison.challenge-response-session+json"
#define EVIDENCE_TYPE "application/cmw+cbor; cmwc_t=\"tag:veritee.dev,2026:evidence\""
#define MAX_CONNS 256
#define RECV_CHUNK 65536
#define TICK 0.5 /* seconds between progress lines */

struct item {
	char *nonce;
	size_t nonce_len;
	unsigned char *evidence;
	size_t evidence_len;
};

struct conn {
	int fd;
	struct item *items;
	size_t n_items, next;
	int phase; /* 0: waiting for newSession's answer, 1: for the submission's */
	char *in;
	size_t in_len, in_cap;
	char *out;
	size_t out_cap;
	size_t done;
};

static const char *host;

static void die(const char *what, const char *detail)
{
	fprintf(stderr, "loadgen: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	exit(1);
}

/* Ends the run showing the start of an unexpected response (it is not NUL-terminated). */
static void die_response(const char *what, const struct conn *c)
{
	size_t shown = c->in_len < 300 ? c->in_len : 300;
	fprintf(stderr, "loadgen: %s: %.*s\n", what, (int)shown, c->in);
	exit(1);
}

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void load_work(struct conn *c, const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		die("cannot open work file", path);
	fseek(f, 0, SEEK_END);
	long size = ftell(f);
	rewind(f);
	unsigned char *data = malloc(size > 0 ? (size_t)size : 1);
	if (!data || fread(data, 1, (size_t)size, f) != (size_t)size)
		die("cannot read work file", path);
	fclose(f);
	size_t cap = 64, pos = 0;
	c->items = malloc(cap * sizeof *c->items);
	while (pos < (size_t)size) {
		if (c->n_items == cap) {
			cap *= 2;
			c->items = realloc(c->items, cap * sizeof *c->items);
		}
		struct item *it = &c->items[c->n_items++];
		if (pos + 4 > (size_t)size)
			die("truncated work file", path);
		it->nonce_len = be32(data + pos);
		it->nonce = (char *)data + pos + 4;
		pos += 4 + it->nonce_len;
		if (pos + 4 > (size_t)size)
			die("truncated work file", path);
		it->evidence_len = be32(data + pos);
		it->evidence = data + pos + 4;
		pos += 4 + it->evidence_len;
		if (pos > (size_t)size)
			die("truncated work file", path);
	}
}

static void send_all(int fd, const char *buf, size_t len)
{
	/* The socket is blocking: a request is small, and the kernel takes it whole. */
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("send", strerror(errno));
		}
		buf += n;
		len -= (size_t)n;
	}
}

static void start_session(struct conn *c)
{
	struct item *it = &c->items[c->next];
	int n = snprintf(c->out, c->out_cap,
			 "POST /challenge-response/v1/newSession?nonce=%.*s HTTP/1.1\r\n"
			 "Host: %s\r\nAccept: " SESSION_TYPE "\r\nContent-Length: 0\r\n\r\n",
			 (int)it->nonce_len, it->nonce, host);
	send_all(c->fd, c->out, (size_t)n);
	c->phase = 0;
}

static void submit(struct conn *c, const char *location, size_t location_len)
{
	struct item *it = &c->items[c->next];
	size_t need = 512 + location_len + strlen(host) + it->evidence_len;
	if (need > c->out_cap) {
		c->out_cap = need;
		c->out = realloc(c->out, need);
	}
	int n = snprintf(c->out, c->out_cap,
			 "POST /challenge-response/v1/%.*s HTTP/1.1\r\nHost: %s\r\n"
			 "Content-Type: " EVIDENCE_TYPE "\r\nAccept: " SESSION_TYPE "\r\n"
			 "Content-Length: %zu\r\n\r\n",
			 (int)location_len, location, host, it->evidence_len);
	memcpy(c->out + n, it->evidence, it->evidence_len);
	send_all(c->fd, c->out, (size_t)n + it->evidence_len);
	c->phase = 1;
}

/* The value of header NAME (lower-case, with its colon) in HEAD, or NULL. */
static const char *header(const char *head, size_t head_len, const char *name, size_t *len)
{
	size_t name_len = strlen(name);
	const char *p = memchr(head, '\n', head_len);
	const char *end = head + head_len;
	while (p && p + 1 < end) {
		p++;
		const char *eol = memchr(p, '\r', (size_t)(end - p));
		if (!eol)
			eol = end;
		if ((size_t)(eol - p) > name_len && strncasecmp(p, name, name_len) == 0) {
			const char *v = p + name_len;
			while (v < eol && *v == ' ')
				v++;
			*len = (size_t)(eol - v);
			return v;
		}
		p = memchr(p, '\n', (size_t)(end - p));
	}
	return NULL;
}

/* Handle every complete response in c->in; returns 1 when the connection has finished. */
static int responses(struct conn *c)
{
	for (;;) {
		char *sep = memmem(c->in, c->in_len, "\r\n\r\n", 4);
		if (!sep)
			return 0;
		size_t head_len = (size_t)(sep - c->in);
		size_t len;
		const char *cl = header(c->in, head_len, "content-length:", &len);
		size_t body_len = cl ? strtoul(cl, NULL, 10) : 0;
		size_t total = head_len + 4 + body_len;
		if (c->in_len < total)
			return 0;
		int status = head_len > 12 ? atoi(c->in + 9) : 0;
		const char *body = sep + 4;
		if (c->phase == 0) {
			if (status != 201)
				die_response("newSession did not answer 201", c);
			const char *loc = header(c->in, head_len, "location:", &len);
			if (!loc)
				die("newSession answered without a Location", NULL);
			submit(c, loc, len);
		} else {
			if (status != 200)
				die_response("the submission did not answer 200", c);
			/* The verifier writes compact JSON: a complete session carries its EAR. */
			if (!memmem(body, body_len, "\"status\":\"complete\"", 19) ||
			    !memmem(body, body_len, "\"result\":\"", 10))
				die_response("the session is not complete with a result", c);
			c->done++;
			c->next++;
		}
		memmove(c->in, c->in + total, c->in_len - total);
		c->in_len -= total;
		if (c->phase == 1 && status == 200) { /* this answer ended an attestation */
			if (c->next == c->n_items)
				return 1;
			start_session(c);
		}
	}
}

static double now(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: loadgen HOST FD:WORKFILE [FD:WORKFILE ...]\n");
		return 2;
	}
	host = argv[1];
	int n = argc - 2;
	if (n > MAX_CONNS)
		die("too many connections", NULL);
	struct conn *conns = calloc((size_t)n, sizeof *conns);
	int ep = epoll_create1(0);
	for (int i = 0; i < n; i++) {
		struct conn *c = &conns[i];
		char *colon = strchr(argv[i + 2], ':');
		if (!colon)
			die("expected FD:WORKFILE", argv[i + 2]);
		c->fd = atoi(argv[i + 2]);
		load_work(c, colon + 1);
		c->in_cap = RECV_CHUNK * 2;
		c->in = malloc(c->in_cap);
		c->out_cap = 4096;
		c->out = malloc(c->out_cap);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
			die("epoll_ctl", strerror(errno));
	}
	char go;
	if (read(0, &go, 1) != 1)
		die("no start signal on stdin", NULL);
	double t0 = now(CLOCK_MONOTONIC), cpu0 = now(CLOCK_PROCESS_CPUTIME_ID);
	int live = 0;
	for (int i = 0; i < n; i++) {
		if (conns[i].n_items > 0) {
			start_session(&conns[i]);
			live++;
		}
	}
	struct epoll_event events[MAX_CONNS];
	double next_tick = t0 + TICK;
	size_t total = 0;
	while (live > 0) {
		double t = now(CLOCK_MONOTONIC);
		if (t >= next_tick) {
			printf("tick done=%zu\n", total);
			fflush(stdout);
			next_tick = t + TICK;
		}
		int k = epoll_wait(ep, events, MAX_CONNS, 60000);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			die("no answer from the verifier within 60 s", NULL);
		for (int j = 0; j < k; j++) {
			struct conn *c = events[j].data.ptr;
			if (c->in_cap - c->in_len < RECV_CHUNK) {
				c->in_cap *= 2;
				c->in = realloc(c->in, c->in_cap);
			}
			ssize_t got = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
			if (got == 0)
				die("the verifier closed a connection", NULL);
			if (got < 0) {
				if (errno == EINTR || errno == EAGAIN)
					continue;
				die("recv", strerror(errno));
			}
			c->in_len += (size_t)got;
			size_t before = c->done;
			int finished = responses(c);
			total += c->done - before;
			if (finished) {
				epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
				live--;
			}
		}
	}
	double wall = now(CLOCK_MONOTONIC) - t0, cpu = now(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
	size_t done = 0;
	for (int i = 0; i < n; i++)
		done += conns[i].done;
	printf("done=%zu seconds=%.6f cpu=%.6f\n", done, wall, cpu);
	return 0;
}
