/* The chunk index's hash table, in C: strongroom.repository.index.PyTable is the
 * same table in Python (the fallback, and the reference the tests compare with).
 *
 * One array of 32-byte slots, open addressing with linear probing. A slot holds the
 * first 16 bytes of a blob id, then four little-endian uint32: the pack's number, the
 * blob's offset, its stored length, and its raw length with type and flags in the top
 * byte. An all-zero key marks an empty slot. Ids are keyed hashes, so their first 8
 * bytes (little-endian) modulo the slot count place a key directly. Both versions
 * make byte-identical tables from the same calls.
 *
 * Marks: one byte per slot, kept beside the slots (allocated on the first `mark`, moved
 * with their slot when the table grows), for a collector to flag the blobs snapshots
 * reference without a set of ids (about 1 byte per blob instead of ~100).
 *
 * Every method runs holding the GIL and never releases it, so a reader never sees a
 * half-written slot or a table being grown.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SLOT 32
#define KEY 16
#define MAX_LOAD 0.85
#define GROWTH 1.25
#define RAW_MASK ((1u << 24) - 1)

typedef struct {
    PyObject_HEAD
    unsigned char *slots;
    Py_ssize_t nslots;
    Py_ssize_t count;
    unsigned char *marks; /* one byte per slot, or NULL while nothing was marked */
} Table;

static inline uint64_t load64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static inline uint32_t load32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void store32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static const unsigned char EMPTY[KEY] = {0};

/* The slot holding key, or the empty slot where it would go; *found says which. */
static Py_ssize_t probe(const unsigned char *slots, Py_ssize_t n, const unsigned char *key,
                        int *found) {
    Py_ssize_t slot = (Py_ssize_t)(load64(key) % (uint64_t)n);
    for (;;) {
        const unsigned char *s = slots + slot * SLOT;
        if (memcmp(s, key, KEY) == 0) {
            *found = 1;
            return slot;
        }
        if (memcmp(s, EMPTY, KEY) == 0) {
            *found = 0;
            return slot;
        }
        if (++slot == n) slot = 0;
    }
}

static int resize(Table *self, Py_ssize_t n) {
    if (n > PY_SSIZE_T_MAX / SLOT) {
        PyErr_NoMemory();
        return -1;
    }
    unsigned char *fresh = PyMem_Calloc((size_t)n, SLOT);
    unsigned char *fresh_marks = self->marks == NULL ? NULL : PyMem_Calloc((size_t)n, 1);
    if (fresh == NULL || (self->marks != NULL && fresh_marks == NULL)) {
        PyMem_Free(fresh);
        PyMem_Free(fresh_marks);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < self->nslots; i++) {
        const unsigned char *s = self->slots + i * SLOT;
        if (memcmp(s, EMPTY, KEY) == 0) continue;
        int found;
        Py_ssize_t slot = probe(fresh, n, s, &found);
        memcpy(fresh + slot * SLOT, s, SLOT);
        if (fresh_marks != NULL) fresh_marks[slot] = self->marks[i];
    }
    PyMem_Free(self->slots);
    PyMem_Free(self->marks);
    self->slots = fresh;
    self->marks = fresh_marks;
    self->nslots = n;
    return 0;
}

/* Grow until `more` new entries fit under the load limit, as the Python version does. */
static int reserve(Table *self, Py_ssize_t more) {
    Py_ssize_t n = self->nslots;
    while ((double)(self->count + more) > (double)n * MAX_LOAD) n = (Py_ssize_t)((double)n * GROWTH) + 1;
    return n == self->nslots ? 0 : resize(self, n);
}

/* A 16-byte key from an id (bytes-like, at least 16 bytes; the rest is ignored). */
static int get_key(PyObject *obj, unsigned char *key) {
    if (PyBytes_Check(obj)) {
        if (PyBytes_GET_SIZE(obj) < KEY) goto short_id;
        memcpy(key, PyBytes_AS_STRING(obj), KEY);
        return 0;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return -1;
    if (view.len < KEY) {
        PyBuffer_Release(&view);
        goto short_id;
    }
    memcpy(key, view.buf, KEY);
    PyBuffer_Release(&view);
    return 0;
short_id:
    PyErr_SetString(PyExc_ValueError, "blob id shorter than 16 bytes");
    return -1;
}

static int get_u32(PyObject *obj, uint32_t limit_bits, uint32_t *out, const char *what) {
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", what);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_OverflowError, "%s out of range", what);
        return -1;
    }
    if (limit_bits < 32 ? v >= (1ull << limit_bits) : v > 0xffffffffull) {
        PyErr_Format(PyExc_OverflowError, "%s out of range", what);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static void write_slot(unsigned char *s, const unsigned char *key, uint32_t pack_no,
                       uint32_t offset, uint32_t length, uint32_t meta) {
    memcpy(s, key, KEY);
    store32(s + 16, pack_no);
    store32(s + 20, offset);
    store32(s + 24, length);
    store32(s + 28, meta);
}

static PyObject *Table_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"nslots", NULL};
    Py_ssize_t n;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kwlist, &n)) return NULL;
    if (n < 1 || n > PY_SSIZE_T_MAX / SLOT) {
        PyErr_SetString(PyExc_ValueError, "slot count out of range");
        return NULL;
    }
    Table *self = (Table *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->slots = PyMem_Calloc((size_t)n, SLOT);
    if (self->slots == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->nslots = n;
    self->count = 0;
    self->marks = NULL;
    return (PyObject *)self;
}

static void Table_dealloc(Table *self) {
    PyMem_Free(self->slots);
    PyMem_Free(self->marks);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t Table_len(Table *self) { return self->count; }

static int Table_contains(Table *self, PyObject *bid) {
    unsigned char key[KEY];
    if (get_key(bid, key) < 0) return -1;
    int found;
    probe(self->slots, self->nslots, key, &found);
    return found;
}

PyDoc_STRVAR(find_doc, "find(id) -> the pack number of the blob, or -1");

static PyObject *Table_find(Table *self, PyObject *bid) {
    unsigned char key[KEY];
    if (get_key(bid, key) < 0) return NULL;
    int found;
    Py_ssize_t slot = probe(self->slots, self->nslots, key, &found);
    if (!found) return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLong(load32(self->slots + slot * SLOT + 16));
}

PyDoc_STRVAR(get_doc, "get(id) -> (pack number, offset, length, meta), or None");

static PyObject *Table_get(Table *self, PyObject *bid) {
    unsigned char key[KEY];
    if (get_key(bid, key) < 0) return NULL;
    int found;
    Py_ssize_t slot = probe(self->slots, self->nslots, key, &found);
    if (!found) Py_RETURN_NONE;
    const unsigned char *s = self->slots + slot * SLOT;
    return Py_BuildValue("(kkkk)", (unsigned long)load32(s + 16), (unsigned long)load32(s + 20),
                         (unsigned long)load32(s + 24), (unsigned long)load32(s + 28));
}

PyDoc_STRVAR(put_doc,
             "put(id, pack_no, offset, length, meta, replace) -> whether the id is new.\n"
             "An existing entry is kept unless replace; an all-zero key is ignored.");

static PyObject *Table_put(Table *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "put takes 6 arguments");
        return NULL;
    }
    unsigned char key[KEY];
    uint32_t v[4];
    static const char *names[] = {"pack number", "offset", "length", "meta"};
    if (get_key(args[0], key) < 0) return NULL;
    for (int i = 0; i < 4; i++)
        if (get_u32(args[1 + i], 32, &v[i], names[i]) < 0) return NULL;
    int replace = PyObject_IsTrue(args[5]);
    if (replace < 0) return NULL;
    if (memcmp(key, EMPTY, KEY) == 0) Py_RETURN_FALSE;
    if (reserve(self, 1) < 0) return NULL;
    int found;
    Py_ssize_t slot = probe(self->slots, self->nslots, key, &found);
    if (found && !replace) Py_RETURN_FALSE;
    write_slot(self->slots + slot * SLOT, key, v[0], v[1], v[2], v[3]);
    if (found) Py_RETURN_FALSE;
    self->count++;
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(put_many_doc,
             "put_many(pack_no, blobs) -> how many ids were new.\n"
             "blobs: (type, id, offset, length, raw_length, flags) tuples, as an index\n"
             "file lists them; existing entries are kept. Nothing is added when one is\n"
             "malformed (OverflowError, TypeError or ValueError).");

static PyObject *Table_put_many(Table *self, PyObject *args) {
    unsigned long pack_no_arg;
    PyObject *blobs;
    if (!PyArg_ParseTuple(args, "kO", &pack_no_arg, &blobs)) return NULL;
    if (pack_no_arg > 0xfffffffful) {
        PyErr_SetString(PyExc_OverflowError, "pack number out of range");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(blobs, "blobs must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    static const char *names[] = {"type", "offset", "length", "raw length", "flags"};
    static const uint32_t bits[] = {4, 32, 32, 24, 4};
    /* Validate every entry first: a malformed one adds nothing. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = items[i];
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 6) {
            PyErr_SetString(PyExc_TypeError, "a blob is a 6-tuple");
            goto fail;
        }
        unsigned char key[KEY];
        uint32_t v;
        if (get_key(PyTuple_GET_ITEM(t, 1), key) < 0) goto fail;
        for (int f = 0; f < 5; f++)
            if (get_u32(PyTuple_GET_ITEM(t, f == 0 ? 0 : f + 1), bits[f], &v, names[f]) < 0)
                goto fail;
    }
    if (reserve(self, n) < 0) goto fail;
    Py_ssize_t added = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = items[i];
        unsigned char key[KEY];
        uint32_t f[6];
        get_key(PyTuple_GET_ITEM(t, 1), key);
        for (int j = 0; j < 6; j++)
            if (j != 1) f[j] = (uint32_t)PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(t, j));
        if (memcmp(key, EMPTY, KEY) == 0) continue;
        int found;
        Py_ssize_t slot = probe(self->slots, self->nslots, key, &found);
        if (found) continue;
        write_slot(self->slots + slot * SLOT, key, (uint32_t)pack_no_arg, f[2], f[3],
                   f[4] | (f[0] << 24) | (f[5] << 28));
        added++;
    }
    self->count += added;
    Py_DECREF(seq);
    return PyLong_FromSsize_t(added);
fail:
    Py_DECREF(seq);
    return NULL;
}

PyDoc_STRVAR(items_doc, "items() -> [(key, pack_no, offset, length, meta)] in slot order");

static PyObject *Table_items(Table *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < self->nslots; i++) {
        const unsigned char *s = self->slots + i * SLOT;
        if (memcmp(s, EMPTY, KEY) == 0) continue;
        PyObject *item = Py_BuildValue("(y#kkkk)", (const char *)s, (Py_ssize_t)KEY,
                                       (unsigned long)load32(s + 16), (unsigned long)load32(s + 20),
                                       (unsigned long)load32(s + 24), (unsigned long)load32(s + 28));
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

PyDoc_STRVAR(mark_doc,
             "mark(id, bits) -> the id's marks before `bits` were added to them, or -1\n"
             "when the id is not in the table (nothing is marked then).");

static PyObject *Table_mark(Table *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "mark takes 2 arguments");
        return NULL;
    }
    unsigned char key[KEY];
    uint32_t bits;
    if (get_key(args[0], key) < 0) return NULL;
    if (get_u32(args[1], 8, &bits, "bits") < 0) return NULL;
    int found;
    Py_ssize_t slot = probe(self->slots, self->nslots, key, &found);
    if (!found) return PyLong_FromLong(-1);
    if (self->marks == NULL) {
        if (bits == 0) return PyLong_FromLong(0);
        self->marks = PyMem_Calloc((size_t)self->nslots, 1);
        if (self->marks == NULL) return PyErr_NoMemory();
    }
    unsigned char before = self->marks[slot];
    self->marks[slot] = before | (unsigned char)bits;
    return PyLong_FromLong(before);
}

/* Whether slot i is filled and its marks hold every bit of `required` and none of
 * `excluded`. */
static inline int selected(const Table *self, Py_ssize_t i, unsigned char required,
                           unsigned char excluded) {
    unsigned char m = self->marks == NULL ? 0 : self->marks[i];
    if ((m & required) != required || (m & excluded) != 0) return 0;
    return memcmp(self->slots + i * SLOT, EMPTY, KEY) != 0;
}

static int get_bits(PyObject *required, PyObject *excluded, unsigned char *req,
                    unsigned char *exc) {
    uint32_t r, e;
    if (get_u32(required, 8, &r, "required") < 0 || get_u32(excluded, 8, &e, "excluded") < 0)
        return -1;
    *req = (unsigned char)r;
    *exc = (unsigned char)e;
    return 0;
}

PyDoc_STRVAR(usage_doc,
             "usage(present, required, excluded, sample) -> (used, lost, lost_keys).\n"
             "Over the entries whose marks hold every bit of `required` and none of\n"
             "`excluded`: used[pack_no] sums the stored lengths of those in a pack whose\n"
             "byte in `present` is not zero (one int per byte of `present`); the others are\n"
             "lost: how many, and the keys of the first `sample`, in slot order.");

static PyObject *Table_usage(Table *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "usage takes 4 arguments");
        return NULL;
    }
    unsigned char req, exc;
    if (get_bits(args[1], args[2], &req, &exc) < 0) return NULL;
    Py_ssize_t sample = PyLong_AsSsize_t(args[3]);
    if (sample == -1 && PyErr_Occurred()) return NULL;
    Py_buffer present;
    if (PyObject_GetBuffer(args[0], &present, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *flags = present.buf;
    Py_ssize_t npacks = present.len;
    unsigned long long *sums = PyMem_Calloc((size_t)(npacks ? npacks : 1), sizeof *sums);
    PyObject *used = NULL, *lost_keys = PyList_New(0), *result = NULL;
    if (sums == NULL || lost_keys == NULL) {
        if (sums == NULL) PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t lost = 0;
    for (Py_ssize_t i = 0; i < self->nslots; i++) {
        if (!selected(self, i, req, exc)) continue;
        const unsigned char *s = self->slots + i * SLOT;
        uint32_t pack_no = load32(s + 16);
        if ((Py_ssize_t)pack_no < npacks && flags[pack_no]) {
            sums[pack_no] += load32(s + 24);
            continue;
        }
        if (lost++ < sample) {
            PyObject *key = PyBytes_FromStringAndSize((const char *)s, KEY);
            if (key == NULL || PyList_Append(lost_keys, key) < 0) {
                Py_XDECREF(key);
                goto done;
            }
            Py_DECREF(key);
        }
    }
    used = PyList_New(npacks);
    if (used == NULL) goto done;
    for (Py_ssize_t p = 0; p < npacks; p++) {
        PyObject *v = PyLong_FromUnsignedLongLong(sums[p]);
        if (v == NULL) goto done;
        PyList_SET_ITEM(used, p, v);
    }
    result = Py_BuildValue("(OnO)", used, lost, lost_keys);
done:
    Py_XDECREF(used);
    Py_XDECREF(lost_keys);
    PyMem_Free(sums);
    PyBuffer_Release(&present);
    return result;
}

static int by_pack(const void *a, const void *b) {
    uint32_t pa = load32(a), pb = load32(b);
    if (pa != pb) return pa < pb ? -1 : 1;
    return memcmp((const unsigned char *)a + 4, (const unsigned char *)b + 4, KEY);
}

PyDoc_STRVAR(select_doc,
             "select(packs, required, excluded) -> bytes: a 20-byte record (pack number,\n"
             "uint32 little-endian, then the 16-byte key) for each entry whose marks hold\n"
             "every bit of `required` and none of `excluded`, in a pack whose byte in\n"
             "`packs` is not zero; sorted by pack number, then key.");

#define RECORD (4 + KEY)

static PyObject *Table_select(Table *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "select takes 3 arguments");
        return NULL;
    }
    unsigned char req, exc;
    if (get_bits(args[1], args[2], &req, &exc) < 0) return NULL;
    Py_buffer packs;
    if (PyObject_GetBuffer(args[0], &packs, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *flags = packs.buf;
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < self->nslots; i++) {
        if (!selected(self, i, req, exc)) continue;
        uint32_t pack_no = load32(self->slots + i * SLOT + 16);
        if ((Py_ssize_t)pack_no < packs.len && flags[pack_no]) count++;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, count * RECORD);
    if (out != NULL) {
        unsigned char *w = (unsigned char *)PyBytes_AS_STRING(out);
        for (Py_ssize_t i = 0; i < self->nslots; i++) {
            if (!selected(self, i, req, exc)) continue;
            const unsigned char *s = self->slots + i * SLOT;
            uint32_t pack_no = load32(s + 16);
            if ((Py_ssize_t)pack_no >= packs.len || !flags[pack_no]) continue;
            store32(w, pack_no);
            memcpy(w + 4, s, KEY);
            w += RECORD;
        }
        qsort(PyBytes_AS_STRING(out), (size_t)count, RECORD, by_pack);
    }
    PyBuffer_Release(&packs);
    return out;
}

PyDoc_STRVAR(raw_doc, "raw() -> the slot array as bytes");

static PyObject *Table_raw(Table *self, PyObject *Py_UNUSED(ignored)) {
    return PyBytes_FromStringAndSize((const char *)self->slots, self->nslots * SLOT);
}

static PyObject *Table_get_nslots(Table *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->nslots);
}

static PyObject *Table_get_nbytes(Table *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->nslots * SLOT + (self->marks == NULL ? 0 : self->nslots));
}

static PyMethodDef Table_methods[] = {
    {"find", (PyCFunction)Table_find, METH_O, find_doc},
    {"get", (PyCFunction)Table_get, METH_O, get_doc},
    {"put", (PyCFunction)(void (*)(void))Table_put, METH_FASTCALL, put_doc},
    {"put_many", (PyCFunction)Table_put_many, METH_VARARGS, put_many_doc},
    {"items", (PyCFunction)Table_items, METH_NOARGS, items_doc},
    {"raw", (PyCFunction)Table_raw, METH_NOARGS, raw_doc},
    {"mark", (PyCFunction)(void (*)(void))Table_mark, METH_FASTCALL, mark_doc},
    {"usage", (PyCFunction)(void (*)(void))Table_usage, METH_FASTCALL, usage_doc},
    {"select", (PyCFunction)(void (*)(void))Table_select, METH_FASTCALL, select_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Table_getset[] = {
    {"nslots", (getter)Table_get_nslots, NULL, "number of slots", NULL},
    {"nbytes", (getter)Table_get_nbytes, NULL, "bytes the slots (and marks) take", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Table_as_sequence = {
    .sq_length = (lenfunc)Table_len,
    .sq_contains = (objobjproc)Table_contains,
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "strongroom.repository._chunktable.Table",
    .tp_doc = PyDoc_STR("Blob id prefix -> (pack number, offset, length, meta)."),
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Table_new,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
    .tp_getset = Table_getset,
    .tp_as_sequence = &Table_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "strongroom.repository._chunktable",
    .m_doc = PyDoc_STR("The chunk index's hash table in C (see index.py)."),
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__chunktable(void) {
    if (PyType_Ready(&TableType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&TableType);
    if (PyModule_AddObject(m, "Table", (PyObject *)&TableType) < 0) {
        Py_DECREF(&TableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
