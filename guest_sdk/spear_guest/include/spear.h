/*
 * spear.h - header-only guest SDK for the spear WASM ABI v1 (see docs/wasm-abi.md).
 *
 * Targets: freestanding wasm32 (no libc: `spear-guest build f.c -o f.wasm`) and WASI preview 1
 * with wasi-libc (`spear-guest build f.c -o f.wasm --wasi`, reactor model).
 *
 * Including this header once in a translation unit defines the whole guest runtime: the
 * exports `spear_abi_version`, `spear_init`, `spear_reserve`, the 80-byte control block, the
 * allocator and, freestanding only, weak `memcpy`/`memmove`/`memset`/`memcmp`/`strlen` (under
 * WASI, libc has them). One translation unit per module is all you need. If a module has
 * several, define SPEAR_DECLARE_ONLY before the include in all but one of them.
 *
 *     #include "spear.h"
 *
 *     SPEAR_HANDLER(echo) {                 // exported as "spear.handler.echo"
 *         return spear_output(req->input, req->input_len);
 *     }
 *
 * Memory model: the SDK owns only the pages it grew itself with memory.grow ("spans"), so it
 * shares linear memory safely with malloc or any other allocator. The request buffer and
 * spear_alloc_persistent() blocks come first; the per-call arena follows and is reset at the
 * start of every handler call, so anything from spear_alloc() lives until the handler returns
 * (long enough for the host to copy the output out). Allocation failure returns NULL.
 */
#ifndef SPEAR_H
#define SPEAR_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__wasm32__)
#error "spear.h targets wasm32 (build with: spear-guest build FILE.c -o FILE.wasm)"
#endif
#ifdef __cplusplus
#error "spear.h is a C11 header"
#endif

/* ------------------------------------------------------------------------------------------ */
/* Constants                                                                                  */
/* ------------------------------------------------------------------------------------------ */

#define SPEAR_ABI_VERSION 1
#define SPEAR_MAGIC 0x52455053u /* "SPER" as little-endian bytes */

/* The version the module *claims* in spear_abi_version(). Only tests override it. */
#ifndef SPEAR_GUEST_ABI_VERSION
#define SPEAR_GUEST_ABI_VERSION SPEAR_ABI_VERSION
#endif

/* Initial request-buffer capacity; spear_reserve() grows it geometrically. */
#ifndef SPEAR_INITIAL_REQ_CAP
#define SPEAR_INITIAL_REQ_CAP 16384u
#endif

/* memory.grow granularity for the allocator (pages of 64 KiB); falls back to the exact need. */
#ifndef SPEAR_GROW_MIN_PAGES
#define SPEAR_GROW_MIN_PAGES 16u
#endif

/* Handler status codes. */
#define SPEAR_STATUS_OK 0
#define SPEAR_STATUS_ERROR 1

/* Host-call results. */
#define SPEAR_OK 0
#define SPEAR_ERR_BAD_POINTER (-1)
#define SPEAR_ERR_FULL (-2)
#define SPEAR_ERR_TOO_LARGE (-3)
#define SPEAR_ERR_BUFFER_TOO_SMALL (-4)
#define SPEAR_ERR_NOMEM (-5) /* guest side only (SDK helpers): arena allocation failed */
#define SPEAR_ERR_NOT_FOUND (-6)     /* no host function / configuration key of that name */
#define SPEAR_ERR_HOST_FUNCTION (-7) /* the host function failed; its message is the result */
#define SPEAR_ERR_NOTHING_HELD (-8)  /* spear_host_result: no result is waiting */

/* err_code that passes a host function's failure on: the host reports the call as failed by
 * the host function (code "host_function"), with its message. */
#define SPEAR_CODE_HOST_FUNCTION SPEAR_ERR_HOST_FUNCTION

/* err_code the SDK helpers use for "out of memory" application errors. */
#define SPEAR_CODE_NOMEM 12

/* Log levels for spear_log(). */
#define SPEAR_LOG_TRACE 0
#define SPEAR_LOG_DEBUG 1
#define SPEAR_LOG_INFO 2
#define SPEAR_LOG_WARN 3
#define SPEAR_LOG_ERROR 4

#define SPEAR_INLINE static inline __attribute__((unused))
#define SPEAR_EXPORT(name) __attribute__((export_name(name)))
#define SPEAR_IMPORT(name) __attribute__((import_module("spear"), import_name(name)))

/* ------------------------------------------------------------------------------------------ */
/* Control block (ABI v1, 80 bytes). The handler's `req` points straight at it: no copy.      */
/* ------------------------------------------------------------------------------------------ */

typedef struct spear_control {
    uint32_t magic;          /*  0 guest: SPEAR_MAGIC */
    uint32_t abi_version;    /*  4 guest: 1 */
    uint8_t *req_ptr;        /*  8 guest: request buffer */
    uint32_t req_cap;        /* 12 guest: its capacity */
    const char *name;        /* 16 host: name_ptr, function name (UTF-8, not NUL-terminated) */
    uint32_t name_len;       /* 20 host */
    const uint8_t *meta;     /* 24 host: meta_ptr, encoded metadata */
    uint32_t meta_len;       /* 28 host */
    const uint8_t *input;    /* 32 host: input_ptr */
    uint32_t input_len;      /* 36 host */
    uint32_t meta_count;     /* 40 host: number of metadata pairs */
    uint32_t flags;          /* 44 host: reserved, 0 */
    uint64_t request_id;     /* 48 host */
    uint64_t deadline_ns;    /* 56 host: spear_now() deadline, 0 = none */
    const void *out_ptr;     /* 64 guest: response bytes */
    uint32_t out_len;        /* 68 guest */
    int32_t err_code;        /* 72 guest: application error code when status is 1 */
    uint32_t reserved;       /* 76 */
} spear_control;

/* What a handler sees: a read-only view of the control block. */
typedef spear_control spear_request;

_Static_assert(sizeof(void *) == 4, "spear.h requires wasm32");
_Static_assert(sizeof(spear_control) == 80, "control block is 80 bytes");
_Static_assert(_Alignof(spear_control) == 8, "control block is 8-byte aligned");
_Static_assert(__builtin_offsetof(spear_control, magic) == 0, "magic");
_Static_assert(__builtin_offsetof(spear_control, abi_version) == 4, "abi_version");
_Static_assert(__builtin_offsetof(spear_control, req_ptr) == 8, "req_ptr");
_Static_assert(__builtin_offsetof(spear_control, req_cap) == 12, "req_cap");
_Static_assert(__builtin_offsetof(spear_control, name) == 16, "name_ptr");
_Static_assert(__builtin_offsetof(spear_control, name_len) == 20, "name_len");
_Static_assert(__builtin_offsetof(spear_control, meta) == 24, "meta_ptr");
_Static_assert(__builtin_offsetof(spear_control, meta_len) == 28, "meta_len");
_Static_assert(__builtin_offsetof(spear_control, input) == 32, "input_ptr");
_Static_assert(__builtin_offsetof(spear_control, input_len) == 36, "input_len");
_Static_assert(__builtin_offsetof(spear_control, meta_count) == 40, "meta_count");
_Static_assert(__builtin_offsetof(spear_control, flags) == 44, "flags");
_Static_assert(__builtin_offsetof(spear_control, request_id) == 48, "request_id");
_Static_assert(__builtin_offsetof(spear_control, deadline_ns) == 56, "deadline_ns");
_Static_assert(__builtin_offsetof(spear_control, out_ptr) == 64, "out_ptr");
_Static_assert(__builtin_offsetof(spear_control, out_len) == 68, "out_len");
_Static_assert(__builtin_offsetof(spear_control, err_code) == 72, "err_code");
_Static_assert(__builtin_offsetof(spear_control, reserved) == 76, "reserved");

/* A span: pages the SDK grew itself, [span, end). The header sits at the start. */
typedef struct spear__span {
    struct spear__span *next; /* spans after the current one are free arena space */
    uint8_t *end;             /* one past the last usable byte (a multiple of 8) */
} spear__span;

/* Runtime state (defined once, in the translation unit without SPEAR_DECLARE_ONLY). */
extern spear_control spear__cb;
extern spear__span *spear__reset_span; /* span holding the reset point */
extern uint8_t *spear__reset_top;      /* reset point = end of the persistent data */
extern spear__span *spear__cur;        /* span the arena is bumping in */
extern uint8_t *spear__arena_top;      /* bump pointer */
extern uint8_t *spear__arena_end;      /* spear__cur->end, cached for the fast path */

/* ------------------------------------------------------------------------------------------ */
/* Host imports (module "spear"). A module imports only the ones it calls.                   */
/* ------------------------------------------------------------------------------------------ */

/* Queue a message for the host. 0, SPEAR_ERR_FULL or SPEAR_ERR_TOO_LARGE. */
SPEAR_IMPORT("send")
int32_t spear_send(const void *topic, uint32_t topic_len, const void *data, uint32_t data_len);

/* Pull the next message the host queued: 1 delivered, 0 none, SPEAR_ERR_BUFFER_TOO_SMALL (the
 * message stays queued). Whenever a message is pending, writes {u32 topic_len, u32 data_len} to
 * sizes. See spear_recv_message() for a version that sizes its buffers itself. */
SPEAR_IMPORT("recv")
int32_t spear_recv(void *topic_buf, uint32_t topic_cap, void *data_buf, uint32_t data_cap,
                   uint32_t sizes[2]);

/* Log a UTF-8 line at SPEAR_LOG_TRACE..SPEAR_LOG_ERROR. */
SPEAR_IMPORT("log") void spear_log(int32_t level, const void *msg, uint32_t len);

/* Monotonic clock in nanoseconds (the clock of req->deadline_ns). */
SPEAR_IMPORT("now") uint64_t spear_now(void);

/* ABI v1 revision 2 (a host without these refuses the module at load, naming the import). */

/* Call the host function bound under `name` on `input`. Always writes the result's length to
 * *out_len. 0: the output is at out; SPEAR_ERR_BUFFER_TOO_SMALL: it did not fit, the host
 * holds it for spear_host_result(); SPEAR_ERR_NOT_FOUND: no such host function;
 * SPEAR_ERR_HOST_FUNCTION: it failed, and its message is the result (written if it fits, else
 * held). See spear_call() for a version that sizes its buffer itself. */
SPEAR_IMPORT("host_call")
int32_t spear_host_call(const void *name, uint32_t name_len, const void *input,
                        uint32_t input_len, void *out, uint32_t out_cap, uint32_t *out_len);

/* Take the held result: its length, SPEAR_ERR_BUFFER_TOO_SMALL (still held) or
 * SPEAR_ERR_NOTHING_HELD. */
SPEAR_IMPORT("host_result") int32_t spear_host_result(void *out, uint32_t out_cap);

/* Read configuration key `key`: 0 (the value is at out, its length at *out_len; it may be
 * empty), SPEAR_ERR_BUFFER_TOO_SMALL (only *out_len is written) or SPEAR_ERR_NOT_FOUND (no
 * such key). See spear_config(). */
SPEAR_IMPORT("config_get")
int32_t spear_config_get(const void *key, uint32_t key_len, void *out, uint32_t out_cap,
                         uint32_t *out_len);

/* ------------------------------------------------------------------------------------------ */
/* Memory and string helpers (freestanding: there is no libc)                                 */
/* ------------------------------------------------------------------------------------------ */

#if defined(__wasm_bulk_memory__) || defined(__wasm_bulk_memory_opt__)
#define SPEAR__BULK 1 /* __builtin_memcpy/memset lower to memory.copy/memory.fill */
#endif

SPEAR_INLINE void *spear_memcpy(void *dst, const void *src, uint32_t n) {
#ifdef SPEAR__BULK
    __builtin_memcpy(dst, src, n);
#else
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    while (n--) *d++ = *s++;
#endif
    return dst;
}

SPEAR_INLINE void *spear_memmove(void *dst, const void *src, uint32_t n) {
#ifdef SPEAR__BULK
    __builtin_memmove(dst, src, n);
#else
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    if (d < s) {
        while (n--) *d++ = *s++;
    } else {
        while (n) { n--; d[n] = s[n]; }
    }
#endif
    return dst;
}

SPEAR_INLINE void *spear_memset(void *dst, int c, uint32_t n) {
#ifdef SPEAR__BULK
    __builtin_memset(dst, c, n);
#else
    uint8_t *d = (uint8_t *)dst;
    while (n--) *d++ = (uint8_t)c;
#endif
    return dst;
}

SPEAR_INLINE int spear_memcmp(const void *a, const void *b, uint32_t n) {
    const uint8_t *x = (const uint8_t *)a, *y = (const uint8_t *)b;
    for (uint32_t i = 0; i < n; i++) {
        if (x[i] != y[i]) return (int)x[i] - (int)y[i];
    }
    return 0;
}

/* 1 when the two byte strings are equal. */
SPEAR_INLINE int spear_memeq(const void *a, uint32_t a_len, const void *b, uint32_t b_len) {
    return a_len == b_len && spear_memcmp(a, b, a_len) == 0;
}

SPEAR_INLINE uint32_t spear_strlen(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

/* 1 when the byte string equals the NUL-terminated string. */
SPEAR_INLINE int spear_streq(const void *s, uint32_t len, const char *cstr) {
    return spear_memeq(s, len, cstr, spear_strlen(cstr));
}

/* Decimal formatting into dst (at least 20 bytes for u64, 21 for i64); returns the length. */
SPEAR_INLINE uint32_t spear_fmt_u64(char *dst, uint64_t v) {
    char tmp[20];
    uint32_t n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    for (uint32_t i = 0; i < n; i++) dst[i] = tmp[n - 1 - i];
    return n;
}

SPEAR_INLINE uint32_t spear_fmt_i64(char *dst, int64_t v) {
    if (v < 0) {
        dst[0] = '-';
        return 1 + spear_fmt_u64(dst + 1, (uint64_t)0 - (uint64_t)v);
    }
    return spear_fmt_u64(dst, (uint64_t)v);
}

/* Parse an unsigned decimal (digits only, no sign or spaces). 1 on success, 0 if malformed or
 * it overflows 64 bits. */
SPEAR_INLINE int spear_parse_u64(const void *s, uint32_t len, uint64_t *out) {
    const uint8_t *p = (const uint8_t *)s;
    uint64_t v = 0;
    if (len == 0) return 0;
    for (uint32_t i = 0; i < len; i++) {
        uint32_t d = (uint32_t)p[i] - '0';
        if (d > 9) return 0;
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Allocator                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* The allocator never hands out the last 64 KiB of the 4 GiB address space, so no pointer
 * arithmetic on its results wraps. */
#define SPEAR__ADDR_LIMIT 0xFFFF0000u
#define SPEAR__PAGE 65536u

SPEAR_INLINE uint32_t spear__align8(uint32_t x) { return (x + 7u) & ~7u; }

SPEAR_INLINE uint32_t spear__memory_end(void) {
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * SPEAR__PAGE;
    return have > SPEAR__ADDR_LIMIT ? SPEAR__ADDR_LIMIT : (uint32_t)have;
}

/* memory.grow by `pages`, or by at least SPEAR_GROW_MIN_PAGES when that succeeds. Returns the
 * start of the new pages (they belong to the caller alone) and their count, or 0. */
__attribute__((noinline, unused)) static uint32_t spear__grow(uint32_t pages, uint32_t *got) {
    size_t old = (size_t)-1;
    if (pages < SPEAR_GROW_MIN_PAGES) {
        old = __builtin_wasm_memory_grow(0, SPEAR_GROW_MIN_PAGES);
        if (old != (size_t)-1) pages = SPEAR_GROW_MIN_PAGES;
    }
    if (old == (size_t)-1) old = __builtin_wasm_memory_grow(0, pages);
    if (old == (size_t)-1 || (uint64_t)old * SPEAR__PAGE >= SPEAR__ADDR_LIMIT) return 0;
    *got = pages;
    return (uint32_t)old * SPEAR__PAGE;
}

/* Make span s reach `need` by growing memory in place; only possible while s ends where
 * memory ends (nobody else grew memory since). 1 on success. */
__attribute__((noinline, unused)) static int spear__extend(spear__span *s, uint64_t need) {
    uint32_t end = (uint32_t)(uintptr_t)s->end, got;
    if (need <= end) return 1;
    if (need > SPEAR__ADDR_LIMIT || end != spear__memory_end()) return 0;
    uint32_t start = spear__grow((uint32_t)((need - end + SPEAR__PAGE - 1) / SPEAR__PAGE), &got);
    if (start != end) return 0; /* failed (or, impossibly, not adjacent: those pages leak) */
    uint64_t new_end = (uint64_t)start + (uint64_t)got * SPEAR__PAGE;
    s->end = (uint8_t *)(uintptr_t)(new_end > SPEAR__ADDR_LIMIT ? SPEAR__ADDR_LIMIT : new_end);
    if (s == spear__cur) spear__arena_end = s->end;
    return 1;
}

/* Slow path of spear_alloc: extend the current span, move to a later free span, or grow a new
 * one (linked right after the current span, so every span after it stays free). */
__attribute__((noinline, unused)) static void *spear__alloc_slow(uint32_t size) {
    spear__span *s = spear__cur;
    if (s != NULL) {
        uint32_t p = spear__align8((uint32_t)(uintptr_t)spear__arena_top);
        if (spear__extend(s, (uint64_t)p + size)) {
            spear__arena_top = (uint8_t *)(uintptr_t)(p + size);
            return (void *)(uintptr_t)p;
        }
        for (spear__span *n = s->next; n != NULL; n = n->next) {
            uint8_t *q = (uint8_t *)(n + 1);
            if (size <= (uint32_t)(n->end - q)) {
                spear__cur = n;
                spear__arena_end = n->end;
                spear__arena_top = q + size;
                return q;
            }
        }
    }
    uint64_t need = (uint64_t)sizeof(spear__span) + size;
    uint32_t got, start = spear__grow((uint32_t)((need + SPEAR__PAGE - 1) / SPEAR__PAGE), &got);
    if (start == 0) return NULL;
    uint64_t end = (uint64_t)start + (uint64_t)got * SPEAR__PAGE;
    if (end > SPEAR__ADDR_LIMIT) end = SPEAR__ADDR_LIMIT;
    if ((uint64_t)start + need > end) return NULL;
    spear__span *n = (spear__span *)(uintptr_t)start;
    n->end = (uint8_t *)(uintptr_t)end;
    if (s != NULL) {
        n->next = s->next;
        s->next = n;
    } else {
        n->next = NULL;
        spear__reset_span = n; /* the very first span: the reset point starts here */
        spear__reset_top = (uint8_t *)(n + 1);
    }
    spear__cur = n;
    spear__arena_end = n->end;
    spear__arena_top = (uint8_t *)(n + 1) + size;
    return n + 1;
}

/* Allocate size bytes (8-byte aligned) in the per-call arena; NULL when memory is exhausted.
 * Valid until the next handler call starts. */
SPEAR_INLINE void *spear_alloc(uint32_t size) {
    uint32_t p = spear__align8((uint32_t)(uintptr_t)spear__arena_top);
    if (p != 0 && size <= (uint32_t)(uintptr_t)spear__arena_end - p) {
        spear__arena_top = (uint8_t *)(uintptr_t)(p + size);
        return (void *)(uintptr_t)p;
    }
    return spear__alloc_slow(size);
}

/* Grow an arena allocation to new_size bytes, in place when it is the most recent one.
 * Returns the (possibly moved) block or NULL; on NULL the old block is untouched. */
SPEAR_INLINE void *spear_realloc(void *ptr, uint32_t old_size, uint32_t new_size) {
    uint8_t *p = (uint8_t *)ptr;
    if (p == NULL) return spear_alloc(new_size);
    if (new_size <= old_size) return ptr;
    int last = p + old_size == spear__arena_top &&
               !(spear__cur == spear__reset_span && p < spear__reset_top); /* not persistent */
    if (last && spear__extend(spear__cur, (uint64_t)(uintptr_t)p + new_size)) {
        spear__arena_top = p + new_size;
        return ptr;
    }
    void *q = spear_alloc(new_size);
    if (q != NULL) spear_memcpy(q, ptr, old_size);
    return q;
}

/* Allocate memory that survives across calls (never freed). Anything allocated with
 * spear_alloc() earlier in the same call becomes persistent too. NULL on failure. */
SPEAR_INLINE void *spear_alloc_persistent(uint32_t size) {
    void *p = spear_alloc(size);
    if (p != NULL) {
        spear__reset_span = spear__cur;
        spear__reset_top = spear__arena_top;
    }
    return p;
}

/* Start a new call's arena: everything spear_alloc() handed out since the reset point is free. */
SPEAR_INLINE void spear__arena_reset(void) {
    spear__span *s = spear__reset_span;
    spear__cur = s;
    spear__arena_top = spear__reset_top;
    spear__arena_end = s != NULL ? s->end : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Output and errors                                                                          */
/* ------------------------------------------------------------------------------------------ */

/* Respond with len bytes at data, without copying: data must stay valid until the handler
 * returns (input, arena, static data). Returns SPEAR_STATUS_OK. */
SPEAR_INLINE int32_t spear_output(const void *data, uint32_t len) {
    spear__cb.out_ptr = data;
    spear__cb.out_len = len;
    return SPEAR_STATUS_OK;
}

/* Application error: status 1, err_code = code, message = len bytes at msg (not copied). */
SPEAR_INLINE int32_t spear_error_n(int32_t code, const void *msg, uint32_t len) {
    spear__cb.err_code = code;
    spear__cb.out_ptr = msg;
    spear__cb.out_len = len;
    return SPEAR_STATUS_ERROR;
}

/* Application error with a NUL-terminated message (not copied). Returns SPEAR_STATUS_ERROR. */
SPEAR_INLINE int32_t spear_error(int32_t code, const char *msg) {
    return spear_error_n(code, msg, spear_strlen(msg));
}

/* Respond with a copy of len bytes (into the arena). */
SPEAR_INLINE int32_t spear_output_copy(const void *data, uint32_t len) {
    void *p = spear_alloc(len);
    if (p == NULL) return spear_error(SPEAR_CODE_NOMEM, "spear: out of memory");
    spear_memcpy(p, data, len);
    return spear_output(p, len);
}

/* Respond with a NUL-terminated string (not copied). */
SPEAR_INLINE int32_t spear_output_str(const char *s) { return spear_output(s, spear_strlen(s)); }

/* ------------------------------------------------------------------------------------------ */
/* Growable byte buffer in the arena (for building outputs)                                   */
/* ------------------------------------------------------------------------------------------ */

typedef struct spear_buf {
    uint8_t *data;
    uint32_t len;
    uint32_t cap;
    int32_t failed; /* set once an append ran out of memory; later appends are no-ops */
} spear_buf;

/* Make room for extra more bytes. 1 on success, 0 (and b->failed) when out of memory. */
SPEAR_INLINE int spear_buf_reserve(spear_buf *b, uint32_t extra) {
    if (b->failed) return 0;
    if (extra <= b->cap - b->len) return 1;
    uint64_t need = (uint64_t)b->len + extra;
    uint64_t cap = (uint64_t)b->cap * 2;
    if (cap < 64) cap = 64;
    if (cap < need) cap = need;
    if (cap > 0xFFFFFFFFull) cap = need;
    void *p = need > 0xFFFFFFFFull ? NULL : spear_realloc(b->data, b->cap, (uint32_t)cap);
    if (p == NULL && cap != need && need <= 0xFFFFFFFFull) {
        cap = need;
        p = spear_realloc(b->data, b->cap, (uint32_t)cap);
    }
    if (p == NULL) {
        b->failed = 1;
        return 0;
    }
    b->data = (uint8_t *)p;
    b->cap = (uint32_t)cap;
    return 1;
}

/* Start an empty buffer with room for cap bytes (cap may be 0). */
SPEAR_INLINE void spear_buf_init(spear_buf *b, uint32_t cap) {
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->failed = 0;
    if (cap) spear_buf_reserve(b, cap);
}

SPEAR_INLINE int spear_buf_append(spear_buf *b, const void *data, uint32_t len) {
    if (!spear_buf_reserve(b, len)) return 0;
    spear_memcpy(b->data + b->len, data, len);
    b->len += len;
    return 1;
}

SPEAR_INLINE int spear_buf_append_byte(spear_buf *b, uint8_t c) {
    if (!spear_buf_reserve(b, 1)) return 0;
    b->data[b->len++] = c;
    return 1;
}

SPEAR_INLINE int spear_buf_append_str(spear_buf *b, const char *s) {
    return spear_buf_append(b, s, spear_strlen(s));
}

SPEAR_INLINE int spear_buf_append_u64(spear_buf *b, uint64_t v) {
    char tmp[20];
    return spear_buf_append(b, tmp, spear_fmt_u64(tmp, v));
}

SPEAR_INLINE int spear_buf_append_i64(spear_buf *b, int64_t v) {
    char tmp[21];
    return spear_buf_append(b, tmp, spear_fmt_i64(tmp, v));
}

/* Respond with the buffer's bytes (or an out-of-memory error if an append failed). */
SPEAR_INLINE int32_t spear_output_buf(const spear_buf *b) {
    if (b->failed) return spear_error(SPEAR_CODE_NOMEM, "spear: out of memory");
    return spear_output(b->data, b->len);
}

/* Application error whose message is the buffer's bytes. */
SPEAR_INLINE int32_t spear_error_buf(int32_t code, const spear_buf *b) {
    if (b->failed) return spear_error(code, "spear: out of memory");
    return spear_error_n(code, b->data, b->len);
}

/* ------------------------------------------------------------------------------------------ */
/* Request accessors and metadata                                                             */
/* ------------------------------------------------------------------------------------------ */

/* 1 when the called function's name equals cstr (useful in a SPEAR_DISPATCH handler). */
SPEAR_INLINE int spear_name_is(const spear_request *req, const char *cstr) {
    return spear_streq(req->name, req->name_len, cstr);
}

/* 1 when the host set a deadline and spear_now() is past it. */
SPEAR_INLINE int spear_deadline_passed(const spear_request *req) {
    return req->deadline_ns != 0 && spear_now() >= req->deadline_ns;
}

/* Iterate metadata pairs in order:
 *     spear_meta_iter it; const char *k, *v; uint32_t kl, vl;
 *     spear_meta_begin(req, &it);
 *     while (spear_meta_next(&it, &k, &kl, &v, &vl)) { ... }
 * Keys and values point into the request buffer (not NUL-terminated). */
typedef struct spear_meta_iter {
    const uint8_t *pos;
    const uint8_t *end;
    uint32_t left; /* pairs not yet returned */
} spear_meta_iter;

SPEAR_INLINE void spear_meta_begin(const spear_request *req, spear_meta_iter *it) {
    it->pos = req->meta;
    it->end = req->meta + req->meta_len;
    it->left = req->meta_count;
}

SPEAR_INLINE int spear__meta_field(spear_meta_iter *it, const char **s, uint32_t *len) {
    uint32_t n;
    if ((uint32_t)(it->end - it->pos) < 4) return 0;
    spear_memcpy(&n, it->pos, 4); /* unaligned little-endian u32 */
    it->pos += 4;
    if (n > (uint32_t)(it->end - it->pos)) return 0;
    *s = (const char *)it->pos;
    *len = n;
    it->pos += n;
    return 1;
}

/* Next pair: 1 and sets key/value, or 0 at the end (or if the encoding is malformed). */
SPEAR_INLINE int spear_meta_next(spear_meta_iter *it, const char **key, uint32_t *key_len,
                                 const char **val, uint32_t *val_len) {
    if (it->left == 0) return 0;
    if (!spear__meta_field(it, key, key_len) || !spear__meta_field(it, val, val_len)) {
        it->left = 0;
        return 0;
    }
    it->left--;
    return 1;
}

/* Look up a metadata key: 1 and sets val/val_len when found (first match), else 0. */
SPEAR_INLINE int spear_meta_get(const spear_request *req, const void *key, uint32_t key_len,
                                const char **val, uint32_t *val_len) {
    spear_meta_iter it;
    const char *k, *v;
    uint32_t kl, vl;
    spear_meta_begin(req, &it);
    while (spear_meta_next(&it, &k, &kl, &v, &vl)) {
        if (spear_memeq(k, kl, key, key_len)) {
            *val = v;
            *val_len = vl;
            return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Host-call conveniences                                                                     */
/* ------------------------------------------------------------------------------------------ */

SPEAR_INLINE void spear_log_str(int32_t level, const char *msg) {
    spear_log(level, msg, spear_strlen(msg));
}

/* A received message. topic_len/data_len come first: the host writes them (sizes_ptr). */
typedef struct spear_message {
    uint32_t topic_len;
    uint32_t data_len;
    uint8_t *topic; /* arena buffers, reused by the next spear_recv_message on this struct */
    uint32_t topic_cap;
    uint8_t *data;
    uint32_t data_cap;
} spear_message;

_Static_assert(__builtin_offsetof(spear_message, data_len) == 4, "sizes are adjacent");

#define SPEAR_MESSAGE_INIT {0, 0, NULL, 0, NULL, 0}

/* Receive the next message into arena buffers owned by m (zero-initialize m first with
 * SPEAR_MESSAGE_INIT). Buffers grow when the host says they are too small, and the message is
 * retried. Returns 1 (m->topic/m->data hold the message), 0 (none queued), SPEAR_ERR_NOMEM, or
 * another negative host code. The contents stay valid until the next call on m. */
SPEAR_INLINE int32_t spear_recv_message(spear_message *m) {
    if (m->topic == NULL) {
        m->topic = (uint8_t *)spear_alloc(64);
        m->topic_cap = m->topic ? 64 : 0;
    }
    if (m->data == NULL) {
        m->data = (uint8_t *)spear_alloc(256);
        m->data_cap = m->data ? 256 : 0;
    }
    if (m->topic == NULL || m->data == NULL) return SPEAR_ERR_NOMEM;
    for (;;) {
        int32_t rc = spear_recv(m->topic, m->topic_cap, m->data, m->data_cap, &m->topic_len);
        if (rc != SPEAR_ERR_BUFFER_TOO_SMALL) return rc;
        int grew = 0;
        if (m->topic_len > m->topic_cap) {
            uint8_t *t = (uint8_t *)spear_alloc(m->topic_len);
            if (t == NULL) return SPEAR_ERR_NOMEM;
            m->topic = t;
            m->topic_cap = m->topic_len;
            grew = 1;
        }
        if (m->data_len > m->data_cap) {
            uint8_t *d = (uint8_t *)spear_alloc(m->data_len);
            if (d == NULL) return SPEAR_ERR_NOMEM;
            m->data = d;
            m->data_cap = m->data_len;
            grew = 1;
        }
        if (!grew) return SPEAR_ERR_BUFFER_TOO_SMALL; /* host inconsistency: do not spin */
    }
}

/* Call host function `name` (name_len bytes) on input. The result lands in the arena (valid
 * until the handler returns): *out, *out_len. Returns SPEAR_OK (the output),
 * SPEAR_ERR_HOST_FUNCTION (the failure's message; `return spear_error_n(
 * SPEAR_CODE_HOST_FUNCTION, *out, *out_len)` passes it on), SPEAR_ERR_NOT_FOUND or
 * SPEAR_ERR_NOMEM. A result too big for the first buffer is fetched once more from the host
 * (spear_host_result), never computed twice. */
SPEAR_INLINE int32_t spear_call_n(const void *name, uint32_t name_len, const void *input,
                                  uint32_t input_len, const uint8_t **out, uint32_t *out_len) {
    uint32_t cap = input_len < 256u ? 256u : input_len;
    uint8_t *buf = (uint8_t *)spear_alloc(cap);
    uint32_t len = 0;
    if (buf == NULL) return SPEAR_ERR_NOMEM;
    int32_t rc = spear_host_call(name, name_len, input, input_len, buf, cap, &len);
    if (rc == SPEAR_ERR_NOT_FOUND) return rc;
    if (len > cap) { /* held by the host */
        uint8_t *big = (uint8_t *)spear_realloc(buf, cap, len);
        if (big == NULL) return SPEAR_ERR_NOMEM;
        int32_t got = spear_host_result(big, len);
        if (got < 0) return got;
        buf = big;
        if (rc == SPEAR_ERR_BUFFER_TOO_SMALL) rc = SPEAR_OK;
    }
    *out = buf;
    *out_len = len;
    return rc;
}

/* spear_call_n with a NUL-terminated name. */
SPEAR_INLINE int32_t spear_call(const char *name, const void *input, uint32_t input_len,
                                const uint8_t **out, uint32_t *out_len) {
    return spear_call_n(name, spear_strlen(name), input, input_len, out, out_len);
}

/* Configuration value of `key` (key_len bytes), in the arena: SPEAR_OK (*value, *value_len;
 * the value may be empty), SPEAR_ERR_NOT_FOUND (no such key) or SPEAR_ERR_NOMEM. Values are
 * UTF-8, not NUL-terminated. */
SPEAR_INLINE int32_t spear_config_n(const void *key, uint32_t key_len, const char **value,
                                    uint32_t *value_len) {
    uint32_t cap = 64, len = 0;
    uint8_t *buf = (uint8_t *)spear_alloc(cap);
    if (buf == NULL) return SPEAR_ERR_NOMEM;
    int32_t rc = spear_config_get(key, key_len, buf, cap, &len);
    if (rc == SPEAR_ERR_BUFFER_TOO_SMALL) {
        buf = (uint8_t *)spear_realloc(buf, cap, len);
        if (buf == NULL) return SPEAR_ERR_NOMEM;
        rc = spear_config_get(key, key_len, buf, len, &len);
    }
    if (rc != SPEAR_OK) return rc;
    *value = (const char *)buf;
    *value_len = len;
    return SPEAR_OK;
}

/* spear_config_n with a NUL-terminated key. */
SPEAR_INLINE int32_t spear_config(const char *key, const char **value, uint32_t *value_len) {
    return spear_config_n(key, spear_strlen(key), value, value_len);
}

/* ------------------------------------------------------------------------------------------ */
/* Handlers                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* SPEAR_HANDLER(name) { ... } defines the handler exported as "spear.handler.name". The body
 * sees `const spear_request *req` and returns a status: `return spear_output(...)`,
 * `return spear_error(code, "msg")`. The arena is reset before the body runs. */
#define SPEAR_HANDLER(name) SPEAR_HANDLER_AS(name, #name)

/* SPEAR_HANDLER_AS(ident, "name") is SPEAR_HANDLER for handler names that are not C
 * identifiers, e.g. SPEAR_HANDLER_AS(get_user, "get-user"); ident only names the C functions. */
#define SPEAR_HANDLER_AS(ident, name_str)                                                      \
    static int32_t spear__impl_##ident(const spear_request *req);                              \
    SPEAR_EXPORT("spear.handler." name_str) int32_t spear__handler_##ident(void) {             \
        spear__arena_reset();                                                                  \
        return spear__impl_##ident(&spear__cb);                                                \
    }                                                                                          \
    static int32_t spear__impl_##ident(const spear_request *req)

/* SPEAR_DISPATCH() { ... } defines the optional `spear_dispatch` catch-all, called for names
 * with no SPEAR_HANDLER; use req->name / spear_name_is(req, "x"). */
#define SPEAR_DISPATCH()                                                                       \
    static int32_t spear__impl_dispatch(const spear_request *req);                             \
    SPEAR_EXPORT("spear_dispatch") int32_t spear__dispatch(void) {                             \
        spear__arena_reset();                                                                  \
        return spear__impl_dispatch(&spear__cb);                                               \
    }                                                                                          \
    static int32_t spear__impl_dispatch(const spear_request *req)

/* ------------------------------------------------------------------------------------------ */
/* Runtime definitions (exactly one translation unit per module)                              */
/* ------------------------------------------------------------------------------------------ */

#ifndef SPEAR_DECLARE_ONLY

/* The first request buffer is static (zero pages in the module file, inside the initial
 * memory); spear_reserve moves bigger requests into spans. */
_Alignas(8) static uint8_t spear__initial_req[SPEAR_INITIAL_REQ_CAP];
_Alignas(8) spear_control spear__cb = {
    .magic = SPEAR_MAGIC,
    .abi_version = SPEAR_GUEST_ABI_VERSION,
    .req_ptr = spear__initial_req,
    .req_cap = SPEAR_INITIAL_REQ_CAP,
};
spear__span *spear__reset_span = NULL;
uint8_t *spear__reset_top = NULL;
spear__span *spear__cur = NULL;
uint8_t *spear__arena_top = NULL;
uint8_t *spear__arena_end = NULL;

SPEAR_EXPORT("spear_abi_version") int32_t spear_abi_version(void) {
    return SPEAR_GUEST_ABI_VERSION;
}

SPEAR_EXPORT("spear_init") int32_t spear_init(int32_t host_abi) {
    if (host_abi != SPEAR_ABI_VERSION) return 0;
    spear__cb.magic = SPEAR_MAGIC;
    spear__cb.abi_version = SPEAR_GUEST_ABI_VERSION;
    return (int32_t)(uintptr_t)&spear__cb;
}

SPEAR_EXPORT("spear_reserve") int32_t spear_reserve(int32_t size_) {
    uint32_t size = (uint32_t)size_;
    if (size <= spear__cb.req_cap) return 0;
    if (size > SPEAR__ADDR_LIMIT) return 1;
    uint32_t caps[2] = {spear__align8(size), spear__align8(size)}; /* doubled, then exact */
    if (spear__cb.req_cap <= SPEAR__ADDR_LIMIT / 2 && spear__cb.req_cap * 2 > size) {
        caps[0] = spear__align8(spear__cb.req_cap * 2);
    }
    /* Between calls the arena is dead, so the buffer may grow over it. */
    spear__arena_reset();
    uint8_t *buf = spear__cb.req_ptr;
    int last = spear__reset_span != NULL && buf + spear__cb.req_cap == spear__reset_top;
    for (int i = 0; i < 2; i++) {
        if (last && spear__extend(spear__reset_span, (uint64_t)(uintptr_t)buf + caps[i])) {
            spear__reset_top = buf + caps[i]; /* grown in place */
        } else if ((buf = (uint8_t *)spear_alloc_persistent(caps[i])) == NULL) {
            buf = spear__cb.req_ptr;
            continue;
        }
        spear__cb.req_ptr = buf;
        spear__cb.req_cap = caps[i];
        spear__arena_reset();
        return 0;
    }
    return 1; /* out of memory; the old buffer is unchanged */
}

#ifndef __wasi__
/* Freestanding, there is no libc: the compiler may emit calls to these (struct copies, loops)
 * and user code may call them. Weak, so a real implementation linked in wins. no_builtin keeps
 * clang from recognising the loops inside them as the very function being defined (which
 * would make, say, strlen call itself forever). Under WASI, libc provides them. */
#ifdef SPEAR__BULK
#define SPEAR__LIBC_ATTR __attribute__((weak))
#else
#define SPEAR__LIBC_ATTR __attribute__((weak, no_builtin))
#endif

SPEAR__LIBC_ATTR void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
    return spear_memcpy(dst, src, (uint32_t)n);
}
SPEAR__LIBC_ATTR void *memmove(void *dst, const void *src, size_t n) {
    return spear_memmove(dst, src, (uint32_t)n);
}
SPEAR__LIBC_ATTR void *memset(void *dst, int c, size_t n) {
    return spear_memset(dst, c, (uint32_t)n);
}
__attribute__((weak, no_builtin)) int memcmp(const void *a, const void *b, size_t n) {
    return spear_memcmp(a, b, (uint32_t)n);
}
__attribute__((weak, no_builtin)) size_t strlen(const char *s) { return spear_strlen(s); }
#endif /* __wasi__ */

#endif /* SPEAR_DECLARE_ONLY */

#endif /* SPEAR_H */
