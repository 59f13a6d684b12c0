"""Search-input fuzzing (hypothesis) of the Python API, the CLI and the HTTP API over the indexed sample.

Property for every surface: any input either gets results that obey the request, or a clear refusal (a
``SearchError`` with a one-line message, CLI exit code 2 with ``error: ...``, HTTP 4xx with a JSON ``detail``),
never another exception, a traceback or a 500; and the server keeps answering afterwards. Hostile images
(decompression bombs, gigantic declared sizes, broadcast arrays that would need terabytes, non-images, EPS
and PDF headers) are checked one by one.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import SearchError
from pipeline.search.searcher import Searcher
from pipeline.store import schema as S

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI failures reproduce
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def png(width: int, height: int, rows: int = 1) -> bytes:
    """An RGB PNG whose header declares ``width`` x ``height`` but whose data holds ``rows`` black rows: a
    few hundred bytes however large it claims to be (a decompression bomb when decoded in full)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = (b"\x00" + b"\x00" * (3 * width)) * rows
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def assert_clear(message: str) -> None:
    assert message and "\n" not in message and len(message) < 500, message
    assert "Traceback" not in message and 'File "' not in message, message


@pytest.fixture(scope="module")
def searcher(indexed_db) -> Searcher:
    cfg, _ = indexed_db
    return Searcher(cfg.db.path, cfg)


# -- strategies --------------------------------------------------------------------------------------------------

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
hostile_chars = st.one_of(st.characters(), st.sampled_from(["\ud800", "\udfff", "\x00", "'", '"', ";", "\n", "%", "*"]))
texts = st.one_of(junk, st.text(hostile_chars, max_size=1200))
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**20), 10**20), st.sampled_from([-0.0, 5e-324])
)
filter_values = {
    "video_ids": st.one_of(junk, st.lists(st.text(hostile_chars, max_size=40), max_size=3)),
    "path_glob": st.one_of(junk, st.text(hostile_chars, max_size=40)),
    "time_range": st.one_of(junk, st.lists(numbers, max_size=3), st.tuples(numbers, numbers)),
    "classes": st.one_of(junk, st.lists(st.text(hostile_chars, max_size=20), max_size=3)),
    "min_track_duration": st.one_of(junk, numbers),
    "min_score": st.one_of(junk, numbers),
}
filters = st.one_of(
    junk,
    st.fixed_dictionaries({}, optional=filter_values),
    st.dictionaries(st.text(max_size=12), junk, max_size=2),
)
ks = st.one_of(junk, st.integers(-5, 2000), st.sampled_from([0, 1, 1000, 1001, 2**31, 2**63, 10**30]))
levels = st.one_of(junk, st.sampled_from([*S.LEVELS, "videos", "Frames", "segments "]))
reranks = st.one_of(junk, st.sampled_from(["default", "attention", "none", "nope"]))


# -- Python API --------------------------------------------------------------------------------------------------


@FUZZ
@given(text=texts, k=ks, level=levels, filters=filters, rerank=reranks)
def test_python_api_answers_or_refuses_clearly(searcher, text, k, level, filters, rerank) -> None:  # type: ignore[no-untyped-def]
    try:
        results = searcher.search(text=text, k=k, level=level, filters=filters, rerank=rerank)
    except SearchError as exc:
        assert_clear(str(exc))
        return
    assert isinstance(results, list) and len(results) <= k
    assert [r.rank for r in results] == list(range(1, len(results) + 1))


def test_valid_requests_obey_k_order_and_time_range(searcher) -> None:  # type: ignore[no-untyped-def]
    """Every hit of a valid request overlaps its time range; and enough examples have hits that the overlap check
    ran (an empty answer passes it trivially)."""
    with_hits = []

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(
        text=st.text(st.characters(), min_size=1, max_size=60).filter(str.strip),
        k=st.integers(1, 40),
        level=st.sampled_from(S.LEVELS),
        start=st.floats(0, 12),
        length=st.floats(0, 12),
        rerank=st.sampled_from([None, "attention"]),
    )
    def valid(text, k, level, start, length, rerank) -> None:  # type: ignore[no-untyped-def]
        end = start + length
        results = searcher.search(text=text, k=k, level=level, filters={"time_range": (start, end)}, rerank=rerank)
        assert len(results) <= k
        assert all(a.score >= b.score for a, b in zip(results, results[1:], strict=False))
        for r in results:
            assert r.end_s >= start - 1e-6 and r.start_s <= end + 1e-6, (r.start_s, r.end_s, start, end)
            assert math.isfinite(r.score)
        if results:
            with_hits.append(level)

    valid()
    assert len(with_hits) >= 10 and set(with_hits) == set(S.LEVELS), with_hits  # the checks above ran on hits


HOSTILE_IMAGES: list[tuple[str, Any, str]] = [
    ("PNG declaring 50000x50000 (2.5 G pixels)", png(50_000, 50_000), "too large"),
    ("PNG declaring 7000x7000 (over the 40 M pixel limit)", png(7000, 7000), "too large (7000x7000)"),
    ("broadcast array of 100000x100000x3 (28 GiB if copied)", "broadcast", "it must have 1 to"),
    ("empty array 0x0x3", np.zeros((0, 0, 3), np.uint8), "it must have 1 to"),
    ("array with NaN", np.full((8, 8, 3), np.nan), "finite numbers"),
    ("object array", np.zeros((8, 8, 3), dtype=object), "finite numbers"),
    ("2-D array", np.zeros((8, 8), np.uint8), "H x W x 3"),
    ("RGBA array", np.zeros((8, 8, 4), np.uint8), "H x W x 3"),
    ("text bytes", b"just some words, not pixels\n" * 10, "not a readable image"),
    ("empty bytes", b"", "not a readable image"),
    ("EPS (would run Ghostscript)", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "not a readable"),
    ("PDF header", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "not a readable image"),
    ("a PNG cut after its header", png(64, 64, rows=64)[:40], "not a readable image"),
    ("an int", 12345, "not int"),
    ("a dict", {"path": "/etc/passwd"}, "not dict"),
    ("a path that does not exist", "/nonexistent/x.png", "not a readable image"),
    ("a directory", "/", "not a readable image"),
]


@pytest.mark.parametrize(("what", "image", "needle"), HOSTILE_IMAGES, ids=[c[0] for c in HOSTILE_IMAGES])
def test_hostile_images_are_refused_with_a_reason(searcher, what, image, needle) -> None:  # type: ignore[no-untyped-def]
    if isinstance(image, str) and image == "broadcast":
        image = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (100_000, 100_000, 3))
    with pytest.raises(SearchError) as info:
        searcher.search(image=image, k=3)
    assert needle in str(info.value), (what, str(info.value))
    assert_clear(str(info.value))


@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes_as_an_image_never_crash(searcher, data) -> None:  # type: ignore[no-untyped-def]
    try:
        searcher.search(image=data, k=2)
    except SearchError as exc:
        assert_clear(str(exc))


def test_a_real_image_still_works(searcher, indexed_db) -> None:  # type: ignore[no-untyped-def]
    """The hardening keeps ordinary uploads working: an indexed thumbnail finds its own video first."""
    frame = searcher.store.rows(S.FRAMES, columns=["frame_id", "video_id"]).to_pylist()[0]
    jpeg = searcher.thumbnail(frame["frame_id"])
    assert jpeg is not None
    results = searcher.search(image=jpeg, k=3, level="frames", rerank=None)
    assert results and results[0].video_id == frame["video_id"]


# -- CLI ---------------------------------------------------------------------------------------------------------


def cli(db: str, *argv: str) -> tuple[int, str, str]:
    """``run_pipeline.main`` in-process (the CLI's code path without the process start-up)."""
    import contextlib
    import io

    from run_pipeline import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["search", *argv, "--config", "tiny", "--db", db])
        except SystemExit as exc:  # argparse refusing an argument
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("hostile_uploads")
    files = {"bomb.png": png(50_000, 50_000), "huge.png": png(7000, 7000), "notes.png": b"not an image\n" * 20}
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / "folder.png").mkdir()
    return {name: str(d / name) for name in [*files, "folder.png", "missing.png"]}


CLI_CASES = [
    (["a", "-k", "0"], "k must be an integer"),
    (["a", "-k", "100000000000"], "k must be an integer"),
    (["a", "-k", "abc"], "invalid int value"),
    (["a", "--time-range", "-5", "3"], "time_range"),
    (["a", "--time-range", "nan", "1"], "time_range"),
    (["a", "--time-range", "inf", "inf"], "time_range"),
    (["a", "--min-score", "nan"], "min_score"),
    (["a", "--level", "videos"], "invalid choice"),
    (["a", "--rerank", "nope"], "unknown re-ranker"),
    ([""], "empty"),
    (["x" * 5000], "longer than"),
    ([], "exactly one"),
    (["--image", "bomb.png"], "too large"),
    (["--image", "huge.png"], "too large"),
    (["--image", "notes.png"], "not a readable image"),
    (["--image", "missing.png"], "missing.png"),
    (["--image", "folder.png"], "folder.png"),
]


@pytest.mark.parametrize(("argv", "needle"), CLI_CASES)
def test_cli_refuses_bad_arguments_with_exit_2_and_a_reason(indexed_db, hostile_files, argv, needle) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = indexed_db
    argv = [hostile_files.get(a, a) for a in argv]
    try:
        code, out, err = cli(cfg.db.path, *argv)
    except Exception as exc:  # what the real CLI would print as a traceback
        pytest.fail(f"{type(exc).__name__} escaped the CLI: {exc}")
    assert code == 2, (code, out, err)
    assert "error:" in err and needle in err, err
    assert "Traceback" not in err


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    k=st.text(max_size=12) | st.integers(-(10**12), 10**12).map(str),
    times=st.lists(
        st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e309", "3", "x", "1_0"]), min_size=2, max_size=2
    ),
    level=st.text(max_size=10) | st.sampled_from(S.LEVELS),
)
def test_cli_fuzzed_options_exit_0_or_2(indexed_db, k, times, level) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = indexed_db
    argv = ["a query", f"-k={k}", "--time-range", *times, f"--level={level}", "--rerank", "none", "--json"]
    code, out, err = cli(cfg.db.path, *argv)
    assert code in (0, 2), (argv, code, err)
    if code == 0:
        assert isinstance(json.loads(out), list)
    else:
        assert "error:" in err and "Traceback" not in err, err


# -- HTTP API ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(indexed_db, searcher):  # type: ignore[no-untyped-def]
    server = pytest.importorskip(
        "pipeline.serve.app",
        reason="pipeline/serve/app.py (the HTTP API) is not in this checkout; HTTP fuzzing skipped",
    )
    from fastapi.testclient import TestClient

    cfg, _ = indexed_db
    app = server.create_app(cfg, token=None, searcher=searcher)  # Host 127.0.0.1: the server's allow-list
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        yield client
    # (the app holds no state beyond the searcher; nothing to tear down)


def assert_http_ok_or_4xx(res: Any, request: Any) -> None:
    assert res.status_code in (200, 400, 413, 422, 503), (request, res.status_code, res.text[:500])
    body = res.json()
    if res.status_code != 200:
        assert "detail" in body, body
        if isinstance(body["detail"], str):
            assert_clear(body["detail"])
        if res.status_code == 503:
            assert "rerankers" in body["detail"]  # a known re-ranker without weights, named with its config key


query_values = st.one_of(
    st.text(hostile_chars.filter(lambda c: c not in "\ud800\udfff"), max_size=30),
    st.sampled_from(["nan", "NaN", "-inf", "inf", "1e309", "-1", "0", "99999999999999999999", "1.5", "", " "]),
)


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(
            ["text", "k", "level", "rerank", "video_ids", "path_glob", "classes", "time_range", "min_score", "x"]
        ),
        st.one_of(query_values, st.lists(query_values, max_size=3)),
        max_size=6,
    )
)
def test_http_get_search_never_500(http, params) -> None:  # type: ignore[no-untyped-def]
    res = http.get("/api/search", params=params)
    assert_http_ok_or_4xx(res, params)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(
    body=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {},
            optional={
                "text": json_values | st.text(max_size=1100),
                "k": json_values,
                "level": json_values,
                "rerank": json_values,
                "filters": json_values | st.fixed_dictionaries({}, optional={k: json_values for k in filter_values}),
                "image": json_values,
            },
        ),
    )
)
def test_http_post_json_never_500(http, body) -> None:  # type: ignore[no-untyped-def]
    res = http.post("/api/search", content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert_http_ok_or_4xx(res, body)


HOSTILE_JSON = [
    pytest.param(b'{"text": "a", "k": NaN}', id="NaN k"),
    pytest.param(b'{"text": "a", "filters": {"time_range": [NaN, 1]}}', id="NaN time"),
    pytest.param(b'{"text": "a", "filters": {"time_range": [-Infinity, Infinity]}}', id="infinite times"),
    pytest.param(b'{"text": "a", "filters": {"min_score": 1e999}}', id="overflowing min_score"),
    pytest.param(b'{"text": "\\ud800"}', id="lone surrogate text"),
    pytest.param(b'{"text": "a", "k": 1e400}', id="overflowing k"),
    pytest.param(b'{"text": "a"' + b', "k": 1' * 10000 + b"}", id="10000 repeated keys"),
    pytest.param(b"[" * 5000, id="5000-deep nesting"),
]


def test_http_form_filters_nested_5000_deep(http) -> None:  # type: ignore[no-untyped-def]
    res = http.post("/api/search", data={"text": "a", "filters": "[" * 5000})
    assert_http_ok_or_4xx(res, "form filters 5000 deep")


@pytest.mark.parametrize("raw", HOSTILE_JSON)
def test_http_post_hostile_json_tokens(http, raw) -> None:  # type: ignore[no-untyped-def]
    res = http.post("/api/search", content=raw, headers={"content-type": "application/json"})
    assert_http_ok_or_4xx(res, raw[:60])


@FUZZ
@given(data=st.binary(max_size=3000), name=st.text(max_size=30), kind=st.sampled_from(["image/png", "text/plain", ""]))
def test_http_upload_of_random_bytes_never_500(http, data, name, kind) -> None:  # type: ignore[no-untyped-def]
    res = http.post("/api/search", files={"image": (name or "x", data, kind or "application/octet-stream")})
    assert_http_ok_or_4xx(res, (name, len(data)))


@pytest.mark.parametrize(
    ("what", "image", "status", "needle"),
    [
        ("bomb", png(50_000, 50_000), 400, "too large"),
        ("huge", png(7000, 7000), 400, "too large"),
        ("eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 400, "not a readable image"),
        ("empty", b"", 400, "not a readable image"),
    ],
)
def test_http_hostile_uploads_get_400_and_the_server_stays_up(http, what, image, status, needle) -> None:  # type: ignore[no-untyped-def]
    res = http.post("/api/search", files={"image": (f"{what}.png", image, "image/png")})
    assert res.status_code == status and needle in res.json()["detail"], (what, res.status_code, res.text[:300])
    assert http.get("/api/info").status_code == 200


def test_server_still_answers_after_the_fuzzing(http) -> None:  # type: ignore[no-untyped-def]
    res = http.get("/api/search", params={"text": "a person", "k": 3})
    assert res.status_code == 200 and res.json()["count"] <= 3
