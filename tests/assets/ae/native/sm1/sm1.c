/* sm1 of the reactive-tools example_native, in C for Veritee: its entry "send" emits "output". */
#include "veritee_app.h"

VERITEE_OUTPUT(output);

VERITEE_ENTRY(send) { veritee_emit("output", data, len); }
