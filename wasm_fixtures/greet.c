/* greet (C): metadata, application errors and host calls; greet.rs and greet.zig are the
 * same function in Rust and Zig, and the SDK tests hold all three to the same answers.
 *   greet  metadata "user" missing: status 1, err_code 400, "missing 'user' metadata".
 *          Else logs "greeting USER" at info, sends topic "greeted" with data USER, and
 *          returns "hello, USER (N bytes)" where N is the input length. A failing send:
 *          status 1, err_code = -C, "send failed: code C".
 *   meta   "k=v\n" for every metadata pair, in order
 *   fail   status 1, err_code 42, "failed on purpose: INPUT"
 *   pull   receives every queued message and returns "topic=data;" for each
 *   clock  the host clock (`now`) in decimal
 */
#include "spear.h"

SPEAR_HANDLER(greet) {
    const char *user;
    uint32_t user_len;
    if (!spear_meta_get(req, "user", 4, &user, &user_len)) {
        return spear_error(400, "missing 'user' metadata");
    }
    spear_buf line;
    spear_buf_init(&line, 64);
    spear_buf_append_str(&line, "greeting ");
    spear_buf_append(&line, user, user_len);
    if (line.failed) return spear_error(SPEAR_CODE_NOMEM, "out of memory");
    spear_log(SPEAR_LOG_INFO, line.data, line.len);
    int32_t rc = spear_send("greeted", 7, user, user_len);
    if (rc != SPEAR_OK) {
        spear_buf msg;
        spear_buf_init(&msg, 32);
        spear_buf_append_str(&msg, "send failed: code ");
        spear_buf_append_i64(&msg, rc);
        return spear_error_buf(-rc, &msg);
    }
    spear_buf out;
    spear_buf_init(&out, 64);
    spear_buf_append_str(&out, "hello, ");
    spear_buf_append(&out, user, user_len);
    spear_buf_append_str(&out, " (");
    spear_buf_append_u64(&out, req->input_len);
    spear_buf_append_str(&out, " bytes)");
    return spear_output_buf(&out);
}

SPEAR_HANDLER(meta) {
    spear_buf out;
    spear_meta_iter it;
    const char *k, *v;
    uint32_t kl, vl;
    spear_buf_init(&out, 0);
    spear_meta_begin(req, &it);
    while (spear_meta_next(&it, &k, &kl, &v, &vl)) {
        spear_buf_append(&out, k, kl);
        spear_buf_append_byte(&out, '=');
        spear_buf_append(&out, v, vl);
        spear_buf_append_byte(&out, '\n');
    }
    return spear_output_buf(&out);
}

SPEAR_HANDLER(fail) {
    spear_buf msg;
    spear_buf_init(&msg, 0);
    spear_buf_append_str(&msg, "failed on purpose: ");
    spear_buf_append(&msg, req->input, req->input_len);
    return spear_error_buf(42, &msg);
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
    if (rc != 0) return spear_error(-rc, "recv failed");
    return spear_output_buf(&out);
}

SPEAR_HANDLER(clock) {
    char *out = (char *)spear_alloc(20);
    (void)req;
    if (out == NULL) return spear_error(SPEAR_CODE_NOMEM, "out of memory");
    return spear_output(out, spear_fmt_u64(out, spear_now()));
}
