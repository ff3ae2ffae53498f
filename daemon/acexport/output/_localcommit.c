/* A local commit's system calls in one call, without the GIL (see local.py).
 *
 * The same steps as local.py's Python: the directories of the key opened from the
 * root without following links (made where missing), the data file renamed in and
 * the directory synced, the manifest written to a new file, synced, renamed in, and
 * the directory synced again. Each system call a worker thread makes from Python is
 * a turn at the GIL; at a thousand lanes the sink's threads waited for those turns
 * longer than for their fsyncs (issue 35). Here the GIL is released once.
 *
 * commit(root, parts, data, name, staged, manifest, manifest_name) returns None, or
 * (errno, step, index) for local.py to turn into its errors: step is one of the
 * STEP_ values, index the part of the key that failed (step STEP_PART).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

enum { STEP_ROOT = 1, STEP_PART, STEP_PLACE, STEP_SYNC, STEP_MANIFEST, STEP_PLACE_MANIFEST };

#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_CLOEXEC)
#define NEW_FILE (O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC)

typedef struct {
    int err;
    int step;
    Py_ssize_t index;
} failure;

static int open_retrying(int dir_fd, const char *path, int flags, mode_t mode) {
    int fd;
    do {
        fd = openat(dir_fd, path, flags, mode);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

static int sync_retrying(int fd) {
    int rc;
    do {
        rc = fsync(fd);
    } while (rc < 0 && errno == EINTR);
    return rc;
}

static int fail(failure *f, int step, Py_ssize_t index) {
    f->err = errno;
    f->step = step;
    f->index = index;
    return -1;
}

/* The directory root/parts..., made where missing; -1 with *f set on failure. */
static int open_directory(const char *root, char **parts, Py_ssize_t n, failure *f) {
    int fd = open_retrying(AT_FDCWD, root, DIR_FLAGS, 0);
    if (fd < 0)
        return fail(f, STEP_ROOT, 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        int child = open_retrying(fd, parts[i], DIR_FLAGS | O_NOFOLLOW, 0);
        if (child < 0 && errno == ENOENT) {
            if (mkdirat(fd, parts[i], 0777) < 0 && errno != EEXIST) {
                fail(f, STEP_PART, i);
                close(fd);
                return -1;
            }
            child = open_retrying(fd, parts[i], DIR_FLAGS | O_NOFOLLOW, 0);
        }
        if (child < 0) {
            fail(f, STEP_PART, i);
            close(fd);
            return -1;
        }
        close(fd);
        fd = child;
    }
    return fd;
}

static int write_all(int fd, const char *data, Py_ssize_t size) {
    while (size > 0) {
        ssize_t done = write(fd, data, (size_t)size);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += done;
        size -= done;
    }
    return 0;
}

static int commit_in_dir(int dir_fd, const char *data, const char *name, const char *staged,
                         const char *manifest, Py_ssize_t manifest_size,
                         const char *manifest_name, failure *f) {
    if (renameat(AT_FDCWD, data, dir_fd, name) < 0)
        return fail(f, STEP_PLACE, 0);
    if (sync_retrying(dir_fd) < 0) /* the data's name is durable before a manifest claims it */
        return fail(f, STEP_SYNC, 0);
    int fd = open_retrying(AT_FDCWD, staged, NEW_FILE, 0666);
    if (fd < 0)
        return fail(f, STEP_MANIFEST, 0);
    if (write_all(fd, manifest, manifest_size) < 0 || sync_retrying(fd) < 0) {
        fail(f, STEP_MANIFEST, 0);
        close(fd);
        return -1;
    }
    if (close(fd) < 0 && errno != EINTR)
        return fail(f, STEP_MANIFEST, 0);
    if (renameat(AT_FDCWD, staged, dir_fd, manifest_name) < 0)
        return fail(f, STEP_PLACE_MANIFEST, 0);
    if (sync_retrying(dir_fd) < 0)
        return fail(f, STEP_SYNC, 0);
    return 0;
}

static PyObject *commit(PyObject *self, PyObject *args) {
    PyObject *root = NULL, *parts_arg, *data = NULL, *name = NULL, *staged = NULL;
    PyObject *manifest_name = NULL, *result = NULL;
    Py_buffer manifest = {0};
    PyObject *parts = NULL, *parts_in = NULL;
    char **part_names = NULL;
    if (!PyArg_ParseTuple(args, "O&OO&O&O&y*O&", PyUnicode_FSConverter, &root, &parts_arg,
                          PyUnicode_FSConverter, &data, PyUnicode_FSConverter, &name,
                          PyUnicode_FSConverter, &staged, &manifest, PyUnicode_FSConverter,
                          &manifest_name))
        goto done;
    parts_in = PySequence_Fast(parts_arg, "parts must be a sequence");
    if (parts_in == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(parts_in);
    parts = PyTuple_New(n); /* their bytes, alive while the GIL is released */
    if (parts == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *bytes = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(parts_in, i), &bytes))
            goto done;
        PyTuple_SET_ITEM(parts, i, bytes);
    }
    part_names = PyMem_Malloc(sizeof(char *) * (size_t)(n ? n : 1));
    if (part_names == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        part_names[i] = PyBytes_AS_STRING(PyTuple_GET_ITEM(parts, i));

    failure f = {0, 0, 0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    int dir_fd = open_directory(PyBytes_AS_STRING(root), part_names, n, &f);
    rc = dir_fd < 0 ? -1 : 0;
    if (rc == 0) {
        rc = commit_in_dir(dir_fd, PyBytes_AS_STRING(data), PyBytes_AS_STRING(name),
                           PyBytes_AS_STRING(staged), manifest.buf, manifest.len,
                           PyBytes_AS_STRING(manifest_name), &f);
        close(dir_fd);
    }
    Py_END_ALLOW_THREADS
    result = rc == 0 ? Py_NewRef(Py_None) : Py_BuildValue("iin", f.err, f.step, f.index);

done:
    PyMem_Free(part_names);
    Py_XDECREF(parts);
    Py_XDECREF(parts_in);
    Py_XDECREF(root);
    Py_XDECREF(data);
    Py_XDECREF(name);
    Py_XDECREF(staged);
    Py_XDECREF(manifest_name);
    if (manifest.obj != NULL)
        PyBuffer_Release(&manifest);
    return result;
}

static PyMethodDef methods[] = {
    {"commit", commit, METH_VARARGS,
     "commit(root, parts, data, name, staged, manifest, manifest_name): None, or "
     "(errno, step, index) of the step that failed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_localcommit", "A local commit's system calls, without the GIL.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__localcommit(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "STEP_ROOT", STEP_ROOT) < 0 ||
        PyModule_AddIntConstant(m, "STEP_PART", STEP_PART) < 0 ||
        PyModule_AddIntConstant(m, "STEP_PLACE", STEP_PLACE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
