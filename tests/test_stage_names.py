"""The Ray Data operators of the graph are named after their stages (``MapBatches(decode)``), and the stage
timings are read by those names. Ray-free: the stats summary is a stand-in with Ray's attribute names; the
real names are checked by the tiny-pipeline runs (tests/test_incremental.py reads ``graph_stages``)."""

from __future__ import annotations

from types import SimpleNamespace

from operators.base import Operator
from pipeline.config import load_config
from pipeline.index.assembly import Route
from pipeline.index.graph import StageAdapter, graph_stage_times, named, task_fn


def test_adapters_and_task_functions_carry_the_stage_name():
    adapter = named(StageAdapter, "detect")
    assert adapter.__name__ == "detect" and issubclass(adapter, StageAdapter)
    assert named(Route, "route").__name__ == "route"
    assert task_fn(Operator, 1.0, "decode").__name__ == "decode"


def _op(name: str, wall: float) -> SimpleNamespace:
    return SimpleNamespace(operator_name=name, wall_time={"sum": wall, "count": 2}, cpu_time={"sum": wall / 2})


def test_stage_times_are_read_by_name_not_by_position():
    cfg = load_config("tiny")  # its captions stage has no stats here: reading by position would mislabel embed
    summary = SimpleNamespace(
        parents=[],
        operators_stats=[
            _op("ReadItems", 0.1),
            _op("MapBatches(decode)", 3.0),
            _op("MapBatches(detect)", 2.0),
            _op("MapBatches(preprocess)->MapBatches(embed)", 1.5),
            _op("MapBatches(route)", 0.5),
        ],
    )
    ds = SimpleNamespace(_get_stats_summary=lambda: summary)
    times = graph_stage_times(ds, cfg)
    assert list(times) == ["decode", "detect", "preprocess+embed", "route"]
    assert times["detect"] == {"wall_s": 2.0, "cpu_s": 1.0, "tasks": 2}
