/* controller: the smart home's logic (node "home-server").
 *
 * Each button press toggles the LED and counts one press in the database. Nothing but an
 * authentic event from the attested button_driver reaches button_pressed: the secure world
 * checks each event's connection, counter and tag before this code runs.
 */
#include <stdio.h>
#include "veritee_app.h"

VERITEE_OUTPUT(toggle_led);
VERITEE_OUTPUT(increment_presses);

VERITEE_INPUT(button_pressed) {
    (void)data;
    (void)len;
#ifdef EVIL
    /* A tampered controller: it would count every press twice. Its measurement differs,
     * so it fails attestation and is never connected. */
    veritee_emit("increment_presses", "", 0);
#endif
    veritee_emit("toggle_led", "", 0);
    veritee_emit("increment_presses", "", 0);
}
