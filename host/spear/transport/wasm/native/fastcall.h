/* Declarations shared by fastcall.c and its cffi build (build_fastcall.py reads this file as
 * the cdef, so it holds plain C only: no preprocessor lines, no includes).
 *
 * Pointers to wasmtime objects are `void *` here: the helper reaches wasmtime only through
 * the function pointers Python hands it, so it needs none of wasmtime's headers and links
 * against nothing but libc.
 */

/* Shared with the engine's ticker thread. `running`: calls in flight that have a deadline;
 * `started`: calls ever started with one (the ticker stays awake while it moves);
 * `sleeping`: the ticker is parked and must be woken (one byte into `wake_fd`);
 * `thread`: the ticker's own C thread (spear_ticker_start), or NULL. */
typedef struct {
    int64_t running;
    int64_t started;
    int32_t sleeping;
    int32_t wake_fd;
    void *thread;
} spear_ticker_t;

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
    void *set_fuel;              /* wasmtime_context_set_fuel */
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
    uint64_t fuel;               /* fuel per call; 0 = fuel is not metered */
    uint64_t interrupt_at_ns;    /* when the running call is interrupted; 0 = never */
    int64_t slots[2];            /* wasmtime_val_raw_t: the handler's i32 status */
    void *trap;                  /* wasm_trap_t* after a trap */
    void *error;                 /* wasmtime_error_t* after an error */
    uint32_t out_ptr, out_len, err_code;
    int32_t status;
} spear_fast_t;

int64_t spear_call(spear_fast_t *f, const spear_handler_t *h,
                   const uint8_t *input, uint32_t input_len, uint64_t timeout_ns,
                   uint64_t budget_ns);
int64_t spear_call_meta(spear_fast_t *f, const spear_handler_t *h,
                        const uint8_t *input, uint32_t input_len, uint64_t timeout_ns,
                        uint64_t budget_ns, const uint8_t *meta, uint32_t meta_len,
                        uint32_t meta_count);

/* wasmtime_val_raw_t (16 bytes): a host function's arguments in, its results out. */
typedef union {
    int32_t i32;
    int64_t i64;
    float f32;
    double f64;
    uint8_t v128[16];
} spear_val_t;

/* The wasmtime functions the host-function callbacks below use, handed over once. */
typedef struct {
    void *caller_context;        /* wasmtime_caller_context */
    void *context_get_data;      /* wasmtime_context_get_data */
    void *caller_export_get;     /* wasmtime_caller_export_get */
    void *memory_data;           /* wasmtime_memory_data */
    void *memory_data_size;      /* wasmtime_memory_data_size */
    void *trap_new;              /* wasmtime_trap_new */
    uint32_t extern_size;        /* sizeof(wasmtime_extern_t) */
    uint32_t extern_of;          /* offsetof(wasmtime_extern_t, of) */
    uint32_t extern_memory;      /* WASMTIME_EXTERN_MEMORY */
} spear_host_api_t;

/* Host functions defined with wasmtime_linker_define_func_unchecked point at these
 * callbacks. `spear_host_trampoline` finds the calling instance's data (the store's data
 * pointer) and enters the Python implementation number `(intptr_t)env` through cffi's
 * `extern "Python"` (no libffi closure); `spear_host_now` needs no Python at all;
 * `spear_host_call_cb` (`spear.host_call`) reads and bounds-checks its arguments against
 * guest memory in C and hands Python only the name, the input and the output buffer. */
void spear_host_api(const spear_host_api_t *api);
size_t spear_host_trampoline(void *env, void *caller, spear_val_t *args, size_t nargs);
size_t spear_host_now(void *env, void *caller, spear_val_t *args, size_t nargs);
size_t spear_host_call_cb(void *env, void *caller, spear_val_t *args, size_t nargs);

/* Ticker bookkeeping for guest entries made from Python (atomic, like the C calls'). */
void spear_ticker_enter(spear_ticker_t *t);
void spear_ticker_leave(spear_ticker_t *t);
/* The ticker thread: 1 = nothing is running, it may park now (`sleeping` is set);
 * 0 = a call started meanwhile, keep ticking. */
int spear_ticker_try_sleep(spear_ticker_t *t);
void spear_ticker_awake(spear_ticker_t *t);
/* The ticker as a C thread: it never needs the GIL, so a busy Python thread never waits for
 * it to tick, nor does the ticker wait for Python. Every `tick_ns` it calls
 * `increment_epoch(engine)` (wasmtime_engine_increment_epoch); `idle_grace_ns` after the
 * last call it parks on `wake_read_fd` (at most `nap_ns` at a time). 0, or an errno when
 * the thread could not be started. */
int spear_ticker_start(spear_ticker_t *t, void *increment_epoch, void *engine,
                       uint64_t tick_ns, uint64_t idle_grace_ns, uint64_t nap_ns,
                       int32_t wake_read_fd);
/* Stops the thread and waits for it (the engine may be deleted afterwards). */
void spear_ticker_stop(spear_ticker_t *t);
