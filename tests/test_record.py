"""The compile record (``CompiledSampler.record``) and the one schedule-fit check every runner makes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import pytest

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.errors import L2CError
from l2c_compile.families.vocabulary import Layout
from l2c_compile.runtime.record import CompileRecord
from l2c_compile.samplers import make_plan
from l2c_compile.schedule import Schedule
from tests.helpers import inputs, random_schedule, tiny_dit

INFO_KEYS = [
    "model", "sampler", "nfe", "cfg", "dtype", "backend", "cuda_graph", "schedule", "graphs", "distinct_graphs",
    "peak_live_cache_entries", "peak_cache_bytes_per_image", "macs_per_image", "trace", "fuse", "hoist",
    "hoist_limit_bytes", "hoisted",
]
# json.dumps of ``compiled.info`` as the driver built the dict by hand before the typed record
# (commit 5d6f7ca), for the two compiles of test_info_is_the_dict_it_always_was
# (the cache's peak bytes, added later, left out of the hash: everything else is as it was)
INFO_SHA256 = {  # changed when the prune_queries, then the casts pass joined each graph's pass reports
    "cached": "924e780657693257180f15d01994caaf5c2797f9e410354febafb8413d12bc13",  # (without their reports:
    "plain": "4dbf6d17c4373bbc15365898141a67208c545925bbc1278fbd29322943a0cc41",  # the hashes before, checked)
}


def _ddim(nfe: int):
    return make_plan("ddim", nfe, noise_schedule="linear", time_input="discrete")


def one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(L2CError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_info_is_the_dict_it_always_was():
    model = tiny_dit(0, depth=2)
    plan = _ddim(4)
    sched = random_schedule(plan, 2, random.Random(0), 0.5)
    compiled = l2c_compile.compile(model, plan, sched, model_info={"name": "tiny", "family": "dit"})
    plain = l2c_compile.compile(model, plan, None, cfg=False, hoist=False, fuse=False)
    for label, sampler in (("cached", compiled), ("plain", plain)):
        info = sampler.info
        assert list(info) == INFO_KEYS
        before = {k: v for k, v in info.items() if k != "peak_cache_bytes_per_image"}
        assert hashlib.sha256(json.dumps(before, default=str).encode()).hexdigest() == INFO_SHA256[label], label
    # the tiny DiT's cached tensors are all (2 CFG rows, 16 tokens, 32 channels) float32
    entry = 2 * 16 * model.blocks[0].attn.qkv.in_features * 4
    assert compiled.info["peak_cache_bytes_per_image"] == compiled.info["peak_live_cache_entries"] * entry > 0
    assert plain.info["peak_cache_bytes_per_image"] == plain.info["peak_live_cache_entries"] == 0
    record = compiled.record
    assert isinstance(record, CompileRecord) and record.schedule == sched and record.plan == plan
    assert (record.model_name, record.nfe, record.distinct_graphs) == ("tiny", 4, compiled.info["distinct_graphs"])
    assert compiled.info["macs_per_image"] == {"uncached": record.macs_uncached, "compiled": record.macs_compiled}
    assert Schedule.from_dict(compiled.info["schedule"]) == sched
    # a view: editing it changes nothing the sampler acts on or saves
    compiled.info["nfe"] = 99
    assert compiled.info["nfe"] == 4


def test_fallbacks_are_listed_only_when_there_are_some():
    record = l2c_compile.compile(tiny_dit(0, depth=1), _ddim(2), None).record
    noted = dataclasses.replace(record, fallbacks=("note: a slower path",))
    assert noted.to_dict()["fallbacks"] == ["note: a slower path"] and list(noted.to_dict())[-1] == "fallbacks"
    assert "fallbacks" not in dataclasses.replace(record, fallbacks=()).to_dict()


def test_the_cuda_graph_switch_is_recorded():
    compiled = l2c_compile.compile(tiny_dit(0, depth=1), _ddim(2), None)
    assert compiled.record.cuda_graph is False and compiled.info["cuda_graph"] is False
    compiled.cuda_graph = False
    assert compiled.record.cuda_graph is False


def _three_kind(plan, depth: int) -> Schedule:
    return Schedule.all_compute("test", depth, plan, kinds=("attn", "cross", "mlp"))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda plan: random_schedule(plan, 3, random.Random(0)), r"^schedule is for 3 blocks but this model has 2$"),
        (lambda plan: _three_kind(plan, 2), r"covers sublayer kinds \['attn', 'cross', 'mlp'\], this model's blocks"),
        (lambda plan: random_schedule(_ddim(6), 2, random.Random(0)), r"made for ddim with 6 NFE but the sampler plan "
                                                                      r"is ddim with 4 NFE"),
        (lambda plan: random_schedule(make_plan("dpm-solver-2", 4), 2, random.Random(0)),
         r"made for dpm-solver-2 with 4 NFE but the sampler plan is ddim with 4 NFE"),
        (lambda plan: Schedule.all_compute("test", 2, plan, kinds=Layout(((1, ("attn", "mlp")), (1, ("attn",))))),
         r"block groups \[\[1, \['attn', 'mlp'\]\], \[1, \['attn'\]\]\] differ from this model's \[\[2,"),
    ],
)
def test_compile_and_the_reference_refuse_a_schedule_that_does_not_fit(make, match):
    model = tiny_dit(0, depth=2)
    plan = _ddim(4)
    sched = make(plan)
    one_line_error(l2c_compile.compile, model, plan, sched, match=match)
    noise, labels = inputs(model)
    one_line_error(reference.sample, model, plan, sched, noise, labels, 4.0, match=match)


def test_compile_refuses_a_timestep_or_router_row_the_plan_does_not_have():
    model = tiny_dit(0, depth=2)
    plan = _ddim(4)
    sched = random_schedule(plan, 2, random.Random(0))
    calls = list(sched.calls)
    calls[1] = dataclasses.replace(calls[1], timestep=calls[1].timestep + 1.0)
    one_line_error(l2c_compile.compile, model, plan, dataclasses.replace(sched, calls=tuple(calls)),
                   match=r"^call 1 has timestep .* in the schedule but .* in the ddim plan$")
    # the schedule's model name is the caller's business: a test's or a diffusers folder's name
    l2c_compile.compile(model, plan, dataclasses.replace(sched, model="another name"))


def test_compile_takes_a_schedule_not_its_document():
    model = tiny_dit(0, depth=1)
    plan = _ddim(2)
    sched = random_schedule(plan, 1, random.Random(0))
    one_line_error(l2c_compile.compile, model, plan, sched.to_dict(),
                   match=r"^schedule must be a Schedule or None, got dict \(read a schedule file with Schedule.load\)$")
