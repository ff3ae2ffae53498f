"""The compiled line scans give the Python scans' answers, byte for byte.

payload/linescan.py runs the C module where it was built and its own Python
elsewhere: hypothesis feeds both the same bytes (UTF-8 or not, cut anywhere,
lines with and without the split's column) and compares every answer.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from acexport.payload import _linescan as compiled
from acexport.payload import linescan
from tests.conftest import EmulatorFactory
from tests.daemon_helpers import run_cli
from tests.test_export_cli import write_config

KEY = b'"eventDate"'


def test_the_compiled_scans_are_built_here() -> None:
    """CI and the benches measure the C scans: a build that quietly fell back to
    Python (no compiler, a broken setup.py) fails here (this module's import first),
    not in a slower figure."""
    assert linescan.COMPILED
    assert linescan.first_values is compiled.first_values


# Bytes that make UTF-8 interesting: every lead, continuation and invalid byte.
_UTF8_PIECES = st.lists(
    st.one_of(
        st.text(max_size=8).map(lambda text: text.encode("utf-8", "surrogatepass")),
        st.binary(max_size=4),
        st.sampled_from([b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xed\xa0\x80",
                         b"\xe0\x80\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xf5"]),
    ),
    max_size=12,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(_UTF8_PIECES, st.lists(st.integers(0, 64), max_size=4))
@example([b"\xe2\x82", b"\xac"], [2])
@example([b"\xf0\x9f", b"\x98\x80"], [1, 3])
def test_utf8_rest_agrees_with_pythons_decoder(pieces: list[bytes], cuts: list[int]) -> None:
    """Fed in pieces cut anywhere, the C check finds a stream valid exactly when
    Python's strict decoder does, and carries the same unfinished bytes (it may
    refuse a surrogate's or an overlong form's first bytes sooner: Python waits for
    the rest to refuse them)."""
    whole = b"".join(pieces)
    bounds = sorted({0, len(whole), *(min(cut, len(whole)) for cut in cuts)})
    carried_c: bytes | None = b""
    carried_py: bytes | None = b""
    for start, end in itertools.pairwise(bounds):
        piece = whole[start:end]
        if carried_c is not None:
            carried_c = compiled.utf8_rest(piece, carried_c)
        if carried_py is not None:
            carried_py = linescan.py_utf8_rest(memoryview(piece), carried_py)
        if carried_c is not None:
            assert carried_c == carried_py, (whole, start, end)
    try:
        whole.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert (carried_c == b"") == valid, whole
    assert (carried_py == b"") == valid, whole


_TIMESTAMPS = st.sampled_from(
    [b"2026-11-01 00:00:00.5 UTC", b"2026-11-01 00:00:00.25 UTC", b"2026-11-01T23:59:59Z",
     b"2026-11-01T23:59:59.999Z", b"2026-11-01 12:00:00", b"", b"x", b"2026-11-02 00:00:00 UTC"]
)  # fmt: skip
_LINE = st.one_of(
    st.tuples(st.binary(max_size=6), _TIMESTAMPS, st.sampled_from([b"", b" ", b"\t "])).map(
        lambda parts: b'{"a":"' + parts[0].replace(b"\n", b"") + b'",' + KEY + parts[2] + b":"
        + parts[2] + b'"' + parts[1] + b'"}'
    ),
    st.binary(max_size=40).map(lambda raw: raw.replace(b"\n", b"")),
    st.just(b'{"eventDate":null,"eventDate":"2026-11-01 00:00:00 UTC"}'),
    st.just(b'{"eventDate":"2026-11-01 00:00:00 UTC'),  # unterminated: no value
    st.just(b""),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(_LINE, max_size=12), st.integers(0, 10), st.integers(0, 10), st.booleans())
def test_first_values_agrees_with_the_regex(
    lines: list[bytes], skip: int, trim: int, newline_at_end: bool
) -> None:
    data = b"\n".join(lines) + (b"\n" if newline_at_end else b"")
    start, end = min(skip, len(data)), max(min(skip, len(data)), len(data) - trim)
    assert compiled.first_values(data, start, end, KEY) == linescan.py_first_values(
        data, start, end, KEY
    )


_EDGES = st.lists(_TIMESTAMPS.map(lambda value: value.replace(b"Z", b" ")), max_size=5).map(
    lambda edges: sorted(set(edges))
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_LINE, max_size=12), _EDGES, st.integers(0, 10))
def test_group_lines_agrees_with_the_python_grouping(
    lines: list[bytes], edges: list[bytes], skip: int
) -> None:
    """Lines grouped by window in C: the same groups, counts and bytes (lines in their
    order) as bisect and a stable sort in Python; both refuse a line without the value."""
    data = b"\n".join(lines) + b"\n"
    start = min(skip, len(data))
    try:
        expected = linescan.py_group_lines(data, start, len(data), KEY, edges)
    except ValueError:
        with pytest.raises(ValueError, match="has no value"):
            compiled.group_lines(data, start, len(data), KEY, edges)
        return
    assert compiled.group_lines(data, start, len(data), KEY, edges) == expected


def test_first_values_counts_shapes_up_to_the_bound() -> None:
    values = [f"2026-11-01 00:00:00.{'1' * digits}".encode() for digits in range(1, 40)]
    data = b"".join(b'{"eventDate":"' + value + b'"}\n' for value in values)
    lines, shapes, low, high = compiled.first_values(data, 0, len(data), KEY)
    assert (lines, shapes, low, high) == linescan.py_first_values(data, 0, len(data), KEY)
    assert lines == 39
    assert shapes is None  # more than MAX_SHAPES
    few = data[: data.index(b"\n") * 3]
    assert compiled.first_values(few, 0, len(few), KEY)[1] is not None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"}\n{", b"}\r\n{", b"\n", b"}", b"{", b"\r", b"x"]), max_size=30))
def test_line_breaks_agrees_with_counting(parts: list[bytes]) -> None:
    data = b"".join(parts)
    assert compiled.line_breaks(data) == linescan.py_line_breaks(data)


def test_bad_arguments_are_refused_not_read_past() -> None:
    with pytest.raises(ValueError, match="bad range"):
        compiled.first_values(b"abc\n", 0, 9, KEY)
    with pytest.raises(ValueError, match="bad range"):
        compiled.first_values(b"abc\n", 0, 4, b"")
    assert compiled.utf8_rest(b"", b"\xc3") == b"\xc3"
    assert compiled.utf8_rest(b"a", b"\xff") is None
    assert linescan.utf8_reason(b"\xff") == "invalid start byte"


def test_the_scans_let_other_threads_run() -> None:
    """The point of the C module: a thread scanning leaves the GIL to others. A
    thread counting in a loop beside the C scans gets on; beside the same scans in
    Python (each one C call of CPython's holding the GIL) it stalls."""
    data = b'{"x":"\xc3\xa9","eventDate":"2026-11-01 00:00:00.5 UTC"}\n' * 2_000_000
    data = data[: data.rfind(b"\n") + 1]

    def c_scans() -> None:
        compiled.utf8_rest(data)
        compiled.first_values(data, 0, len(data), KEY)
        compiled.line_breaks(data)

    def python_scans() -> None:
        data.decode("utf-8")
        linescan.line_values(data, 0, len(data), KEY)
        data.count(b"\n")

    beside_c, beside_python = _ticks_beside(c_scans), _ticks_beside(python_scans)
    assert beside_c > 5 * beside_python, (beside_c, beside_python)


def _ticks_beside(scans: Callable[[], None]) -> float:
    """Loop turns per second of a thread running while ``scans`` runs."""
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    counter = threading.Thread(target=count)
    counter.start()
    began = time.perf_counter()
    try:
        scans()
    finally:
        done.set()
        counter.join()
    return ticks / (time.perf_counter() - began)


# Hides the compiled modules from a child process, as an install without a compiler has it.
_WITHOUT_C = (
    "import sys\n"
    'sys.modules["acexport.payload._linescan"] = None\n'
    'sys.modules["acexport.output._localcommit"] = None\n'
    'sys.modules["acexport.payload._newfile"] = None\n'
)


@pytest.mark.slow
@pytest.mark.parametrize(("served", "iso"), [("zip", False), ("ndjson", True)])
async def test_an_install_without_the_c_module_writes_the_same_files(
    emulator: EmulatorFactory, tmp_path: Path, served: str, iso: bool
) -> None:
    """The Python scans are the fallback of an install without a compiler: the same
    export, through the real CLI, gives the same bytes with and without the C modules
    (a day of events in AC's ZIP, and raw NDJSON with ISO timestamps), and
    check-config says which one runs."""
    emu = await emulator(records=3000, format=served, iso_timestamps=iso)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text(_WITHOUT_C)
    files = {}
    for name, env in [("c", {}), ("python", {"PYTHONPATH": str(shadow)})]:
        root = tmp_path / name
        root.mkdir()
        config = write_config(root, emu, compression="none", jobs=_DAILY_EVENT)
        code, _, stderr = await run_cli(*_EXPORT, "--config", str(config), env=env)
        assert code == 0, stderr
        (data,) = (root / "exports").rglob("event_*.jsonl")
        files[name] = data.read_bytes()
        code, stdout, stderr = await run_cli("check-config", "--config", str(config), env=env)
        assert code == 0, stderr
        assert ("compiled parts" in stdout.decode()) == (name == "python"), stdout
    assert files["c"] == files["python"]
    assert files["c"].count(b"\n") == 3000


_DAILY_EVENT = '[[jobs]]\nname = "daily"\nworkspace = "acme"\ntypes = ["event"]\n'
_EXPORT = ("export", "--workspace", "acme", "--type", "event", "--from", "2026-11-03", "--to",
           "2026-11-03")  # fmt: skip
