/* logger: uses the `log` and `now` host calls.
 *   log  logs its input once at each level 0 (trace) .. 4 (error), returns "logged"
 *   now  returns spear_now() as decimal ASCII
 */
#include "spear.h"

SPEAR_HANDLER(log) {
    for (int32_t level = SPEAR_LOG_TRACE; level <= SPEAR_LOG_ERROR; level++) {
        spear_log(level, req->input, req->input_len);
    }
    return spear_output_str("logged");
}

SPEAR_HANDLER(now) {
    char *out = (char *)spear_alloc(20);
    (void)req;
    if (out == NULL) return spear_error(SPEAR_CODE_NOMEM, "out of memory");
    return spear_output(out, spear_fmt_u64(out, spear_now()));
}
