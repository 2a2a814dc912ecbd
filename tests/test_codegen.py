"""The generated step code is for people: named values, module calls, exact precedence, few dels."""

from __future__ import annotations

import random
import re

import pytest
import torch
from torch import fx

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.compiler.passes.codegen import StepContext, module_ref, step_source
from l2c_compile.families import family_of
from l2c_compile.samplers import make_plan
from tests.families import DECLARED, case_model, case_plan
from tests.helpers import inputs, random_schedule, rel_error, tiny_dit, tiny_uvit


def _compiled(family: str = "dit", p: float = 0.5, seed: int = 1):
    model = case_model(family, 0, depth=3)
    depth = len(model.transformer_blocks())
    plan = case_plan(family, 6)
    layout = family_of(model).layout(model)
    sched = random_schedule(plan, depth, random.Random(seed), p=p, layout=layout)
    return l2c_compile.compile(model, plan, sched), depth


def _steps(src: str) -> list[str]:
    body = src.split("\nSTEPS = ")[0]
    return ["def step_" + s for s in body.split("\ndef step_")[1:]]


@pytest.mark.parametrize("family", DECLARED)
def test_generated_steps_carry_no_fx_leftovers(family):
    compiled, _ = _compiled(family)
    src = compiled.source
    for leftover in ("getitem_", "torch._C", "getattr(getattr", "= None", "fx_pytree", "pytree"):
        assert leftover not in src, (family, leftover)
    for line in src.splitlines():
        m = re.match(r"import (\S+)(?: as (\w+))?", line)
        if m and m.group(1) == "l2c_compile.kernels":  # imported for its op registrations
            assert "torch.ops.l2c." in src
        elif m:  # every import is used
            bound = m.group(2) or m.group(1).split(".")[0]
            rest = src.replace(line, "")
            assert re.search(rf"\b{re.escape(bound)}\.", rest), line


def test_each_block_is_marked_and_sublayers_are_named_module_calls():
    compiled, depth = _compiled("dit", p=0.6)
    for g, step in enumerate(_steps(compiled.source)):
        info = compiled.info["graphs"][g]
        for b in range(depth):
            attn = "reused" if b in info["reuse_attn"] else "computed"
            mlp = "reused" if b in info["reuse_mlp"] else "computed"
            assert f"    # block {b}: attention {attn}, MLP {mlp}\n" in step
            assert (f"b{b}_attn = m.blocks[{b}].attn(" in step) == (attn == "computed")
            assert (f"b{b}_mlp = m.blocks[{b}].mlp(" in step) == (mlp == "computed")
    full = _steps(compiled.source)[0]
    assert "b0_shift_msa, b0_scale_msa, b0_gate_msa, b0_shift_mlp, b0_scale_mlp, b0_gate_mlp = " in full
    assert "m.x_embedder(" in full  # whole submodules are called
    prologue = compiled.source[compiled.source.index("def prologue("):compiled.source.index("def step_0(")]
    assert "m.t_embedder(" in prologue and "m.t_embedder(" not in full  # hoisted (passes/hoist.py)


def test_dels_free_only_token_activations():
    compiled, _ = _compiled("dit", p=0.6)
    dels = [line for line in compiled.source.split("def sample")[0].splitlines() if line.strip().startswith("del ")]
    assert dels
    for line in dels:  # per-sample adaLN vectors die with the function; nothing else is small
        assert not re.search(r"_(shift|scale|gate)_(msa|mlp)\b", line), line


def test_the_generated_artifact_is_much_shorter_than_fx_code():
    compiled, _ = _compiled("dit", p=0.5)
    gm_lines = 0
    for step in _steps(compiled.source):
        gm_lines += step.count("\n") + 1
    # A DiT block computed in full is 5 statements, a comment and a del (fx wrote ~35 lines); with
    # the embedding and final-layer lines spread over only 3 blocks, still under 14 per block.
    per_block = gm_lines / (3 * compiled.info["distinct_graphs"])
    assert per_block <= 14, per_block


class _Arith(torch.nn.Module):
    def forward(self, a, b, c):
        return (a - (b - c), (a + b) * c, a / (b * c), -(a + b), (a * b) ** 2, a[1:, ::2])


def test_operator_precedence_and_order_are_exact():
    gm = fx.symbolic_trace(_Arith())
    ctx = StepContext(model=gm, blocks={}, sublayers={}, base_scopes={})
    src, imports = step_source(gm, 0, ctx)
    namespace: dict = {}
    exec("\n".join(sorted(imports)) + "\n" + src, namespace)
    a, b, c = (torch.randn(3, 4) for _ in range(3))
    holder = type("Holder", (), {"model": gm})()
    got = namespace["step_0"](holder, a, b, c)
    for g, w in zip(got, _Arith()(a, b, c), strict=True):
        assert torch.equal(g, w)
    assert "a - (b - c)" in src and "(a + b) * c" in src and "a[1:, ::2]" in src


def test_module_ref_writes_indices_and_attributes():
    assert module_ref("model.blocks.3.adaLN_modulation.1.weight") == "m.blocks[3].adaLN_modulation[1].weight"
    assert module_ref("mid_block.attn") == "m.mid_block.attn"


class _InPlace(torch.nn.Module):
    def forward(self, a, b):
        c = a * 2
        d = c + b
        c.add_(1)  # mutates c after d read it: folding d into its user would read the new c
        return d * c


def test_a_graph_with_in_place_ops_is_not_reordered():
    gm = fx.symbolic_trace(_InPlace())
    ctx = StepContext(model=gm, blocks={}, sublayers={}, base_scopes={})
    src, imports = step_source(gm, 0, ctx)
    namespace: dict = {}
    exec("\n".join(sorted(imports)) + "\n" + src, namespace)
    a, b = torch.randn(3), torch.randn(3)
    holder = type("Holder", (), {"model": gm})()
    assert torch.equal(namespace["step_0"](holder, a.clone(), b), _InPlace()(a.clone(), b))


# ── every family's generated code reads like its forward (issue 20, item 5) ───────────────────────


def reusing(plan, depth: int, blocks: set[int], kinds: tuple[str, ...] = ("attn", "mlp")):
    """A schedule whose cache calls reuse every kind of ``blocks`` and compute everything else."""
    from l2c_compile.schedule import Schedule

    logits = torch.full((plan.nfe, len(kinds) * depth), 3.0)
    for b in blocks:
        logits[:, len(kinds) * b:len(kinds) * (b + 1)] = -3.0
    return Schedule.from_router(logits, plan, model="test", depth=depth, threshold=0.5, kinds=kinds)


def sample_loop(src: str) -> str:
    return src[src.index("\ndef sample("):]


def assert_reads_like_a_forward(src: str) -> None:
    """What no family's generated code may contain: fx names, identities, caches picked by index."""
    steps = src.split("\ndef sample(")[0]
    for leftover in ("getitem", "/ 1.0", "* 1)", "* 1\n", "* 1,", "_norm_hidden_states_2"):
        assert leftover not in steps, leftover
    loop = sample_loop(src)
    assert "out[" not in loop and "out = " not in loop
    for line in loop.splitlines():
        if "self.steps[" in line:  # ε and the kept caches by name; the reads by keyword
            assert re.match(r"    eps_\d+,(?: \w+,)*(?: \w+)? = self\.steps\[\d+\]\(", line), line
            call = line.split(" = self.steps[", 1)[1]
            assert not re.search(r", (attn|mlp|cross)_\d+[,)]", call), line


def test_a_block_computed_whole_is_one_call_and_caches_travel_by_name():
    model = tiny_dit(0, depth=3)
    plan = make_plan("ddim", 6, noise_schedule="linear", time_input="discrete")
    sched = reusing(plan, 3, {0})
    noise, labels = inputs(model, 2)
    want = reference.sample(model, plan, sched, noise, labels, 4.0)
    unhoisted = l2c_compile.compile(model, plan, sched, hoist=False)
    full, cache = _steps(unhoisted.source)[:2]
    # block 0 exports its outputs in the full step; blocks 1 and 2 are called as themselves
    assert "b0_attn = m.blocks[0].attn(" in full and re.search(r"b1_x = m\.blocks\[1\]\(b0_x_\d+, c\)\n", full)
    assert re.search(r"b2_x = m\.blocks\[2\]\(b1_x, c\)\n", full) and "m.final_layer(b2_x, c)" in full
    # the cache step spells out block 1 (it adds block 0's cached outputs) and calls block 2 whole
    assert "m.blocks[1].attn(" in cache and re.search(r"b2_x = m\.blocks\[2\]\(b1_x_\d+, c\)\n", cache)
    assert "m.blocks[2].attn(" not in cache and "m.blocks[2].mlp(" not in cache
    assert rel_error(unhoisted(noise, labels, 4.0), want) <= 1e-5
    hoisted = l2c_compile.compile(model, plan, sched)
    assert "    # + cached attn output of block 0, + cached mlp output of block 0\n" \
           "    b1_x, b1_h = torch.ops.l2c.reuse2_residual_ln_modulate" in hoisted.source
    assert "cache_attn_0=attn_0, cache_mlp_0=mlp_0)" in sample_loop(hoisted.source)
    assert re.search(r"eps_0, attn_0, mlp_0 = self\.steps\[0\]\(", hoisted.source)
    for compiled in (unhoisted, hoisted):
        assert_reads_like_a_forward(compiled.source)
    assert rel_error(hoisted(noise, labels, 4.0), want) <= 1e-5


def test_uvit_blocks_computed_whole_are_called_with_their_skips():
    model = tiny_uvit(0, depth=4)  # in_blocks 0, 1; mid_block 2; out_blocks 3, 4
    plan = make_plan("dpm-solver-2", 6)
    sched = reusing(plan, 5, {0})
    compiled = l2c_compile.compile(model, plan, sched)
    cache = next(s for s in _steps(compiled.source) if "block 0: attention reused" in s)
    assert "    # + cached mlp output of block 0\n    b1_x, b1_h = torch.ops.l2c.reuse_residual_layernorm" in cache
    assert re.search(r"b2_x = m\.mid_block\(b1_x_\d+\)\n", cache)
    assert re.search(r"b3_x = m\.out_blocks\[0\]\(b2_x, b1_x_\d+\)\n", cache)  # the long skip, by name
    assert re.search(r"b4_x = m\.out_blocks\[1\]\(b3_x, b1_x\)\n", cache)
    assert ".attn(" not in cache.split("# block 2")[1]
    assert_reads_like_a_forward(compiled.source)
    noise, labels = inputs(model, 2)
    want = reference.sample(model, plan, sched, noise, labels, 4.0)
    assert rel_error(compiled(noise, labels, 4.0), want) <= 1e-5


class _Identities(torch.nn.Module):
    def forward(self, x, i):
        return (x / 1.0, x * 1, 1 * x, x - 0, x + 0, x / 2.0, x * True, i / 1.0, i * 1, x / 1)


def test_only_exact_identities_are_folded():
    """``x / 1.0``, ``x * 1``, ``x - 0`` give a floating ``x`` back bit for bit (sign of zero, NaN
    and inf included) in its dtype, and are folded; ``x + 0`` turns ``-0.0`` into ``+0.0`` and an
    integer tensor divided by 1.0 becomes float, so they stay (as do ``x * True`` and ``i * 1``,
    left as written)."""
    from l2c_compile.compiler.passes.trace import identity_input

    x = torch.tensor([-0.0, 0.0, 1.5, -2.0, float("inf"), float("nan")], dtype=torch.float16)
    i = torch.arange(6)
    gm = torch.export.export(_Identities(), (x, i)).module()
    ops = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (
        torch.ops.aten.div.Tensor, torch.ops.aten.mul.Tensor, torch.ops.aten.sub.Tensor, torch.ops.aten.add.Tensor)]
    folded = [identity_input(n) is not None for n in ops]
    assert folded == [True, True, True, True, False, False, False, False, False, True]
    results = _Identities()(x, i)
    for fold, got in zip(folded, results, strict=True):
        if fold:  # sound: the op returns its input bit for bit
            assert got.dtype == x.dtype and torch.equal(got.view(torch.int16), x.view(torch.int16))
    assert not torch.equal(results[4].view(torch.int16), x.view(torch.int16))  # x + 0: -0.0 → +0.0
    assert results[7].dtype != i.dtype  # i / 1.0 is float


class _Unpack(torch.nn.Module):
    def forward(self, x):
        qkv = x.chunk(3, dim=-1)
        return qkv[0] * qkv[1] + qkv[2]


def test_tuple_items_the_source_does_not_name_are_named_after_their_tuple():
    from l2c_compile.compiler.passes.naming import name_values

    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    gm = fx.GraphModule(_Unpack(), tracer.trace(_Unpack()))
    name_values(gm)
    src, _ = step_source(gm, 0, StepContext(model=gm, blocks={}, sublayers={}, base_scopes={}))
    assert "    qkv_0, qkv_1, qkv_2 = x.chunk(3, dim=-1)\n" in src and "getitem" not in src
    namespace: dict = {}
    exec("import torch\n" + src, namespace)
    x = torch.randn(2, 6)
    assert torch.equal(namespace["step_0"](type("Holder", (), {"model": gm})(), x), _Unpack()(x))
