/* The front door's response head in C: what `spear.invocation.http_head.render_head_python`
 * does (uvicorn's rules for a response head), for the plain shape of its input.
 *
 * `render(status_line, defaults, headers, keep_alive, may_chunk)` checks each header name
 * and value with uvicorn's two character classes, lowers the name, notes Content-Length,
 * Transfer-Encoding: chunked and Connection: close, and joins the head in one allocation. It
 * returns (head, expected_content_length, chunked_encoding, keep_alive), raises what the
 * Python twin raises for a bad name, value or length, and returns None for any other shape
 * of `headers` (not a list or tuple of 2-item tuples or lists of exact bytes): the caller
 * then runs the Python twin, which iterates or refuses it as uvicorn would. Nothing is
 * changed before that answer, so falling back is always safe.
 *
 * tests/test_http_head.py checks that the two agree on random and hostile headers.
 *
 * Built by setup.py as `spear.invocation._http_head` (a plain CPython extension); optional:
 * without it the Python twin renders every head.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* uvicorn's HEADER_RE: bytes a header name must not contain. */
static unsigned char bad_name[256];
/* uvicorn's HEADER_VALUE_RE: control bytes but tab. */
static unsigned char bad_value[256];

static void
init_tables(void)
{
    for (int c = 0; c < 0x20; c++) {
        bad_name[c] = 1;
        bad_value[c] = c != '\t';
    }
    bad_name[0x7f] = bad_value[0x7f] = 1;
    const char *separators = "()<>@,;:[]={} \t\\\"";
    for (const char *p = separators; *p; p++)
        bad_name[(unsigned char)*p] = 1;
}

static int
lower_equals(const char *data, Py_ssize_t size, const char *lower, Py_ssize_t lower_size)
{
    if (size != lower_size)
        return 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c >= 'A' && c <= 'Z')
            c += 'a' - 'A';
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

static int
is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

/* `b"close" in [token.lower().strip() for token in value.split(b",")]` */
static int
has_close_token(const char *value, Py_ssize_t size)
{
    Py_ssize_t start = 0;
    while (start <= size) {
        Py_ssize_t end = start;
        while (end < size && value[end] != ',')
            end++;
        Py_ssize_t first = start, last = end;
        while (first < last && is_space((unsigned char)value[first]))
            first++;
        while (last > first && is_space((unsigned char)value[last - 1]))
            last--;
        if (lower_equals(value + first, last - first, "close", 5))
            return 1;
        start = end + 1;
    }
    return 0;
}

/* The name and value of a header of the plain shape, or 0. */
static int
header_parts(PyObject *item, PyObject **name, PyObject **value)
{
    if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2) {
        *name = PyTuple_GET_ITEM(item, 0);
        *value = PyTuple_GET_ITEM(item, 1);
    }
    else if (PyList_CheckExact(item) && PyList_GET_SIZE(item) == 2) {
        *name = PyList_GET_ITEM(item, 0);
        *value = PyList_GET_ITEM(item, 1);
    }
    else {
        return 0;
    }
    return PyBytes_CheckExact(*name) && PyBytes_CheckExact(*value);
}

#define MAX_HEADERS 64 /* more: the Python twin renders them (never for the front door) */

static const char CONNECTION_CLOSE[] = "connection: close\r\n";
static const char CHUNKED[] = "transfer-encoding: chunked\r\n";

static PyObject *
render(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "render(status_line, defaults, headers, keep_alive, may_chunk)");
        return NULL;
    }
    PyObject *status_line = args[0], *defaults = args[1], *headers = args[2];
    if (!PyBytes_CheckExact(status_line) || !PyBytes_CheckExact(defaults))
        Py_RETURN_NONE;
    int keep_alive = PyObject_IsTrue(args[3]);
    int may_chunk = PyObject_IsTrue(args[4]);
    if (keep_alive < 0 || may_chunk < 0)
        return NULL;
    if (!PyList_CheckExact(headers) && !PyTuple_CheckExact(headers))
        Py_RETURN_NONE;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(headers);
    if (count > MAX_HEADERS)
        Py_RETURN_NONE;

    /* First pass: the shape, every check, the special headers and the size. The names and
       values are held here: an allocation below may run a collection, and a finalizer could
       change a list, never these bytes. */
    PyObject *names[MAX_HEADERS], *values[MAX_HEADERS];
    PyObject **items = PySequence_Fast_ITEMS(headers);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!header_parts(items[i], &names[i], &values[i]))
            Py_RETURN_NONE;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_INCREF(names[i]);
        Py_INCREF(values[i]);
    }
    PyObject *result = NULL, *head = NULL, *expected = NULL;
    Py_ssize_t size = PyBytes_GET_SIZE(status_line) + PyBytes_GET_SIZE(defaults) + 2;
    int chunked = -1;           /* -1: None, 0: False, 1: True */
    int close = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        const unsigned char *n = (const unsigned char *)PyBytes_AS_STRING(names[i]);
        const unsigned char *v = (const unsigned char *)PyBytes_AS_STRING(values[i]);
        Py_ssize_t name_size = PyBytes_GET_SIZE(names[i]);
        Py_ssize_t value_size = PyBytes_GET_SIZE(values[i]);
        for (Py_ssize_t k = 0; k < name_size; k++) {
            if (bad_name[n[k]]) {
                PyErr_SetString(PyExc_RuntimeError, "Invalid HTTP header name.");
                goto done;
            }
        }
        for (Py_ssize_t k = 0; k < value_size; k++) {
            if (bad_value[v[k]]) {
                PyErr_SetString(PyExc_RuntimeError, "Invalid HTTP header value.");
                goto done;
            }
        }
        if (lower_equals((const char *)n, name_size, "content-length", 14)) {
            if (chunked == -1) {
                /* uvicorn reads it here: a bad length fails before later headers. */
                expected = PyNumber_Long(values[i]);
                if (expected == NULL)
                    goto done;
                chunked = 0;
            }
        }
        else if (lower_equals((const char *)n, name_size, "transfer-encoding", 17)) {
            if (lower_equals((const char *)v, value_size, "chunked", 7)) {
                Py_CLEAR(expected);
                chunked = 1;
            }
        }
        else if (lower_equals((const char *)n, name_size, "connection", 10)) {
            if (has_close_token((const char *)v, value_size)) {
                keep_alive = 0;
                close = 1;
            }
        }
        size += name_size + 2 + value_size + 2;
    }
    if (expected == NULL) {
        expected = PyLong_FromLong(0);
        if (expected == NULL)
            goto done;
    }
    int add_close = !keep_alive && !close;
    int add_chunked = chunked == -1 && may_chunk;
    if (add_close)
        size += sizeof(CONNECTION_CLOSE) - 1;
    if (add_chunked) {
        size += sizeof(CHUNKED) - 1;
        chunked = 1;
    }

    /* Second pass: the head, in one allocation. */
    head = PyBytes_FromStringAndSize(NULL, size);
    if (head == NULL)
        goto done;
    char *out = PyBytes_AS_STRING(head);
    memcpy(out, PyBytes_AS_STRING(status_line), PyBytes_GET_SIZE(status_line));
    out += PyBytes_GET_SIZE(status_line);
    memcpy(out, PyBytes_AS_STRING(defaults), PyBytes_GET_SIZE(defaults));
    out += PyBytes_GET_SIZE(defaults);
    for (Py_ssize_t i = 0; i < count; i++) {
        const char *n = PyBytes_AS_STRING(names[i]);
        Py_ssize_t name_size = PyBytes_GET_SIZE(names[i]);
        for (Py_ssize_t k = 0; k < name_size; k++) {
            char c = n[k];
            *out++ = (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
        }
        *out++ = ':';
        *out++ = ' ';
        memcpy(out, PyBytes_AS_STRING(values[i]), PyBytes_GET_SIZE(values[i]));
        out += PyBytes_GET_SIZE(values[i]);
        *out++ = '\r';
        *out++ = '\n';
    }
    if (add_close) {
        memcpy(out, CONNECTION_CLOSE, sizeof(CONNECTION_CLOSE) - 1);
        out += sizeof(CONNECTION_CLOSE) - 1;
    }
    if (add_chunked) {
        memcpy(out, CHUNKED, sizeof(CHUNKED) - 1);
        out += sizeof(CHUNKED) - 1;
    }
    *out++ = '\r';
    *out++ = '\n';
    result = PyTuple_Pack(4, head, expected,
                          chunked == -1 ? Py_None : chunked ? Py_True : Py_False,
                          keep_alive ? Py_True : Py_False);
done:
    Py_XDECREF(head);
    Py_XDECREF(expected);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_DECREF(names[i]);
        Py_DECREF(values[i]);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"render", (PyCFunction)(void (*)(void))render, METH_FASTCALL,
     "render(status_line, defaults, headers, keep_alive, may_chunk) -> "
     "(head, expected_content_length, chunked_encoding, keep_alive), or None for a shape "
     "the Python twin must handle"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_http_head",
    "The front door's response head in C (see spear.invocation.http_head).", -1, methods,
};

PyMODINIT_FUNC
PyInit__http_head(void)
{
    init_tables();
    return PyModule_Create(&module);
}
