/* trillium.core._speedups: masking at memory speed (RFC 6455 section 5.3).
 *
 * apply_mask(data, mask[, prefix]) -> bytes XORs data with the 4-byte mask repeated.
 * The key is widened to 64 bits (and to 128 with SSE2) so the loop handles 8 or 16
 * bytes per step; the tail is done byte by byte. Any object with the buffer protocol
 * works as input, so the frame parser can pass a memoryview slice without a copy.
 * ``prefix`` (a frame's header and key) is copied in front of the masked bytes, so a
 * client's frame is built in one allocation and one pass over the payload: for big
 * messages the second copy (and the fresh pages it touches) costs as much as the
 * masking itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Below this size the cost of releasing the GIL outweighs the work. */
#define RELEASE_GIL_ABOVE 65536

/* out[i] = in[i] ^ m[(phase + i) % 4] for i < n. */
static void
mask_into(unsigned char *out, const unsigned char *in, Py_ssize_t n, const unsigned char *m,
          Py_ssize_t phase)
{
    unsigned char k[4];
    uint32_t key32;
    uint64_t key64;
    Py_ssize_t i = 0;

    for (int j = 0; j < 4; j++) {
        k[j] = m[(phase + j) & 3];
    }
    memcpy(&key32, k, 4);
    key64 = ((uint64_t)key32 << 32) | key32;
#ifdef __SSE2__
    if (n >= 16) {
        __m128i key128 = _mm_set1_epi32((int)key32);
        for (; i + 16 <= n; i += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(in + i));
            _mm_storeu_si128((__m128i *)(out + i), _mm_xor_si128(v, key128));
        }
    }
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, in + i, 8);
        v ^= key64;
        memcpy(out + i, &v, 8);
    }
    /* i is a multiple of 4 here, so the tail starts at byte 0 of the rotated key. */
    for (; i < n; i++) {
        out[i] = in[i] ^ k[i & 3];
    }
}

static PyObject *
apply_mask(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, mask, prefix = {0};
    PyObject *result = NULL;

    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "apply_mask() takes 2 or 3 arguments (data, mask[, prefix])");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &mask, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (nargs == 3 && PyObject_GetBuffer(args[2], &prefix, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&mask);
        return NULL;
    }
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, prefix.len + data.len);
    if (result == NULL) {
        goto done;
    }
    if (prefix.len) {
        memcpy(PyBytes_AS_STRING(result), prefix.buf, prefix.len);
    }
    {
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result) + prefix.len;
        PyThreadState *save = NULL;

        if (data.len > RELEASE_GIL_ABOVE) {
            save = PyEval_SaveThread();
        }
        mask_into(out, (const unsigned char *)data.buf, data.len,
                  (const unsigned char *)mask.buf, 0);
        if (save != NULL) {
            PyEval_RestoreThread(save);
        }
    }
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&mask);
    if (nargs == 3) {
        PyBuffer_Release(&prefix);
    }
    return result;
}

/* join_and_mask(parts, mask) -> bytes: the parts one after the other, masked as one
 * payload. A big frame arrives in many reads; joining them and then masking the
 * result would copy the payload twice, into two fresh allocations. */
static PyObject *
join_and_mask(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer mask;
    PyObject *seq = NULL, *result = NULL;
    Py_buffer *views = NULL;
    Py_ssize_t count = 0, held = 0, total = 0;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "join_and_mask() takes 2 arguments (parts, mask)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &mask, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes");
        goto done;
    }
    seq = PySequence_Fast(args[0], "parts must be a sequence of bytes-like objects");
    if (seq == NULL) {
        goto done;
    }
    count = PySequence_Fast_GET_SIZE(seq);
    views = PyMem_Calloc(count ? count : 1, sizeof(Py_buffer));
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < count; held++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, held), &views[held],
                               PyBUF_SIMPLE) < 0) {
            goto done;
        }
        total += views[held].len;
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) {
        goto done;
    }
    {
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
        const unsigned char *m = (const unsigned char *)mask.buf;
        Py_ssize_t offset = 0;
        PyThreadState *save = NULL;

        if (total > RELEASE_GIL_ABOVE) {
            save = PyEval_SaveThread();
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            mask_into(out + offset, (const unsigned char *)views[i].buf, views[i].len, m,
                      offset & 3);
            offset += views[i].len;
        }
        if (save != NULL) {
            PyEval_RestoreThread(save);
        }
    }
done:
    for (Py_ssize_t i = 0; i < held; i++) {
        PyBuffer_Release(&views[i]);
    }
    PyMem_Free(views);
    Py_XDECREF(seq);
    PyBuffer_Release(&mask);
    return result;
}

static PyMethodDef speedups_methods[] = {
    {"join_and_mask", (PyCFunction)(void (*)(void))join_and_mask, METH_FASTCALL,
     "join_and_mask(parts, mask) -> bytes\n\n"
     "The parts one after the other, XORed with the 4-byte mask as one payload."},
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL,
     "apply_mask(data, mask[, prefix]) -> bytes\n\n"
     "XOR data with the 4-byte mask repeated; prefix, if given, is copied in front."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "trillium.core._speedups",
    "Compiled helpers for the framing core.", -1, speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&speedups_module);
}
