/* metadata: reads the request metadata.
 *   get   the value of the metadata key named by the input; status 1, err_code 404,
 *         "no such key" when it is missing
 *   dump  "k=v\n" for every pair, in order
 */
#include "spear.h"

SPEAR_HANDLER(get) {
    const char *val;
    uint32_t val_len;
    if (!spear_meta_get(req, req->input, req->input_len, &val, &val_len)) {
        return spear_error(404, "no such key");
    }
    return spear_output(val, val_len);
}

SPEAR_HANDLER(dump) {
    spear_buf out;
    spear_meta_iter it;
    const char *k, *v;
    uint32_t kl, vl;
    spear_buf_init(&out, req->meta_len + 2 * req->meta_count);
    spear_meta_begin(req, &it);
    while (spear_meta_next(&it, &k, &kl, &v, &vl)) {
        spear_buf_append(&out, k, kl);
        spear_buf_append_byte(&out, '=');
        spear_buf_append(&out, v, vl);
        spear_buf_append_byte(&out, '\n');
    }
    return spear_output_buf(&out);
}
