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
parse_key(PyObject *key, Value *out)
{
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(key);
    Py_ssize_t n = PyBytes_GET_SIZE(key);
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
        return parse_key(text, out);
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

static PyObject *
grouphash_hash_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *specs, *iter = NULL, *index = NULL, *row, *result = NULL;
    Py_ssize_t nspecs, nvalues = 0, i, ngroups = 0, capacity = 0, width, at;
    int *columns = NULL, *kinds = NULL;
    Value *values = NULL;
    Group *groups = NULL;
    Stats *stats = NULL;
    Py_ssize_t *order = NULL;
    int bail = 0;

    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "hash_rows(rows, specs) takes an iterable and a tuple of (column, kind)");
        return NULL;
    }
    specs = args[1];
    nspecs = PyTuple_GET_SIZE(specs);
    columns = PyMem_Calloc(nspecs + 1, sizeof(int));
    kinds = PyMem_Calloc(nspecs + 1, sizeof(int));
    if (columns == NULL || kinds == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < nspecs; i++) {
        PyObject *spec = PyTuple_GET_ITEM(specs, i);
        long column, kind;
        if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 2) {
            PyErr_SetString(PyExc_TypeError, "a spec is a (column, kind) tuple");
            goto done;
        }
        column = PyLong_AsLong(PyTuple_GET_ITEM(spec, 0));
        kind = PyLong_AsLong(PyTuple_GET_ITEM(spec, 1));
        if (PyErr_Occurred()) {
            goto done;
        }
        if (column < 0 || column > 1000 || kind < KIND_SUM || kind > KIND_MAX) {
            PyErr_SetString(PyExc_ValueError, "a spec's column or kind is out of range");
            goto done;
        }
        columns[i] = (int)column;
        kinds[i] = (int)kind;
        if (column + 1 > nvalues) {
            nvalues = column + 1;
        }
    }
    values = PyMem_Calloc(nvalues + 1, sizeof(Value));
    index = PyDict_New();
    iter = PyObject_GetIter(args[0]);
    if (values == NULL || index == NULL || iter == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        goto done;
    }
    width = 3 + nvalues;
    while ((row = PyIter_Next(iter)) != NULL) {
        PyObject *key, *found;
        long long doc_id, size;
        Py_ssize_t g;
        Group *group;
        Stats *st;
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
        for (i = 0; i < nvalues; i++) {
            int rc = parse_value(PyTuple_GET_ITEM(row, 3 + i), &values[i]);
            if (rc == -2) {
                Py_DECREF(row);
                goto done;
            }
            if (rc == -1) {
                bail = 1;
                break;
            }
        }
        if (bail) {
            Py_DECREF(row);
            break;
        }
        key = PyTuple_GET_ITEM(row, 2);
        found = PyDict_GetItemWithError(index, key);
        if (found == NULL) {
            PyObject *number;
            if (PyErr_Occurred()) {
                Py_DECREF(row);
                goto done;
            }
            if (ngroups == capacity) {
                Py_ssize_t more = capacity ? capacity * 2 : 64;
                Group *g2 = PyMem_Realloc(groups, more * sizeof(Group));
                Stats *s2;
                if (g2 == NULL) {
                    PyErr_NoMemory();
                    Py_DECREF(row);
                    goto done;
                }
                groups = g2;
                s2 = PyMem_Realloc(stats, more * (nspecs + 1) * sizeof(Stats));
                if (s2 == NULL) {
                    PyErr_NoMemory();
                    Py_DECREF(row);
                    goto done;
                }
                stats = s2;
                capacity = more;
            }
            g = ngroups;
            number = PyLong_FromSsize_t(g);
            if (number == NULL || PyDict_SetItem(index, key, number) < 0) {
                Py_XDECREF(number);
                Py_DECREF(row);
                goto done;
            }
            Py_DECREF(number);
            ngroups++;
            group = &groups[g];
            group->first_id = doc_id;
            group->count = 0;
            group->size = 0;
            memset(&stats[g * (nspecs + 1)], 0, (nspecs + 1) * sizeof(Stats));
        }
        else {
            g = PyLong_AsSsize_t(found);
            group = &groups[g];
            if (doc_id < group->first_id) {
                group->first_id = doc_id;
            }
        }
        Py_DECREF(row);
        group->count++;
        group->size += size;
        st = &stats[g * (nspecs + 1)];
        for (i = 0; i < nspecs; i++, st++) {
            const Value *v = &values[columns[i]];
            if (v->type == V_NONE) {
                continue;
            }
            if (v->type == V_OTHER) {
                if (kinds[i] != KIND_SUM) {
                    st->others++;
                }
                continue;
            }
            if (kinds[i] == KIND_SUM) {
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
                goto done;
            }
            else if (v->type == V_INT) {
                if (!st->has_int || (kinds[i] == KIND_MAX ? v->i > st->extreme_int : v->i < st->extreme_int)) {
                    st->extreme_int = v->i;
                    st->has_int = 1;
                }
            }
            else {
                if (!st->has_float ||
                    (kinds[i] == KIND_MAX ? v->f > st->extreme_float : v->f < st->extreme_float)) {
                    st->extreme_float = v->f;
                    st->has_float = 1;
                }
            }
        }
    }
    if (PyErr_Occurred()) {
        goto done;
    }
    if (bail) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    order = PyMem_Calloc(ngroups + 1, sizeof(Py_ssize_t));
    if (order == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < ngroups; i++) {
        order[i] = i;
    }
    sort_groups = groups;
    qsort(order, (size_t)ngroups, sizeof(Py_ssize_t), by_first_id);
    sort_groups = NULL;
    result = PyList_New(ngroups);
    if (result == NULL) {
        goto done;
    }
    for (i = 0; i < ngroups; i++) {
        const Group *group = &groups[order[i]];
        const Stats *st = &stats[order[i] * (nspecs + 1)];
        Py_ssize_t size = 3;
        Py_ssize_t j;
        PyObject *out;
        for (j = 0; j < nspecs; j++) {
            size += kinds[j] == KIND_SUM ? 4 : 3;
        }
        out = PyTuple_New(size);
        if (out == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyTuple_SET_ITEM(out, 0, PyLong_FromLongLong(group->first_id));
        PyTuple_SET_ITEM(out, 1, PyLong_FromLongLong(group->count));
        at = 2;
        for (j = 0; j < nspecs; j++) {
            stats_items(out, at, &st[j], kinds[j]);
            at += kinds[j] == KIND_SUM ? 4 : 3;
        }
        PyTuple_SET_ITEM(out, at, PyLong_FromLongLong(group->size));
        for (j = 0; j < size; j++) {
            if (PyTuple_GET_ITEM(out, j) == NULL) {
                Py_DECREF(out);
                Py_CLEAR(result);
                goto done;
            }
        }
        PyList_SET_ITEM(result, i, out);
    }

done:
    Py_XDECREF(iter);
    Py_XDECREF(index);
    PyMem_Free(columns);
    PyMem_Free(kinds);
    PyMem_Free(values);
    PyMem_Free(groups);
    PyMem_Free(stats);
    PyMem_Free(order);
    return result;
}

static PyMethodDef grouphash_methods[] = {
    {"hash_rows", (PyCFunction)(void (*)(void))grouphash_hash_rows, METH_FASTCALL,
     "hash_rows(rows, specs) -> list[tuple] | None: see oxidb.engine.grouphash.hash_rows_python."},
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
