/* App test module: the sender of app_sender.c, as its owner's next build (one more public
 * endpoint), for tests/test_redteam_app.py's update attacks. */
#include <stdio.h>
#include "veritee_app.h"

VERITEE_OUTPUT(pressed);
VERITEE_REQUEST(ask);

VERITEE_ENTRY(press) { veritee_emit("pressed", data, len); }

VERITEE_ENTRY(query) {
    (void)data;
    (void)len;
}

VERITEE_PUBLIC(version) {
    (void)data;
    (void)len;
    veritee_respond((const uint8_t *)"2", 1);
}
