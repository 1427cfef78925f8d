/* multi: several handlers in one module.
 *   upper   ASCII uppercase of the input
 *   reverse the input's bytes reversed
 *   length  the input's length in decimal ASCII
 *   fail    application error: status 1, err_code 42, "failed on purpose: " + input
 */
#include "spear.h"

SPEAR_HANDLER(upper) {
    uint8_t *out = (uint8_t *)spear_alloc(req->input_len);
    if (out == NULL) return spear_error(SPEAR_CODE_NOMEM, "out of memory");
    for (uint32_t i = 0; i < req->input_len; i++) {
        uint8_t c = req->input[i];
        out[i] = (c >= 'a' && c <= 'z') ? (uint8_t)(c - ('a' - 'A')) : c;
    }
    return spear_output(out, req->input_len);
}

SPEAR_HANDLER(reverse) {
    uint32_t n = req->input_len;
    uint8_t *out = (uint8_t *)spear_alloc(n);
    if (out == NULL) return spear_error(SPEAR_CODE_NOMEM, "out of memory");
    for (uint32_t i = 0; i < n; i++) out[i] = req->input[n - 1 - i];
    return spear_output(out, n);
}

SPEAR_HANDLER(length) {
    char *out = (char *)spear_alloc(20);
    if (out == NULL) return spear_error(SPEAR_CODE_NOMEM, "out of memory");
    return spear_output(out, spear_fmt_u64(out, req->input_len));
}

SPEAR_HANDLER(fail) {
    spear_buf msg;
    spear_buf_init(&msg, 19 + req->input_len);
    spear_buf_append_str(&msg, "failed on purpose: ");
    spear_buf_append(&msg, req->input, req->input_len);
    return spear_error_buf(42, &msg);
}
