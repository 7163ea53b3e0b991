/* App test module: an entry that emits an event, and a request that asks a handler. */
#include <stdio.h>
#include "veritee_app.h"

VERITEE_OUTPUT(pressed);
VERITEE_REQUEST(ask);

VERITEE_ENTRY(press) { veritee_emit("pressed", data, len); }

VERITEE_ENTRY(query) {
    (void)data;
    (void)len;
    char answer[64];
    int32_t n = veritee_call("ask", "how many?", 9, answer, sizeof answer - 1);
    if (n < 0) {
        printf("ask failed: %s\n", veritee_strerror(n));
        return;
    }
    answer[n] = 0;
    printf("answer: %s\n", answer);
}
