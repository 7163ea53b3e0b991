/* Veritee's button_driver for the reactive-tools tz-to-tz example: the entry "entry" emits
 * "button_pressed" (in the example's TrustZone TA, entry 3 and output 0). */
#include "veritee_app.h"

VERITEE_OUTPUT(button_pressed);

VERITEE_ENTRY(entry) { veritee_emit("button_pressed", data, len); }
