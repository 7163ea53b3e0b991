/* led_driver: the smart home's LED (node "home-hub").
 *
 * Toggled by the controller's toggle_led output; its state is read through the direct
 * connection "led-state" (a handler, so the answer is authenticated too).
 */
#include <stdio.h>
#include "veritee_app.h"

static int on;

VERITEE_INPUT(toggle_led) {
    (void)data;
    (void)len;
    on = !on;
    printf("led: %s\n", on ? "on" : "off");
}

VERITEE_INPUT(init) {
    (void)data;
    (void)len;
    on = 0;
}

VERITEE_HANDLER(get_state) {
    (void)data;
    (void)len;
    veritee_respond((const uint8_t *)(on ? "on" : "off"), on ? 2u : 3u);
}
