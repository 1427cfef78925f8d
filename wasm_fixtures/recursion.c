/* recursion: for stack-overflow tests.
 *   recurse  recurses without bound until wasmtime reports a stack overflow ("call stack
 *            exhausted"). The frames keep nothing on the shadow stack, so the engine's stack
 *            runs out first.
 *   echo     returns its input
 */
#include "spear.h"

static volatile uint32_t depth_sink;
static volatile uint32_t never = 0xFFFFFFFFu;

/* Not a tail call: the volatile store after the call must run when it returns, and the
 * volatile base case keeps the compiler from proving the recursion infinite. */
__attribute__((noinline)) static uint32_t recurse(uint32_t depth) {
    if (depth == never) return depth;
    depth_sink = depth;
    uint32_t r = recurse(depth + 1);
    depth_sink = r;
    return r + 1;
}

SPEAR_HANDLER(recurse) {
    uint32_t r = recurse(0);
    (void)req;
    return spear_output_copy(&r, sizeof r);
}

SPEAR_HANDLER(echo) { return spear_output(req->input, req->input_len); }
