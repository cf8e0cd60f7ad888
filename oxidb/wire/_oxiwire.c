/*
 * The OxiWire value codec in C: the same API and behaviour as the reference
 * implementation oxidb/wire/_oxiwire_py.py (read that first; every error text
 * and every encoding rule here must match it byte for byte).
 *
 * The decoder parses hostile input: every read is bounds-checked, no
 * allocation is sized from a count larger than the remaining input, nesting
 * is bounded by the caller's max_depth, and every error path releases what
 * it holds. The encoder only sees values built by the server.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define NOINLINE __attribute__((noinline))
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#define NOINLINE
#define ALWAYS_INLINE inline
#endif

#define U32_MAX_VALUE 0xFFFFFFFFu
#define MAX_DEPTH_CAP 512 /* the largest max_depth decode() accepts */

static PyObject *OxiWireError;

/* ------------------------------------------------------------------------ */
/* decoding                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct {
    const unsigned char *buf;
    Py_ssize_t len;
    Py_ssize_t pos;
    long max_depth;
} Reader;

static inline uint32_t
load_u32(const unsigned char *p)
{
#if PY_LITTLE_ENDIAN
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
#else
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
#endif
}

static inline uint64_t
load_u64(const unsigned char *p)
{
#if PY_LITTLE_ENDIAN
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
#else
    return (uint64_t)load_u32(p) | ((uint64_t)load_u32(p + 4) << 32);
#endif
}

static inline Py_ssize_t
remaining(const Reader *r)
{
    return r->len - r->pos;
}

static PyObject *
fail(const char *message)
{
    PyErr_SetString(OxiWireError, message);
    return NULL;
}

/*
 * Replace the pending UnicodeDecodeError by an OxiWireError worded like
 * Rust's Utf8Error: "<what>: invalid utf-8 sequence of N bytes from index I"
 * or "<what>: incomplete utf-8 byte sequence from index I".
 */
static void
utf8_failure(const char *what)
{
    PyObject *type, *value, *traceback;
    Py_ssize_t start, end;
    PyObject *reason;
    int incomplete;

    if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        return; /* MemoryError and the like pass through */
    }
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value == NULL || PyUnicodeDecodeError_GetStart(value, &start) < 0 ||
        PyUnicodeDecodeError_GetEnd(value, &end) < 0 ||
        (reason = PyUnicodeDecodeError_GetReason(value)) == NULL) {
        /* cannot happen for the codec's own exception; keep the original */
        PyErr_Restore(type, value, traceback);
        return;
    }
    incomplete = PyUnicode_CompareWithASCIIString(reason, "unexpected end of data") == 0;
    Py_DECREF(reason);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    if (incomplete) {
        PyErr_Format(OxiWireError, "%s: incomplete utf-8 byte sequence from index %zd",
                     what, start);
    }
    else {
        PyErr_Format(OxiWireError, "%s: invalid utf-8 sequence of %zd bytes from index %zd",
                     what, end - start, start);
    }
}

#define HIGH_BITS 0x8080808080808080ull

/*
 * The first and the last (up to) 8 bytes of p[0:n] as two words: for
 * n <= 16 they hold every byte, so (n, *head, *tail) tells any two such
 * strings apart. Reads nothing outside p[0:n].
 */
static inline void
load_ends(const unsigned char *p, Py_ssize_t n, uint64_t *head, uint64_t *tail)
{
    if (n >= 8) {
        *head = load_u64(p);
        *tail = load_u64(p + n - 8);
    }
    else if (n >= 4) {
        *head = load_u32(p);
        *tail = load_u32(p + n - 4);
    }
    else if (n > 0) {
        *head = (uint64_t)p[0] | ((uint64_t)p[n / 2] << 8) | ((uint64_t)p[n - 1] << 16);
        *tail = 0;
    }
    else {
        *head = *tail = 0;
    }
}

/* Whether p[0:n] is all ASCII, a word at a time. */
static inline int
is_ascii(const unsigned char *p, Py_ssize_t n)
{
    uint64_t bits = 0, head, tail;
    Py_ssize_t i = 0;

    for (; i + 8 <= n; i += 8) {
        bits |= load_u64(p + i);
    }
    if (i < n) {
        load_ends(p + i, n - i, &head, &tail);
        bits |= head | tail;
    }
    return (bits & HIGH_BITS) == 0;
}

/*
 * The code point of the valid UTF-8 sequence starting at p[*i] (below
 * `end`), advancing *i past it; -1 when the bytes there are not valid UTF-8
 * (an overlong form, a surrogate, beyond U+10FFFF, a stray or missing
 * continuation byte), which is what CPython's strict decoder refuses.
 */
static inline int32_t
next_code_point(const unsigned char *p, Py_ssize_t *i, Py_ssize_t end)
{
    Py_ssize_t at = *i;
    unsigned int c = p[at], lo = 0x80, hi = 0xBF;
    int32_t code;
    int more, k;

    if (c < 0x80) {
        *i = at + 1;
        return (int32_t)c;
    }
    if (c < 0xC2) {
        return -1; /* a continuation byte, or an overlong 2-byte lead */
    }
    if (c < 0xE0) {
        more = 1;
        code = (int32_t)(c & 0x1F);
    }
    else if (c < 0xF0) {
        more = 2;
        code = (int32_t)(c & 0x0F);
        if (c == 0xE0) {
            lo = 0xA0; /* no overlong 3-byte forms */
        }
        else if (c == 0xED) {
            hi = 0x9F; /* no surrogates */
        }
    }
    else if (c < 0xF5) {
        more = 3;
        code = (int32_t)(c & 0x07);
        if (c == 0xF0) {
            lo = 0x90; /* no overlong 4-byte forms */
        }
        else if (c == 0xF4) {
            hi = 0x8F; /* nothing beyond U+10FFFF */
        }
    }
    else {
        return -1;
    }
    if (end - at <= more) {
        return -1;
    }
    for (k = 1; k <= more; k++) {
        unsigned int b = p[at + k];
        if (b < lo || b > hi) {
            return -1;
        }
        lo = 0x80;
        hi = 0xBF;
        code = (code << 6) | (int32_t)(b & 0x3F);
    }
    *i = at + 1 + more;
    return code;
}

/*
 * Valid UTF-8 text p[0:n] as a new str of the narrowest kind, decoded in two
 * passes (count and widest character, then fill). NULL without an exception
 * when the bytes are not valid UTF-8: CPython's decoder then words the error.
 */
static PyObject *
decode_utf8(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t i = 0, length = 0;
    int32_t code, widest = 0;
    PyObject *text;
    int kind;
    void *data;

    while (i < n) {
        code = next_code_point(p, &i, n);
        if (code < 0) {
            return NULL;
        }
        if (code > widest) {
            widest = code;
        }
        length++;
    }
    text = PyUnicode_New(length, (Py_UCS4)widest);
    if (text == NULL) {
        return NULL;
    }
    kind = PyUnicode_KIND(text);
    data = PyUnicode_DATA(text);
    for (i = 0, length = 0; i < n; length++) {
        PyUnicode_WRITE(kind, data, length, (Py_UCS4)next_code_point(p, &i, n));
    }
    return text;
}

/*
 * Decode n bytes at the read position as UTF-8 and advance past them; on
 * invalid text, the error of CPython's decoder reworded for `what`.
 */
static NOINLINE PyObject *
read_utf8(Reader *r, Py_ssize_t n, const char *what)
{
    const unsigned char *p = r->buf + r->pos;
    PyObject *text;

    if (n < 2) {
        /* the empty and 1-character strs are CPython's shared singletons */
        text = PyUnicode_DecodeUTF8((const char *)p, n, "strict");
    }
    else {
        text = decode_utf8(p, n);
        if (text == NULL && !PyErr_Occurred()) {
            text = PyUnicode_DecodeUTF8((const char *)p, n, "strict");
        }
    }
    if (text == NULL) {
        utf8_failure(what);
        return NULL;
    }
    r->pos += n;
    return text;
}

/* The n ASCII bytes at the read position as a str, advancing past them. */
static inline PyObject *
read_ascii(Reader *r, Py_ssize_t n)
{
    PyObject *text;

    if (n < 2) {
        return read_utf8(r, n, "");
    }
    text = PyUnicode_New(n, 127);
    if (text == NULL) {
        return NULL;
    }
    memcpy(PyUnicode_DATA(text), r->buf + r->pos, (size_t)n);
    r->pos += n;
    return text;
}

/*
 * Map keys repeat across the documents of a result, and so do short values
 * (states, kinds, tags), so short ASCII strings are kept in two small
 * direct-mapped caches, one for keys (up to KEY_CACHE_MAX_LEN bytes) and one
 * for values (up to VALUE_CACHE_MAX_LEN): a hit skips allocating and
 * copying a new str (and, for a key, hashing it again). Entries are strong
 * references held for the life of the process (2 * CACHE_SIZE short strings
 * at most). The slot is chosen from the length and the first, middle and
 * last 8 bytes, and a hit is confirmed on every byte.
 */
#define CACHE_BITS 10
#define CACHE_SIZE (1 << CACHE_BITS)
#define KEY_CACHE_MAX_LEN 64
#define VALUE_CACHE_MAX_LEN 16

static PyObject *key_cache[CACHE_SIZE];
static PyObject *value_cache[CACHE_SIZE];

/*
 * The n-byte string at the read position through `cache` (n at most 64),
 * advancing past it.
 */
static inline PyObject *
read_cached(Reader *r, Py_ssize_t n, PyObject **cache, const char *what)
{
    const unsigned char *p = r->buf + r->pos;
    uint64_t head, tail, mixed;
    size_t slot;
    PyObject *cached, *text;

    load_ends(p, n, &head, &tail);
    mixed = (head * 0x9E3779B97F4A7C15ull) ^ (tail * 0xC2B2AE3D27D4EB4Full) ^ (uint64_t)n;
    if (n > 16) {
        mixed ^= load_u64(p + n / 2 - 4) * 0x165667B19E3779F9ull;
    }
    slot = (size_t)((mixed ^ (mixed >> 29)) * 0xBF58476D1CE4E5B9ull >> (64 - CACHE_BITS));
    cached = cache[slot];
    if (cached != NULL && PyUnicode_GET_LENGTH(cached) == n) {
        /* cached strings are all ASCII: their characters are their bytes */
        const unsigned char *known = (const unsigned char *)PyUnicode_DATA(cached);
        int same;
        if (n <= 16) {
            uint64_t known_head, known_tail;
            load_ends(known, n, &known_head, &known_tail);
            same = known_head == head && known_tail == tail;
        }
        else {
            same = memcmp(known, p, (size_t)n) == 0;
        }
        if (same) {
            r->pos += n;
            return Py_NewRef(cached);
        }
    }
    if (n <= 16 ? ((head | tail) & HIGH_BITS) != 0 : !is_ascii(p, n)) {
        return read_utf8(r, n, what);
    }
    text = read_ascii(r, n);
    if (text != NULL) {
        Py_XSETREF(cache[slot], Py_NewRef(text));
    }
    return text;
}

/*
 * The str of n bytes at the read position, advancing past them: short
 * ASCII text through the value cache, longer ASCII text copied straight
 * into a new compact str, anything else through read_utf8().
 */
static inline PyObject *
read_text(Reader *r, Py_ssize_t n, const char *what)
{
    if (n <= VALUE_CACHE_MAX_LEN) {
        return read_cached(r, n, value_cache, what);
    }
    if (!is_ascii(r->buf + r->pos, n)) {
        return read_utf8(r, n, what);
    }
    return read_ascii(r, n);
}

static inline PyObject *
read_key(Reader *r, Py_ssize_t n)
{
    if (n <= KEY_CACHE_MAX_LEN) {
        return read_cached(r, n, key_cache, "invalid utf8 key");
    }
    return read_text(r, n, "invalid utf8 key");
}

static PyObject *decode_array(Reader *r, long depth);
static PyObject *decode_map(Reader *r, long depth);

/*
 * The tagged value at the read position. Inline, so that the loops of
 * decode_array() and decode_map() read scalars without a call; containers
 * go through those two out-of-line functions.
 */
static ALWAYS_INLINE PyObject *
decode_value(Reader *r, long depth)
{
    Py_ssize_t at;
    unsigned char tag;

    if (r->pos >= r->len) {
        return fail("unexpected end of input");
    }
    at = r->pos;
    tag = r->buf[r->pos++];
    switch (tag) {
    case 0x00:
        Py_RETURN_NONE;
    case 0x01:
        Py_RETURN_FALSE;
    case 0x02:
        Py_RETURN_TRUE;
    case 0x03: {
        uint64_t bits;
        int64_t number;
        if (remaining(r) < 8) {
            return fail("truncated int64");
        }
        bits = load_u64(r->buf + r->pos);
        r->pos += 8;
        /* two's complement without implementation-defined casts */
        number = bits <= (uint64_t)INT64_MAX ? (int64_t)bits : -(int64_t)(~bits) - 1;
        return PyLong_FromLongLong((long long)number);
    }
    case 0x04: {
        uint64_t number;
        if (remaining(r) < 8) {
            return fail("truncated uint64");
        }
        number = load_u64(r->buf + r->pos);
        r->pos += 8;
        return PyLong_FromUnsignedLongLong((unsigned long long)number);
    }
    case 0x05: {
        uint64_t bits;
        double number;
        if (remaining(r) < 8) {
            return fail("truncated float64");
        }
        bits = load_u64(r->buf + r->pos);
        r->pos += 8;
        memcpy(&number, &bits, sizeof number);
        if (!isfinite(number)) {
            Py_RETURN_NONE;
        }
        return PyFloat_FromDouble(number);
    }
    case 0x06: {
        uint32_t length;
        if (remaining(r) < 4) {
            return fail("truncated string length");
        }
        length = load_u32(r->buf + r->pos);
        r->pos += 4;
        if ((uint64_t)remaining(r) < (uint64_t)length) {
            return fail("truncated string data");
        }
        return read_text(r, (Py_ssize_t)length, "invalid utf8");
    }
    case 0x07:
        if (depth >= r->max_depth) {
            return fail("nesting too deep");
        }
        return decode_array(r, depth);
    case 0x08:
        if (depth >= r->max_depth) {
            return fail("nesting too deep");
        }
        return decode_map(r, depth);
    default: {
        char message[64];
        snprintf(message, sizeof message, "unknown tag 0x%02x at position %zd",
                 (unsigned int)tag, at);
        return fail(message);
    }
    }
}

static NOINLINE PyObject *
decode_array(Reader *r, long depth)
{
    uint32_t count, i;
    Py_ssize_t slots;
    PyObject *list;

    if (remaining(r) < 4) {
        return fail("truncated array length");
    }
    count = load_u32(r->buf + r->pos);
    r->pos += 4;
    /* Every element takes at least one byte, so a count beyond the remaining
       input can never be satisfied: never allocate more than the input. */
    slots = (uint64_t)count < (uint64_t)remaining(r) ? (Py_ssize_t)count : remaining(r);
    list = PyList_New(slots);
    if (list == NULL) {
        return NULL;
    }
    for (i = 0; i < count; i++) {
        PyObject *item;
        if ((Py_ssize_t)i >= slots) {
            /* unreachable: element i would start at or past the end */
            Py_DECREF(list);
            return fail("unexpected end of input");
        }
        item = decode_value(r, depth + 1);
        if (item == NULL) {
            Py_DECREF(list); /* unfilled slots are NULL, which list_dealloc skips */
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

static NOINLINE PyObject *
decode_map(Reader *r, long depth)
{
    uint32_t count, i;
    PyObject *dict;

    if (remaining(r) < 4) {
        return fail("truncated map length");
    }
    count = load_u32(r->buf + r->pos);
    r->pos += 4;
    /* an entry takes at least 5 bytes: size the table from what can fit */
    dict = _PyDict_NewPresized(
        (uint64_t)count < (uint64_t)(remaining(r) / 5) ? (Py_ssize_t)count : remaining(r) / 5);
    if (dict == NULL) {
        return NULL;
    }
    for (i = 0; i < count; i++) {
        uint32_t length;
        PyObject *key, *item;
        int status;

        if (remaining(r) < 4) {
            Py_DECREF(dict);
            return fail("truncated map key length");
        }
        length = load_u32(r->buf + r->pos);
        r->pos += 4;
        if ((uint64_t)remaining(r) < (uint64_t)length) {
            Py_DECREF(dict);
            return fail("truncated map key data");
        }
        key = read_key(r, (Py_ssize_t)length);
        if (key == NULL) {
            Py_DECREF(dict);
            return NULL;
        }
        item = decode_value(r, depth + 1);
        if (item == NULL) {
            Py_DECREF(key);
            Py_DECREF(dict);
            return NULL;
        }
        status = PyDict_SetItem(dict, key, item);
        Py_DECREF(key);
        Py_DECREF(item);
        if (status < 0) {
            Py_DECREF(dict);
            return NULL;
        }
    }
    return dict;
}

/* decode(data, offset, max_depth) -> object */
static PyObject *
oxiwire_decode(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t offset;
    long max_depth;
    Reader reader;
    PyObject *result;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode() takes exactly 3 arguments");
        return NULL;
    }
    offset = PyLong_AsSsize_t(args[1]);
    if (offset == -1 && PyErr_Occurred()) {
        return NULL;
    }
    max_depth = PyLong_AsLong(args[2]);
    if (max_depth == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (max_depth < 0 || max_depth > MAX_DEPTH_CAP) {
        /* the decoder recurses once per level: keep the C stack safe */
        PyErr_SetString(PyExc_ValueError, "max_depth out of range");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (offset < 0 || offset > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "offset out of range");
        return NULL;
    }
    reader.buf = (const unsigned char *)view.buf;
    reader.len = view.len;
    reader.pos = offset;
    reader.max_depth = max_depth;
    result = decode_value(&reader, 0);
    PyBuffer_Release(&view);
    return result;
}

/* ------------------------------------------------------------------------ */
/* encoding                                                                  */
/* ------------------------------------------------------------------------ */

/*
 * The output grows in `small` (on the stack) until it outgrows it, then in a
 * bytes object resized by doubling and trimmed at the end. The hot paths
 * below (reserve, the short copies, compact str and int) are inline and
 * branch-light; everything rare goes through an out-of-line slow path.
 */
#define SMALL_OUTPUT 4096

/*
 * Levels of nesting encoded before Py_EnterRecursiveCall is consulted: a
 * find result is a few levels deep, and the guard costs a call per
 * container. Deeper values (a self-referencing list) still end in
 * RecursionError, FREE_DEPTH levels later than the interpreter's limit.
 */
#define FREE_DEPTH 32

typedef struct {
    unsigned char *data; /* small, or the buffer of bytes */
    PyObject *bytes;     /* owned once the output left small, else NULL */
    Py_ssize_t len;
    Py_ssize_t cap;
    int depth; /* containers open around the value being encoded */
    unsigned char small[SMALL_OUTPUT];
} Writer;

/* Resize the output to cap bytes (at least w->len). */
static int
resize(Writer *w, Py_ssize_t cap)
{
    if (w->bytes == NULL) {
        w->bytes = PyBytes_FromStringAndSize(NULL, cap);
        if (w->bytes == NULL) {
            return -1;
        }
        memcpy(PyBytes_AS_STRING(w->bytes), w->small, (size_t)w->len);
    }
    else if (_PyBytes_Resize(&w->bytes, cap) < 0) {
        return -1; /* w->bytes is NULL now */
    }
    w->data = (unsigned char *)PyBytes_AS_STRING(w->bytes);
    w->cap = cap;
    return 0;
}

/* Make room for n more bytes: the slow path of reserve(). */
static NOINLINE int
grow(Writer *w, Py_ssize_t n)
{
    Py_ssize_t need, cap;

    if (n > PY_SSIZE_T_MAX - w->len) {
        PyErr_NoMemory();
        return -1;
    }
    need = w->len + n;
    cap = w->cap <= PY_SSIZE_T_MAX / 2 ? w->cap * 2 : PY_SSIZE_T_MAX;
    if (cap < need) {
        cap = need;
    }
    return resize(w, cap);
}

static inline int
reserve(Writer *w, Py_ssize_t n)
{
    if (LIKELY(w->cap - w->len >= n)) {
        return 0;
    }
    return grow(w, n);
}

static inline unsigned char *
cursor(Writer *w)
{
    return w->data + w->len;
}

static inline void
store_u32(unsigned char *p, uint32_t v)
{
#if PY_LITTLE_ENDIAN
    memcpy(p, &v, 4);
#else
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
#endif
}

static inline void
store_u64(unsigned char *p, uint64_t v)
{
#if PY_LITTLE_ENDIAN
    memcpy(p, &v, 8);
#else
    store_u32(p, (uint32_t)v);
    store_u32(p + 4, (uint32_t)(v >> 32));
#endif
}

/*
 * Copy n bytes. Keys and most string values are short: up to 32 bytes they
 * are copied by two (possibly overlapping) fixed-size moves from each end,
 * which the compiler turns into plain loads and stores instead of a call to
 * memcpy; no byte outside [src, src + n) is read.
 */
static inline void
copy_bytes(unsigned char *dst, const char *src, Py_ssize_t n)
{
    if (n >= 8) {
        if (n > 32) {
            memcpy(dst, src, (size_t)n);
        }
        else if (n > 16) {
            uint64_t a, b, c, d;
            memcpy(&a, src, 8);
            memcpy(&b, src + 8, 8);
            memcpy(&c, src + n - 16, 8);
            memcpy(&d, src + n - 8, 8);
            memcpy(dst, &a, 8);
            memcpy(dst + 8, &b, 8);
            memcpy(dst + n - 16, &c, 8);
            memcpy(dst + n - 8, &d, 8);
        }
        else {
            uint64_t a, b;
            memcpy(&a, src, 8);
            memcpy(&b, src + n - 8, 8);
            memcpy(dst, &a, 8);
            memcpy(dst + n - 8, &b, 8);
        }
    }
    else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, src, 4);
        memcpy(&b, src + n - 4, 4);
        memcpy(dst, &a, 4);
        memcpy(dst + n - 4, &b, 4);
    }
    else if (n > 0) {
        dst[0] = (unsigned char)src[0];
        dst[n / 2] = (unsigned char)src[n / 2];
        dst[n - 1] = (unsigned char)src[n - 1];
    }
}

static inline int
put_byte(Writer *w, unsigned char byte)
{
    if (reserve(w, 1) < 0) {
        return -1;
    }
    w->data[w->len++] = byte;
    return 0;
}

static inline int
put_tag_u64(Writer *w, unsigned char tag, uint64_t v)
{
    unsigned char *p;
    if (reserve(w, 9) < 0) {
        return -1;
    }
    p = cursor(w);
    p[0] = tag;
    store_u64(p + 1, v);
    w->len += 9;
    return 0;
}

static inline int
put_double(Writer *w, double number)
{
    uint64_t bits;
    if (UNLIKELY(!isfinite(number))) {
        return put_byte(w, 0x00);
    }
    memcpy(&bits, &number, sizeof bits);
    return put_tag_u64(w, 0x05, bits);
}

/*
 * The UTF-8 form of a str: the characters themselves for a compact ASCII
 * string (the common case, keys included), else the cached UTF-8 form
 * CPython keeps on the object (made on first use; a lone surrogate raises
 * UnicodeEncodeError).
 */
static inline const char *
utf8_of(PyObject *text, Py_ssize_t *n)
{
    if (LIKELY(PyUnicode_IS_COMPACT_ASCII(text))) {
        *n = PyUnicode_GET_LENGTH(text);
        return (const char *)PyUnicode_DATA(text);
    }
    return PyUnicode_AsUTF8AndSize(text, n);
}

/* A length-prefixed UTF-8 string, preceded by `tag` unless tag < 0 (keys). */
static inline int
put_text(Writer *w, int tag, PyObject *text, const char *too_long)
{
    Py_ssize_t n;
    const char *utf8 = utf8_of(text, &n);
    unsigned char *p;

    if (UNLIKELY(utf8 == NULL)) {
        return -1;
    }
    if (UNLIKELY((uint64_t)n > (uint64_t)U32_MAX_VALUE)) {
        PyErr_SetString(PyExc_ValueError, too_long);
        return -1;
    }
    if (reserve(w, n + 5) < 0) {
        return -1;
    }
    p = cursor(w);
    if (tag >= 0) {
        *p++ = (unsigned char)tag;
        w->len += 1;
    }
    store_u32(p, (uint32_t)n);
    copy_bytes(p + 4, utf8, n);
    w->len += 4 + n;
    return 0;
}

static inline int
put_header(Writer *w, unsigned char tag, Py_ssize_t count, const char *too_long)
{
    unsigned char *p;
    if (UNLIKELY((uint64_t)count > (uint64_t)U32_MAX_VALUE)) {
        PyErr_SetString(PyExc_ValueError, too_long);
        return -1;
    }
    if (reserve(w, 5) < 0) {
        return -1;
    }
    p = cursor(w);
    p[0] = tag;
    store_u32(p + 1, (uint32_t)count);
    w->len += 5;
    return 0;
}

/* Any int that is not a single machine digit: the slow path of put_int(). */
static NOINLINE int
put_long(Writer *w, PyObject *number)
{
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(number, &overflow);
    double approx;

    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow == 0) {
        if (value >= 0) {
            return put_tag_u64(w, 0x04, (uint64_t)value);
        }
        return put_tag_u64(w, 0x03, (uint64_t)value);
    }
    if (overflow > 0) {
        unsigned long long big = PyLong_AsUnsignedLongLong(number);
        if (!(big == (unsigned long long)-1 && PyErr_Occurred())) {
            return put_tag_u64(w, 0x04, (uint64_t)big);
        }
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1;
        }
        PyErr_Clear();
    }
    /* beyond int64/uint64: a double, or null when not even that fits */
    approx = PyLong_AsDouble(number);
    if (approx == -1.0 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1;
        }
        PyErr_Clear();
        return put_byte(w, 0x00);
    }
    return put_double(w, approx);
}

/*
 * An int: those of at most one internal digit (|n| < 2**30 on usual builds)
 * are read straight from the object, the rest through put_long().
 */
static inline int
put_int(Writer *w, PyObject *number)
{
    int64_t value;
#if PY_VERSION_HEX >= 0x030C0000
    if (!PyUnstable_Long_IsCompact((PyLongObject *)number)) {
        return put_long(w, number);
    }
    value = (int64_t)PyUnstable_Long_CompactValue((PyLongObject *)number);
#else
    Py_ssize_t size = Py_SIZE(number);
    if (size == 0) {
        value = 0;
    }
    else if (size == 1) {
        value = (int64_t)((PyLongObject *)number)->ob_digit[0];
    }
    else if (size == -1) {
        value = -(int64_t)((PyLongObject *)number)->ob_digit[0];
    }
    else {
        return put_long(w, number);
    }
#endif
    return put_tag_u64(w, value >= 0 ? 0x04 : 0x03, (uint64_t)value);
}

static int encode_value(Writer *w, PyObject *value);

/* Open a container: the recursion guard beyond FREE_DEPTH levels. */
static inline int
enter(Writer *w)
{
    if (++w->depth > FREE_DEPTH &&
        Py_EnterRecursiveCall(" while encoding an OxiWire value")) {
        w->depth--;
        return -1;
    }
    return 0;
}

static inline void
leave(Writer *w)
{
    if (w->depth-- > FREE_DEPTH) {
        Py_LeaveRecursiveCall();
    }
}

/*
 * Dict and list items are used through borrowed references: no Python code
 * can run while encoding (nothing here allocates a GC-tracked object, so no
 * collection and no finalizer can mutate the containers underneath).
 */
static int
put_map(Writer *w, PyObject *dict)
{
    Py_ssize_t pos = 0;
    PyObject *key, *item;
    int status = 0;

    if (put_header(w, 0x08, PyDict_GET_SIZE(dict), "map too long for OxiWire") < 0) {
        return -1;
    }
    if (enter(w) < 0) {
        return -1;
    }
    while (PyDict_Next(dict, &pos, &key, &item)) {
        if (UNLIKELY(!PyUnicode_Check(key))) {
            PyErr_Format(PyExc_TypeError, "map keys must be strings, not %s",
                         _PyType_Name(Py_TYPE(key)));
            status = -1;
            break;
        }
        if (put_text(w, -1, key, "map key too long for OxiWire") < 0 ||
            encode_value(w, item) < 0) {
            status = -1;
            break;
        }
    }
    leave(w);
    return status;
}

static int
put_array(Writer *w, PyObject *sequence)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    PyObject **items = PySequence_Fast_ITEMS(sequence);
    Py_ssize_t i;
    int status = 0;

    if (put_header(w, 0x07, n, "array too long for OxiWire") < 0) {
        return -1;
    }
    if (enter(w) < 0) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (encode_value(w, items[i]) < 0) {
            status = -1;
            break;
        }
    }
    leave(w);
    return status;
}

/* Subclasses of the supported types, and the refusal of everything else. */
static NOINLINE int
encode_other(Writer *w, PyObject *value)
{
    if (PyUnicode_Check(value)) {
        return put_text(w, 0x06, value, "string too long for OxiWire");
    }
    if (PyLong_Check(value)) {
        return put_long(w, value);
    }
    if (PyFloat_Check(value)) {
        return put_double(w, PyFloat_AS_DOUBLE(value));
    }
    if (PyDict_Check(value)) {
        return put_map(w, value);
    }
    if (PyList_Check(value) || PyTuple_Check(value)) {
        return put_array(w, value);
    }
    PyErr_Format(PyExc_TypeError, "cannot encode object of type %s as OxiWire",
                 _PyType_Name(Py_TYPE(value)));
    return -1;
}

static int
encode_value(Writer *w, PyObject *value)
{
    PyTypeObject *type = Py_TYPE(value);

    /* exact types first, most frequent in documents first */
    if (type == &PyUnicode_Type) {
        return put_text(w, 0x06, value, "string too long for OxiWire");
    }
    if (type == &PyLong_Type) {
        return put_int(w, value);
    }
    if (type == &PyFloat_Type) {
        return put_double(w, PyFloat_AS_DOUBLE(value));
    }
    if (type == &PyDict_Type) {
        return put_map(w, value);
    }
    if (type == &PyList_Type) {
        return put_array(w, value);
    }
    if (value == Py_None) {
        return put_byte(w, 0x00);
    }
    if (value == Py_True) {
        return put_byte(w, 0x02);
    }
    if (value == Py_False) {
        return put_byte(w, 0x01);
    }
    if (type == &PyTuple_Type) {
        return put_array(w, value);
    }
    return encode_other(w, value);
}

/* encode(value, header=b"") -> bytes */
static PyObject *
oxiwire_encode(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Writer w;

    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "encode() takes 1 or 2 arguments");
        return NULL;
    }
    if (nargs == 2 && !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "header must be bytes");
        return NULL;
    }
    w.data = w.small;
    w.bytes = NULL;
    w.len = 0;
    w.cap = SMALL_OUTPUT;
    w.depth = 0;
    if (nargs == 2) {
        Py_ssize_t n = PyBytes_GET_SIZE(args[1]);
        if (reserve(&w, n) < 0) {
            return NULL;
        }
        memcpy(w.data, PyBytes_AS_STRING(args[1]), (size_t)n);
        w.len = n;
    }
    if (encode_value(&w, args[0]) < 0) {
        Py_XDECREF(w.bytes);
        return NULL;
    }
    if (w.bytes == NULL) {
        return PyBytes_FromStringAndSize((const char *)w.small, w.len);
    }
    if (_PyBytes_Resize(&w.bytes, w.len) < 0) {
        return NULL;
    }
    return w.bytes;
}

/* ------------------------------------------------------------------------ */
/* JSON pre-scan                                                             */
/* ------------------------------------------------------------------------ */

#define JSON_FAST 0
#define JSON_TOO_DEEP 1
#define JSON_LONG_INTEGER 2

/* What json_scan looks at outside strings; every other byte is skipped. */
enum { SCAN_SKIP = 0, SCAN_QUOTE, SCAN_OPEN, SCAN_CLOSE, SCAN_DIGIT };

static unsigned char json_scan_class[256];

static void
json_scan_init(void)
{
    int c;
    json_scan_class['"'] = SCAN_QUOTE;
    json_scan_class['['] = json_scan_class['{'] = SCAN_OPEN;
    json_scan_class[']'] = json_scan_class['}'] = SCAN_CLOSE;
    for (c = '0'; c <= '9'; c++) {
        json_scan_class[c] = SCAN_DIGIT;
    }
}

/*
 * The end of the string whose opening quote is just before p: the byte after
 * its closing quote, or end when it is unterminated. A quote closes the
 * string unless an odd run of backslashes is just before it (each backslash
 * escapes the byte after it, so pairs cancel out); memchr finds the quotes,
 * so long strings cost what memchr costs.
 */
static const unsigned char *
json_skip_string(const unsigned char *p, const unsigned char *end)
{
    const unsigned char *first;
    const unsigned char *near = end - p > 24 ? p + 24 : end;
    /* Most strings (keys, short values) end within a few bytes: look there
       byte by byte before paying for memchr calls. */
    while (p < near) {
        unsigned char c = *p++;
        if (c == '\\') {
            if (p < end) {
                p++;
            }
        }
        else if (c == '"') {
            return p;
        }
    }
    /* Escapes before p are accounted for: backslash runs start at p. */
    first = p;
    while (p < end) {
        const unsigned char *quote = memchr(p, '"', (size_t)(end - p));
        const unsigned char *b;
        if (quote == NULL) {
            return end;
        }
        b = quote;
        while (b > first && b[-1] == '\\') {
            b--;
        }
        if (((quote - b) & 1) == 0) {
            return quote + 1;
        }
        p = quote + 1;
    }
    return end;
}

/*
 * json_scan(data, limit) -> int: JSON_TOO_DEEP if the text opens more than
 * `limit` arrays/objects inside one another, else JSON_LONG_INTEGER if it
 * holds a run of 19 or more digits (outside strings) that is neither a
 * fraction (after '.') nor followed by '.', 'e' or 'E', else JSON_FAST.
 */
static PyObject *
oxiwire_json_scan(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    long limit, depth = 0;
    const unsigned char *start, *p, *end;
    int result = JSON_FAST, long_integer = 0;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "json_scan() takes exactly 2 arguments");
        return NULL;
    }
    limit = PyLong_AsLong(args[1]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    start = p = (const unsigned char *)view.buf;
    end = p + view.len;
    while (p < end) {
        unsigned char kind = json_scan_class[*p++];
        if (kind == SCAN_SKIP) {
            continue;
        }
        if (kind == SCAN_QUOTE) {
            p = json_skip_string(p, end);
        }
        else if (kind == SCAN_OPEN) {
            if (++depth > limit) {
                result = JSON_TOO_DEEP;
                break;
            }
        }
        else if (kind == SCAN_CLOSE) {
            if (depth > 0) {
                depth--;
            }
        }
        else {
            const unsigned char *first = p - 1;
            while (p < end && *p >= '0' && *p <= '9') {
                p++;
            }
            if (p - first >= 19 && !(first > start && first[-1] == '.') &&
                !(p < end && (*p == '.' || *p == 'e' || *p == 'E'))) {
                long_integer = 1;
            }
        }
    }
    PyBuffer_Release(&view);
    if (result == JSON_FAST && long_integer) {
        result = JSON_LONG_INTEGER;
    }
    return PyLong_FromLong(result);
}

/* ------------------------------------------------------------------------ */
/* frame splitting                                                           */
/* ------------------------------------------------------------------------ */

/*
 * split_frames(buffer, start, length, max_frame) -> (frames, start, length,
 * oversized): the payloads of the whole length-prefixed frames (u32 little
 * endian) in buffer from start on. `length` is the declared length of the
 * frame at start when its prefix was read before, else -1; the result's
 * `start` and `length` say the same of the first frame not complete. A
 * prefix above max_frame stops the split: oversized is then true and
 * `length` that prefix's value.
 */
static PyObject *
oxiwire_split_frames(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t start;
    long long length, max_frame;
    const unsigned char *data;
    Py_ssize_t end;
    int oversized = 0;
    PyObject *frames, *result;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "split_frames() takes exactly 4 arguments");
        return NULL;
    }
    start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    length = PyLong_AsLongLong(args[2]);
    if (length == -1 && PyErr_Occurred()) {
        return NULL;
    }
    max_frame = PyLong_AsLongLong(args[3]);
    if (max_frame == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    data = (const unsigned char *)view.buf;
    end = view.len;
    if (start < 0 || start > end) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "split_frames(): start outside the buffer");
        return NULL;
    }
    frames = PyList_New(0);
    if (frames == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    for (;;) {
        PyObject *payload;
        if (length < 0) {
            if (end - start < 4) {
                break;
            }
            length = (long long)data[start] | ((long long)data[start + 1] << 8) |
                     ((long long)data[start + 2] << 16) | ((long long)data[start + 3] << 24);
            if (length > max_frame) {
                oversized = 1;
                break;
            }
        }
        if ((long long)(end - start - 4) < length) {
            break;
        }
        payload = PyBytes_FromStringAndSize((const char *)data + start + 4, (Py_ssize_t)length);
        if (payload == NULL || PyList_Append(frames, payload) < 0) {
            Py_XDECREF(payload);
            Py_DECREF(frames);
            PyBuffer_Release(&view);
            return NULL;
        }
        Py_DECREF(payload);
        start += 4 + (Py_ssize_t)length;
        length = -1;
    }
    PyBuffer_Release(&view);
    result = Py_BuildValue("(NnLO)", frames, start, length, oversized ? Py_True : Py_False);
    return result;
}

/* ------------------------------------------------------------------------ */
/* module                                                                    */
/* ------------------------------------------------------------------------ */

static PyMethodDef oxiwire_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))oxiwire_encode, METH_FASTCALL,
     "encode(value, header=b'') -> bytes: header followed by one tagged OxiWire value."},
    {"decode", (PyCFunction)(void (*)(void))oxiwire_decode, METH_FASTCALL,
     "decode(data, offset, max_depth) -> object: the tagged value at data[offset]."},
    {"json_scan", (PyCFunction)(void (*)(void))oxiwire_json_scan, METH_FASTCALL,
     "json_scan(data, limit) -> int: 1 if JSON text nests deeper than limit, "
     "else 2 if it holds an integer literal of 19+ digits, else 0."},
    {"split_frames", (PyCFunction)(void (*)(void))oxiwire_split_frames, METH_FASTCALL,
     "split_frames(buffer, start, length, max_frame) -> (frames, start, length, oversized): "
     "the whole length-prefixed frames from start on."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef oxiwire_module = {
    PyModuleDef_HEAD_INIT,
    "oxidb.wire._oxiwire",
    "The OxiWire value codec in C; see oxidb.wire._oxiwire_py for the reference.",
    -1,
    oxiwire_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__oxiwire(void)
{
    PyObject *module;
    json_scan_init();
    module = PyModule_Create(&oxiwire_module);
    if (module == NULL) {
        return NULL;
    }
    OxiWireError = PyErr_NewExceptionWithDoc(
        "oxidb.wire._oxiwire.OxiWireError",
        "A malformed OxiWire value; str() is upstream's error text.",
        PyExc_ValueError, NULL);
    if (OxiWireError == NULL || PyModule_AddObjectRef(module, "OxiWireError", OxiWireError) < 0 ||
        PyModule_AddIntMacro(module, JSON_FAST) < 0 ||
        PyModule_AddIntMacro(module, JSON_TOO_DEEP) < 0 ||
        PyModule_AddIntMacro(module, JSON_LONG_INTEGER) < 0) {
        Py_XDECREF(OxiWireError);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
