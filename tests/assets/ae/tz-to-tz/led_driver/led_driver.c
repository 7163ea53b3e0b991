/* Veritee's led_driver for the reactive-tools tz-to-tz example: input "toggle_led" (input 1
 * there) flips the LED; the PUBLIC endpoint "state" answers with it (for a test to read). */
#include <stdio.h>
#include "veritee_app.h"

static int led;
static int toggles;

VERITEE_INPUT(toggle_led) {
    (void)data;
    (void)len;
    led = !led;
    toggles++;
}

VERITEE_PUBLIC(state) {
    (void)data;
    (void)len;
    char body[64];
    int n = snprintf(body, sizeof body, "led %s after %d toggles\n", led ? "on" : "off", toggles);
    veritee_respond((const uint8_t *)body, (uint32_t)n);
}
