"""benchmarks/eval_throughput.py: the configurations alternate, every run is one JSON line.

The eval runs themselves are replaced by a stand-in that returns a report: the real command is
minutes per model, and its numbers belong in benchmarks/results, not in a test.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def bench():
    """The benchmark module, imported from its file (benchmarks/ is not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_eval_throughput", BENCH / "eval_throughput.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))
        for name in ("bench_eval_throughput", "common"):
            sys.modules.pop(name, None)


def test_configurations_alternate_and_each_run_is_one_line(bench, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(model, nfe, samples, extra):
        calls.append((model, tuple(extra)))
        batch = 250 if extra else 16
        stages = {
            "setup": 1.0,
            "compile": 2.0,
            "sample_full": 3.0,
            "sample_cached": 2.0,
            "score": 1.0,
        }
        report = {
            "batch": batch,
            "workers": 1 if extra else 2,
            "machine": {"threads": 2},
            "stage_seconds": {k: v * (4 if extra else 1) for k, v in stages.items()},
            **{k: 0.5 for k in bench.SCORES},
        }
        return {"wall_s": 40.0 if extra else 10.0, "report": report, "command": ["eval", model]}

    monkeypatch.setattr(bench, "run_once", fake_run)
    out = tmp_path / "eval.jsonl"
    bench.main(
        ["--models", "A,B", "--samples", "8", "--rounds", "3", "--out", str(out), "--note", "n"]
    )
    before, after = tuple(bench.CONFIGS["before"]), ()
    per_model = [before, after, after, before, before, after]  # rounds alternate who goes first
    assert calls == [("A", e) for e in per_model] + [("B", e) for e in per_model]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["model"], r["config"], r["round"]) for r in lines][:3] == [
        ("A", "before", 0),
        ("A", "after", 0),
        ("A", "after", 1),
    ]
    assert all(r["note"] == "n" and r["samples"] == 8 and r["env"]["cpus"] for r in lines)
    assert {r["batch"] for r in lines if r["config"] == "after"} == {16}
    printed = capsys.readouterr().out
    assert "A: total 4.00× faster" in printed and "fid 0" in printed

    calls.clear()
    bench.main(["--models", "A", "--first", "after", "--out", str(out)])
    assert [e for _, e in calls] == [after, before]
