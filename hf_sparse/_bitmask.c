/* Optional native decoder of the bitmask format (see hf_sparse/models/sparse_bert/sparse_format.py).
 *
 * decode(packed, values, weight, mask, itemsize) -> kept
 *
 * One pass over a compressed weight: unpacks the bitmask (8 entries per byte, least significant
 * bit first) into `mask` (one 0/1 byte per entry) and scatters `values` (row-major, `itemsize`
 * bytes each, possibly unaligned) into `weight`, writing zeros elsewhere. Every output byte is
 * written, so the outputs may be uninitialised memory. Returns the number of set bits; when it differs
 * from the number of values, the outputs are incomplete and the caller must discard them (no
 * value is read past the end of `values`). The GIL is released while decoding.
 *
 * unpack(packed, mask) -> kept
 *
 * The same for the mask alone (a layer with nothing pruned, whose values are its weight).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static uint8_t MASK_BYTES[256][8]; /* byte b -> its 8 bits as 8 bytes of 0/1, least significant first */

#define DECODE_LOOP(TYPE)                                                               \
    do {                                                                                \
        const char *v = (const char *)values; /* may be unaligned: read with memcpy */  \
        TYPE *w = (TYPE *)weight;                                                       \
        for (Py_ssize_t byte = 0; byte < full_bytes; byte++) {                          \
            unsigned bits = packed[byte];                                               \
            TYPE *out = w + byte * 8;                                                   \
            memcpy(mask + byte * 8, MASK_BYTES[bits], 8);                              \
            memset(out, 0, 8 * sizeof(TYPE));                                           \
            if (bits) {                                                                 \
                Py_ssize_t n = __builtin_popcount(bits);                                \
                if (kept + n > n_values) { kept += n; continue; }         \
                while (bits) {                                                          \
                    memcpy(out + __builtin_ctz(bits), v + sizeof(TYPE) * kept++, sizeof(TYPE)); \
                    bits &= bits - 1;                                                   \
                }                                                                       \
            }                                                                           \
        }                                                                               \
        for (Py_ssize_t i = full_bytes * 8; i < count; i++) { /* the last partial byte */ \
            unsigned bit = (packed[i >> 3] >> (i & 7)) & 1u;                            \
            mask[i] = (uint8_t)bit;                                                     \
            w[i] = 0;                                                                   \
            if (bit) {                                                                  \
                if (kept + 1 > n_values) { kept++; continue; }            \
                memcpy(w + i, v + sizeof(TYPE) * kept++, sizeof(TYPE));                \
            }                                                                           \
        }                                                                               \
    } while (0)

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer packed_buf, values_buf, weight_buf, mask_buf;
    int itemsize;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*w*i", &packed_buf, &values_buf, &weight_buf, &mask_buf, &itemsize))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t count = mask_buf.len;
    if (itemsize != 2 && itemsize != 4 && itemsize != 8) {
        PyErr_Format(PyExc_ValueError, "itemsize must be 2, 4 or 8, got %d", itemsize);
    } else if (weight_buf.len != count * itemsize || values_buf.len % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "weight has %zd bytes and values %zd bytes; expected %zd and a multiple of %d",
                     weight_buf.len, values_buf.len, count * itemsize, itemsize);
    } else if (packed_buf.len != (count + 7) / 8) {
        PyErr_Format(PyExc_ValueError, "bitmask has %zd bytes; expected %zd for %zd entries",
                     packed_buf.len, (count + 7) / 8, count);
    } else {
        const uint8_t *packed = (const uint8_t *)packed_buf.buf;
        const void *values = values_buf.buf;
        void *weight = weight_buf.buf;
        uint8_t *mask = (uint8_t *)mask_buf.buf;
        Py_ssize_t n_values = values_buf.len / itemsize, full_bytes = count / 8, kept = 0;
        Py_BEGIN_ALLOW_THREADS
        if (itemsize == 4) DECODE_LOOP(uint32_t);
        else if (itemsize == 2) DECODE_LOOP(uint16_t);
        else DECODE_LOOP(uint64_t);
        Py_END_ALLOW_THREADS
        result = PyLong_FromSsize_t(kept);
    }
    PyBuffer_Release(&packed_buf);
    PyBuffer_Release(&values_buf);
    PyBuffer_Release(&weight_buf);
    PyBuffer_Release(&mask_buf);
    return result;
}

static PyObject *unpack(PyObject *self, PyObject *args) {
    Py_buffer packed_buf, mask_buf;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*", &packed_buf, &mask_buf))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t count = mask_buf.len;
    if (packed_buf.len != (count + 7) / 8) {
        PyErr_Format(PyExc_ValueError, "bitmask has %zd bytes; expected %zd for %zd entries",
                     packed_buf.len, (count + 7) / 8, count);
    } else {
        const uint8_t *packed = (const uint8_t *)packed_buf.buf;
        uint8_t *mask = (uint8_t *)mask_buf.buf;
        Py_ssize_t full_bytes = count / 8, kept = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t byte = 0; byte < full_bytes; byte++) {
            memcpy(mask + byte * 8, MASK_BYTES[packed[byte]], 8);
            kept += __builtin_popcount(packed[byte]);
        }
        for (Py_ssize_t i = full_bytes * 8; i < count; i++) {
            mask[i] = (packed[i >> 3] >> (i & 7)) & 1u;
            kept += mask[i];
        }
        Py_END_ALLOW_THREADS
        result = PyLong_FromSsize_t(kept);
    }
    PyBuffer_Release(&packed_buf);
    PyBuffer_Release(&mask_buf);
    return result;
}

static PyMethodDef METHODS[] = {
    {"unpack", unpack, METH_VARARGS, "unpack(packed, mask) -> number of set bits; see the module source."},
    {"decode", decode, METH_VARARGS,
     "decode(packed, values, weight, mask, itemsize) -> number of set bits; see the module source."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_bitmask", "Native bitmask decoder of hf-sparse.", -1, METHODS};

PyMODINIT_FUNC PyInit__bitmask(void) {
    for (unsigned b = 0; b < 256; b++)
        for (unsigned j = 0; j < 8; j++)
            MASK_BYTES[b][j] = (uint8_t)((b >> j) & 1u);
    return PyModule_Create(&MODULE);
}
