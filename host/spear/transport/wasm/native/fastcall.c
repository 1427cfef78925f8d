/* The hot loop of a host->guest call, in C, so one cffi call does all of it.
 *
 * Python prepares handles once per instance (spear_fast_t) and then, per call, hands over
 * the function name, metadata and input. This writes them into the guest's request buffer,
 * fills the control block (docs/wasm-abi.md), arms the epoch deadline, enters the guest
 * through wasmtime_func_call_unchecked, and bounds-checks what the guest returns. It needs
 * no libc: memcpy comes from the host process.
 */
#include <stddef.h>
#include <stdint.h>

typedef struct wasmtime_context wasmtime_context_t;
typedef void *(*call_unchecked_fn)(wasmtime_context_t *, const void *func, void *slots,
                                   size_t nslots, void **trap);
typedef void (*set_deadline_fn)(wasmtime_context_t *, uint64_t ticks);
typedef size_t (*memory_size_fn)(const wasmtime_context_t *, const void *memory);

/* Shared with the engine's ticker thread: calls in flight that have a deadline. */
typedef struct { int64_t running; } spear_ticker_t;

/* One handler of one instance, prepared once: its function and its name. */
typedef struct {
    const void *func;            /* wasmtime_func_t* */
    const uint8_t *name;
    uint32_t name_len;
} spear_handler_t;

typedef struct {
    call_unchecked_fn call_unchecked;
    set_deadline_fn set_deadline;
    memory_size_fn memory_size;
    wasmtime_context_t *context;
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

#define NO_DEADLINE ((uint64_t)1 << 62)

/* The clock of `spear.now()` and of Python's time.monotonic_ns(); libc is in the process. */
struct spear_timespec { long tv_sec; long tv_nsec; };
extern int clock_gettime(int clock, struct spear_timespec *ts);
#if defined(__APPLE__)
#define SPEAR_MONOTONIC 8 /* CLOCK_UPTIME_RAW, what Python's monotonic clock reads there */
#else
#define SPEAR_MONOTONIC 1 /* CLOCK_MONOTONIC */
#endif

static uint64_t now_ns(void)
{
    struct spear_timespec ts;
    clock_gettime(SPEAR_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Results: >= 0 is success with the output packed as (out_len << 32) | out_ptr, already
 * checked to lie inside memory; negative values say what else happened. */
enum {
    FAST_TRAPPED = -1,     /* trap or error set */
    FAST_NO_ROOM = -2,     /* request larger than the request buffer: reserve first */
    FAST_STATUS = -3,      /* status != 0; out_ptr/out_len (error message) checked as well */
    FAST_BAD_POINTER = -4, /* out_ptr/out_len outside memory, or an output of 2 GiB or more */
};

static inline void put32(uint8_t *p, uint32_t v) { __builtin_memcpy(p, &v, 4); }
static inline void put64(uint8_t *p, uint64_t v) { __builtin_memcpy(p, &v, 8); }
static inline uint32_t get32(const uint8_t *p) { uint32_t v; __builtin_memcpy(&v, p, 4); return v; }

/* The full call, with metadata; timeout_ns == 0 means no deadline. */
int64_t spear_call_meta(spear_fast_t *f, const spear_handler_t *h,
                        const uint8_t *input, uint32_t input_len, uint64_t timeout_ns,
                        const uint8_t *meta, uint32_t meta_len, uint32_t meta_count)
{
    uint64_t deadline_ns = timeout_ns ? now_ns() + timeout_ns : 0;
    /* +1: the current tick may be almost over when the deadline is set. */
    uint64_t deadline_ticks = timeout_ns ? timeout_ns / f->tick_ns + 1 : 0;
    uint64_t total = (uint64_t)h->name_len + meta_len + input_len;
    if (total > f->req_cap) return FAST_NO_ROOM;
    uint8_t *base = f->base;
    uint32_t ptr = f->req_ptr;
    uint32_t meta_ptr = ptr + h->name_len;
    uint32_t input_ptr = meta_ptr + meta_len;
    __builtin_memcpy(base + ptr, h->name, h->name_len);
    if (meta_len) __builtin_memcpy(base + meta_ptr, meta, meta_len);
    if (input_len) __builtin_memcpy(base + input_ptr, input, input_len);

    uint8_t *c = base + f->ctrl;
    put32(c + 16, ptr);       put32(c + 20, h->name_len);
    put32(c + 24, meta_ptr);  put32(c + 28, meta_len);
    put32(c + 32, input_ptr); put32(c + 36, input_len);
    put32(c + 40, meta_count); put32(c + 44, 0);
    put64(c + 48, ++f->calls); put64(c + 56, deadline_ns);
    put32(c + 64, 0); put32(c + 68, 0); put32(c + 72, 0);

    if (deadline_ticks) {
        f->set_deadline(f->context, deadline_ticks);
        f->deadline_armed = 1;
        __atomic_add_fetch(&f->ticker->running, 1, __ATOMIC_RELAXED);
    } else if (f->deadline_armed) {
        f->set_deadline(f->context, NO_DEADLINE);
        f->deadline_armed = 0;
    }
    f->trap = 0;
    f->error = f->call_unchecked(f->context, h->func, f->slots, 1, &f->trap);
    if (deadline_ticks) __atomic_sub_fetch(&f->ticker->running, 1, __ATOMIC_RELAXED);
    if (f->error || f->trap) return FAST_TRAPPED;

    f->status = (int32_t)f->slots[0];
    c = base + f->ctrl;
    f->out_ptr = get32(c + 64);
    f->out_len = get32(c + 68);
    f->err_code = get32(c + 72);
    uint64_t end = (uint64_t)f->out_ptr + f->out_len;
    if (end > f->size) {
        f->size = f->memory_size(f->context, f->memory);  /* the guest may have grown it */
        if (end > f->size) return FAST_BAD_POINTER;
    }
    if (f->out_len >= 0x80000000u) return FAST_BAD_POINTER;
    if (f->status != 0) return FAST_STATUS;
    return ((int64_t)f->out_len << 32) | f->out_ptr;
}

/* The common call: no metadata. Fewer arguments cost less to pass through libffi. */
int64_t spear_call(spear_fast_t *f, const spear_handler_t *h,
                   const uint8_t *input, uint32_t input_len, uint64_t timeout_ns)
{
    return spear_call_meta(f, h, input, input_len, timeout_ns, 0, 0, 0);
}
