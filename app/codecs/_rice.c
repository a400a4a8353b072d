/* Rice coding for codec v4, compiled: the same bytes as app/codecs/rice.py's numpy path (which defines
 * the layout and serves alone when this module is not built).
 *
 * encode(values) takes a contiguous buffer of little-endian uint16 values and returns the blob;
 * decode(blob, count, run, limit) returns count little-endian uint16 values as bytes, each run of `run`
 * values summed cumulatively (run 1: as written), or raises ValueError when the blob does not hold
 * exactly that many or a sum exceeds `limit`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_bits.h"

#define HEADER 2

static uint32_t load_u16(const unsigned char *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }

static int bit_length(uint64_t x) {
    int n = 0;
    while (x) {
        n++;
        x >>= 1;
    }
    return n;
}

static uint64_t unary_bits(const uint32_t *v, Py_ssize_t n, int r) {
    uint64_t total = (uint64_t)n * (uint64_t)(1 + r);
    for (Py_ssize_t i = 0; i < n; i++) total += v[i] >> r;
    return total;
}

static PyObject *encode(PyObject *self, PyObject *args) {
    Py_buffer in;
    if (!PyArg_ParseTuple(args, "y*", &in)) return NULL;
    if (in.len % 2) {
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_ValueError, "Rice coding takes uint16 values");
        return NULL;
    }
    Py_ssize_t n = in.len / 2;
    if (n == 0) {
        PyBuffer_Release(&in);
        return PyBytes_FromStringAndSize("\0\0", 2);
    }
    uint32_t *v = malloc((size_t)n * sizeof(uint32_t));
    if (!v) {
        PyBuffer_Release(&in);
        return PyErr_NoMemory();
    }
    uint32_t all = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        v[i] = load_u16((const unsigned char *)in.buf + 2 * i);
        all |= v[i];
    }
    PyBuffer_Release(&in);
    int shift = 0;
    if (all)
        while (!((all >> shift) & 1u)) shift++;
    uint64_t sum = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        v[i] >>= shift;
        sum += v[i];
    }
    /* As rice.py: the best of the three parameters around log2 of the mean, the first on ties. */
    double mean = (double)sum / (double)n;
    int guess = bit_length((uint64_t)mean) - 1;
    if (guess < 0) guess = 0;
    if (guess > 16) guess = 16;
    int r = -1;
    uint64_t best = 0;
    for (int c = guess - 1; c <= guess + 1; c++) {
        if (c < 0 || c > 16) continue;
        uint64_t bits = unary_bits(v, n, c);
        if (r < 0 || bits < best) {
            r = c;
            best = bits;
        }
    }
    size_t low_size = r ? ((size_t)n * (size_t)r + 7) / 8 : 0;
    uint64_t unary_size = (best - (uint64_t)n * (uint64_t)r + 7) / 8;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(HEADER + low_size + unary_size));
    if (!out) {
        free(v);
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    memset(o, 0, HEADER + low_size + unary_size);
    o[0] = (unsigned char)shift;
    o[1] = (unsigned char)r;
    unsigned char *low = o + HEADER, *unary = low + low_size;
    uint64_t low_bit = 0, end = 0;
    uint32_t mask = (1u << r) - 1u;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (r) {
            /* r <= 16 bits at a bit offset below 8 span at most 3 bytes. */
            uint32_t lo = (v[i] & mask) << (low_bit & 7);
            size_t at = (size_t)(low_bit >> 3);
            for (int j = 0; j < 3 && at + j < low_size; j++) low[at + j] |= (unsigned char)(lo >> (8 * j));
            low_bit += (uint64_t)r;
        }
        end += v[i] >> r;
        unary[end >> 3] |= (unsigned char)(1u << (end & 7));
        end++;
    }
    free(v);
    return out;
}

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer in;
    Py_ssize_t count, run;
    unsigned long limit;
    if (!PyArg_ParseTuple(args, "y*nnk", &in, &count, &run, &limit)) return NULL;
    const unsigned char *b = in.buf;
    unsigned char *padded = NULL;
    PyObject *out = NULL;
    const char *error = NULL;
    if (count < 0 || run < 1) {
        error = "a negative count or a run below 1";
        goto done;
    }
    if (in.len < HEADER) {
        error = "a Rice blob lacks its header";
        goto done;
    }
    int shift = b[0], r = b[1];
    if (shift > 15 || r > 16) {
        error = "a Rice blob has an impossible header";
        goto done;
    }
    size_t low_size = r ? ((size_t)count * (size_t)r + 7) / 8 : 0;
    if ((size_t)in.len < HEADER + low_size) {
        error = "a Rice blob is shorter than its values";
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, count * 2);
    if (!out || count == 0) goto done;
    /* A copy with 8 zero bytes after it, so every 64-bit read below stays inside it. */
    size_t body = (size_t)in.len - HEADER;
    padded = calloc(body + 8, 1);
    if (!padded) {
        PyErr_NoMemory();
        Py_CLEAR(out);
        goto done;
    }
    memcpy(padded, b + HEADER, body);
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    const unsigned char *low = padded, *unary = padded + low_size;
    size_t unary_size = body - low_size;
    uint64_t low_bit = 0, sum = 0, mask = (((uint64_t)1) << r) - 1;
    int64_t previous_end = -1;
    Py_ssize_t i = 0, left = 0; /* values read; values left in the current run */
    /* Each 1 bit of the unary part ends a value: walk them word by word (the copy's zero padding makes
     * the last read safe). */
    for (size_t at = 0; at < unary_size; at += 8) {
        uint64_t word = read64(unary + at);
        while (word) {
            if (i == count) {
                error = "a Rice blob holds more values than asked";
                goto done;
            }
            int64_t end = (int64_t)(at * 8) + __builtin_ctzll(word);
            word &= word - 1;
            uint64_t value = (uint64_t)(end - previous_end - 1) << r;
            previous_end = end;
            if (r) {
                value |= (read64(low + (low_bit >> 3)) >> (low_bit & 7)) & mask;
                low_bit += (uint64_t)r;
            }
            value <<= shift;
            if (left == 0) {
                sum = 0;
                left = run;
            }
            left--;
            sum += value;
            if (sum > limit) {
                error = "a Rice blob decodes to values beyond its limit";
                goto done;
            }
            o[2 * i] = (unsigned char)sum;
            o[2 * i + 1] = (unsigned char)(sum >> 8);
            i++;
        }
    }
    if (i != count) error = "a Rice blob holds fewer values than asked";
done:
    PyBuffer_Release(&in);
    free(padded);
    if (error) {
        Py_XDECREF(out);
        PyErr_SetString(PyExc_ValueError, error);
        return NULL;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS, "encode(uint16 values) -> Rice blob (app/codecs/rice.py's layout)."},
    {"decode", decode, METH_VARARGS, "decode(blob, count, run, limit) -> count little-endian uint16 values as bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rice", "Rice coding for top-k codec v4.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rice(void) { return PyModule_Create(&module); }
