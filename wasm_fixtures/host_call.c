/* Python host functions and configuration (spear ABI v1 revision 2).
 *
 * relay   returns what host function "transform" returns for the input; a failure of
 *         "transform" fails the call with its message (err_code SPEAR_CODE_HOST_FUNCTION), a
 *         missing "transform" with code 404
 * config  returns the configuration value named by the input ("" is a value); an absent key
 *         fails with code 404
 * call    calls the host function named by metadata "function" on the input, like relay
 * shout   calls "transform" and answers "handled: <message>" when it fails (the guest handles
 *         the failure: the call succeeds)
 * tiny    calls "transform" with a 4-byte output buffer through the raw import and answers
 *         "<rc> <len> <held rc> <result>": the held result taken with spear_host_result
 * twice   calls "transform" twice on the input and answers both outputs joined by "|"
 */
#include "spear.h"

static int32_t pass_on(int32_t rc, const uint8_t *out, uint32_t out_len, const char *name) {
    if (rc == SPEAR_OK) return spear_output(out, out_len);
    if (rc == SPEAR_ERR_HOST_FUNCTION) return spear_error_n(SPEAR_CODE_HOST_FUNCTION, out, out_len);
    if (rc == SPEAR_ERR_NOT_FOUND) {
        spear_buf msg;
        spear_buf_init(&msg, 64);
        spear_buf_append_str(&msg, "no host function named ");
        spear_buf_append_str(&msg, name);
        return spear_error_buf(404, &msg);
    }
    return spear_error(-rc, "host call failed");
}

SPEAR_HANDLER(relay) {
    const uint8_t *out;
    uint32_t out_len;
    int32_t rc = spear_call("transform", req->input, req->input_len, &out, &out_len);
    return pass_on(rc, out, out_len, "transform");
}

SPEAR_HANDLER(config) {
    const char *value;
    uint32_t value_len;
    int32_t rc = spear_config_n(req->input, req->input_len, &value, &value_len);
    if (rc == SPEAR_ERR_NOT_FOUND) return spear_error(404, "no such configuration key");
    if (rc != SPEAR_OK) return spear_error(-rc, "config failed");
    return spear_output(value, value_len);
}

SPEAR_HANDLER(call) {
    const char *name;
    uint32_t name_len;
    if (!spear_meta_get(req, "function", 8, &name, &name_len)) {
        return spear_error(400, "missing 'function' metadata");
    }
    const uint8_t *out;
    uint32_t out_len;
    int32_t rc = spear_call_n(name, name_len, req->input, req->input_len, &out, &out_len);
    if (rc == SPEAR_ERR_NOT_FOUND) return spear_error(404, "no such host function");
    return pass_on(rc, out, out_len, "?");
}

SPEAR_HANDLER(shout) {
    const uint8_t *out;
    uint32_t out_len;
    int32_t rc = spear_call("transform", req->input, req->input_len, &out, &out_len);
    if (rc != SPEAR_ERR_HOST_FUNCTION) return pass_on(rc, out, out_len, "transform");
    spear_buf reply;
    spear_buf_init(&reply, 32 + out_len);
    spear_buf_append_str(&reply, "handled: ");
    spear_buf_append(&reply, out, out_len);
    return spear_output_buf(&reply);
}

SPEAR_HANDLER(tiny) {
    uint8_t small[4];
    uint32_t len = 0;
    int32_t rc = spear_host_call("transform", 9, req->input, req->input_len, small, 4, &len);
    spear_buf reply;
    spear_buf_init(&reply, 64 + len);
    spear_buf_append_i64(&reply, rc);
    spear_buf_append_byte(&reply, ' ');
    spear_buf_append_u64(&reply, len);
    spear_buf_append_byte(&reply, ' ');
    if (len <= 4) {
        spear_buf_append_i64(&reply, spear_host_result(small, 4)); /* nothing held */
        spear_buf_append_byte(&reply, ' ');
        spear_buf_append(&reply, small, len);
        return spear_output_buf(&reply);
    }
    uint8_t *big = (uint8_t *)spear_alloc(len);
    if (big == NULL) return spear_error(SPEAR_CODE_NOMEM, "out of memory");
    int32_t again = spear_host_result(big, 2); /* still too small: stays held */
    int32_t got = spear_host_result(big, len);
    spear_buf_append_i64(&reply, again);
    spear_buf_append_byte(&reply, ' ');
    spear_buf_append_i64(&reply, got);
    spear_buf_append_byte(&reply, ' ');
    spear_buf_append(&reply, big, got > 0 ? (uint32_t)got : 0);
    return spear_output_buf(&reply);
}

SPEAR_HANDLER(twice) {
    const uint8_t *a, *b;
    uint32_t a_len, b_len;
    int32_t rc = spear_call("transform", req->input, req->input_len, &a, &a_len);
    if (rc != SPEAR_OK) return pass_on(rc, a, a_len, "transform");
    rc = spear_call("transform", req->input, req->input_len, &b, &b_len);
    if (rc != SPEAR_OK) return pass_on(rc, b, b_len, "transform");
    spear_buf reply;
    spear_buf_init(&reply, a_len + b_len + 1);
    spear_buf_append(&reply, a, a_len);
    spear_buf_append_byte(&reply, '|');
    spear_buf_append(&reply, b, b_len);
    return spear_output_buf(&reply);
}
