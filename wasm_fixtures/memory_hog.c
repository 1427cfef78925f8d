/* memory_hog: for memory-limit tests.
 *   grow  grows memory 16 pages at a time, writing a byte into each new page, until
 *         memory.grow fails; then returns status 1, err_code 12 (SPEAR_CODE_NOMEM),
 *         "out of memory after N pages" where N is the memory size in 64 KiB pages at that
 *         point. The message lives in static memory: the arena cannot grow any more.
 *   echo  returns its input
 */
#include "spear.h"

static char message[64];

SPEAR_HANDLER(grow) {
    (void)req;
    for (;;) {
        size_t old = __builtin_wasm_memory_grow(0, 16);
        if (old == (size_t)-1) break;
        for (size_t page = old; page < old + 16; page++) {
            *(volatile uint8_t *)(uintptr_t)(page << 16) = 1;
        }
    }
    static const char prefix[] = "out of memory after ";
    static const char suffix[] = " pages";
    uint32_t n = sizeof prefix - 1;
    spear_memcpy(message, prefix, n);
    n += spear_fmt_u64(message + n, __builtin_wasm_memory_size(0));
    spear_memcpy(message + n, suffix, sizeof suffix - 1);
    n += sizeof suffix - 1;
    return spear_error_n(SPEAR_CODE_NOMEM, message, n);
}

SPEAR_HANDLER(echo) { return spear_output(req->input, req->input_len); }
