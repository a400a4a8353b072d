/* Bit packing for codecs v3 and v4, compiled: the same bytes as app/codecs/bitpack.py's numpy path (which
 * defines the layout and serves alone when this module is not built).
 *
 * pack(values, width) takes a contiguous buffer of little-endian uint32 values, each below 2^width, and
 * returns them packed at `width` bits (value i at bits [i * width, (i + 1) * width), little-endian);
 * unpack(blob, count, width, all_ones_to_max) returns the count values as little-endian uint32 bytes, the
 * all-ones value 2^width - 1 read as 2^32 - 1 (-1 as int32) when all_ones_to_max is true.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_bits.h"

static uint32_t load_u32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void store_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static size_t packed_size(size_t count, int width) { return (count * (size_t)width + 7) / 8; }

static PyObject *pack(PyObject *self, PyObject *args) {
    Py_buffer in;
    int width;
    if (!PyArg_ParseTuple(args, "y*i", &in, &width)) return NULL;
    if (width < 1 || width > 32 || in.len % 4) {
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_ValueError, "pack takes uint32 values and a width of 1-32 bits");
        return NULL;
    }
    size_t count = (size_t)in.len / 4, size = packed_size(count, width);
    /* 8 spare bytes so each value's bits can be OR-ed in as one 64-bit word. */
    unsigned char *buf = calloc(size + 8, 1);
    if (!buf) {
        PyBuffer_Release(&in);
        return PyErr_NoMemory();
    }
    const unsigned char *src = in.buf;
    uint64_t limit = ((uint64_t)1) << width;
    uint64_t bit = 0;
    for (size_t i = 0; i < count; i++, bit += (uint64_t)width) {
        uint64_t value = load_u32(src + 4 * i);
        if (value >= limit) {
            free(buf);
            PyBuffer_Release(&in);
            PyErr_SetString(PyExc_ValueError, "a value does not fit the width");
            return NULL;
        }
        uint64_t shifted = value << (bit & 7);
        unsigned char *at = buf + (bit >> 3);
        for (int j = 0; shifted; j++, shifted >>= 8) at[j] |= (unsigned char)shifted;
    }
    PyBuffer_Release(&in);
    PyObject *out = PyBytes_FromStringAndSize((const char *)buf, (Py_ssize_t)size);
    free(buf);
    return out;
}

static PyObject *unpack(PyObject *self, PyObject *args) {
    Py_buffer in;
    Py_ssize_t count;
    int width, all_ones_to_max;
    if (!PyArg_ParseTuple(args, "y*nip", &in, &count, &width, &all_ones_to_max)) return NULL;
    if (width < 1 || width > 32 || count < 0 || (size_t)in.len != packed_size((size_t)count, width)) {
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_ValueError, "the blob does not hold exactly count values of that width");
        return NULL;
    }
    unsigned char *padded = calloc((size_t)in.len + 8, 1);
    PyObject *out = padded ? PyBytes_FromStringAndSize(NULL, count * 4) : NULL;
    if (!out) {
        free(padded);
        PyBuffer_Release(&in);
        return padded ? NULL : PyErr_NoMemory();
    }
    memcpy(padded, in.buf, (size_t)in.len);
    PyBuffer_Release(&in);
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    uint64_t mask = (((uint64_t)1) << width) - 1, bit = 0;
    for (Py_ssize_t i = 0; i < count; i++, bit += (uint64_t)width) {
        /* width + (bit & 7) <= 39 bits: one 64-bit read holds the value. */
        uint32_t value = (uint32_t)((read64(padded + (bit >> 3)) >> (bit & 7)) & mask);
        if (all_ones_to_max && value == mask) value = 0xFFFFFFFFu;
        store_u32(o + 4 * i, value);
    }
    free(padded);
    return out;
}

static PyMethodDef methods[] = {
    {"pack", pack, METH_VARARGS, "pack(uint32 values, width) -> packed bytes (app/codecs/bitpack.py's layout)."},
    {"unpack", unpack, METH_VARARGS,
     "unpack(blob, count, width, all_ones_to_max) -> count little-endian uint32 values as bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_bitpack", "Bit packing for top-k codecs v3 and v4.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__bitpack(void) { return PyModule_Create(&module); }
