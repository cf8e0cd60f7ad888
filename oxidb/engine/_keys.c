/*
 * Index keys of a document in C: the fast path of oxidb.engine.keys.keys_at.
 *
 * keys_at(doc, paths) walks each split objects-only path of a document and
 * encodes what it finds exactly as the pure-Python keys_at does. Only the
 * common cases are encoded here: a missing path, an int of at most 2**53 in
 * magnitude and a finite float. A str goes to the configured string-key
 * function (cached in Python, it knows dates) and anything else, a bool,
 * null, a large int, an array or an object, to the configured value-key
 * function (keys.key_of_value), so the total order lives in one place.
 * tests/test_engine_keys_c.py checks with Hypothesis that both give the
 * same keys.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Set by configure(): the number rank's byte, the key of a missing path,
 * the string-key and the value-key functions. */
static unsigned char number_rank;
static PyObject *null_key = NULL;
static PyObject *str_key = NULL;
static PyObject *value_key = NULL;

/* Integers of at most this magnitude are exact doubles. */
#define EXACT_INT (1LL << 53)

static PyObject *
number_key(double number)
{
    char out[10];
    uint64_t bits;
    int i;
    if (number == 0.0) {
        number = 0.0; /* -0.0 keys as 0.0 */
    }
    memcpy(&bits, &number, sizeof bits);
    bits = (bits >> 63) ? ~bits : bits | (1ULL << 63);
    out[0] = (char)number_rank;
    for (i = 0; i < 8; i++) {
        out[1 + i] = (char)(bits >> (56 - 8 * i));
    }
    out[9] = 1; /* no integer remainder */
    return PyBytes_FromStringAndSize(out, sizeof out);
}

/* The key of a found value (a new reference), or NULL with an exception. */
static PyObject *
value_key_of(PyObject *value)
{
    if (PyUnicode_CheckExact(value)) {
        return PyObject_CallOneArg(str_key, value);
    }
    if (PyFloat_CheckExact(value)) {
        double number = PyFloat_AS_DOUBLE(value);
        if (isfinite(number)) {
            return number_key(number);
        }
    }
    else if (PyLong_CheckExact(value)) {
        int overflow = 0;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (number == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (!overflow && number >= -EXACT_INT && number <= EXACT_INT) {
            return number_key((double)number);
        }
    }
    return PyObject_CallOneArg(value_key, value);
}

static PyObject *
keys_keys_at(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *doc, *paths, *out;
    Py_ssize_t n, i;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "keys_at(doc, paths) takes 2 arguments");
        return NULL;
    }
    if (str_key == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "keys_at before configure()");
        return NULL;
    }
    doc = args[0];
    paths = args[1];
    if (!PyList_CheckExact(paths)) {
        PyErr_SetString(PyExc_TypeError, "paths must be a list of tuples of str");
        return NULL;
    }
    n = PyList_GET_SIZE(paths);
    out = PyTuple_New(n);
    if (out == NULL) {
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *parts = PyList_GET_ITEM(paths, i);
        PyObject *current = doc, *key;
        Py_ssize_t j, steps;
        if (!PyTuple_CheckExact(parts)) {
            PyErr_SetString(PyExc_TypeError, "paths must be a list of tuples of str");
            Py_DECREF(out);
            return NULL;
        }
        steps = PyTuple_GET_SIZE(parts);
        for (j = 0; j < steps && current != NULL; j++) {
            if (!PyDict_CheckExact(current)) {
                current = NULL; /* not found: only objects are walked */
                break;
            }
            current = PyDict_GetItemWithError(current, PyTuple_GET_ITEM(parts, j));
            if (current == NULL && PyErr_Occurred()) {
                Py_DECREF(out);
                return NULL;
            }
        }
        if (current == NULL) {
            key = Py_NewRef(null_key);
        }
        else {
            /* Borrowed from the document, which the caller holds; keep it
             * alive across the calls into Python all the same. */
            Py_INCREF(current);
            key = value_key_of(current);
            Py_DECREF(current);
            if (key == NULL) {
                Py_DECREF(out);
                return NULL;
            }
        }
        PyTuple_SET_ITEM(out, i, key);
    }
    return out;
}

static PyObject *
keys_configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long rank;
    if (nargs != 4 || !PyLong_Check(args[0]) || !PyBytes_Check(args[1]) || !PyCallable_Check(args[2]) ||
        !PyCallable_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "configure(number_rank, null_key, str_key, value_key)");
        return NULL;
    }
    rank = PyLong_AsLong(args[0]);
    if (rank < 0 || rank > 255) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "number_rank must be a byte");
        }
        return NULL;
    }
    number_rank = (unsigned char)rank;
    Py_XSETREF(null_key, Py_NewRef(args[1]));
    Py_XSETREF(str_key, Py_NewRef(args[2]));
    Py_XSETREF(value_key, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}

static PyMethodDef keys_methods[] = {
    {"keys_at", (PyCFunction)(void (*)(void))keys_keys_at, METH_FASTCALL,
     "keys_at(doc, paths) -> tuple[bytes, ...]: the key at each split path (oxidb.engine.keys.keys_at)."},
    {"configure", (PyCFunction)(void (*)(void))keys_configure, METH_FASTCALL,
     "configure(number_rank, null_key, str_key, value_key): what keys_at encodes with."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef keys_module = {
    PyModuleDef_HEAD_INIT,
    "oxidb.engine._keys",
    "Index keys of documents in C; see oxidb.engine.keys.keys_at for the reference.",
    -1,
    keys_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__keys(void)
{
    return PyModule_Create(&keys_module);
}
