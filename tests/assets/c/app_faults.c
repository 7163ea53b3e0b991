/* An app module that fails on purpose: a trap, and an exit from inside an endpoint. */
#include <stdlib.h>
#include "veritee_app.h"

VERITEE_ENTRY(trap) { __builtin_trap(); }

VERITEE_ENTRY(quit) { exit(3); }
