"""Long loops show progress (issue 12, item 10): bars with done/total, rate and time left.

The library announces loops (``progress.task``) and counts model calls; the CLI draws them with
rich. Without a reporter nothing is drawn or wrapped.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import l2c_compile
from l2c_compile import progress
from l2c_compile.compiler import reference
from l2c_compile.runtime.verify import verify_artifact
from l2c_compile.samplers import make_plan
from tests.helpers import inputs, tiny_dit


class Recorder:
    """A reporter that writes down what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def stage(self, message: str) -> None:
        self.events.append(("stage", message))

    def start(self, description: str, total: int | None, unit: str) -> None:
        self.events.append(("start", description, total, unit))

    def advance(self, n: int) -> None:
        self.events.append(("advance", n))

    def finish(self) -> None:
        self.events.append(("finish",))


def _ticks(events: list[tuple]) -> int:
    return sum(e[1] for e in events if e[0] == "advance")


def test_model_calls_are_counted_for_both_executors() -> None:
    model = tiny_dit()
    plan = make_plan("ddim", 5)
    sampler = l2c_compile.compile(model, plan, None)
    noise, labels = inputs(model)
    rec = Recorder()
    with progress.reporting(rec):
        with (
            progress.task("compiled", plan.nfe, "model calls"),
            progress.counting_model_calls(sampler),
        ):
            sampler(noise, labels, 4.0)
        assert _ticks(rec.events) == 5
        with (
            progress.task("reference", plan.nfe, "model calls"),
            progress.counting_model_calls(model),
        ):
            reference.sample(model, plan, None, noise, labels, 4.0)
        assert _ticks(rec.events) == 10
    assert rec.events[0] == ("start", "compiled", 5, "model calls")
    assert sum(e[0] == "finish" for e in rec.events) == 2
    # the wrappers are gone afterwards, and without a reporter nothing is wrapped
    steps = sampler.steps
    with progress.counting_model_calls(sampler):
        assert sampler.steps is steps
    assert not model._forward_hooks


def test_verify_reports_both_runs(tmp_path) -> None:
    from l2c_compile.models.registry import build_model, get_spec, init_random

    spec = get_spec("DiT-Tiny")
    sampler = l2c_compile.compile(
        init_random(build_model(spec), 0), make_plan("ddim", 4), None, model_info=spec.to_dict()
    )
    art = sampler.save(tmp_path / "art")
    rec = Recorder()
    with progress.reporting(rec):
        verify_artifact(art)
    starts = [e for e in rec.events if e[0] == "start"]
    assert starts == [
        ("start", "compiled sampler (float32)", 4, "model calls"),
        ("start", "reference executor (float32)", 4, "model calls"),
    ]
    assert _ticks(rec.events) == 8


def test_rich_bar_shows_count_rate_and_time_left() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140, color_system=None)
    with progress.RichReporter(console) as rep, progress.reporting(rep):
        progress.stage("working")
        with progress.task("sampling 4 images", 20, "model calls"):
            for _ in range(20):
                progress.advance()
    out = buf.getvalue()
    assert "sampling 4 images" in out and "20/20" in out and "model calls" in out
    assert "/s" in out and "left" in out


def test_counting_refuses_what_it_cannot_count() -> None:
    with progress.reporting(Recorder()), pytest.raises(TypeError):  # noqa: SIM117
        with progress.counting_model_calls(object()):
            pass


def test_demo_timing_counts_every_model_call(tmp_path, monkeypatch) -> None:
    """The demo's timing stage (5.7 silent minutes on a CPU) advances once per model call."""
    import dataclasses

    from l2c_compile.apps.demo import DemoConfig, run_demo
    from l2c_compile.models import registry

    spec = registry.get_spec("DiT-Tiny")  # a tiny model posing as one with shipped weights
    ckpt = tmp_path / "tiny.safetensors"
    registry.save_checkpoint(registry.init_random(registry.build_model(spec), 0), ckpt)
    shipped = dataclasses.replace(spec, name="DiT-Tiny-shipped", checkpoint=str(ckpt))
    monkeypatch.setitem(registry.MODELS, shipped.name, shipped)
    rec = Recorder()
    with progress.reporting(rec):
        run_demo(
            DemoConfig(
                model=shipped.name,
                nfe=4,
                train_steps=2,
                per_class=1,
                repeats=1,
                out=tmp_path / "demo",
            )
        )
    starts = {e[1]: e[2] for e in rec.events if e[0] == "start"}
    assert starts["timing the four executors"] == 4 * 2 * 4
    # each task's ticks add up to its total
    done, current = {}, None
    for e in rec.events:
        if e[0] == "start":
            current = e[1]
            done[current] = 0
        elif e[0] == "advance":
            done[current] += e[1]
    assert done == starts
