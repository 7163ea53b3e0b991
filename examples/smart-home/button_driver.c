/* button_driver: the smart home's push button (node "home-hub").
 *
 * A real driver would read a GPIO; this one is pressed through the direct connection
 * "trigger-btn" (veritee output trigger-btn press). Each press becomes one event on the
 * output button_pressed, sealed by the secure world for the controller.
 */
#include <stdio.h>
#include "veritee_app.h"

VERITEE_OUTPUT(button_pressed);

static unsigned presses;

VERITEE_INPUT(trigger_button_press) {
    presses++;
    printf("button: pressed (%u)\n", presses);
    if (veritee_emit("button_pressed", data, len) < 0) {
        printf("button: the event could not be emitted\n");
    }
}
