/* A small new file written whole in one call, without the GIL (see tempfiles.py).
 *
 * write_new(path, data, sync): created with O_EXCL|O_NOFOLLOW (mode 0666 less the
 * umask), written whole, fsynced if ``sync``, closed; OSError naming the path on
 * failure, with nothing left behind. From Python these are five system calls, each
 * a turn at the GIL for the worker thread that makes it; at a thousand lanes the
 * sink's threads waited for those turns longer than for the disk (issue 35).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

static int write_file(const char *path, const char *data, Py_ssize_t size, int sync) {
    int fd;
    do {
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -1;
    while (size > 0) {
        ssize_t done = write(fd, data, (size_t)size);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            goto failed;
        }
        data += done;
        size -= done;
    }
    if (sync) {
        int rc;
        do {
            rc = fsync(fd);
        } while (rc < 0 && errno == EINTR);
        if (rc < 0)
            goto failed;
    }
    if (close(fd) < 0 && errno != EINTR) {
        int saved = errno;
        unlink(path);
        errno = saved;
        return -1;
    }
    return 0;
failed: {
    int saved = errno;
    close(fd);
    unlink(path);
    errno = saved;
    return -1;
}
}

static PyObject *write_new(PyObject *self, PyObject *args) {
    PyObject *path = NULL;
    Py_buffer data = {0};
    int sync = 1;
    if (!PyArg_ParseTuple(args, "O&y*p", PyUnicode_FSConverter, &path, &data, &sync))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = write_file(PyBytes_AS_STRING(path), data.buf, data.len, sync);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (rc == 0)
        result = Py_NewRef(Py_None);
    else
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
    PyBuffer_Release(&data);
    Py_DECREF(path);
    return result;
}

static PyMethodDef methods[] = {
    {"write_new", write_new, METH_VARARGS,
     "write_new(path, data, sync): a new file (O_EXCL|O_NOFOLLOW) written whole, fsynced "
     "if sync, in one call without the GIL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_newfile", "A small new file written whole, without the GIL.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__newfile(void) { return PyModule_Create(&module); }
