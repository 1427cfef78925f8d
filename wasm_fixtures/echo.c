/* echo: returns its input unchanged, with zero copies (out_ptr == input_ptr). */
#include "spear.h"

SPEAR_HANDLER(echo) { return spear_output(req->input, req->input_len); }
