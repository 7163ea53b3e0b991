/* webserver: the smart home's web page (node "home-server").
 *
 * Anyone may send it HTTP through the node agent (a PUBLIC endpoint: the request is
 * unauthenticated and treated as hostile); the count it shows comes from db through the
 * get_presses request, an authenticated, attested connection. It serves nothing until the
 * user starts it through the direct connection "init-server".
 */
#include <stdio.h>
#include <string.h>
#include "veritee_app.h"

VERITEE_REQUEST(get_presses);

#ifdef WEB_V2
#define WEB_VERSION "2"
#else
#define WEB_VERSION "1"
#endif

static int started;

VERITEE_INPUT(init) {
    (void)data;
    (void)len;
    started = 1;
    printf("webserver: started\n");
}

static void answer(const char *status, const char *body) {
    char out[256];
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nX-Web-Version: " WEB_VERSION
                     "\r\nContent-Length: %u\r\n\r\n%s",
                     status, (unsigned)strlen(body), body);
    if (n > 0 && n < (int)sizeof out) veritee_respond((const uint8_t *)out, (uint32_t)n);
}

VERITEE_PUBLIC(http) {
    if (!started) {
        answer("503 Service Unavailable", "not started\n");
        return;
    }
    /* Only "GET /presses" is served; the rest of the request is not even parsed. */
    if (len < 12 || memcmp(data, "GET /presses", 12) != 0) {
        answer("404 Not Found", "try GET /presses\n");
        return;
    }
    char count[24];
    int32_t n = veritee_call("get_presses", "", 0, count, sizeof count - 1);
    if (n < 0) {
        answer("502 Bad Gateway", "the database did not answer\n");
        return;
    }
    count[n] = 0;
    char body[64];
    snprintf(body, sizeof body, "%s\n", count);
    answer("200 OK", body);
}
