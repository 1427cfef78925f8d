/* spin: for timeout tests.
 *   spin  loops forever (a volatile counter keeps the loop alive)
 *   echo  returns its input
 */
#include "spear.h"

static volatile uint32_t spin_counter;

SPEAR_HANDLER(spin) {
    (void)req;
    for (;;) spin_counter++;
    return 0;
}

SPEAR_HANDLER(echo) { return spear_output(req->input, req->input_len); }
