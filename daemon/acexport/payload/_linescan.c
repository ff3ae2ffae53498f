/* What NDJSON lines hold, read without the GIL: the hot path's per-byte checks.
 *
 * linescan.py says what each function means and holds the same functions in
 * Python, which run where this module was not built; tests/test_linescan.py checks
 * that both give the same answers. Here every scan runs with the GIL released, so
 * the split (a sink thread) and the UTF-8 check (a writer thread) run beside each
 * other and beside inflating, where in Python they took turns.
 */
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE  /* memmem */
#endif
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---- UTF-8 -------------------------------------------------------------- */

/* The length of the sequence a lead byte starts (0: not a lead byte). */
static int
sequence_length(unsigned char lead)
{
    if (lead < 0x80) return 1;
    if (lead >= 0xC2 && lead <= 0xDF) return 2;
    if (lead >= 0xE0 && lead <= 0xEF) return 3;
    if (lead >= 0xF0 && lead <= 0xF4) return 4;
    return 0;
}

/* Whether s[1..avail) may follow s[0] in a sequence of length len (Unicode's table
 * 3-7: no overlong forms, no surrogates, nothing past U+10FFFF). */
static int
continues(const unsigned char *s, Py_ssize_t avail, int len)
{
    for (Py_ssize_t i = 1; i < avail && i < len; i++) {
        unsigned char c = s[i];
        unsigned char lo = 0x80, hi = 0xBF;
        if (i == 1) {
            if (s[0] == 0xE0) lo = 0xA0;
            else if (s[0] == 0xED) hi = 0x9F;
            else if (s[0] == 0xF0) lo = 0x90;
            else if (s[0] == 0xF4) hi = 0x8F;
        }
        if (c < lo || c > hi) return 0;
    }
    return 1;
}

/* -1 if s[0..n) is not UTF-8, else where an unfinished last sequence starts (n if
 * none). ASCII, most of AC's bytes, is passed eight bytes at a time. */
static Py_ssize_t
utf8_scan(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t word;
            memcpy(&word, s + i, 8);
            if (word & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int len = sequence_length(s[i]);
        if (len == 0) return -1;
        Py_ssize_t avail = n - i;
        if (!continues(s + i, avail, len)) return -1;
        if (avail < len) return i;
        i += len;
    }
    return n;
}

PyDoc_STRVAR(utf8_rest_doc,
"utf8_rest(data, carried=b'') -> bytes | None\n\n"
"The unfinished sequence at the end of carried + data (to carry into the next\n"
"piece), or None if the bytes are not UTF-8.");

static PyObject *
utf8_rest(PyObject *module, PyObject *args)
{
    Py_buffer data, carried = {0};
    if (!PyArg_ParseTuple(args, "y*|y*", &data, &carried)) return NULL;
    const unsigned char *s = data.buf;
    Py_ssize_t n = data.len, start = 0, rest = -1;
    unsigned char joined[8];
    Py_ssize_t joined_len = 0;
    int valid = 1, unfinished = 0;
    if (carried.buf != NULL && carried.len > 0) {
        /* Finish the carried sequence (at most 3 bytes) with data's first bytes. */
        const unsigned char *c = carried.buf;
        int len = sequence_length(c[0]);
        if (len == 0 || carried.len >= len) {
            valid = 0;
        } else {
            Py_ssize_t take = len - carried.len;
            if (take > n) take = n;
            memcpy(joined, c, carried.len);
            memcpy(joined + carried.len, s, take);
            joined_len = carried.len + take;
            if (!continues(joined, joined_len, len)) valid = 0;
            else if (joined_len < len) unfinished = 1;  /* data ran out first */
            start = take;
        }
    }
    if (valid && !unfinished) {
        Py_ssize_t at;
        Py_BEGIN_ALLOW_THREADS
        at = utf8_scan(s + start, n - start);
        Py_END_ALLOW_THREADS
        if (at < 0) valid = 0;
        else rest = start + at;
    }
    PyObject *result;
    if (!valid) result = Py_NewRef(Py_None);
    else if (unfinished) result = PyBytes_FromStringAndSize((const char *)joined, joined_len);
    else result = PyBytes_FromStringAndSize((const char *)s + rest, n - rest);
    PyBuffer_Release(&data);
    if (carried.buf != NULL) PyBuffer_Release(&carried);
    return result;
}

/* ---- Line breaks -------------------------------------------------------- */

PyDoc_STRVAR(line_breaks_doc,
"line_breaks(data) -> (breaks, joined)\n\n"
"Line breaks in data, and those of them with '}' (or '}\\r') before and '{' after,\n"
"both within data.");

static PyObject *
line_breaks(PyObject *module, PyObject *args)
{
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    const unsigned char *s = data.buf, *end = s + data.len;
    Py_ssize_t breaks = 0, joined = 0;
    Py_BEGIN_ALLOW_THREADS
    for (const unsigned char *p = s; (p = memchr(p, '\n', end - p)) != NULL; p++) {
        breaks++;
        if (p + 1 < end && p[1] == '{' && p > s) {
            if (p[-1] == '}') joined++;
            else if (p[-1] == '\r' && p - 1 > s && p[-2] == '}') joined++;
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    return Py_BuildValue("nn", breaks, joined);
}

/* ---- A column's first value per line ------------------------------------ */

#define MAX_SHAPES 32

typedef struct {
    const unsigned char *at;
    Py_ssize_t len;
} Span;

/* Where "key" \s* : \s* "value" first occurs in [p, end), with its value. */
static int
first_value(const unsigned char *p, const unsigned char *end,
            const unsigned char *key, Py_ssize_t key_len, Span *value)
{
    while (p < end) {
        const unsigned char *found = memmem(p, end - p, key, key_len);
        if (found == NULL) return 0;
        const unsigned char *q = found + key_len;
        while (q < end && (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\f' || *q == '\v')) q++;
        if (q < end && *q == ':') {
            q++;
            while (q < end && (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\f' || *q == '\v')) q++;
            if (q < end && *q == '"') {
                const unsigned char *close = memchr(q + 1, '"', end - (q + 1));
                if (close != NULL) {
                    value->at = q + 1;
                    value->len = close - (q + 1);
                    return 1;
                }
            }
        }
        p = found + 1;
    }
    return 0;
}

/* Texts compared as the split's sortable forms are: 'Z' as a space. */
static int
compare_sortable(Span a, Span b)
{
    Py_ssize_t n = a.len < b.len ? a.len : b.len;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char x = a.at[i] == 'Z' ? ' ' : a.at[i];
        unsigned char y = b.at[i] == 'Z' ? ' ' : b.at[i];
        if (x != y) return x < y ? -1 : 1;
    }
    return (a.len > b.len) - (a.len < b.len);
}

/* Whether two values have one shape: the same bytes once digits 1-9 read as 0. */
static int
same_shape(Span a, Span b)
{
    if (a.len != b.len) return 0;
    for (Py_ssize_t i = 0; i < a.len; i++) {
        unsigned char x = a.at[i], y = b.at[i];
        if (x >= '1' && x <= '9') x = '0';
        if (y >= '1' && y <= '9') y = '0';
        if (x != y) return 0;
    }
    return 1;
}

PyDoc_STRVAR(first_values_doc,
"first_values(data, start, end, key) -> (lines, shapes, low, high)\n\n"
"Over the whole lines data[start:end]: how many there are and, if every one has\n"
"key, then optional blanks, ':', blanks and a string, the distinct shapes of each\n"
"line's first such value (digits 1-9 as 0; None past 32) and the least and\n"
"greatest value, compared with 'Z' as a space. shapes, low and high are None\n"
"when a line has no such value.");

static PyObject *
first_values(PyObject *module, PyObject *args)
{
    Py_buffer data, key;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "y*nny*", &data, &start, &stop, &key)) return NULL;
    if (start < 0 || stop > data.len || start > stop || key.len == 0) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "first_values: bad range or empty key");
        return NULL;
    }
    const unsigned char *s = data.buf, *end = s + stop;
    Span shapes[MAX_SHAPES], low = {0}, high = {0};
    int shape_count = 0, every = 1, overflow = 0;
    Py_ssize_t lines = 0;
    Py_BEGIN_ALLOW_THREADS
    for (const unsigned char *p = s + start; p < end;) {
        const unsigned char *nl = memchr(p, '\n', end - p);
        if (nl == NULL) break;  /* not a whole line: the caller's to keep */
        const unsigned char *line_end = nl;
        lines++;
        Span value;
        if (every && first_value(p, line_end, key.buf, key.len, &value)) {
            if (low.at == NULL) {
                low = high = value;
            } else {
                if (compare_sortable(value, low) < 0) low = value;
                if (compare_sortable(value, high) > 0) high = value;
            }
            if (!overflow) {
                int known = 0;
                for (int i = 0; i < shape_count && !known; i++) known = same_shape(shapes[i], value);
                if (!known) {
                    if (shape_count == MAX_SHAPES) overflow = 1;
                    else shapes[shape_count++] = value;
                }
            }
        } else if (every) {
            every = 0;  /* the lines are still counted */
        }
        p = line_end + 1;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&key);
    PyObject *result = NULL;
    if (!every) {
        result = Py_BuildValue("nOOO", lines, Py_None, Py_None, Py_None);
    } else {
        PyObject *shape_list = Py_None, *lo = NULL, *hi = NULL;
        Py_INCREF(Py_None);
        if (!overflow) {
            Py_DECREF(Py_None);
            shape_list = PyTuple_New(shape_count);
            for (int i = 0; shape_list != NULL && i < shape_count; i++) {
                PyObject *shape = PyBytes_FromStringAndSize(NULL, shapes[i].len);
                if (shape == NULL) {
                    Py_CLEAR(shape_list);
                    break;
                }
                char *out = PyBytes_AS_STRING(shape);
                for (Py_ssize_t j = 0; j < shapes[i].len; j++) {
                    unsigned char c = shapes[i].at[j];
                    out[j] = (char)(c >= '1' && c <= '9' ? '0' : c);
                }
                PyTuple_SET_ITEM(shape_list, i, shape);
            }
        }
        if (shape_list != NULL) {
            lo = low.at ? PyBytes_FromStringAndSize((const char *)low.at, low.len) : Py_NewRef(Py_None);
            hi = high.at ? PyBytes_FromStringAndSize((const char *)high.at, high.len) : Py_NewRef(Py_None);
            if (lo != NULL && hi != NULL) result = Py_BuildValue("nOOO", lines, shape_list, lo, hi);
        }
        Py_XDECREF(shape_list);
        Py_XDECREF(lo);
        Py_XDECREF(hi);
    }
    PyBuffer_Release(&data);
    return result;
}

/* How many of the sorted edges are at or before value (bisect_right). */
static Py_ssize_t
place_of(Span value, const Span *edges, Py_ssize_t count)
{
    Py_ssize_t low = 0, high = count;
    while (low < high) {
        Py_ssize_t mid = (low + high) / 2;
        if (compare_sortable(value, edges[mid]) < 0) high = mid;
        else low = mid + 1;
    }
    return low;
}

typedef struct {
    Py_ssize_t place, start, len;  /* a line: its place and where it is, '\n' included */
} Line;

PyDoc_STRVAR(group_lines_doc,
"group_lines(data, start, end, key, edges) -> [(place, count, lines), ...]\n\n"
"The whole lines of data[start:end] grouped by the place of their first value of\n"
"key among the sorted edges (bisect_right, 'Z' as a space), in order of place;\n"
"each group's lines joined in their order. Every line must have such a value.");

static PyObject *
group_lines(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer data, key;
    Py_ssize_t start, stop;
    PyObject *edge_list;
    if (!PyArg_ParseTuple(args, "y*nny*O", &data, &start, &stop, &key, &edge_list)) return NULL;
    /* Our own tuple of the edges: nobody can change it while the GIL is released. */
    PyObject *edge_tuple = PySequence_Tuple(edge_list);
    if (edge_tuple == NULL) {
        PyBuffer_Release(&key);
        PyBuffer_Release(&data);
        return NULL;
    }
    PyObject *result = NULL;
    Line *lines = NULL;
    Py_ssize_t *sizes = NULL, *counts = NULL, *filled = NULL;
    PyObject **groups = NULL;
    Py_ssize_t edge_count = PyTuple_GET_SIZE(edge_tuple), places = edge_count + 1;
    Span *edges = PyMem_Calloc(edge_count ? edge_count : 1, sizeof(Span));
    if (start < 0 || stop > data.len || start > stop || key.len == 0) {
        PyErr_SetString(PyExc_ValueError, "group_lines: bad range or empty key");
        goto done;
    }
    if (edges == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < edge_count; i++) {
        PyObject *edge = PyTuple_GET_ITEM(edge_tuple, i);
        if (!PyBytes_Check(edge)) {
            PyErr_SetString(PyExc_TypeError, "group_lines: edges must be bytes");
            goto done;
        }
        edges[i].at = (const unsigned char *)PyBytes_AS_STRING(edge);
        edges[i].len = PyBytes_GET_SIZE(edge);
    }
    const unsigned char *s = data.buf, *end = s + stop;
    Py_ssize_t most = 0;
    for (const unsigned char *p = s + start; p < end && (p = memchr(p, '\n', end - p)); p++) most++;
    lines = PyMem_Malloc((most ? most : 1) * sizeof(Line));
    sizes = PyMem_Calloc(places, sizeof(Py_ssize_t));
    counts = PyMem_Calloc(places, sizeof(Py_ssize_t));
    filled = PyMem_Calloc(places, sizeof(Py_ssize_t));
    groups = PyMem_Calloc(places, sizeof(PyObject *));
    if (lines == NULL || sizes == NULL || counts == NULL || filled == NULL || groups == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t count = 0;
    int every = 1;
    Py_BEGIN_ALLOW_THREADS
    for (const unsigned char *p = s + start; p < end;) {
        const unsigned char *nl = memchr(p, '\n', end - p);
        if (nl == NULL) break;
        Span value;
        if (!first_value(p, nl, key.buf, key.len, &value)) {
            every = 0;
            break;
        }
        Line *line = &lines[count++];
        line->place = place_of(value, edges, edge_count);
        line->start = p - s;
        line->len = nl + 1 - p;
        sizes[line->place] += line->len;
        counts[line->place]++;
        p = nl + 1;
    }
    Py_END_ALLOW_THREADS
    if (!every) {
        PyErr_SetString(PyExc_ValueError, "group_lines: a line has no value of the key");
        goto done;
    }
    for (Py_ssize_t place = 0; place < places; place++) {
        if (counts[place] == 0) continue;
        groups[place] = PyBytes_FromStringAndSize(NULL, sizes[place]);
        if (groups[place] == NULL) goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        Line *line = &lines[i];
        char *out = PyBytes_AS_STRING(groups[line->place]) + filled[line->place];
        memcpy(out, s + line->start, line->len);
        filled[line->place] += line->len;
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(0);
    for (Py_ssize_t place = 0; result != NULL && place < places; place++) {
        if (groups[place] == NULL) continue;
        PyObject *item = Py_BuildValue("nnO", place, counts[place], groups[place]);
        if (item == NULL || PyList_Append(result, item) < 0) Py_CLEAR(result);
        Py_XDECREF(item);
    }
done:
    if (groups != NULL)
        for (Py_ssize_t place = 0; place < places; place++) Py_XDECREF(groups[place]);
    PyMem_Free(groups);
    PyMem_Free(filled);
    PyMem_Free(counts);
    PyMem_Free(sizes);
    PyMem_Free(lines);
    PyMem_Free(edges);
    Py_DECREF(edge_tuple);
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef methods[] = {
    {"utf8_rest", utf8_rest, METH_VARARGS, utf8_rest_doc},
    {"line_breaks", line_breaks, METH_VARARGS, line_breaks_doc},
    {"first_values", first_values, METH_VARARGS, first_values_doc},
    {"group_lines", group_lines, METH_VARARGS, group_lines_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_linescan",
    "What NDJSON lines hold, read without the GIL (see linescan.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__linescan(void)
{
    return PyModule_Create(&module);
}
