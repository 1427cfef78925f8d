/* The hot loop of a host->guest call, in C, so one call from Python does all of it.
 *
 * Python prepares handles once per instance (spear_fast_t) and then, per call, hands over
 * the function name, metadata and input. This writes them into the guest's request buffer,
 * fills the control block (docs/wasm-abi.md), refills fuel, arms the epoch deadline, enters
 * the guest through wasmtime_func_call_unchecked, and bounds-checks what the guest returns.
 *
 * Compiled with the package (cffi API mode, see build_fastcall.py), never at run time.
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fastcall.h"

typedef void *(*call_unchecked_fn)(void *context, const void *func, void *slots,
                                   size_t nslots, void **trap);
typedef void (*set_deadline_fn)(void *context, uint64_t ticks);
typedef size_t (*memory_size_fn)(const void *context, const void *memory);
typedef void *(*set_fuel_fn)(void *context, uint64_t fuel);

#define NO_DEADLINE ((uint64_t)1 << 62)

/* The clock of `spear.now()` and of Python's time.monotonic_ns(). */
static uint64_t now_ns(void)
{
    struct timespec ts;
#if defined(__APPLE__)
    clock_gettime(CLOCK_UPTIME_RAW, &ts);  /* what Python's monotonic clock reads there */
#else
    clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
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

static inline void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

void spear_ticker_enter(spear_ticker_t *t)
{
    __atomic_add_fetch(&t->running, 1, __ATOMIC_SEQ_CST);
    /* Only "has it changed" matters to the ticker: a lost update between threads is fine,
     * and plain loads and stores cost less than a second locked instruction per call. */
    __atomic_store_n(&t->started, __atomic_load_n(&t->started, __ATOMIC_RELAXED) + 1,
                     __ATOMIC_RELAXED);
    /* Seen after our increment (seq_cst on both sides): either the ticker sees `running`
     * before parking, or we see `sleeping` and wake it. */
    if (__atomic_load_n(&t->sleeping, __ATOMIC_SEQ_CST)) {
        char byte = 1;
        ssize_t ignored = write(t->wake_fd, &byte, 1);  /* non-blocking; a full pipe wakes it anyway */
        (void)ignored;
    }
}

void spear_ticker_leave(spear_ticker_t *t)
{
    __atomic_sub_fetch(&t->running, 1, __ATOMIC_RELAXED);
}

int spear_ticker_try_sleep(spear_ticker_t *t)
{
    __atomic_store_n(&t->sleeping, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&t->running, __ATOMIC_SEQ_CST) > 0) {
        __atomic_store_n(&t->sleeping, 0, __ATOMIC_SEQ_CST);
        return 0;
    }
    return 1;
}

void spear_ticker_awake(spear_ticker_t *t)
{
    __atomic_store_n(&t->sleeping, 0, __ATOMIC_SEQ_CST);
}

/* -- the ticker thread ------------------------------------------------------------------ */

typedef void (*increment_epoch_fn)(void *engine);

typedef struct {
    pthread_t thread;
    pid_t pid;                /* the process that started it: a forked child has no thread */
    spear_ticker_t *shared;
    increment_epoch_fn increment;
    void *engine;
    uint64_t tick_ns;
    uint64_t idle_ticks;
    int nap_ms;
    int wake_r;
    int stop;                 /* atomic */
} ticker_thread_t;

static void *ticker_main(void *arg)
{
    ticker_thread_t *s = arg;
    spear_ticker_t *t = s->shared;
#ifdef __linux__
    pthread_setname_np(pthread_self(), "spear-epoch");  /* seen in top, /proc, debuggers */
#endif
    struct timespec tick = {(time_t)(s->tick_ns / 1000000000u), (long)(s->tick_ns % 1000000000u)};
    uint64_t idle = 0;
    int64_t last_started = -1;
    while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
        nanosleep(&tick, NULL);
        if (__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE))
            break;
        s->increment(s->engine);
        int64_t started = __atomic_load_n(&t->started, __ATOMIC_RELAXED);
        if (__atomic_load_n(&t->running, __ATOMIC_SEQ_CST) > 0 || started != last_started) {
            idle = 0;
            last_started = started;
            continue;
        }
        if (++idle < s->idle_ticks)
            continue;
        idle = 0;
        if (!spear_ticker_try_sleep(t))
            continue;
        if (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
            struct pollfd wake = {s->wake_r, POLLIN, 0};
            (void)poll(&wake, 1, s->nap_ms);
        }
        spear_ticker_awake(t);
        char drain[64];
        while (read(s->wake_r, drain, sizeof drain) > 0) {
        }
    }
    return NULL;
}

int spear_ticker_start(spear_ticker_t *t, void *increment_epoch, void *engine,
                       uint64_t tick_ns, uint64_t idle_grace_ns, uint64_t nap_ns,
                       int32_t wake_read_fd)
{
    if (t->thread != NULL)
        return EALREADY;
    if (tick_ns == 0 || increment_epoch == NULL || engine == NULL)
        return EINVAL;
    ticker_thread_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return ENOMEM;
    s->pid = getpid();
    s->shared = t;
    s->increment = (increment_epoch_fn)increment_epoch;
    s->engine = engine;
    s->tick_ns = tick_ns;
    s->idle_ticks = idle_grace_ns / tick_ns > 0 ? idle_grace_ns / tick_ns : 1;
    s->nap_ms = (int)(nap_ns / 1000000u);
    s->wake_r = wake_read_fd;
    /* Signals stay with Python's threads: the new thread starts with all of them blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&s->thread, NULL, ticker_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        free(s);
        return rc;
    }
    t->thread = s;
    return 0;
}

void spear_ticker_stop(spear_ticker_t *t)
{
    ticker_thread_t *s = t->thread;
    if (s == NULL)
        return;
    t->thread = NULL;
    if (s->pid != getpid()) {
        free(s);  /* a forked child: the thread stayed in the parent */
        return;
    }
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    char byte = 1;
    ssize_t ignored = write(t->wake_fd, &byte, 1);
    (void)ignored;
    pthread_join(s->thread, NULL);
    free(s);
}

/* The full call, with metadata. timeout_ns: the call's own deadline (written into the
 * control block); budget_ns: an earlier interrupt (the event loop's budget). 0 = none. */
int64_t spear_call_meta(spear_fast_t *f, const spear_handler_t *h,
                        const uint8_t *input, uint32_t input_len, uint64_t timeout_ns,
                        uint64_t budget_ns, const uint8_t *meta, uint32_t meta_len,
                        uint32_t meta_count)
{
    uint64_t total = (uint64_t)h->name_len + meta_len + input_len;
    if (total > f->req_cap) return FAST_NO_ROOM;
    uint64_t interrupt_ns = timeout_ns;
    if (budget_ns && (!interrupt_ns || budget_ns < interrupt_ns)) interrupt_ns = budget_ns;
    uint64_t now = interrupt_ns ? now_ns() : 0;
    uint64_t deadline_ns = timeout_ns ? now + timeout_ns : 0;
    uint8_t *base = f->base;
    uint32_t ptr = f->req_ptr;
    uint32_t meta_ptr = ptr + h->name_len;
    uint32_t input_ptr = meta_ptr + meta_len;
    memcpy(base + ptr, h->name, h->name_len);
    if (meta_len) memcpy(base + meta_ptr, meta, meta_len);
    if (input_len) memcpy(base + input_ptr, input, input_len);

    uint8_t *c = base + f->ctrl;
    put32(c + 16, ptr);       put32(c + 20, h->name_len);
    put32(c + 24, meta_ptr);  put32(c + 28, meta_len);
    put32(c + 32, input_ptr); put32(c + 36, input_len);
    put32(c + 40, meta_count); put32(c + 44, 0);
    put64(c + 48, ++f->calls); put64(c + 56, deadline_ns);
    put32(c + 64, 0); put32(c + 68, 0); put32(c + 72, 0);

    if (f->fuel) {
        void *error = ((set_fuel_fn)f->set_fuel)(f->context, f->fuel);
        if (error) { f->error = error; f->trap = 0; return FAST_TRAPPED; }
    }
    if (interrupt_ns) {
        /* +1: the current tick may be almost over when the deadline is set. */
        ((set_deadline_fn)f->set_deadline)(f->context, interrupt_ns / f->tick_ns + 1);
        f->deadline_armed = 1;
        f->interrupt_at_ns = now + interrupt_ns;
        spear_ticker_enter(f->ticker);
    } else {
        f->interrupt_at_ns = 0;
        if (f->deadline_armed) {
            ((set_deadline_fn)f->set_deadline)(f->context, NO_DEADLINE);
            f->deadline_armed = 0;
        }
    }
    f->trap = 0;
    f->error = ((call_unchecked_fn)f->call_unchecked)(f->context, h->func, f->slots, 1,
                                                        &f->trap);
    if (interrupt_ns) spear_ticker_leave(f->ticker);
    if (f->error || f->trap) return FAST_TRAPPED;

    f->status = (int32_t)f->slots[0];
    c = base + f->ctrl;
    f->out_ptr = get32(c + 64);
    f->out_len = get32(c + 68);
    f->err_code = get32(c + 72);
    uint64_t end = (uint64_t)f->out_ptr + f->out_len;
    if (end > f->size) {
        f->size = ((memory_size_fn)f->memory_size)(f->context, f->memory);  /* the guest may have grown it */
        if (end > f->size) return FAST_BAD_POINTER;
    }
    if (f->out_len >= 0x80000000u) return FAST_BAD_POINTER;
    if (f->status != 0) return FAST_STATUS;
    return ((int64_t)f->out_len << 32) | f->out_ptr;
}

/* ---------------------------------------------------------------- host functions */

typedef void *(*caller_context_fn)(void *caller);
typedef void *(*context_get_data_fn)(const void *context);
typedef _Bool (*caller_export_get_fn)(void *caller, const char *name, size_t len, void *item);
typedef uint8_t *(*memory_data_fn)(const void *context, const void *memory);
typedef size_t (*memory_data_size_fn)(const void *context, const void *memory);
typedef void *(*trap_new_fn)(const char *message, size_t len);

static spear_host_api_t host;

/* Defined by cffi (build_fastcall.py declares them `extern "Python"`). */
static size_t spear_py_host(intptr_t index, void *data, void *caller, spear_val_t *args);
static int32_t spear_py_host_call(void *data, const char *name, uint32_t name_len,
                                  const char *input, uint32_t input_len, char *out,
                                  uint32_t out_cap, uint32_t *out_len, void **trap);

void spear_host_api(const spear_host_api_t *api)
{
    host = *api;
}

size_t spear_host_trampoline(void *env, void *caller, spear_val_t *args, size_t nargs)
{
    (void)nargs;
    void *data = ((context_get_data_fn)host.context_get_data)(
        ((caller_context_fn)host.caller_context)(caller));
    return spear_py_host((intptr_t)env, data, caller, args);
}

size_t spear_host_now(void *env, void *caller, spear_val_t *args, size_t nargs)
{
    (void)env; (void)caller; (void)nargs;
    args[0].i64 = (int64_t)now_ns();
    return 0;
}

static size_t host_trap(const char *message)
{
    return (size_t)((trap_new_fn)host.trap_new)(message, strlen(message));
}

/* host_call(name_ptr, name_len, in_ptr, in_len, out_ptr, out_cap, len_ptr) -> i32 */
size_t spear_host_call_cb(void *env, void *caller, spear_val_t *args, size_t nargs)
{
    (void)env; (void)nargs;
    uint64_t item[8];  /* a wasmtime_extern_t (extern_size <= sizeof item, checked at import) */
    void *context = ((caller_context_fn)host.caller_context)(caller);
    if (!((caller_export_get_fn)host.caller_export_get)(caller, "memory", 6, item)
        || ((uint8_t *)item)[0] != host.extern_memory)
        return host_trap("spear.host_call: the guest exports no memory");
    const void *memory = (const uint8_t *)item + host.extern_of;
    uint8_t *base = ((memory_data_fn)host.memory_data)(context, memory);
    uint64_t size = ((memory_data_size_fn)host.memory_data_size)(context, memory);
    uint32_t a[7];
    for (int i = 0; i < 7; i++) a[i] = (uint32_t)args[i].i32;
    if ((uint64_t)a[0] + a[1] > size) return host_trap("spear.host_call name: pointer out of bounds");
    if ((uint64_t)a[2] + a[3] > size) return host_trap("spear.host_call input: pointer out of bounds");
    if ((uint64_t)a[4] + a[5] > size) return host_trap("spear.host_call output: pointer out of bounds");
    if ((uint64_t)a[6] + 4 > size) return host_trap("spear.host_call length: pointer out of bounds");
    uint32_t out_len = 0;
    void *trap = 0;
    int32_t rc = spear_py_host_call(((context_get_data_fn)host.context_get_data)(context),
                                    (const char *)base + a[0], a[1],
                                    (const char *)base + a[2], a[3],
                                    (char *)base + a[4], a[5], &out_len, &trap);
    if (trap) return (size_t)trap;
    memcpy(base + a[6], &out_len, 4);  /* may be unaligned */
    args[0].i32 = rc;
    return 0;
}

/* The common call: no metadata. Fewer arguments cost less to pass. */
int64_t spear_call(spear_fast_t *f, const spear_handler_t *h,
                   const uint8_t *input, uint32_t input_len, uint64_t timeout_ns,
                   uint64_t budget_ns)
{
    return spear_call_meta(f, h, input, input_len, timeout_ns, budget_ns, 0, 0, 0);
}
