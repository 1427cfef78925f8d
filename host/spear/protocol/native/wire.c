/* The wire codec's hot path in C: the two messages every request sends and receives.
 *
 * `decode` turns an `exec` or `result` payload straight into an ExecutionRequest or
 * ExecutionResponse; `request_frame` and `success_frame` build the framed bytes of a request
 * and of a successful reply in one allocation. Each handles only the plain, well-formed shape
 * of its message (exact types, the msgpack encodings msgpack-python produces or accepts) and
 * hands anything else to the pure-Python codec it was configured with, which then decodes or
 * refuses it with the error that names the problem. So the C code only ever has to answer
 * "is this the plain shape?", never "what exactly is wrong?", and the two codecs agree on
 * every input (tests/test_codec.py checks that on random messages and random bytes).
 *
 * Reading never trusts a length: every read checks the bytes left first.
 *
 * Built by setup.py as `spear.protocol._wire` (a plain CPython extension); optional: without
 * it the pure-Python codec does everything and says so once.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* -- configuration -------------------------------------------------------------------- */

#define REQUEST_FIELDS 5  /* request_id, function_name, input_data, timeout_ms, metadata */
#define RESPONSE_FIELDS 7 /* request_id, output_data, status, error_message, error_code,
                             execution_time_ms, metadata */

typedef struct {
    PyTypeObject *type;
    int nfields;
    /* The member descriptors of the fields, in order: instances are built by setting them
       (what the dataclass __init__ does, without running Python code) when `direct`. */
    PyObject *fields[RESPONSE_FIELDS];
    int direct;
} MessageType;

static MessageType request_type;
static MessageType response_type;
static PyObject *status_by_value;   /* dict: "success" -> ExecutionStatus.SUCCESS, ... */
static PyObject *status_success;
static PyObject *decode_fallback;    /* the pure-Python decode(data) */
static PyObject *request_fallback;   /* the pure-Python request_frame(request) */
static PyObject *success_fallback;   /* the pure-Python success_frame(id, output, elapsed) */
static int configured;

static int
set_type(MessageType *mt, PyObject *type, PyObject *names, int nfields, int direct)
{
    if (!PyType_Check(type) || !PyTuple_Check(names) || PyTuple_GET_SIZE(names) != nfields) {
        PyErr_SetString(PyExc_TypeError, "configure: a class and a tuple of its field names");
        return -1;
    }
    for (int i = 0; i < nfields; i++) {
        PyObject *descr = PyObject_GetAttr(type, PyTuple_GET_ITEM(names, i));
        if (descr == NULL)
            return -1;
        if (!Py_IS_TYPE(descr, &PyMemberDescr_Type))
            direct = 0; /* not a slot: build through the class instead */
        Py_XSETREF(mt->fields[i], descr);
    }
    Py_INCREF(type);
    Py_XSETREF(mt->type, (PyTypeObject *)type);
    mt->nfields = nfields;
    mt->direct = direct;
    return 0;
}

static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *req, *req_names, *resp, *resp_names, *statuses, *success;
    PyObject *dec, *reqf, *succf;
    int direct;
    if (!PyArg_ParseTuple(args, "OOOOO!OOOOp:configure", &req, &req_names, &resp, &resp_names,
                          &PyDict_Type, &statuses, &success, &dec, &reqf, &succf, &direct))
        return NULL;
    if (set_type(&request_type, req, req_names, REQUEST_FIELDS, direct) < 0
        || set_type(&response_type, resp, resp_names, RESPONSE_FIELDS, direct) < 0)
        return NULL;
    Py_INCREF(statuses);
    Py_XSETREF(status_by_value, statuses);
    Py_INCREF(success);
    Py_XSETREF(status_success, success);
    Py_INCREF(dec);
    Py_XSETREF(decode_fallback, dec);
    Py_INCREF(reqf);
    Py_XSETREF(request_fallback, reqf);
    Py_INCREF(succf);
    Py_XSETREF(success_fallback, succf);
    configured = 1;
    Py_RETURN_NONE;
}

/* A new instance of `mt` from `values` (new references, always consumed). */
static PyObject *
build(MessageType *mt, PyObject **values)
{
    PyObject *obj = NULL;
    int n = mt->nfields;
    if (mt->direct) {
        obj = mt->type->tp_alloc(mt->type, 0);
        if (obj != NULL) {
            for (int i = 0; i < n; i++) {
                PyObject *descr = mt->fields[i];
                if (Py_TYPE(descr)->tp_descr_set(descr, obj, values[i]) < 0) {
                    Py_CLEAR(obj);
                    break;
                }
            }
        }
    }
    else {
        obj = PyObject_Vectorcall((PyObject *)mt->type, values, n, NULL);
    }
    for (int i = 0; i < n; i++)
        Py_DECREF(values[i]);
    return obj;
}

/* -- reading msgpack -------------------------------------------------------------------- */

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Reader;

static inline uint16_t be16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static inline uint32_t
be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t be64(const unsigned char *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

/* Each reader returns 1 and advances on success, 0 (nothing consumed that matters: the
   whole decode is abandoned) when the next item is not of its kind or is cut short. */

static int
read_length(Reader *r, unsigned fixbase, unsigned fixmask, unsigned b8, unsigned b16,
            unsigned b32, uint32_t *n)
{
    if (r->p >= r->end)
        return 0;
    unsigned b = *r->p;
    Py_ssize_t left = r->end - r->p - 1;
    if ((b & ~fixmask) == fixbase) {
        *n = b & fixmask;
        r->p += 1;
    }
    else if (b8 && b == b8 && left >= 1) {
        *n = r->p[1];
        r->p += 2;
    }
    else if (b == b16 && left >= 2) {
        *n = be16(r->p + 1);
        r->p += 3;
    }
    else if (b == b32 && left >= 4) {
        *n = be32(r->p + 1);
        r->p += 5;
    }
    else {
        return 0;
    }
    return 1;
}

static int
read_array(Reader *r, uint32_t *n)
{
    return read_length(r, 0x90, 0x0f, 0, 0xdc, 0xdd, n);
}

static int
read_map(Reader *r, uint32_t *n)
{
    return read_length(r, 0x80, 0x0f, 0, 0xde, 0xdf, n);
}

/* A str's bytes (not yet checked as UTF-8). */
static int
read_str(Reader *r, const char **s, Py_ssize_t *len)
{
    uint32_t n;
    if (!read_length(r, 0xa0, 0x1f, 0xd9, 0xda, 0xdb, &n) || (uint64_t)(r->end - r->p) < n)
        return 0;
    *s = (const char *)r->p;
    *len = n;
    r->p += n;
    return 1;
}

static int
read_bin(Reader *r, const char **s, Py_ssize_t *len)
{
    uint32_t n;
    /* bin has no fix form; 0x100 never matches a byte */
    if (!read_length(r, 0x100, 0, 0xc4, 0xc5, 0xc6, &n) || (uint64_t)(r->end - r->p) < n)
        return 0;
    *s = (const char *)r->p;
    *len = n;
    r->p += n;
    return 1;
}

/* Any msgpack integer; *negative says which of the two values holds it. */
static int
read_int(Reader *r, int64_t *sv, uint64_t *uv, int *negative)
{
    if (r->p >= r->end)
        return 0;
    unsigned b = *r->p;
    Py_ssize_t left = r->end - r->p - 1;
    *negative = 0;
    if (b <= 0x7f) {
        *uv = b;
        r->p += 1;
        return 1;
    }
    if (b >= 0xe0) {
        *sv = (int8_t)b;
        *negative = 1;
        r->p += 1;
        return 1;
    }
    switch (b) {
    case 0xcc: if (left < 1) return 0; *uv = r->p[1]; r->p += 2; return 1;
    case 0xcd: if (left < 2) return 0; *uv = be16(r->p + 1); r->p += 3; return 1;
    case 0xce: if (left < 4) return 0; *uv = be32(r->p + 1); r->p += 5; return 1;
    case 0xcf: if (left < 8) return 0; *uv = be64(r->p + 1); r->p += 9; return 1;
    case 0xd0: if (left < 1) return 0; *sv = (int8_t)r->p[1]; r->p += 2; break;
    case 0xd1: if (left < 2) return 0; *sv = (int16_t)be16(r->p + 1); r->p += 3; break;
    case 0xd2: if (left < 4) return 0; *sv = (int32_t)be32(r->p + 1); r->p += 5; break;
    case 0xd3: if (left < 8) return 0; *sv = (int64_t)be64(r->p + 1); r->p += 9; break;
    default: return 0;
    }
    if (*sv >= 0) { /* a signed encoding of a non-negative value */
        *uv = (uint64_t)*sv;
    }
    else {
        *negative = 1;
    }
    return 1;
}

static PyObject *
read_int_object(Reader *r)
{
    int64_t sv;
    uint64_t uv;
    int negative;
    if (!read_int(r, &sv, &uv, &negative))
        return NULL;
    return negative ? PyLong_FromLongLong(sv) : PyLong_FromUnsignedLongLong(uv);
}

/* A float (32 or 64 bits) or an integer, as a double: what `float(value)` gives. */
static int
read_number(Reader *r, double *out)
{
    if (r->p >= r->end)
        return 0;
    unsigned b = *r->p;
    Py_ssize_t left = r->end - r->p - 1;
    if (b == 0xcb && left >= 8) {
        uint64_t bits = be64(r->p + 1);
        memcpy(out, &bits, 8);
        r->p += 9;
        return 1;
    }
    if (b == 0xca && left >= 4) {
        uint32_t bits = be32(r->p + 1);
        float f;
        memcpy(&f, &bits, 4);
        *out = (double)f;
        r->p += 5;
        return 1;
    }
    int64_t sv;
    uint64_t uv;
    int negative;
    if (!read_int(r, &sv, &uv, &negative))
        return 0;
    *out = negative ? (double)sv : (double)uv;
    return 1;
}

static PyObject *
read_text(Reader *r)
{
    const char *s;
    Py_ssize_t len;
    if (!read_str(r, &s, &len))
        return NULL;
    return PyUnicode_DecodeUTF8(s, len, NULL); /* strict, as msgpack-python */
}

/* nil or a str */
static PyObject *
read_optional_text(Reader *r)
{
    if (r->p < r->end && *r->p == 0xc0) {
        r->p += 1;
        Py_RETURN_NONE;
    }
    return read_text(r);
}

static PyObject *
read_bytes(Reader *r)
{
    const char *s;
    Py_ssize_t len;
    if (!read_bin(r, &s, &len))
        return NULL;
    return PyBytes_FromStringAndSize(s, len);
}

/* A map of str to str, as a dict (a repeated key keeps its last value, as msgpack-python). */
static PyObject *
read_text_map(Reader *r)
{
    uint32_t n;
    if (!read_map(r, &n))
        return NULL;
    PyObject *map = PyDict_New();
    if (map == NULL)
        return NULL;
    for (uint32_t i = 0; i < n; i++) { /* each entry takes >= 2 bytes: bounded by the input */
        PyObject *key = read_text(r);
        if (key == NULL)
            goto fail;
        PyObject *value = read_text(r);
        if (value == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        int rc = PyDict_SetItem(map, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc < 0)
            goto fail;
    }
    return map;
fail:
    Py_DECREF(map);
    return NULL;
}

/* The version field: any msgpack integer encoding of 1 (what msgpack-python reads as int 1). */
static int
read_version(Reader *r)
{
    int64_t sv;
    uint64_t uv;
    int negative;
    return read_int(r, &sv, &uv, &negative) && !negative && uv == 1;
}

static PyObject *
decode_exec(Reader *r)
{
    PyObject *v[REQUEST_FIELDS] = {NULL};
    if ((v[0] = read_text(r)) == NULL || (v[1] = read_text(r)) == NULL
        || (v[2] = read_bytes(r)) == NULL || (v[3] = read_int_object(r)) == NULL
        || (v[4] = read_text_map(r)) == NULL || r->p != r->end) {
        for (int i = 0; i < REQUEST_FIELDS; i++)
            Py_XDECREF(v[i]);
        return NULL;
    }
    return build(&request_type, v);
}

static PyObject *
read_status(Reader *r)
{
    const char *s;
    Py_ssize_t len;
    if (!read_str(r, &s, &len))
        return NULL;
    if (len == 7 && memcmp(s, "success", 7) == 0)
        return Py_NewRef(status_success);
    PyObject *text = PyUnicode_DecodeUTF8(s, len, NULL);
    if (text == NULL)
        return NULL;
    PyObject *status = PyDict_GetItemWithError(status_by_value, text);
    Py_DECREF(text);
    return Py_XNewRef(status);
}

static PyObject *
decode_result(Reader *r)
{
    PyObject *v[RESPONSE_FIELDS] = {NULL};
    double elapsed;
    if ((v[0] = read_text(r)) == NULL || (v[1] = read_bytes(r)) == NULL
        || (v[2] = read_status(r)) == NULL || (v[3] = read_optional_text(r)) == NULL
        || (v[4] = read_optional_text(r)) == NULL || !read_number(r, &elapsed)
        || (v[5] = PyFloat_FromDouble(elapsed)) == NULL || (v[6] = read_text_map(r)) == NULL
        || r->p != r->end) {
        for (int i = 0; i < RESPONSE_FIELDS; i++)
            Py_XDECREF(v[i]);
        return NULL;
    }
    return build(&response_type, v);
}

/* The message if `data` is a plain exec or result; NULL otherwise (any error cleared). */
static PyObject *
decode_plain(PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return NULL;
    }
    Reader r = {(const unsigned char *)view.buf, (const unsigned char *)view.buf + view.len};
    PyObject *message = NULL;
    uint32_t count;
    const char *tag;
    Py_ssize_t tag_len;
    if (read_array(&r, &count) && (count == 7 || count == 9) && read_version(&r)
        && read_str(&r, &tag, &tag_len)) {
        if (count == 7 && tag_len == 4 && memcmp(tag, "exec", 4) == 0)
            message = decode_exec(&r);
        else if (count == 9 && tag_len == 6 && memcmp(tag, "result", 6) == 0)
            message = decode_result(&r);
    }
    PyBuffer_Release(&view);
    if (message == NULL)
        PyErr_Clear(); /* the Python codec says what is wrong, if anything is */
    return message;
}

static PyObject *
decode(PyObject *self, PyObject *data)
{
    if (configured) {
        PyObject *message = decode_plain(data);
        if (message != NULL)
            return message;
        return PyObject_CallOneArg(decode_fallback, data);
    }
    PyErr_SetString(PyExc_RuntimeError, "spear.protocol._wire is not configured");
    return NULL;
}

static PyObject *
decode_hot(PyObject *self, PyObject *data)
{
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "spear.protocol._wire is not configured");
        return NULL;
    }
    PyObject *message = decode_plain(data);
    if (message == NULL)
        Py_RETURN_NONE;
    return message;
}

/* -- writing msgpack -------------------------------------------------------------------- */

#define MAX_ITEM 0xffffffffULL /* msgpack's largest str, bin or map length */

/* Sizes of an item's header, as msgpack-python packs it (use_bin_type=True). */
static inline Py_ssize_t str_header(Py_ssize_t n) { return n < 32 ? 1 : n < 256 ? 2 : n < 65536 ? 3 : 5; }
static inline Py_ssize_t bin_header(Py_ssize_t n) { return n < 256 ? 2 : n < 65536 ? 3 : 5; }
static inline Py_ssize_t map_header(Py_ssize_t n) { return n < 16 ? 1 : n < 65536 ? 3 : 5; }

static inline unsigned char *
put_be16(unsigned char *p, uint16_t v)
{
    p[0] = v >> 8;
    p[1] = v & 0xff;
    return p + 2;
}

static inline unsigned char *
put_be32(unsigned char *p, uint32_t v)
{
    p[0] = v >> 24;
    p[1] = (v >> 16) & 0xff;
    p[2] = (v >> 8) & 0xff;
    p[3] = v & 0xff;
    return p + 4;
}

static inline unsigned char *
put_be64(unsigned char *p, uint64_t v)
{
    return put_be32(put_be32(p, (uint32_t)(v >> 32)), (uint32_t)v);
}

static unsigned char *
put_str(unsigned char *p, const char *s, Py_ssize_t n)
{
    if (n < 32) {
        *p++ = 0xa0 | (unsigned char)n;
    }
    else if (n < 256) {
        *p++ = 0xd9;
        *p++ = (unsigned char)n;
    }
    else if (n < 65536) {
        *p++ = 0xda;
        p = put_be16(p, (uint16_t)n);
    }
    else {
        *p++ = 0xdb;
        p = put_be32(p, (uint32_t)n);
    }
    memcpy(p, s, n);
    return p + n;
}

static unsigned char *
put_bin(unsigned char *p, const char *s, Py_ssize_t n)
{
    if (n < 256) {
        *p++ = 0xc4;
        *p++ = (unsigned char)n;
    }
    else if (n < 65536) {
        *p++ = 0xc5;
        p = put_be16(p, (uint16_t)n);
    }
    else {
        *p++ = 0xc6;
        p = put_be32(p, (uint32_t)n);
    }
    memcpy(p, s, n);
    return p + n;
}

static unsigned char *
put_map_header(unsigned char *p, Py_ssize_t n)
{
    if (n < 16) {
        *p++ = 0x80 | (unsigned char)n;
    }
    else if (n < 65536) {
        *p++ = 0xde;
        p = put_be16(p, (uint16_t)n);
    }
    else {
        *p++ = 0xdf;
        p = put_be32(p, (uint32_t)n);
    }
    return p;
}

/* An integer held as (negative ? sv : uv), in msgpack-python's choice of encoding. */
static Py_ssize_t
int_size(int negative, int64_t sv, uint64_t uv)
{
    if (negative)
        return sv >= -32 ? 1 : sv >= -128 ? 2 : sv >= -32768 ? 3 : sv >= -2147483648LL ? 5 : 9;
    return uv < 128 ? 1 : uv < 256 ? 2 : uv < 65536 ? 3 : uv <= 0xffffffffULL ? 5 : 9;
}

static unsigned char *
put_int(unsigned char *p, int negative, int64_t sv, uint64_t uv)
{
    if (negative) {
        if (sv >= -32) {
            *p++ = (unsigned char)(int8_t)sv;
        }
        else if (sv >= -128) {
            *p++ = 0xd0;
            *p++ = (unsigned char)(int8_t)sv;
        }
        else if (sv >= -32768) {
            *p++ = 0xd1;
            p = put_be16(p, (uint16_t)(int16_t)sv);
        }
        else if (sv >= -2147483648LL) {
            *p++ = 0xd2;
            p = put_be32(p, (uint32_t)(int32_t)sv);
        }
        else {
            *p++ = 0xd3;
            p = put_be64(p, (uint64_t)sv);
        }
    }
    else if (uv < 128) {
        *p++ = (unsigned char)uv;
    }
    else if (uv < 256) {
        *p++ = 0xcc;
        *p++ = (unsigned char)uv;
    }
    else if (uv < 65536) {
        *p++ = 0xcd;
        p = put_be16(p, (uint16_t)uv);
    }
    else if (uv <= 0xffffffffULL) {
        *p++ = 0xce;
        p = put_be32(p, (uint32_t)uv);
    }
    else {
        *p++ = 0xcf;
        p = put_be64(p, uv);
    }
    return p;
}

/* The UTF-8 of an exact str; 0 (error cleared) when it has none (lone surrogates). */
static int
utf8_of(PyObject *text, const char **s, Py_ssize_t *n)
{
    if (!PyUnicode_CheckExact(text))
        return 0;
    *s = PyUnicode_AsUTF8AndSize(text, n);
    if (*s == NULL) {
        PyErr_Clear();
        return 0;
    }
    return (uint64_t)*n <= MAX_ITEM;
}

/* Encoded size of a dict of exact str to exact str; -1 when it is anything else. */
static Py_ssize_t
text_map_size(PyObject *map)
{
    if (!PyDict_CheckExact(map) || (uint64_t)PyDict_GET_SIZE(map) > MAX_ITEM)
        return -1;
    Py_ssize_t size = map_header(PyDict_GET_SIZE(map));
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(map, &pos, &key, &value)) {
        const char *s;
        Py_ssize_t n, m;
        if (!utf8_of(key, &s, &n) || !utf8_of(value, &s, &m))
            return -1;
        size += str_header(n) + n + str_header(m) + m;
    }
    return size;
}

static unsigned char *
put_text_map(unsigned char *p, PyObject *map)
{
    p = put_map_header(p, PyDict_GET_SIZE(map));
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(map, &pos, &key, &value)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(key, &n); /* cached by text_map_size */
        p = put_str(p, s, n);
        s = PyUnicode_AsUTF8AndSize(value, &n);
        p = put_str(p, s, n);
    }
    return p;
}

/* A field of an instance of `mt` (only when `mt->direct`: the fields are member descriptors). */
static PyObject *
get_field(MessageType *mt, int index, PyObject *obj)
{
    PyObject *descr = mt->fields[index];
    return Py_TYPE(descr)->tp_descr_get(descr, obj, (PyObject *)mt->type);
}

/* The framed request, or NULL with no error set when it is not the plain shape. */
static PyObject *
plain_request_frame(PyObject *request)
{
    PyObject *v[REQUEST_FIELDS] = {NULL};
    PyObject *frame = NULL;
    if (Py_TYPE(request) != request_type.type || !request_type.direct)
        return NULL;
    for (int i = 0; i < REQUEST_FIELDS; i++) {
        if ((v[i] = get_field(&request_type, i, request)) == NULL)
            goto done;
    }
    const char *rid, *fn;
    Py_ssize_t rid_n, fn_n;
    int64_t sv = 0;
    uint64_t uv = 0;
    int negative = 0, overflow = 0;
    if (!utf8_of(v[0], &rid, &rid_n) || !utf8_of(v[1], &fn, &fn_n) || !PyBytes_CheckExact(v[2])
        || (uint64_t)PyBytes_GET_SIZE(v[2]) > MAX_ITEM || !PyLong_CheckExact(v[3]))
        goto done;
    sv = PyLong_AsLongLongAndOverflow(v[3], &overflow);
    if (overflow > 0) {
        uv = PyLong_AsUnsignedLongLong(v[3]);
        if (uv == (uint64_t)-1 && PyErr_Occurred())
            goto done; /* beyond 64 bits: the Python codec refuses it */
    }
    else if (overflow < 0 || (sv == -1 && PyErr_Occurred())) {
        goto done;
    }
    else if (sv < 0) {
        negative = 1;
    }
    else {
        uv = (uint64_t)sv;
    }
    Py_ssize_t map_size = text_map_size(v[4]);
    if (map_size < 0)
        goto done;
    Py_ssize_t input_n = PyBytes_GET_SIZE(v[2]);
    Py_ssize_t size = 1 + 1 + 5 + str_header(rid_n) + rid_n + str_header(fn_n) + fn_n
                      + bin_header(input_n) + input_n + int_size(negative, sv, uv) + map_size;
    if ((uint64_t)size > MAX_ITEM)
        goto done;
    frame = PyBytes_FromStringAndSize(NULL, 4 + size);
    if (frame == NULL)
        goto done;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(frame);
    p = put_be32(p, (uint32_t)size);
    *p++ = 0x97;          /* array of 7 */
    *p++ = 0x01;          /* codec version */
    p = put_str(p, "exec", 4);
    p = put_str(p, rid, rid_n);
    p = put_str(p, fn, fn_n);
    p = put_bin(p, PyBytes_AS_STRING(v[2]), input_n);
    p = put_int(p, negative, sv, uv);
    put_text_map(p, v[4]);
done:
    for (int i = 0; i < REQUEST_FIELDS; i++)
        Py_XDECREF(v[i]);
    if (frame == NULL)
        PyErr_Clear();
    return frame;
}

static PyObject *
request_frame(PyObject *self, PyObject *request)
{
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "spear.protocol._wire is not configured");
        return NULL;
    }
    PyObject *frame = plain_request_frame(request);
    if (frame != NULL)
        return frame;
    return PyObject_CallOneArg(request_fallback, request);
}

static PyObject *
success_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!configured || nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "success_frame(request_id, output, elapsed_ms)");
        return NULL;
    }
    PyObject *request_id = args[0], *output = args[1], *elapsed = args[2];
    const char *rid;
    Py_ssize_t rid_n;
    if (utf8_of(request_id, &rid, &rid_n) && PyBytes_CheckExact(output)
        && PyFloat_CheckExact(elapsed) && (uint64_t)PyBytes_GET_SIZE(output) <= MAX_ITEM) {
        Py_ssize_t out_n = PyBytes_GET_SIZE(output);
        /* [1, "result", id, output, "success", nil, nil, elapsed, {}] */
        Py_ssize_t size = 1 + 1 + 7 + str_header(rid_n) + rid_n + bin_header(out_n) + out_n
                          + 8 + 1 + 1 + 9 + 1;
        if ((uint64_t)size <= MAX_ITEM) {
            PyObject *frame = PyBytes_FromStringAndSize(NULL, 4 + size);
            if (frame == NULL)
                return NULL;
            unsigned char *p = (unsigned char *)PyBytes_AS_STRING(frame);
            p = put_be32(p, (uint32_t)size);
            *p++ = 0x99; /* array of 9 */
            *p++ = 0x01;
            p = put_str(p, "result", 6);
            p = put_str(p, rid, rid_n);
            p = put_bin(p, PyBytes_AS_STRING(output), out_n);
            p = put_str(p, "success", 7);
            *p++ = 0xc0;
            *p++ = 0xc0;
            *p++ = 0xcb;
            double value = PyFloat_AS_DOUBLE(elapsed);
            uint64_t bits;
            memcpy(&bits, &value, 8);
            p = put_be64(p, bits);
            *p = 0x80; /* {} */
            return frame;
        }
    }
    return PyObject_Vectorcall(success_fallback, args, 3, NULL);
}

/* -- module ----------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(ExecutionRequest, request_fields, ExecutionResponse, response_fields, "
     "status_by_value, success, decode, request_frame, success_frame, direct)"},
    {"decode", decode, METH_O, "Decode one message (plain exec/result here, the rest in Python)."},
    {"decode_hot", decode_hot, METH_O,
     "The message if `data` is a plain exec or result, else None (for tests)."},
    {"request_frame", request_frame, METH_O, "The framed bytes of an ExecutionRequest."},
    {"success_frame", (PyCFunction)(void (*)(void))success_frame, METH_FASTCALL,
     "The framed bytes of a successful reply."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "spear.protocol._wire",
    "The wire codec's hot path in C (see spear.protocol.codec).", -1, methods,
};

PyMODINIT_FUNC
PyInit__wire(void)
{
    return PyModule_Create(&module);
}
