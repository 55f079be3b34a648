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
 *
 * PayloadBuffer(size) is a big frame's payload, received in place (see below).
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

/* PayloadBuffer(size): a big frame's payload, written in place as it arrives.
 *
 * The reader receives straight into it (socket.recv_into on a writable view),
 * unmasks each chunk in place while it is still in the cache, and take() hands out
 * the finished payload as bytes with no copy: the storage *is* a bytes object, one
 * nobody else can reach until take(). (A bytearray would cost one more copy of the
 * whole payload to become the bytes that recv() returns.) Every view must be
 * released before take(); afterwards no view can be made, so the bytes never change
 * once they are out. Its memory is not zeroed: its pages are touched only as the
 * payload arrives. */
typedef struct {
    PyObject_HEAD
    PyObject *bytes; /* NULL once taken */
    Py_ssize_t exports;
} PayloadBuffer;

static PyObject *
payload_buffer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_ssize_t size;
    PayloadBuffer *self;
    static char *kwlist[] = {"size", NULL};

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n:PayloadBuffer", kwlist, &size)) {
        return NULL;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "PayloadBuffer size must not be negative");
        return NULL;
    }
    self = (PayloadBuffer *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    /* Not zeroed: a fresh object for any size but 0 (the shared empty bytes, which
     * a view of no bytes can't change). */
    self->bytes = PyBytes_FromStringAndSize(NULL, size);
    if (self->bytes == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
payload_buffer_dealloc(PayloadBuffer *self)
{
    Py_XDECREF(self->bytes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
payload_buffer_getbuffer(PayloadBuffer *self, Py_buffer *view, int flags)
{
    if (self->bytes == NULL) {
        PyErr_SetString(PyExc_BufferError, "PayloadBuffer already taken");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, PyBytes_AS_STRING(self->bytes),
                          PyBytes_GET_SIZE(self->bytes), 0, flags) < 0) {
        return -1;
    }
    self->exports++;
    return 0;
}

static void
payload_buffer_releasebuffer(PayloadBuffer *self, Py_buffer *view)
{
    self->exports--;
}

static PyObject *
payload_buffer_unmask(PayloadBuffer *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t start, length;
    Py_buffer mask;
    unsigned char *p;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "unmask() takes 3 arguments (start, length, mask)");
        return NULL;
    }
    if (self->bytes == NULL) {
        PyErr_SetString(PyExc_BufferError, "PayloadBuffer already taken");
        return NULL;
    }
    start = PyLong_AsSsize_t(args[0]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    length = PyLong_AsSsize_t(args[1]);
    if (length == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (start < 0 || length < 0 || start > PyBytes_GET_SIZE(self->bytes) ||
        length > PyBytes_GET_SIZE(self->bytes) - start) {
        PyErr_SetString(PyExc_ValueError, "unmask() range outside the buffer");
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &mask, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (mask.len != 4) {
        PyBuffer_Release(&mask);
        PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes");
        return NULL;
    }
    p = (unsigned char *)PyBytes_AS_STRING(self->bytes) + start;
    if (length > RELEASE_GIL_ABOVE) {
        /* Counted as a view meanwhile, so that take() from another thread fails
         * rather than hand out bytes still changing. */
        PyThreadState *save;

        self->exports++;
        save = PyEval_SaveThread();
        mask_into(p, p, length, (const unsigned char *)mask.buf, start & 3);
        PyEval_RestoreThread(save);
        self->exports--;
    }
    else {
        mask_into(p, p, length, (const unsigned char *)mask.buf, start & 3);
    }
    PyBuffer_Release(&mask);
    Py_RETURN_NONE;
}

static PyObject *
payload_buffer_take(PayloadBuffer *self, PyObject *unused)
{
    PyObject *result = self->bytes;

    if (result == NULL) {
        PyErr_SetString(PyExc_BufferError, "PayloadBuffer already taken");
        return NULL;
    }
    if (self->exports) {
        PyErr_SetString(PyExc_BufferError, "PayloadBuffer still has views");
        return NULL;
    }
    self->bytes = NULL;
    return result;
}

static PyMethodDef payload_buffer_methods[] = {
    {"unmask", (PyCFunction)(void (*)(void))payload_buffer_unmask, METH_FASTCALL,
     "unmask(start, length, mask)\n\nXOR bytes [start, start + length) in place with the "
     "4-byte mask, as bytes of one payload masked from its first byte."},
    {"take", (PyCFunction)payload_buffer_take, METH_NOARGS,
     "take() -> bytes\n\nThe payload, without a copy; the buffer is done with."},
    {NULL, NULL, 0, NULL},
};

static PyBufferProcs payload_buffer_as_buffer = {
    (getbufferproc)payload_buffer_getbuffer,
    (releasebufferproc)payload_buffer_releasebuffer,
};

static PyTypeObject PayloadBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trillium.core._speedups.PayloadBuffer",
    .tp_basicsize = sizeof(PayloadBuffer),
    .tp_dealloc = (destructor)payload_buffer_dealloc,
    .tp_as_buffer = &payload_buffer_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PayloadBuffer(size): a frame's payload written in place, then taken as bytes.",
    .tp_methods = payload_buffer_methods,
    .tp_new = payload_buffer_new,
};

static PyMethodDef speedups_methods[] = {
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
    PyObject *module;

    if (PyType_Ready(&PayloadBufferType) < 0) {
        return NULL;
    }
    module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&PayloadBufferType);
    if (PyModule_AddObject(module, "PayloadBuffer", (PyObject *)&PayloadBufferType) < 0) {
        Py_DECREF(&PayloadBufferType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
