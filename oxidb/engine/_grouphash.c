/*
 * The hash aggregate of a pushed-down $group in C: the fast path of
 * oxidb.engine.grouphash.hash_rows_python, which documents the rows it reads
 * and the figures it gives. tests/test_engine_grouphash.py checks with
 * Hypothesis that both give the same result.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KIND_SUM 0
#define KIND_MIN 1
#define KIND_MAX 2
#define MAX_DIGITS 18
#define RECORD_END 0x1e

typedef struct {
    long long numbers, fractions, others;
    double total, magnitude;
    int has_int, has_float;
    long long extreme_int;
    double extreme_float;
} Stats;

typedef struct {
    long long first_id, count, size;
} Group;

/* A parsed value: missing or null, another value, an integer, a float, a
 * number read from a key (a double, integer or not: for sums only). */
enum { V_NONE, V_OTHER, V_INT, V_FLOAT, V_KEY };

/* oxidb.engine.values.RANK_NULL and RANK_NUMBER, the first byte of a key. */
#define NULL_RANK 0
#define NUMBER_RANK 2

typedef struct {
    int type;
    long long i;
    double f;
} Value;

/* Whether s[0:n] is a JSON number; *is_float: it has a fraction or an exponent. */
static int
json_number(const char *s, Py_ssize_t n, int *is_float)
{
    Py_ssize_t k = 0, start;
    *is_float = 0;
    if (k < n && s[k] == '-') {
        k++;
    }
    if (k < n && s[k] == '0') {
        k++;
    }
    else {
        start = k;
        while (k < n && s[k] >= '0' && s[k] <= '9') {
            k++;
        }
        if (k == start || s[start] == '0') {
            return 0;
        }
    }
    if (k < n && s[k] == '.') {
        k++;
        start = k;
        while (k < n && s[k] >= '0' && s[k] <= '9') {
            k++;
        }
        if (k == start) {
            return 0;
        }
        *is_float = 1;
    }
    if (k < n && (s[k] == 'e' || s[k] == 'E')) {
        k++;
        if (k < n && (s[k] == '+' || s[k] == '-')) {
            k++;
        }
        start = k;
        while (k < n && s[k] >= '0' && s[k] <= '9') {
            k++;
        }
        if (k == start) {
            return 0;
        }
        *is_float = 1;
    }
    return k == n;
}

/* A value read from an index key column (oxidb.engine.keys): missing or
 * null, a number that is a double exactly, another value; -1 for a number
 * the key holds past a double (an integer past 2**53). */
static int
parse_key(const unsigned char *b, Py_ssize_t n, Value *out)
{
    uint64_t bits = 0;
    int i;
    if (n == 0 || (n == 1 && b[0] == NULL_RANK)) {
        out->type = V_NONE;
        return 0;
    }
    if (b[0] != NUMBER_RANK) {
        out->type = V_OTHER;
        return 0;
    }
    if (n != 10 || b[9] != 1) {
        return -1;
    }
    for (i = 1; i < 9; i++) {
        bits = (bits << 8) | b[i];
    }
    bits = (bits >> 63) ? bits & ~(1ULL << 63) : ~bits;
    memcpy(&out->f, &bits, sizeof bits);
    out->type = V_KEY;
    return 0;
}

/* Parse a value's JSON text, or its key (bytes); 0 on success, -1 to hand
 * the group to Python, -2 with an exception set. */
static int
parse_value(PyObject *text, Value *out)
{
    const char *s;
    Py_ssize_t n, k;
    int negative = 0, is_float = 0;
    Py_UCS4 first;
    long long number = 0;
    if (text == Py_None) {
        out->type = V_NONE;
        return 0;
    }
    if (PyBytes_Check(text)) {
        return parse_key((const unsigned char *)PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text), out);
    }
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "a value must be str, bytes or None");
        return -2;
    }
    if (PyUnicode_GET_LENGTH(text) == 0) {
        out->type = V_NONE;
        return 0;
    }
    first = PyUnicode_READ_CHAR(text, 0);
    if (first == '"' || first == '[' || first == '{' || first == 't' || first == 'f') {
        out->type = V_OTHER;
        return 0;
    }
    s = PyUnicode_AsUTF8AndSize(text, &n);
    if (s == NULL) {
        PyErr_Clear();
        return -1;
    }
    if (n == 4 && memcmp(s, "null", 4) == 0) {
        out->type = V_NONE;
        return 0;
    }
    if (!json_number(s, n, &is_float)) {
        return -1;
    }
    if (is_float) {
        char *end;
        out->f = PyOS_string_to_double(s, &end, NULL);
        if ((out->f == -1.0 && PyErr_Occurred()) || end != s + n) {
            PyErr_Clear();
            return -1;
        }
        out->type = V_FLOAT;
        return 0;
    }
    k = 0;
    if (s[0] == '-') {
        negative = 1;
        k = 1;
    }
    if (n - k > MAX_DIGITS) {
        return -1;
    }
    for (; k < n; k++) {
        number = number * 10 + (s[k] - '0');
    }
    out->type = V_INT;
    out->i = negative ? -number : number;
    return 0;
}

static Group *sort_groups; /* the array qsort's comparison reads (the GIL is held) */

static int
by_first_id(const void *a, const void *b)
{
    long long x = sort_groups[*(const Py_ssize_t *)a].first_id;
    long long y = sort_groups[*(const Py_ssize_t *)b].first_id;
    return (x > y) - (x < y);
}

static PyObject *
stats_items(PyObject *out, Py_ssize_t at, const Stats *st, int kind)
{
    if (kind == KIND_SUM) {
        PyTuple_SET_ITEM(out, at, PyLong_FromLongLong(st->numbers));
        PyTuple_SET_ITEM(out, at + 1, PyFloat_FromDouble(st->total));
        PyTuple_SET_ITEM(out, at + 2, PyFloat_FromDouble(st->magnitude));
        PyTuple_SET_ITEM(out, at + 3, PyLong_FromLongLong(st->fractions));
    }
    else {
        PyTuple_SET_ITEM(out, at, st->has_int ? PyLong_FromLongLong(st->extreme_int) : Py_NewRef(Py_None));
        PyTuple_SET_ITEM(out, at + 1, st->has_float ? PyFloat_FromDouble(st->extreme_float) : Py_NewRef(Py_None));
        PyTuple_SET_ITEM(out, at + 2, PyLong_FromLongLong(st->others));
    }
    return out;
}

/* The state of one aggregate: the specs, each group's figures, the index
 * from a key to its group. */
typedef struct {
    Py_ssize_t nspecs, nvalues, ngroups, capacity;
    int *columns, *kinds;
    Value *values; /* the current row's, parsed */
    PyObject *index;
    Group *groups;
    Stats *stats;
} Agg;

static void
agg_free(Agg *a)
{
    Py_CLEAR(a->index);
    PyMem_Free(a->columns);
    PyMem_Free(a->kinds);
    PyMem_Free(a->values);
    PyMem_Free(a->groups);
    PyMem_Free(a->stats);
    memset(a, 0, sizeof *a);
}

/* Read the specs; 0, or -1 with an exception set. */
static int
agg_init(Agg *a, PyObject *specs)
{
    Py_ssize_t i;
    memset(a, 0, sizeof *a);
    if (!PyTuple_Check(specs)) {
        PyErr_SetString(PyExc_TypeError, "specs must be a tuple of (column, kind)");
        return -1;
    }
    a->nspecs = PyTuple_GET_SIZE(specs);
    a->columns = PyMem_Calloc(a->nspecs + 1, sizeof(int));
    a->kinds = PyMem_Calloc(a->nspecs + 1, sizeof(int));
    if (a->columns == NULL || a->kinds == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < a->nspecs; i++) {
        PyObject *spec = PyTuple_GET_ITEM(specs, i);
        long column, kind;
        if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 2) {
            PyErr_SetString(PyExc_TypeError, "a spec is a (column, kind) tuple");
            return -1;
        }
        column = PyLong_AsLong(PyTuple_GET_ITEM(spec, 0));
        kind = PyLong_AsLong(PyTuple_GET_ITEM(spec, 1));
        if (PyErr_Occurred()) {
            return -1;
        }
        if (column < 0 || column > 1000 || kind < KIND_SUM || kind > KIND_MAX) {
            PyErr_SetString(PyExc_ValueError, "a spec's column or kind is out of range");
            return -1;
        }
        a->columns[i] = (int)column;
        a->kinds[i] = (int)kind;
        if (column + 1 > a->nvalues) {
            a->nvalues = column + 1;
        }
    }
    a->values = PyMem_Calloc(a->nvalues + 1, sizeof(Value));
    a->index = PyDict_New();
    if (a->values == NULL || a->index == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        return -1;
    }
    return 0;
}

/* Count one row (its values parsed into a->values) into its key's group;
 * 0, or -1 with an exception set. */
static int
agg_add(Agg *a, long long doc_id, long long size, PyObject *key)
{
    PyObject *found = PyDict_GetItemWithError(a->index, key);
    Py_ssize_t g, i;
    Group *group;
    Stats *st;
    if (found == NULL) {
        PyObject *number;
        if (PyErr_Occurred()) {
            return -1;
        }
        if (a->ngroups == a->capacity) {
            Py_ssize_t more = a->capacity ? a->capacity * 2 : 64;
            Group *g2 = PyMem_Realloc(a->groups, more * sizeof(Group));
            Stats *s2;
            if (g2 == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            a->groups = g2;
            s2 = PyMem_Realloc(a->stats, more * (a->nspecs + 1) * sizeof(Stats));
            if (s2 == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            a->stats = s2;
            a->capacity = more;
        }
        g = a->ngroups;
        number = PyLong_FromSsize_t(g);
        if (number == NULL || PyDict_SetItem(a->index, key, number) < 0) {
            Py_XDECREF(number);
            return -1;
        }
        Py_DECREF(number);
        a->ngroups++;
        group = &a->groups[g];
        group->first_id = doc_id;
        group->count = 0;
        group->size = 0;
        memset(&a->stats[g * (a->nspecs + 1)], 0, (a->nspecs + 1) * sizeof(Stats));
    }
    else {
        g = PyLong_AsSsize_t(found);
        group = &a->groups[g];
        if (doc_id < group->first_id) {
            group->first_id = doc_id;
        }
    }
    group->count++;
    group->size += size;
    st = &a->stats[g * (a->nspecs + 1)];
    for (i = 0; i < a->nspecs; i++, st++) {
        const Value *v = &a->values[a->columns[i]];
        int kind = a->kinds[i];
        if (v->type == V_NONE) {
            continue;
        }
        if (v->type == V_OTHER) {
            if (kind != KIND_SUM) {
                st->others++;
            }
            continue;
        }
        if (kind == KIND_SUM) {
            double x = v->type == V_INT ? (double)v->i : v->f;
            st->numbers++;
            st->total += x;
            st->magnitude += fabs(x);
            if (v->type != V_INT && isfinite(x) && x != floor(x)) {
                st->fractions++;
            }
        }
        else if (v->type == V_KEY) {
            PyErr_SetString(PyExc_ValueError, "a $min or $max reads a value's text, not its key");
            return -1;
        }
        else if (v->type == V_INT) {
            if (!st->has_int || (kind == KIND_MAX ? v->i > st->extreme_int : v->i < st->extreme_int)) {
                st->extreme_int = v->i;
                st->has_int = 1;
            }
        }
        else {
            if (!st->has_float || (kind == KIND_MAX ? v->f > st->extreme_float : v->f < st->extreme_float)) {
                st->extreme_float = v->f;
                st->has_float = 1;
            }
        }
    }
    return 0;
}

/* The groups' figures in order of their first _id (a new list), or NULL. */
static PyObject *
agg_result(Agg *a)
{
    Py_ssize_t *order, i, j, width = 2;
    PyObject *result;
    for (j = 0; j < a->nspecs; j++) {
        width += a->kinds[j] == KIND_SUM ? 4 : 3;
    }
    width += 1;
    order = PyMem_Calloc(a->ngroups + 1, sizeof(Py_ssize_t));
    if (order == NULL) {
        return PyErr_NoMemory();
    }
    for (i = 0; i < a->ngroups; i++) {
        order[i] = i;
    }
    sort_groups = a->groups;
    qsort(order, (size_t)a->ngroups, sizeof(Py_ssize_t), by_first_id);
    sort_groups = NULL;
    result = PyList_New(a->ngroups);
    for (i = 0; result != NULL && i < a->ngroups; i++) {
        const Group *group = &a->groups[order[i]];
        const Stats *st = &a->stats[order[i] * (a->nspecs + 1)];
        Py_ssize_t at = 2;
        PyObject *out = PyTuple_New(width);
        if (out == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyTuple_SET_ITEM(out, 0, PyLong_FromLongLong(group->first_id));
        PyTuple_SET_ITEM(out, 1, PyLong_FromLongLong(group->count));
        for (j = 0; j < a->nspecs; j++) {
            stats_items(out, at, &st[j], a->kinds[j]);
            at += a->kinds[j] == KIND_SUM ? 4 : 3;
        }
        PyTuple_SET_ITEM(out, at, PyLong_FromLongLong(group->size));
        PyList_SET_ITEM(result, i, out);
        for (j = 0; j < width; j++) {
            if (PyTuple_GET_ITEM(out, j) == NULL) {
                Py_CLEAR(result);
                break;
            }
        }
    }
    PyMem_Free(order);
    return result;
}

static PyObject *
grouphash_hash_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *iter = NULL, *row, *result = NULL;
    Py_ssize_t i, width;
    Agg a;
    int bail = 0;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "hash_rows(rows, specs) takes an iterable and a tuple of (column, kind)");
        return NULL;
    }
    if (agg_init(&a, args[1]) < 0) {
        goto done;
    }
    iter = PyObject_GetIter(args[0]);
    if (iter == NULL) {
        goto done;
    }
    width = 3 + a.nvalues;
    while ((row = PyIter_Next(iter)) != NULL) {
        long long doc_id, size;
        int rc = 0;
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != width) {
            PyErr_SetString(PyExc_TypeError, "a row has the wrong shape");
            Py_DECREF(row);
            goto done;
        }
        doc_id = PyLong_AsLongLong(PyTuple_GET_ITEM(row, 0));
        size = PyLong_AsLongLong(PyTuple_GET_ITEM(row, 1));
        if (PyErr_Occurred()) {
            Py_DECREF(row);
            goto done;
        }
        for (i = 0; i < a.nvalues && rc == 0; i++) {
            rc = parse_value(PyTuple_GET_ITEM(row, 3 + i), &a.values[i]);
        }
        if (rc == 0) {
            rc = agg_add(&a, doc_id, size, PyTuple_GET_ITEM(row, 2)) < 0 ? -2 : 0;
        }
        Py_DECREF(row);
        if (rc == -2) {
            goto done;
        }
        if (rc == -1) {
            bail = 1;
            break;
        }
    }
    if (PyErr_Occurred()) {
        goto done;
    }
    result = bail ? Py_NewRef(Py_None) : agg_result(&a);

done:
    Py_XDECREF(iter);
    agg_free(&a);
    return result;
}

/* The code point a char() of SQL wrote at *p (UTF-8), advancing *p; -1 if malformed. */
static long
read_length(const unsigned char **p, const unsigned char *end)
{
    const unsigned char *s = *p;
    long c;
    int more, k;
    if (s >= end) {
        return -1;
    }
    if (s[0] < 0x80) {
        *p = s + 1;
        return s[0];
    }
    if ((s[0] & 0xE0) == 0xC0) {
        c = s[0] & 0x1F;
        more = 1;
    }
    else if ((s[0] & 0xF0) == 0xE0) {
        c = s[0] & 0x0F;
        more = 2;
    }
    else if ((s[0] & 0xF8) == 0xF0) {
        c = s[0] & 0x07;
        more = 3;
    }
    else {
        return -1;
    }
    if (end - s < 1 + more) {
        return -1;
    }
    for (k = 1; k <= more; k++) {
        if ((s[k] & 0xC0) != 0x80) {
            return -1;
        }
        c = (c << 6) | (s[k] & 0x3F);
    }
    *p = s + 1 + more;
    return c;
}

/* A decimal integer ended by RECORD_END at *p, advancing *p past it; 0, or -1 if malformed. */
static int
read_decimal(const unsigned char **p, const unsigned char *end, long long *out)
{
    const unsigned char *s = *p;
    int negative = 0, digits = 0;
    long long number = 0;
    if (s < end && *s == '-') {
        negative = 1;
        s++;
    }
    while (s < end && *s >= '0' && *s <= '9' && digits < MAX_DIGITS) {
        number = number * 10 + (*s++ - '0');
        digits++;
    }
    if (digits == 0 || s >= end || *s != RECORD_END) {
        return -1;
    }
    *out = negative ? -number : number;
    *p = s + 1;
    return 0;
}

static PyObject *
grouphash_hash_blobs(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *iter = NULL, *blob, *result = NULL;
    Py_ssize_t i;
    long long records = 0;
    int sized;
    Agg a;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "hash_blobs(blobs, specs, sized) takes 3 arguments");
        return NULL;
    }
    if (agg_init(&a, args[1]) < 0) {
        goto done;
    }
    sized = PyObject_IsTrue(args[2]);
    if (sized < 0) {
        goto done;
    }
    iter = PyObject_GetIter(args[0]);
    if (iter == NULL) {
        goto done;
    }
    while ((blob = PyIter_Next(iter)) != NULL) {
        const unsigned char *p, *end;
        if (blob == Py_None) {
            Py_DECREF(blob);
            continue;
        }
        if (!PyBytes_Check(blob)) {
            PyErr_SetString(PyExc_TypeError, "a blob must be bytes or None");
            Py_DECREF(blob);
            goto done;
        }
        p = (const unsigned char *)PyBytes_AS_STRING(blob);
        end = p + PyBytes_GET_SIZE(blob);
        while (p < end) {
            long length = read_length(&p, end);
            long long doc_id, size = 0;
            PyObject *key;
            int rc = 0;
            if (length < 0 || end - p < length) {
                goto malformed;
            }
            key = PyBytes_FromStringAndSize((const char *)p, length);
            if (key == NULL) {
                Py_DECREF(blob);
                goto done;
            }
            p += length;
            if (read_decimal(&p, end, &doc_id) < 0 || (sized && read_decimal(&p, end, &size) < 0)) {
                Py_DECREF(key);
                goto malformed;
            }
            for (i = 0; i < a.nvalues && rc == 0; i++) {
                length = read_length(&p, end);
                if (length < 0 || end - p < length) {
                    Py_DECREF(key);
                    goto malformed;
                }
                rc = parse_key(p, length, &a.values[i]);
                p += length;
            }
            if (rc == 0) {
                rc = agg_add(&a, doc_id, size, key);
            }
            Py_DECREF(key);
            if (rc == -1 && PyErr_Occurred()) {
                Py_DECREF(blob);
                goto done;
            }
            if (rc == -1) {
                Py_DECREF(blob);
                result = Py_NewRef(Py_None);
                goto done;
            }
            records++;
        }
        Py_DECREF(blob);
    }
    if (PyErr_Occurred()) {
        goto done;
    }
    result = agg_result(&a);
    if (result != NULL) {
        PyObject *pair = Py_BuildValue("(NL)", result, records);
        result = pair;
    }
    goto done;

malformed:
    PyErr_SetString(PyExc_ValueError, "a malformed record");
    Py_DECREF(blob);

done:
    Py_XDECREF(iter);
    agg_free(&a);
    return result;
}

static PyMethodDef grouphash_methods[] = {
    {"hash_rows", (PyCFunction)(void (*)(void))grouphash_hash_rows, METH_FASTCALL,
     "hash_rows(rows, specs) -> list[tuple] | None: see oxidb.engine.grouphash.hash_rows_python."},
    {"hash_blobs", (PyCFunction)(void (*)(void))grouphash_hash_blobs, METH_FASTCALL,
     "hash_blobs(blobs, specs, sized) -> (list[tuple], int) | None: see oxidb.engine.grouphash.hash_blobs_python."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef grouphash_module = {
    PyModuleDef_HEAD_INIT,
    "oxidb.engine._grouphash",
    "The $group hash aggregate in C; see oxidb.engine.grouphash for the reference.",
    -1,
    grouphash_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__grouphash(void)
{
    PyObject *module = PyModule_Create(&grouphash_module);
    if (module != NULL && (PyModule_AddIntConstant(module, "NULL_RANK", NULL_RANK) < 0 ||
                           PyModule_AddIntConstant(module, "NUMBER_RANK", NUMBER_RANK) < 0)) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
