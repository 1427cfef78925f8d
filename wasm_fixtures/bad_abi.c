/* bad_abi: a module that claims ABI version 99, so a v1 host must refuse to load it.
 *   echo  returns its input
 */
#define SPEAR_GUEST_ABI_VERSION 99
#include "spear.h"

SPEAR_HANDLER(echo) { return spear_output(req->input, req->input_len); }
