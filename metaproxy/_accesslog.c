/* metaproxy._accesslog: the access log's two per-request costs, in C.
 *
 * Capture (the request path): one call reads the values a format needs from a
 * RequestContext and builds the record tuple, laid out exactly as the Python
 * capture of metaproxy/accesslog.py builds it (the two are interchangeable and
 * tested equal).
 *
 * Render: one call turns a batch of records into the UTF-8 bytes of its lines,
 * byte for byte what LinePlan.render_slowly(...).encode("utf-8", "replace")
 * gives. Values of the common types (None, str, int, float times and
 * durations) are written here; any other value is handed to the Python
 * converter the plan uses (its result is then copied), so a rare type renders
 * exactly as the reference does rather than as a C guess at it.
 *
 * Writer (the logger's request path): end time, filter, bound, capture, and the
 * line rendered into the batch at once, with the Render it owns; the flusher
 * takes the batch's bytes whole.
 *
 * Attribute reads: a compiled (mypyc) RequestContext exposes its fields as
 * getset descriptors; the descriptor's getter is looked up once per type (and
 * per type version) and then called directly. Anything else goes through
 * PyObject_GetAttr. Metadata is a dict subclass: while its type's ``get`` is
 * dict.get and its ``get_str`` Metadata's own, keys are read from the dict
 * directly; otherwise the methods are called.
 *
 * Bad input never crashes: every record is checked (a tuple, long enough, a
 * tuple where a segment key must be one) and a failure is a Python exception.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef METAPROXY_SOURCE_SHA256 /* setup.py defines it: the SHA-256 of this file when it was built */
#define METAPROXY_SOURCE_SHA256 ""
#endif
#include <math.h>
#include <stddef.h>
#include <string.h>

/* ---- interned names, dict.get ------------------------------------------------ */

static PyObject *s_get, *s_get_str, *s_sync, *s_second, *s_offset, *s_base, *s_limit, *s_text, *s_dropped;
static PyObject *s_request_id, *s_response_status;
static PyObject *dict_get_descr; /* dict.__dict__["get"] */

/* ---- growing byte buffer ------------------------------------------------------ */

/* The bytes object being filled (resized at the end): the batch is never copied once more. */
typedef struct {
    PyObject *obj;
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_grow(Buf *b, Py_ssize_t extra) {
    if (extra > PY_SSIZE_T_MAX - b->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = b->len + extra;
    if (need <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < need) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    if (b->obj == NULL) {
        if ((b->obj = PyBytes_FromStringAndSize(NULL, cap)) == NULL)
            return -1;
    } else if (_PyBytes_Resize(&b->obj, cap) < 0) { /* frees and clears b->obj on failure */
        b->data = NULL;
        b->len = b->cap = 0;
        return -1;
    }
    b->data = PyBytes_AS_STRING(b->obj);
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const char *s, Py_ssize_t n) {
    if (b->cap - b->len < n && buf_grow(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

static int buf_put_ll(Buf *b, long long x) {
    char tmp[24];
    int i = (int)sizeof(tmp);
    unsigned long long u = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
    do {
        tmp[--i] = (char)('0' + (int)(u % 10));
        u /= 10;
    } while (u);
    if (x < 0)
        tmp[--i] = '-';
    return buf_put(b, tmp + i, (Py_ssize_t)sizeof(tmp) - i);
}

/* Bytes a JSON string must escape (json.encoder.encode_basestring: '"', '\\', below 0x20). */
static unsigned char needs_escape[256];

static int buf_put_escaped(Buf *b, const char *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    if (buf_put(b, "\"", 1) < 0)
        return -1;
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!needs_escape[c])
            continue;
        if (buf_put(b, s + start, i - start) < 0)
            return -1;
        start = i + 1;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        Py_ssize_t len = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[(c >> 4) & 0xf];
            esc[5] = hex[c & 0xf];
            len = 6;
        }
        if (buf_put(b, esc, len) < 0)
            return -1;
    }
    if (buf_put(b, s + start, n - start) < 0)
        return -1;
    return buf_put(b, "\"", 1);
}

/* A str's UTF-8 bytes, lone surrogates as '?' (what .encode("utf-8", "replace") gives). */
static int buf_put_str(Buf *b, PyObject *s, int escape) {
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    PyObject *tmp = NULL;
    if (u == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
            return -1;
        PyErr_Clear();
        tmp = PyUnicode_AsEncodedString(s, "utf-8", "replace");
        if (tmp == NULL)
            return -1;
        u = PyBytes_AS_STRING(tmp);
        n = PyBytes_GET_SIZE(tmp);
    }
    int rc = escape ? buf_put_escaped(b, u, n) : buf_put(b, u, n);
    Py_XDECREF(tmp);
    return rc;
}

/* ---- attribute reads ------------------------------------------------------------ */

typedef struct {
    PyObject *name;     /* interned str */
    PyTypeObject *type; /* the type last seen (strong reference) */
    unsigned int tag;   /* its version tag when learnt */
    getter get;         /* the getset getter to call, or NULL: PyObject_GetAttr */
    void *closure;
} Attr;

static int attr_init(Attr *a, const char *name) {
    memset(a, 0, sizeof(*a));
    a->name = PyUnicode_InternFromString(name);
    return a->name ? 0 : -1;
}

static int attr_init_obj(Attr *a, PyObject *name) {
    memset(a, 0, sizeof(*a));
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "an attribute name must be a str");
        return -1;
    }
    Py_INCREF(name);
    a->name = name;
    return 0;
}

static void attr_clear(Attr *a) {
    Py_CLEAR(a->name);
    Py_CLEAR(a->type);
    a->get = NULL;
}

static void attr_learn(Attr *a, PyTypeObject *t) {
    Py_INCREF(t);
    Py_XSETREF(a->type, t);
    a->get = NULL;
    if (t->tp_getattro != PyObject_GenericGetAttr)
        return;
    PyObject *d = _PyType_Lookup(t, a->name); /* borrowed; gives the type a version tag */
    if (d == NULL || !(t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG))
        return;
    if (Py_IS_TYPE(d, &PyGetSetDescr_Type) && PyType_IsSubtype(t, PyDescr_TYPE(d))) {
        PyGetSetDef *gs = ((PyGetSetDescrObject *)d)->d_getset;
        if (gs->get != NULL) {
            a->get = gs->get;
            a->closure = gs->closure;
            a->tag = t->tp_version_tag;
        }
    }
}

/* getattr(obj, a.name): a new reference, or NULL with an exception. */
static PyObject *attr_get(Attr *a, PyObject *obj) {
    PyTypeObject *t = Py_TYPE(obj);
    if (t == a->type) {
        if (a->get == NULL)
            return PyObject_GetAttr(obj, a->name);
        if ((t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) && t->tp_version_tag == a->tag)
            return a->get(obj, a->closure);
    }
    attr_learn(a, t);
    if (a->get != NULL)
        return a->get(obj, a->closure);
    return PyObject_GetAttr(obj, a->name);
}

/* ---- Metadata reads ------------------------------------------------------------- */

typedef struct {
    PyTypeObject *type; /* strong reference */
    unsigned int tag;
    int dict_get;      /* type(md).get is dict.get */
    int plain_get_str; /* ... and type(md).get_str is Metadata.get_str */
} MdType;

static void md_learn(MdType *m, PyTypeObject *t, PyObject *our_get_str) {
    Py_INCREF(t);
    Py_XSETREF(m->type, t);
    m->dict_get = m->plain_get_str = 0;
    if (!PyType_IsSubtype(t, &PyDict_Type))
        return;
    PyObject *get = _PyType_Lookup(t, s_get);
    PyObject *get_str = _PyType_Lookup(t, s_get_str);
    if (!(t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG))
        return;
    m->tag = t->tp_version_tag;
    m->dict_get = get == dict_get_descr;
    m->plain_get_str = m->dict_get && get_str != NULL && get_str == our_get_str;
}

static inline void md_check(MdType *m, PyObject *md, PyObject *our_get_str) {
    PyTypeObject *t = Py_TYPE(md);
    if (t != m->type || !(t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) || t->tp_version_tag != m->tag)
        md_learn(m, t, our_get_str);
}

/* md.get(key) */
static PyObject *md_get(MdType *m, PyObject *md, PyObject *key, PyObject *our_get_str) {
    md_check(m, md, our_get_str);
    if (m->dict_get) {
        PyObject *v = PyDict_GetItemWithError(md, key);
        if (v == NULL) {
            if (PyErr_Occurred())
                return NULL;
            v = Py_None;
        }
        Py_INCREF(v);
        return v;
    }
    return PyObject_CallMethodOneArg(md, s_get, key);
}

/* md.get_str(key) */
static PyObject *md_get_str(MdType *m, PyObject *md, PyObject *key, PyObject *our_get_str, PyObject *as_str) {
    md_check(m, md, our_get_str);
    if (m->plain_get_str) {
        PyObject *v = PyDict_GetItemWithError(md, key);
        if (v == NULL) {
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NONE;
        }
        if (v == Py_None || PyUnicode_CheckExact(v)) {
            Py_INCREF(v);
            return v;
        }
        Py_INCREF(v); /* as_str may run Python code that drops the dict's reference */
        PyObject *s = PyObject_CallOneArg(as_str, v);
        Py_DECREF(v);
        return s;
    }
    return PyObject_CallMethodOneArg(md, s_get_str, key);
}

/* ---- Capture ---------------------------------------------------------------------- */

enum {
    C_ATTR = 0,     /* getattr(ctx, name) */
    C_START,        /* ctx.start_time */
    C_DURATION,     /* end - ctx.start_time */
    C_RID,          /* ctx.downstream_id, else ctx.metadata.get("request_id") */
    C_MD_GET,       /* ctx.metadata.get(key) */
    C_MD_GET_STR,   /* ctx.metadata.get_str(key) */
    C_RESP_GET_STR, /* ctx.response_metadata.get_str(key), None without a response */
    C_ROUTE,        /* ctx.route.name, None without a route */
    C_STATUS,       /* ctx.error.kind, else ctx.response_metadata.get("response_status") */
    C_MESSAGE,      /* ctx.error.message, None without an error */
    C_COUNT
};

typedef struct {
    int code;
    PyObject *key; /* metadata key (C_*GET*), else NULL */
    Attr attr;     /* C_ATTR */
} Source;

typedef struct {
    Py_ssize_t first, count;
    int single; /* the slot is the value itself, not a tuple of values */
} Slot;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Py_ssize_t nslots, nsources;
    Slot *slots;
    Source *sources;
    Attr a_metadata, a_start, a_downstream_id, a_route, a_route_name, a_error, a_resp, a_kind, a_message,
        a_end_time;
    MdType md_type, resp_type;
    PyObject *get_str, *as_str;
} Capture;

typedef struct {
    PyObject *ctx, *end;
    PyObject *md, *start, *err, *resp; /* fetched on first use (new references) */
} Frame;

static void frame_clear(Frame *f) {
    Py_CLEAR(f->md);
    Py_CLEAR(f->start);
    Py_CLEAR(f->err);
    Py_CLEAR(f->resp);
}

#define FRAME_GET(cap, f, field, attr) \
    ((f)->field != NULL ? (f)->field : ((f)->field = attr_get(&(cap)->attr, (f)->ctx)))

static PyObject *capture_value(Capture *cap, Frame *f, Source *src) {
    PyObject *v, *o;
    switch (src->code) {
    case C_ATTR:
        return attr_get(&src->attr, f->ctx);
    case C_START:
        if ((v = FRAME_GET(cap, f, start, a_start)) == NULL)
            return NULL;
        Py_INCREF(v);
        return v;
    case C_DURATION:
        if ((v = FRAME_GET(cap, f, start, a_start)) == NULL)
            return NULL;
        if (PyFloat_CheckExact(v) && PyFloat_CheckExact(f->end))
            return PyFloat_FromDouble(PyFloat_AS_DOUBLE(f->end) - PyFloat_AS_DOUBLE(v));
        return PyNumber_Subtract(f->end, v);
    case C_RID:
        if ((v = attr_get(&cap->a_downstream_id, f->ctx)) == NULL || v != Py_None)
            return v;
        Py_DECREF(v);
        if ((o = FRAME_GET(cap, f, md, a_metadata)) == NULL)
            return NULL;
        return md_get(&cap->md_type, o, s_request_id, cap->get_str);
    case C_MD_GET:
        if ((o = FRAME_GET(cap, f, md, a_metadata)) == NULL)
            return NULL;
        return md_get(&cap->md_type, o, src->key, cap->get_str);
    case C_MD_GET_STR:
        if ((o = FRAME_GET(cap, f, md, a_metadata)) == NULL)
            return NULL;
        return md_get_str(&cap->md_type, o, src->key, cap->get_str, cap->as_str);
    case C_RESP_GET_STR:
        if ((o = FRAME_GET(cap, f, resp, a_resp)) == NULL)
            return NULL;
        if (o == Py_None)
            Py_RETURN_NONE;
        return md_get_str(&cap->resp_type, o, src->key, cap->get_str, cap->as_str);
    case C_ROUTE:
        if ((o = attr_get(&cap->a_route, f->ctx)) == NULL || o == Py_None)
            return o;
        v = attr_get(&cap->a_route_name, o);
        Py_DECREF(o);
        return v;
    case C_STATUS:
        if ((o = FRAME_GET(cap, f, err, a_error)) == NULL)
            return NULL;
        if (o != Py_None)
            return attr_get(&cap->a_kind, o);
        if ((o = FRAME_GET(cap, f, resp, a_resp)) == NULL)
            return NULL;
        if (o == Py_None)
            Py_RETURN_NONE;
        return md_get(&cap->resp_type, o, s_response_status, cap->get_str);
    case C_MESSAGE:
        if ((o = FRAME_GET(cap, f, err, a_error)) == NULL)
            return NULL;
        if (o == Py_None)
            Py_RETURN_NONE;
        return attr_get(&cap->a_message, o);
    }
    PyErr_SetString(PyExc_SystemError, "access log capture: bad source code");
    return NULL;
}

/* The record of one request: a new tuple, or NULL with an exception. */
static PyObject *capture_record(Capture *cap, PyObject *ctx, PyObject *end) {
    Frame f = {ctx, end, NULL, NULL, NULL, NULL};
    PyObject *record = PyTuple_New(cap->nslots);
    if (record == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < cap->nslots; i++) {
        Slot *slot = &cap->slots[i];
        PyObject *item;
        if (slot->single) {
            item = capture_value(cap, &f, &cap->sources[slot->first]);
        } else {
            item = PyTuple_New(slot->count);
            for (Py_ssize_t j = 0; item != NULL && j < slot->count; j++) {
                PyObject *v = capture_value(cap, &f, &cap->sources[slot->first + j]);
                if (v == NULL)
                    Py_CLEAR(item);
                else
                    PyTuple_SET_ITEM(item, j, v);
            }
        }
        if (item == NULL) {
            Py_DECREF(record);
            frame_clear(&f);
            return NULL;
        }
        PyTuple_SET_ITEM(record, i, item);
    }
    frame_clear(&f);
    return record;
}

static PyObject *Capture_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "capture(ctx, end) takes exactly two positional arguments");
        return NULL;
    }
    if (((Capture *)self)->as_str == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "capture was cleared");
        return NULL;
    }
    return capture_record((Capture *)self, args[0], args[1]);
}

static int Capture_traverse(Capture *self, visitproc visit, void *arg) {
    Py_VISIT(self->get_str);
    Py_VISIT(self->as_str);
    return 0;
}

static int Capture_clear(Capture *self) {
    Py_CLEAR(self->get_str);
    Py_CLEAR(self->as_str);
    return 0;
}

static void Capture_dealloc(Capture *self) {
    PyObject_GC_UnTrack(self);
    Capture_clear(self);
    if (self->sources != NULL) {
        for (Py_ssize_t i = 0; i < self->nsources; i++) {
            Py_CLEAR(self->sources[i].key);
            attr_clear(&self->sources[i].attr);
        }
    }
    PyMem_Free(self->sources);
    PyMem_Free(self->slots);
    Attr *attrs[] = {&self->a_metadata, &self->a_start, &self->a_downstream_id, &self->a_route,
                     &self->a_route_name, &self->a_error, &self->a_resp, &self->a_kind, &self->a_message,
                     &self->a_end_time};
    for (size_t i = 0; i < sizeof(attrs) / sizeof(attrs[0]); i++)
        attr_clear(attrs[i]);
    Py_CLEAR(self->md_type.type);
    Py_CLEAR(self->resp_type.type);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Capture(slots, get_str, as_str); slots: [(single, ((code, name_or_key_or_None), ...)), ...]. */
static PyObject *Capture_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *spec, *get_str, *as_str;
    static char *kwlist[] = {"slots", "get_str", "as_str", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OO:Capture", kwlist, &PyList_Type, &spec, &get_str, &as_str))
        return NULL;
    if (!PyCallable_Check(as_str)) {
        PyErr_SetString(PyExc_TypeError, "as_str must be callable");
        return NULL;
    }
    Capture *self = (Capture *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = Capture_vectorcall;
    Py_INCREF(get_str);
    self->get_str = get_str;
    Py_INCREF(as_str);
    self->as_str = as_str;
    if (attr_init(&self->a_metadata, "metadata") < 0 || attr_init(&self->a_start, "start_time") < 0 ||
        attr_init(&self->a_downstream_id, "downstream_id") < 0 || attr_init(&self->a_route, "route") < 0 ||
        attr_init(&self->a_route_name, "name") < 0 || attr_init(&self->a_error, "error") < 0 ||
        attr_init(&self->a_resp, "response_metadata") < 0 || attr_init(&self->a_kind, "kind") < 0 ||
        attr_init(&self->a_message, "message") < 0 || attr_init(&self->a_end_time, "end_time") < 0)
        goto fail;
    Py_ssize_t nslots = PyList_GET_SIZE(spec), nsources = 0;
    for (Py_ssize_t i = 0; i < nslots; i++) {
        PyObject *slot = PyList_GET_ITEM(spec, i);
        if (!PyTuple_Check(slot) || PyTuple_GET_SIZE(slot) != 2 || !PyTuple_Check(PyTuple_GET_ITEM(slot, 1))) {
            PyErr_SetString(PyExc_TypeError, "a capture slot is (single, (source, ...))");
            goto fail;
        }
        nsources += PyTuple_GET_SIZE(PyTuple_GET_ITEM(slot, 1));
    }
    self->slots = PyMem_Calloc((size_t)(nslots ? nslots : 1), sizeof(Slot));
    self->sources = PyMem_Calloc((size_t)(nsources ? nsources : 1), sizeof(Source));
    if (self->slots == NULL || self->sources == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    self->nslots = nslots;
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < nslots; i++) {
        PyObject *slot = PyList_GET_ITEM(spec, i);
        PyObject *sources = PyTuple_GET_ITEM(slot, 1);
        int single = PyObject_IsTrue(PyTuple_GET_ITEM(slot, 0));
        if (single < 0)
            goto fail;
        Py_ssize_t count = PyTuple_GET_SIZE(sources);
        if (single && count != 1) {
            PyErr_SetString(PyExc_ValueError, "a single slot has exactly one source");
            goto fail;
        }
        self->slots[i] = (Slot){at, count, single};
        for (Py_ssize_t j = 0; j < count; j++, at++) {
            PyObject *src = PyTuple_GET_ITEM(sources, j);
            if (!PyTuple_Check(src) || PyTuple_GET_SIZE(src) != 2) {
                PyErr_SetString(PyExc_TypeError, "a capture source is (code, name)");
                goto fail;
            }
            long code = PyLong_AsLong(PyTuple_GET_ITEM(src, 0));
            PyObject *name = PyTuple_GET_ITEM(src, 1);
            if (code == -1 && PyErr_Occurred())
                goto fail;
            if (code < 0 || code >= C_COUNT) {
                PyErr_Format(PyExc_ValueError, "unknown capture code %ld", code);
                goto fail;
            }
            Source *s = &self->sources[at];
            self->nsources = at + 1;
            s->code = (int)code;
            if (code == C_ATTR) {
                if (attr_init_obj(&s->attr, name) < 0)
                    goto fail;
            } else if (code == C_MD_GET || code == C_MD_GET_STR || code == C_RESP_GET_STR) {
                if (!PyUnicode_Check(name)) {
                    PyErr_SetString(PyExc_TypeError, "a metadata key must be a str");
                    goto fail;
                }
                Py_INCREF(name);
                s->key = name;
            }
        }
    }
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static PyTypeObject CaptureType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "metaproxy._accesslog.Capture",
    .tp_doc = "capture(ctx, end) -> the record tuple of one request (as LinePlan's Python capture builds it)",
    .tp_basicsize = sizeof(Capture),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Capture, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = Capture_new,
    .tp_dealloc = (destructor)Capture_dealloc,
    .tp_traverse = (traverseproc)Capture_traverse,
    .tp_clear = (inquiry)Capture_clear,
};

/* ---- shared by the request path ------------------------------------------------------ */

/* ctx.end_time or monotonic() */
static PyObject *end_time(Capture *capture, PyObject *monotonic, PyObject *ctx) {
    PyObject *end = attr_get(&capture->a_end_time, ctx);
    if (end == NULL)
        return NULL;
    int truth = PyFloat_CheckExact(end) ? PyFloat_AS_DOUBLE(end) != 0.0 : PyObject_IsTrue(end);
    if (truth > 0)
        return end;
    Py_DECREF(end);
    if (truth < 0)
        return NULL;
    return PyObject_CallNoArgs(monotonic);
}

/* logger.dropped += 1 */
static int count_dropped(PyObject *logger) {
    PyObject *n = PyObject_GetAttr(logger, s_dropped);
    if (n == NULL)
        return -1;
    PyObject *one = PyLong_FromLong(1);
    PyObject *m = one ? PyNumber_Add(n, one) : NULL;
    Py_DECREF(n);
    Py_XDECREF(one);
    if (m == NULL)
        return -1;
    int rc = PyObject_SetAttr(logger, s_dropped, m);
    Py_DECREF(m);
    return rc;
}

/* ---- Render ------------------------------------------------------------------------ */

/* Value kinds, in the order of the `kinds` tuple handed to Render (accesslog.py's Field.kind). */
enum { K_STR = 0, K_STATUS, K_TRACE, K_TIME, K_DURATION, K_INT, K_ID, K_COUNT };
enum { OP_VALUE = 0, OP_LITERAL = 1, OP_SEGMENT = 2 };

typedef struct {
    /* OP_VALUE: write record[index] (or record[index][sub] when sub >= 0); OP_LITERAL: write lit;
     * OP_SEGMENT: the next `sub` ops render the segment whose key is the tuple record[index]. */
    int type;
    int kind;
    Py_ssize_t index, sub;
    char *lit;
    Py_ssize_t litlen;
    PyObject *memo_key, *memo_val; /* an enum member last seen here -> its rendering (bytes) */
    /* The value (or segment key) this op rendered last in the current batch and where its text is in
     * the buffer: the same str or int (or an equal str), or a key of such values, again is copied from
     * there. Reset after every batch. */
    PyObject *prev;
    Py_ssize_t prev_at, prev_len;
} Op;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Py_ssize_t nops, width, hint;
    Op *ops;
    int json;
    int busy; /* rendering now: a converter that renders with this object again is refused */
    PyObject *clock, *convert, *enum_type, *kinds;
} Render;

typedef struct {
    double offset, base, limit;
    PyObject *text; /* the cached second's text (strong reference) */
    const char *second;
    Py_ssize_t second_len;
} RState;

static int state_second(RState *st, PyObject *triple) {
    if (!PyTuple_Check(triple) || PyTuple_GET_SIZE(triple) != 3 || !PyUnicode_Check(PyTuple_GET_ITEM(triple, 2))) {
        PyErr_SetString(PyExc_TypeError, "clock.second() must return (base, limit, text)");
        return -1;
    }
    double base = PyFloat_AsDouble(PyTuple_GET_ITEM(triple, 0));
    if (base == -1.0 && PyErr_Occurred())
        return -1;
    double limit = PyFloat_AsDouble(PyTuple_GET_ITEM(triple, 1));
    if (limit == -1.0 && PyErr_Occurred())
        return -1;
    PyObject *text = PyTuple_GET_ITEM(triple, 2);
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    if (s == NULL)
        return -1;
    Py_INCREF(text);
    Py_XSETREF(st->text, text);
    st->base = base;
    st->limit = limit;
    st->second = s;
    st->second_len = n;
    return 0;
}

/* clock.sync(), then the clock's offset and cached second. */
static int state_init(Render *r, RState *st) {
    PyObject *res = PyObject_CallMethodNoArgs(r->clock, s_sync);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    PyObject *offset = PyObject_GetAttr(r->clock, s_offset);
    if (offset == NULL)
        return -1;
    st->offset = PyFloat_AsDouble(offset);
    Py_DECREF(offset);
    if (st->offset == -1.0 && PyErr_Occurred())
        return -1;
    PyObject *triple = PyTuple_New(3);
    if (triple == NULL)
        return -1;
    PyObject *names[3] = {s_base, s_limit, s_text};
    for (int i = 0; i < 3; i++) {
        PyObject *v = PyObject_GetAttr(r->clock, names[i]);
        if (v == NULL) {
            Py_DECREF(triple);
            return -1;
        }
        PyTuple_SET_ITEM(triple, i, v);
    }
    int rc = state_second(st, triple);
    Py_DECREF(triple);
    return rc;
}

static inline int put_empty(Render *r, Buf *b) {
    return r->json ? buf_put(b, "null", 4) : buf_put(b, "-", 1);
}

/* An exact str: empty -> '-' / null; else as is (text) or as a JSON string. */
static int put_str(Render *r, Buf *b, PyObject *s) {
    if (PyUnicode_GET_LENGTH(s) == 0)
        return put_empty(r, b);
    return buf_put_str(b, s, r->json);
}

/* The plan's Python converter: CONVERT(kind, value, clock) -> the rendered str. */
static PyObject *convert(Render *r, int kind, PyObject *v) {
    PyObject *s = PyObject_CallFunctionObjArgs(r->convert, PyTuple_GET_ITEM(r->kinds, kind), v, r->clock, NULL);
    if (s != NULL && !PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "the access log converter returned %.100s, not str", Py_TYPE(s)->tp_name);
        Py_CLEAR(s);
    }
    return s;
}

static int put_converted(Render *r, Buf *b, int kind, PyObject *v) {
    PyObject *s = convert(r, kind, v);
    if (s == NULL)
        return -1;
    int rc = buf_put_str(b, s, 0);
    Py_DECREF(s);
    return rc;
}

/* An enum member (a str subclass: ResponseStatus, ErrorType): converted once per member seen in a row. */
static int put_member(Render *r, Buf *b, Op *op, PyObject *v) {
    if (v != op->memo_key) {
        PyObject *s = convert(r, op->kind, v);
        if (s == NULL)
            return -1;
        PyObject *bytes = PyUnicode_AsEncodedString(s, "utf-8", "replace");
        Py_DECREF(s);
        if (bytes == NULL)
            return -1;
        Py_INCREF(v);
        Py_XSETREF(op->memo_key, v);
        Py_XSETREF(op->memo_val, bytes);
    }
    return buf_put(b, PyBytes_AS_STRING(op->memo_val), PyBytes_GET_SIZE(op->memo_val));
}

/* A start time: 1 when the fast way does not apply (the converter renders it). */
static int put_time(Render *r, RState *st, Buf *b, double v) {
    double wall = v + st->offset;
    if (!isfinite(wall))
        return 1;
    if (!(wall >= st->base && wall < st->limit)) {
        PyObject *w = PyFloat_FromDouble(wall);
        PyObject *triple = w ? PyObject_CallMethodOneArg(r->clock, s_second, w) : NULL;
        Py_XDECREF(w);
        if (triple == NULL)
            return -1;
        int rc = state_second(st, triple);
        Py_DECREF(triple);
        if (rc < 0)
            return -1;
    }
    double f = (wall - st->base) * 1000.0;
    if (!(f >= 0.0 && f < 1001.0))
        return 1;
    int ms = (int)f;
    if (ms > 999)
        ms = 999; /* the product rounded up to 1000 */
    char tail[7] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z', '"', 0};
    if (r->json && buf_put(b, "\"", 1) < 0)
        return -1;
    if (buf_put(b, st->second, st->second_len) < 0)
        return -1;
    return buf_put(b, tail, r->json ? 6 : 5);
}

/* A duration in seconds as whole milliseconds, rounded half to even as round() does. */
static int put_duration(Buf *b, double v) {
    double x = v * 1000.0;
    if (!isfinite(x))
        return 1;
    double rounded = round(x);
    if (fabs(x - rounded) == 0.5)
        rounded = 2.0 * round(x / 2.0);
    if (!(fabs(rounded) < 9.0e15))
        return 1;
    return buf_put_ll(b, (long long)rounded);
}

static int put_value(Render *r, RState *st, Buf *b, Op *op, PyObject *v) {
    int rc;
    if (v == Py_None)
        return put_empty(r, b);
    switch (op->kind) {
    case K_STR:
    case K_STATUS:
        if (PyUnicode_CheckExact(v))
            return put_str(r, b, v);
        if (r->enum_type != Py_None && PyUnicode_Check(v) &&
            PyObject_TypeCheck((PyObject *)Py_TYPE(v), (PyTypeObject *)r->enum_type))
            return put_member(r, b, op, v);
        break;
    case K_INT:
    case K_ID:
        if (PyLong_CheckExact(v)) {
            int overflow;
            long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (!overflow) {
                if (x == -1 && PyErr_Occurred())
                    return -1;
                return buf_put_ll(b, x);
            }
            PyObject *s = PyObject_Str(v);
            if (s == NULL)
                return -1;
            rc = buf_put_str(b, s, 0);
            Py_DECREF(s);
            return rc;
        }
        if (PyUnicode_CheckExact(v))
            return put_str(r, b, v);
        break;
    case K_TIME:
        if (PyFloat_CheckExact(v) && (rc = put_time(r, st, b, PyFloat_AS_DOUBLE(v))) != 1)
            return rc;
        break;
    case K_DURATION:
        if (PyFloat_CheckExact(v) && (rc = put_duration(b, PyFloat_AS_DOUBLE(v))) != 1)
            return rc;
        break;
    default:
        break;
    }
    return put_converted(r, b, op->kind, v);
}

/* Two exact strs with the same code points. */
static inline int str_equal(PyObject *a, PyObject *b) {
    if (!PyUnicode_CheckExact(a) || !PyUnicode_CheckExact(b) || !PyUnicode_IS_READY(a) || !PyUnicode_IS_READY(b))
        return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    return n == PyUnicode_GET_LENGTH(b) && PyUnicode_KIND(a) == PyUnicode_KIND(b) &&
           memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * PyUnicode_KIND(a)) == 0;
}

/* A value whose rendering depends on nothing but its identity or its code points. */
static inline int memoizable(PyObject *v, PyObject *enum_type) {
    return v == Py_None || PyUnicode_CheckExact(v) || PyLong_CheckExact(v) ||
           (enum_type != Py_None && PyObject_TypeCheck((PyObject *)Py_TYPE(v), (PyTypeObject *)enum_type));
}

static PyObject *memo_enum_type; /* the Render being run's enum_type, for key_memoizable */

static int key_memoizable(PyObject *key) {
    if (!PyTuple_Check(key))
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(key); i++) {
        if (!memoizable(PyTuple_GET_ITEM(key, i), memo_enum_type))
            return 0;
    }
    return 1;
}

/* A segment key that renders as `prev` did: the same values (by identity, or equal strs). */
static int key_equal(PyObject *key, PyObject *prev) {
    if (key == prev)
        return 1;
    if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != PyTuple_GET_SIZE(prev))
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(key); i++) {
        PyObject *a = PyTuple_GET_ITEM(key, i), *b = PyTuple_GET_ITEM(prev, i);
        if (a != b && !str_equal(a, b))
            return 0;
    }
    return 1;
}

static int render_record(Render *r, RState *st, Buf *b, PyObject *record, Py_ssize_t at) {
    if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) < r->width) {
        PyErr_Format(PyExc_TypeError, "access log record %zd: expected a tuple of %zd values, got %.100s", at,
                     r->width, Py_TYPE(record)->tp_name);
        return -1;
    }
    Op *segment = NULL; /* the segment being rendered, whose span closes after op segment_end */
    Py_ssize_t segment_end = -1;
    for (Py_ssize_t i = 0; i < r->nops; i++) {
        Op *op = &r->ops[i];
        if (op->type == OP_LITERAL) {
            if (buf_put(b, op->lit, op->litlen) < 0)
                return -1;
            if (segment != NULL && i == segment_end) {
                segment->prev_len = b->len - segment->prev_at;
                segment = NULL;
            }
            continue;
        }
        PyObject *v = PyTuple_GET_ITEM(record, op->index);
        if (op->type == OP_SEGMENT) {
            if (op->prev != NULL && key_equal(v, op->prev)) {
                if (b->cap - b->len < op->prev_len && buf_grow(b, op->prev_len) < 0)
                    return -1;
                memcpy(b->data + b->len, b->data + op->prev_at, (size_t)op->prev_len);
                b->len += op->prev_len;
                i += op->sub; /* the segment's ops */
                continue;
            }
            Py_CLEAR(op->prev);
            if (key_memoizable(v)) { /* rendered by the ops that follow; the span is closed below */
                Py_INCREF(v);
                op->prev = v;
                op->prev_at = b->len;
                op->prev_len = -1;
                segment = op;
                segment_end = i + op->sub;
            }
            continue;
        }
        if (op->sub >= 0) {
            if (!PyTuple_Check(v) || PyTuple_GET_SIZE(v) <= op->sub) {
                PyErr_Format(PyExc_TypeError, "access log record %zd: value %zd is not a tuple of %zd", at, op->index,
                             op->sub + 1);
                return -1;
            }
            v = PyTuple_GET_ITEM(v, op->sub);
        }
        if (op->kind == K_TIME || op->kind == K_DURATION || op->kind == K_TRACE) {
            if (put_value(r, st, b, op, v) < 0)
                return -1;
            if (segment != NULL && i == segment_end) {
                segment->prev_len = b->len - segment->prev_at;
                segment = NULL;
            }
            continue;
        }
        if (op->prev != NULL && (v == op->prev || str_equal(v, op->prev))) {
            if (b->cap - b->len < op->prev_len && buf_grow(b, op->prev_len) < 0)
                return -1;
            memcpy(b->data + b->len, b->data + op->prev_at, (size_t)op->prev_len);
            b->len += op->prev_len;
            if (segment != NULL && i == segment_end) {
                segment->prev_len = b->len - segment->prev_at;
                segment = NULL;
            }
            continue;
        }
        Py_ssize_t start = b->len;
        if (put_value(r, st, b, op, v) < 0)
            return -1;
        if (PyUnicode_CheckExact(v) || PyLong_CheckExact(v)) { /* immutable: its text cannot change */
            Py_INCREF(v);
            Py_XSETREF(op->prev, v);
            op->prev_at = start;
            op->prev_len = b->len - start;
        }
        if (segment != NULL && i == segment_end) {
            segment->prev_len = b->len - segment->prev_at;
            segment = NULL;
        }
    }
    if (segment != NULL) /* a segment that ends the line with a literal */
        segment->prev_len = b->len - segment->prev_at;
    return 0;
}

static void forget_prev(Render *r) {
    for (Py_ssize_t i = 0; r->ops != NULL && i < r->nops; i++)
        Py_CLEAR(r->ops[i].prev);
}

static PyObject *render_batch(Render *r, PyObject *records) {
    if (!PyList_Check(records) && !PyTuple_Check(records)) {
        PyErr_SetString(PyExc_TypeError, "render(records): records must be a list or a tuple");
        return NULL;
    }
    if (r->busy) {
        PyErr_SetString(PyExc_RuntimeError, "render(records) called again while rendering");
        return NULL;
    }
    Py_INCREF(records);
    r->busy = 1;
    RState st = {0};
    Buf b = {NULL, NULL, 0, 0};
    memo_enum_type = r->enum_type;
    PyObject *result = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(records);
    if (state_init(r, &st) < 0)
        goto done;
    if (n > 0 && r->hint > 0 && n < PY_SSIZE_T_MAX / (r->hint + 16) && buf_grow(&b, n * (r->hint + 16)) < 0)
        goto done;
    /* The size is read again each time: a converter (Python code) could change a list. */
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(records); i++) {
        PyObject *record = PySequence_Fast_GET_ITEM(records, i);
        Py_INCREF(record);
        int rc = render_record(r, &st, &b, record, i);
        Py_DECREF(record);
        if (rc < 0)
            goto done;
    }
    if (n > 0)
        r->hint = b.len / n;
    if (b.obj == NULL) {
        result = PyBytes_FromStringAndSize("", 0);
    } else if (_PyBytes_Resize(&b.obj, b.len) == 0) {
        result = b.obj;
        b.obj = NULL;
    }
done:
    forget_prev(r);
    r->busy = 0;
    Py_XDECREF(b.obj);
    Py_XDECREF(st.text);
    Py_DECREF(records);
    return result;
}

static PyObject *Render_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "render(records) takes exactly one positional argument");
        return NULL;
    }
    if (((Render *)self)->clock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "render was cleared");
        return NULL;
    }
    return render_batch((Render *)self, args[0]);
}

static int Render_traverse(Render *self, visitproc visit, void *arg) {
    Py_VISIT(self->clock);
    Py_VISIT(self->convert);
    Py_VISIT(self->enum_type);
    Py_VISIT(self->kinds);
    for (Py_ssize_t i = 0; self->ops != NULL && i < self->nops; i++) {
        Py_VISIT(self->ops[i].memo_key);
        Py_VISIT(self->ops[i].prev);
    }
    return 0;
}

static int Render_clear(Render *self) {
    Py_CLEAR(self->clock);
    Py_CLEAR(self->convert);
    Py_CLEAR(self->enum_type);
    Py_CLEAR(self->kinds);
    for (Py_ssize_t i = 0; self->ops != NULL && i < self->nops; i++) {
        Py_CLEAR(self->ops[i].memo_key);
        Py_CLEAR(self->ops[i].memo_val);
        Py_CLEAR(self->ops[i].prev);
    }
    return 0;
}

static void Render_dealloc(Render *self) {
    PyObject_GC_UnTrack(self);
    Render_clear(self);
    for (Py_ssize_t i = 0; self->ops != NULL && i < self->nops; i++)
        PyMem_Free(self->ops[i].lit);
    PyMem_Free(self->ops);
    Py_TYPE(self)->tp_free((PyObject *)self);
}


/* Render(ops, json, clock, convert, kinds, enum_type);
 * ops: [(1, b"literal") | (0, kind, index, sub) | (2, index, count), ...]. */
static PyObject *Render_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *ops, *clock, *conv, *kinds, *enum_type;
    int json;
    static char *kwlist[] = {"ops", "json", "clock", "convert", "kinds", "enum_type", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!pOOO!O:Render", kwlist, &PyList_Type, &ops, &json, &clock, &conv,
                                     &PyTuple_Type, &kinds, &enum_type))
        return NULL;
    if (!PyCallable_Check(conv)) {
        PyErr_SetString(PyExc_TypeError, "convert must be callable");
        return NULL;
    }
    if (PyTuple_GET_SIZE(kinds) != K_COUNT) {
        PyErr_Format(PyExc_ValueError, "kinds must name the %d kinds", K_COUNT);
        return NULL;
    }
    if (enum_type != Py_None && !PyType_Check(enum_type)) {
        PyErr_SetString(PyExc_TypeError, "enum_type must be a type (the enum metaclass) or None");
        return NULL;
    }
    Render *self = (Render *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = Render_vectorcall;
    self->json = json;
    Py_INCREF(clock);
    self->clock = clock;
    Py_INCREF(conv);
    self->convert = conv;
    Py_INCREF(kinds);
    self->kinds = kinds;
    Py_INCREF(enum_type);
    self->enum_type = enum_type;
    Py_ssize_t n = PyList_GET_SIZE(ops);
    self->ops = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Op));
    if (self->ops == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(ops, i);
        Op *op = &self->ops[i];
        self->nops = i + 1;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 2) {
            PyErr_SetString(PyExc_TypeError, "an op is (1, bytes) or (0, kind, index, sub)");
            goto fail;
        }
        long optype = PyLong_AsLong(PyTuple_GET_ITEM(item, 0));
        if (optype == -1 && PyErr_Occurred())
            goto fail;
        if (optype == OP_SEGMENT) {
            Py_ssize_t index = PyTuple_GET_SIZE(item) == 3 ? PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 1)) : -1;
            Py_ssize_t count = PyTuple_GET_SIZE(item) == 3 ? PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 2)) : -1;
            if (PyErr_Occurred())
                goto fail;
            if (index < 0 || index >= PY_SSIZE_T_MAX || count < 1 || count >= n - i) {
                PyErr_SetString(PyExc_ValueError, "a segment op is (2, index, count) and its ops follow it");
                goto fail;
            }
            for (Py_ssize_t j = i + 1; j <= i + count; j++) {
                PyObject *inner = PyList_GET_ITEM(ops, j);
                if (!PyTuple_Check(inner) || PyTuple_GET_SIZE(inner) < 1 ||
                    !PyLong_Check(PyTuple_GET_ITEM(inner, 0)) ||
                    PyLong_AsLong(PyTuple_GET_ITEM(inner, 0)) == OP_SEGMENT) {
                    PyErr_Clear();
                    PyErr_SetString(PyExc_ValueError, "a segment holds values and literals only");
                    goto fail;
                }
            }
            op->type = OP_SEGMENT;
            op->index = index;
            op->sub = count;
            if (index + 1 > self->width)
                self->width = index + 1;
            continue;
        }
        if (optype != OP_VALUE && optype != OP_LITERAL) {
            PyErr_Format(PyExc_ValueError, "unknown op type %ld", optype);
            goto fail;
        }
        if (optype == OP_LITERAL) {
            PyObject *lit = PyTuple_GET_ITEM(item, 1);
            if (PyTuple_GET_SIZE(item) != 2 || !PyBytes_Check(lit)) {
                PyErr_SetString(PyExc_TypeError, "a literal op is (1, bytes)");
                goto fail;
            }
            op->type = OP_LITERAL;
            op->litlen = PyBytes_GET_SIZE(lit);
            op->lit = PyMem_Malloc((size_t)(op->litlen ? op->litlen : 1));
            if (op->lit == NULL) {
                PyErr_NoMemory();
                goto fail;
            }
            memcpy(op->lit, PyBytes_AS_STRING(lit), (size_t)op->litlen);
            continue;
        }
        if (PyTuple_GET_SIZE(item) != 4) {
            PyErr_SetString(PyExc_TypeError, "a value op is (0, kind, index, sub)");
            goto fail;
        }
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
        Py_ssize_t index = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 2));
        Py_ssize_t sub = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 3));
        if (PyErr_Occurred())
            goto fail;
        if (kind < 0 || kind >= K_COUNT || index < 0 || index >= PY_SSIZE_T_MAX || sub < -1) {
            PyErr_SetString(PyExc_ValueError, "a value op's kind, index or sub is out of range");
            goto fail;
        }
        op->type = OP_VALUE;
        op->kind = (int)kind;
        op->index = index;
        op->sub = sub;
        if (index + 1 > self->width)
            self->width = index + 1;
    }
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static PyTypeObject RenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "metaproxy._accesslog.Render",
    .tp_doc = "render(records) -> the UTF-8 bytes of their lines (render_slowly's text, encoded with 'replace')",
    .tp_basicsize = sizeof(Render),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Render, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = Render_new,
    .tp_dealloc = (destructor)Render_dealloc,
    .tp_traverse = (traverseproc)Render_traverse,
    .tp_clear = (inquiry)Render_clear,
};

/* ---- Writer: capture and render at the end of the request ---------------------------- */

/* The request path of a logger whose lines are rendered as each request ends, into the buffer
 * the flusher takes whole: the values are read while the request's objects are still in the
 * cache, the record tuple is freed at once (no thousand of them waiting for the flusher, no
 * second pass over them), and the flusher only writes. The bytes are those Render gives for the
 * same records in one batch (the clock is synced once per batch, as Render does). A line that
 * fails to render is dropped and counted (the exception is reported as unraisable), never raised
 * into the request: the request has been answered. A capture that fails raises, as the
 * Python request path does. The Render it owns is refused to any other caller. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Capture *capture;
    Render *render;
    PyObject *logger, *accept, *wake, *monotonic;
    Py_ssize_t limit, wake_at, lines, expect;
    int busy;
    Buf buf;
    RState st;
} Writer;

/* Render one record at the end of the buffer; on failure the buffer is as it was. */
static int writer_render(Writer *self, PyObject *record) {
    Render *r = self->render;
    Buf *b = &self->buf;
    Py_ssize_t start = b->len;
    memo_enum_type = r->enum_type;
    if (self->lines == 0) {
        if (state_init(r, &self->st) < 0)
            return -1;
        Py_ssize_t want = self->expect * (r->hint + 16);
        if (b->cap == 0 && want > 0 && self->expect < PY_SSIZE_T_MAX / (r->hint + 16) && buf_grow(b, want) < 0)
            return -1;
    }
    if (render_record(r, &self->st, b, record, self->lines) < 0) {
        if (b->obj != NULL)
            b->len = start;
        forget_prev(r); /* a value of this line may be remembered at an offset past `start` */
        return -1;
    }
    return 0;
}

static PyObject *Writer_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Writer *self = (Writer *)op;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "request_end(ctx) takes exactly one positional argument");
        return NULL;
    }
    if (self->capture == NULL || self->render == NULL || self->capture->as_str == NULL ||
        self->render->clock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the writer was cleared");
        return NULL;
    }
    if (self->busy) { /* a converter or a filter that ends a request of this logger */
        PyErr_SetString(PyExc_RuntimeError, "request_end called again while a line is rendered");
        return NULL;
    }
    PyObject *ctx = args[0], *end = NULL;
    if (self->accept != Py_None) {
        if ((end = end_time(self->capture, self->monotonic, ctx)) == NULL)
            return NULL;
        PyObject *ok = PyObject_CallFunctionObjArgs(self->accept, ctx, end, NULL);
        int truth = ok ? PyObject_IsTrue(ok) : -1;
        Py_XDECREF(ok);
        if (truth <= 0) {
            Py_DECREF(end);
            if (truth < 0)
                return NULL;
            Py_RETURN_NONE;
        }
    }
    if (self->lines >= self->limit) {
        Py_XDECREF(end);
        if (count_dropped(self->logger) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (end == NULL && (end = end_time(self->capture, self->monotonic, ctx)) == NULL)
        return NULL;
    PyObject *record = capture_record(self->capture, ctx, end);
    Py_DECREF(end);
    if (record == NULL)
        return NULL;
    self->busy = 1;
    int rc = writer_render(self, record);
    self->busy = 0;
    Py_DECREF(record);
    if (rc < 0) {
        PyErr_WriteUnraisable(self->logger);
        if (count_dropped(self->logger) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (self->lines++ == self->wake_at) {
        PyObject *w = PyObject_CallNoArgs(self->wake);
        if (w == NULL)
            return NULL;
        Py_DECREF(w);
    }
    Py_RETURN_NONE;
}

/* take() -> (bytes, lines): what was rendered since the last take; the buffer starts again. */
static PyObject *Writer_take(Writer *self, PyObject *Py_UNUSED(ignored)) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "take() called while a line is rendered");
        return NULL;
    }
    Py_ssize_t lines = self->lines;
    PyObject *data;
    if (self->buf.obj == NULL || self->buf.len == 0) {
        data = PyBytes_FromStringAndSize("", 0);
    } else {
        if (_PyBytes_Resize(&self->buf.obj, self->buf.len) < 0) {
            self->buf.obj = NULL;
            self->buf.data = NULL;
            self->buf.len = self->buf.cap = 0;
            self->lines = 0;
            if (self->render != NULL)
                forget_prev(self->render);
            return NULL;
        }
        data = self->buf.obj;
        if (self->render != NULL && lines > 0)
            self->render->hint = self->buf.len / lines;
    }
    self->buf.obj = NULL;
    self->buf.data = NULL;
    self->buf.len = self->buf.cap = 0;
    if (lines > 0) /* the next batch is sized for as many lines as this one, up to the wake-up */
        self->expect = lines < self->wake_at + 1 ? lines : self->wake_at + 1;
    self->lines = 0;
    if (self->render != NULL)
        forget_prev(self->render);
    if (data == NULL)
        return NULL;
    PyObject *result = Py_BuildValue("(Nn)", data, lines);
    return result;
}

static PyObject *Writer_get_lines(Writer *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->lines);
}

static int Writer_traverse(Writer *self, visitproc visit, void *arg) {
    Py_VISIT(self->capture);
    Py_VISIT(self->render);
    Py_VISIT(self->logger);
    Py_VISIT(self->accept);
    Py_VISIT(self->wake);
    Py_VISIT(self->monotonic);
    return 0;
}

static int Writer_clear(Writer *self) {
    if (self->render != NULL)
        self->render->busy = 0;
    Py_CLEAR(self->capture);
    Py_CLEAR(self->render);
    Py_CLEAR(self->logger);
    Py_CLEAR(self->accept);
    Py_CLEAR(self->wake);
    Py_CLEAR(self->monotonic);
    return 0;
}

static void Writer_dealloc(Writer *self) {
    PyObject_GC_UnTrack(self);
    Writer_clear(self);
    Py_CLEAR(self->buf.obj);
    Py_CLEAR(self->st.text);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Writer(capture, render, logger, accept, limit, wake_at, wake, monotonic) */
static PyObject *Writer_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *capture, *render, *logger, *accept, *wake, *monotonic;
    Py_ssize_t limit, wake_at;
    static char *kwlist[] = {"capture", "render", "logger", "accept", "limit", "wake_at", "wake", "monotonic", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!OOnnOO:Writer", kwlist, &CaptureType, &capture, &RenderType,
                                     &render, &logger, &accept, &limit, &wake_at, &wake, &monotonic))
        return NULL;
    if ((accept != Py_None && !PyCallable_Check(accept)) || !PyCallable_Check(wake) || !PyCallable_Check(monotonic)) {
        PyErr_SetString(PyExc_TypeError, "accept (or None), wake and monotonic must be callable");
        return NULL;
    }
    if (limit < 0 || wake_at < 0) {
        PyErr_SetString(PyExc_ValueError, "limit and wake_at must not be negative");
        return NULL;
    }
    if (((Render *)render)->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this Render is in use (rendering, or another Writer's)");
        return NULL;
    }
    Writer *self = (Writer *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = Writer_vectorcall;
    Py_INCREF(capture);
    self->capture = (Capture *)capture;
    Py_INCREF(render);
    self->render = (Render *)render;
    self->render->busy = 1; /* its per-op memory points into this writer's buffer */
    Py_INCREF(logger);
    self->logger = logger;
    Py_INCREF(accept);
    self->accept = accept;
    Py_INCREF(wake);
    self->wake = wake;
    Py_INCREF(monotonic);
    self->monotonic = monotonic;
    self->limit = limit;
    self->wake_at = wake_at;
    self->expect = 1;
    return (PyObject *)self;
}

static PyMethodDef Writer_methods[] = {
    {"take", (PyCFunction)Writer_take, METH_NOARGS,
     "take() -> (bytes, lines): the lines rendered since the last take, as one UTF-8 bytes object"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Writer_getset[] = {
    {"lines", (getter)Writer_get_lines, NULL, "lines rendered and not yet taken", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "metaproxy._accesslog.Writer",
    .tp_doc = "request_end(ctx): filter, bound, capture and render the line now; take() hands the lines over",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Writer, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = Writer_new,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_traverse = (traverseproc)Writer_traverse,
    .tp_clear = (inquiry)Writer_clear,
    .tp_methods = Writer_methods,
    .tp_getset = Writer_getset,
};

/* ---- module ---------------------------------------------------------------------------- */

static struct PyModuleDef accesslog_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "metaproxy._accesslog",
    .m_doc = "The access log's capture and batch render in C (metaproxy/accesslog.py uses it when present).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__accesslog(void) {
    for (int c = 0; c < 256; c++)
        needs_escape[c] = c < 0x20 || c == '"' || c == '\\';
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {{&s_get, "get"}, {&s_get_str, "get_str"}, {&s_sync, "sync"}, {&s_second, "second"},
                 {&s_offset, "offset"}, {&s_base, "base"}, {&s_limit, "limit"}, {&s_text, "text"},
                 {&s_dropped, "dropped"}, {&s_request_id, "request_id"}, {&s_response_status, "response_status"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return NULL;
    }
    if (dict_get_descr == NULL) {
        dict_get_descr = PyDict_GetItemWithError(PyDict_Type.tp_dict, s_get);
        if (dict_get_descr == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_SystemError, "dict.get not found");
            return NULL;
        }
        Py_INCREF(dict_get_descr);
    }
    if (PyType_Ready(&CaptureType) < 0 || PyType_Ready(&RenderType) < 0 ||
        PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&accesslog_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Capture", (PyObject *)&CaptureType) < 0 ||
        PyModule_AddObjectRef(m, "Render", (PyObject *)&RenderType) < 0 ||
        PyModule_AddObjectRef(m, "Writer", (PyObject *)&WriterType) < 0 ||
        PyModule_AddIntConstant(m, "ABI", 2) < 0 ||
        PyModule_AddStringConstant(m, "SOURCE_SHA256", METAPROXY_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
