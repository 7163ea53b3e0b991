/*
 * directory — a tiny staff directory served over attested TLS, one request per connection.
 *
 * Run by `veritee ratls serve`: each request arrives on stdin (a name, trailing newline
 * optional), the answer goes to stdout. Built into the module, so its measurement names the
 * data as well as the code: a client that pins the measurement knows what it talks to.
 *
 *     clang --target=wasm32-wasi -O2 examples/ratls/directory.c -o directory.wasm
 */
#include <stdio.h>
#include <string.h>

#define MAX_REQUEST 256

struct entry {
    const char *name;
    const char *record;
};

static const struct entry DIRECTORY[] = {
    {"alice", "alice: room 4.12, ext 4412, on call Mondays"},
    {"bob", "bob: room 2.07, ext 2207, security team"},
    {"carol", "carol: room 1.01, ext 1101, facilities"},
};

int main(void) {
    char request[MAX_REQUEST + 1];
    size_t n = fread(request, 1, MAX_REQUEST, stdin);
    if (!feof(stdin)) {
        printf("error: request longer than %d bytes\n", MAX_REQUEST);
        return 0;
    }
    while (n > 0 && (request[n - 1] == '\n' || request[n - 1] == '\r')) {
        n--;
    }
    request[n] = '\0';
    if (n == 0) {
        printf("directory: %zu entries; ask for a name\n",
               sizeof DIRECTORY / sizeof DIRECTORY[0]);
        return 0;
    }
    for (size_t i = 0; i < sizeof DIRECTORY / sizeof DIRECTORY[0]; i++) {
        if (strcmp(request, DIRECTORY[i].name) == 0) {
            printf("%s\n", DIRECTORY[i].record);
            return 0;
        }
    }
    printf("%s: not in the directory\n", request);
    return 0;
}
