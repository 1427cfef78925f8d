/* bad_pointer: handlers that return output pointers the host must reject.
 *   out_of_bounds  out_ptr = 0xFFFFFF00, out_len = 4096
 *   overflow       out_ptr = 0xFFFFFFF0, out_len = 0x20 (out_ptr + out_len wraps 32 bits)
 *   huge_len       out_ptr = 16, out_len = 0x7FFFFFFF
 *   echo           returns its input
 */
#include "spear.h"

SPEAR_HANDLER(out_of_bounds) {
    (void)req;
    return spear_output((const void *)(uintptr_t)0xFFFFFF00u, 4096);
}

SPEAR_HANDLER(overflow) {
    (void)req;
    return spear_output((const void *)(uintptr_t)0xFFFFFFF0u, 0x20);
}

SPEAR_HANDLER(huge_len) {
    (void)req;
    return spear_output((const void *)(uintptr_t)16u, 0x7FFFFFFFu);
}

SPEAR_HANDLER(echo) { return spear_output(req->input, req->input_len); }
