/*
 * badge — the client side of mutual attestation: a module that asks the directory module
 * for a record over attested TLS and prints only what a door badge needs.
 *
 * Its TLS endpoint runs in the secure world and attests this module to the directory; the
 * directory's answer arrives on stdin, inside the secure world, and only this module's own
 * output (name and room, not the phone extension) reaches the normal world.
 *
 *     clang --target=wasm32-wasi -O2 examples/ratls/badge.c -o badge.wasm
 */
#include <stdio.h>
#include <string.h>

#define MAX_RECORD 1024

int main(void) {
    char record[MAX_RECORD + 1];
    size_t n = fread(record, 1, MAX_RECORD, stdin);
    record[n] = '\0';
    /* A record reads "name: room R, ext E, ...": keep what precedes the first ", ext". */
    char *ext = strstr(record, ", ext");
    if (ext == NULL) {
        char *newline = strchr(record, '\n');
        if (newline != NULL) {
            *newline = '\0';
        }
        printf("badge: no room in \"%s\"\n", record);
        return 1;
    }
    *ext = '\0';
    printf("badge: %s\n", record);
    return 0;
}
