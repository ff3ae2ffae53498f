"""The compiled part of the build; everything else is in pyproject.toml.

The hot path's per-byte scans in C, run without the GIL (daemon/acexport/payload/
linescan.py says what they do), and a small file's and a local commit's system
calls in one call each without it (payload/tempfiles.py, output/local.py). Optional: where no compiler is found the install
still succeeds, linescan.py's own Python runs instead, slower, and
`acexport check-config` says so.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "acexport.payload._linescan",
            ["daemon/acexport/payload/_linescan.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "acexport.payload._newfile",
            ["daemon/acexport/payload/_newfile.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "acexport.output._localcommit",
            ["daemon/acexport/output/_localcommit.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
