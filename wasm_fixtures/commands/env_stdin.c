/* A WASI command in plain C against wasi-libc, with no spear SDK: the kind of program every
 * language's WASI target produces. The tests build it with
 * `python -m ziglang cc --target=wasm32-wasi` and run it as a function.
 *
 * Writes its environment ("NAME=value" lines), then its stdin, to stdout. With argument
 * "files": reads /data/in.txt and tries to create /data/out.txt, saying how each went.
 * With EXIT=N in the environment: says so on stderr and exits with status N.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

static void files(void) {
    char line[256];
    FILE *in = fopen("/data/in.txt", "r");
    if (in == NULL) {
        printf("read refused: %s\n", strerror(errno));
    } else {
        while (fgets(line, sizeof line, in) != NULL) printf("read: %s", line);
        fclose(in);
    }
    FILE *out = fopen("/data/out.txt", "w");
    if (out == NULL) {
        printf("write refused: %s\n", strerror(errno));
    } else {
        fputs("written by the guest\n", out);
        fclose(out);
        printf("write ok\n");
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "files") == 0) {
        files();
        return 0;
    }
    for (char **name = environ; *name != NULL; name++) printf("%s\n", *name);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, n, stdout);
    const char *code = getenv("EXIT");
    if (code != NULL) {
        fprintf(stderr, "exiting with %s\n", code);
        return atoi(code);
    }
    return 0;
}
