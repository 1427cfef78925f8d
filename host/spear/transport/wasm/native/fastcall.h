/* Declarations shared by fastcall.c and its cffi build (build_fastcall.py reads this file as
 * the cdef, so it holds plain C only: no preprocessor lines, no includes).
 *
 * Pointers to wasmtime objects are `void *` here: the helper reaches wasmtime only through
 * the function pointers Python hands it, so it needs none of wasmtime's headers and links
 * against nothing but libc.
 */

/* Shared with the engine's ticker thread: calls in flight that have a deadline. */
typedef struct { int64_t running; } spear_ticker_t;

/* One handler of one instance, prepared once: its function and its name. */
typedef struct {
    const void *func;            /* wasmtime_func_t* */
    const uint8_t *name;
    uint32_t name_len;
} spear_handler_t;

typedef struct {
    void *call_unchecked;        /* wasmtime_func_call_unchecked */
    void *set_deadline;          /* wasmtime_context_set_epoch_deadline */
    void *memory_size;           /* wasmtime_memory_data_size */
    void *context;               /* wasmtime_context_t* */
    const void *memory;          /* wasmtime_memory_t* */
    spear_ticker_t *ticker;
    uint8_t *base;               /* linear memory base; never moves (may_move = false) */
    uint64_t size;               /* memory size last seen */
    uint64_t calls;              /* request ids */
    uint32_t ctrl;               /* control block address */
    uint32_t req_ptr, req_cap;   /* guest request buffer */
    uint32_t deadline_armed;
    uint64_t tick_ns;            /* the engine's epoch tick */
    int64_t slots[2];            /* wasmtime_val_raw_t: the handler's i32 status */
    void *trap;                  /* wasm_trap_t* after a trap */
    void *error;                 /* wasmtime_error_t* after an error */
    uint32_t out_ptr, out_len, err_code;
    int32_t status;
} spear_fast_t;

int64_t spear_call(spear_fast_t *f, const spear_handler_t *h,
                   const uint8_t *input, uint32_t input_len, uint64_t timeout_ns);
int64_t spear_call_meta(spear_fast_t *f, const spear_handler_t *h,
                        const uint8_t *input, uint32_t input_len, uint64_t timeout_ns,
                        const uint8_t *meta, uint32_t meta_len, uint32_t meta_count);
