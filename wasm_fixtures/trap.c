/* trap: handlers that trap.
 *   unreachable  executes `unreachable`
 *   oob          loads from 0xFFFFFFF0 (out of bounds)
 *   divide       integer division by zero
 *   echo         returns its input
 */
#include "spear.h"

static volatile int32_t zero = 0;

SPEAR_HANDLER(unreachable) {
    (void)req;
    __builtin_trap();
}

SPEAR_HANDLER(oob) {
    volatile uint32_t *p = (volatile uint32_t *)(uintptr_t)0xFFFFFFF0u;
    uint32_t v = *p;
    (void)req;
    return spear_output_copy(&v, sizeof v);
}

SPEAR_HANDLER(divide) {
    int32_t q = 1000 / zero;
    (void)req;
    return spear_output_copy(&q, sizeof q);
}

SPEAR_HANDLER(echo) { return spear_output(req->input, req->input_len); }
