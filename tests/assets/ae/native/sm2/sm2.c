/* sm2 of the reactive-tools example_native, in C for Veritee: it takes events on "input". */
#include "veritee_app.h"

static int received;

VERITEE_INPUT(input) {
    (void)data;
    (void)len;
    received++;
}
