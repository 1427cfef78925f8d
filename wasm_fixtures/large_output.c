/* large_output: for big responses.
 *   large  input is a decimal N: returns N bytes where byte i = i % 251 (built in the arena).
 *          Bad input: status 1, err_code 400; not enough memory: status 1, err_code 12.
 *   echo   returns its input
 */
#include "spear.h"

SPEAR_HANDLER(large) {
    uint64_t n;
    if (!spear_parse_u64(req->input, req->input_len, &n) || n > 0xFFFFFFFFu) {
        return spear_error(400, "input must be a decimal byte count");
    }
    uint8_t *out = (uint8_t *)spear_alloc((uint32_t)n);
    if (out == NULL) return spear_error(SPEAR_CODE_NOMEM, "out of memory");
    uint32_t v = 0;
    for (uint32_t i = 0; i < (uint32_t)n; i++) {
        out[i] = (uint8_t)v;
        if (++v == 251) v = 0;
    }
    return spear_output(out, (uint32_t)n);
}

SPEAR_HANDLER(echo) { return spear_output(req->input, req->input_len); }
