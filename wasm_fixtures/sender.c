/* sender: uses the `send` and `recv` host calls.
 *   emit   input is a decimal N: sends N messages with topic "tick" and data "0", "1", ...,
 *          then returns "sent N". Bad input: status 1, err_code 400. A failing send: status 1,
 *          err_code = -C (positive: 2 full, 3 too large), "send failed at I code C" where C is
 *          the send result.
 *   pull   receives every queued message and returns "topic=data;" for each, concatenated.
 *          Starts with small buffers (64-byte topic, 256-byte data) and retries with bigger
 *          arena buffers when recv says they are too small. A recv failure: status 1,
 *          err_code = -result, "recv failed with code C".
 *   flood  sends (topic "flood", data = the input, or the decimal index when the input is
 *          empty) until send returns non-zero, then returns "stopped at K code C" (K messages
 *          were accepted, C is the send result).
 */
#include "spear.h"

SPEAR_HANDLER(emit) {
    uint64_t n;
    char num[20];
    if (!spear_parse_u64(req->input, req->input_len, &n)) {
        return spear_error(400, "input must be a decimal count");
    }
    for (uint64_t i = 0; i < n; i++) {
        int32_t rc = spear_send("tick", 4, num, spear_fmt_u64(num, i));
        if (rc != SPEAR_OK) {
            spear_buf msg;
            spear_buf_init(&msg, 64);
            spear_buf_append_str(&msg, "send failed at ");
            spear_buf_append_u64(&msg, i);
            spear_buf_append_str(&msg, " code ");
            spear_buf_append_i64(&msg, rc);
            return spear_error_buf(-rc, &msg);
        }
    }
    spear_buf out;
    spear_buf_init(&out, 32);
    spear_buf_append_str(&out, "sent ");
    spear_buf_append_u64(&out, n);
    return spear_output_buf(&out);
}

SPEAR_HANDLER(pull) {
    spear_message m = SPEAR_MESSAGE_INIT;
    spear_buf out;
    int32_t rc;
    (void)req;
    spear_buf_init(&out, 0);
    while ((rc = spear_recv_message(&m)) == 1) {
        spear_buf_append(&out, m.topic, m.topic_len);
        spear_buf_append_byte(&out, '=');
        spear_buf_append(&out, m.data, m.data_len);
        spear_buf_append_byte(&out, ';');
    }
    if (rc != 0) {
        spear_buf msg;
        spear_buf_init(&msg, 32);
        spear_buf_append_str(&msg, "recv failed with code ");
        spear_buf_append_i64(&msg, rc);
        return spear_error_buf(-rc, &msg);
    }
    return spear_output_buf(&out);
}

SPEAR_HANDLER(flood) {
    char num[20];
    uint64_t k = 0;
    int32_t rc;
    for (;; k++) {
        if (req->input_len) {
            rc = spear_send("flood", 5, req->input, req->input_len);
        } else {
            rc = spear_send("flood", 5, num, spear_fmt_u64(num, k));
        }
        if (rc != SPEAR_OK) break;
    }
    spear_buf out;
    spear_buf_init(&out, 48);
    spear_buf_append_str(&out, "stopped at ");
    spear_buf_append_u64(&out, k);
    spear_buf_append_str(&out, " code ");
    spear_buf_append_i64(&out, rc);
    return spear_output_buf(&out);
}
