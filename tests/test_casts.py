"""The no-op cast pass (``passes/casts.py``): float32 casts of float32 tensors go, real casts stay."""

from __future__ import annotations

import torch
from torch import fx, nn

from l2c_compile.compiler.passes.analysis import propagate_shapes
from l2c_compile.compiler.passes.base import SUBLAYER_META
from l2c_compile.compiler.passes.casts import CastsConfig, drop_noop_casts
from l2c_compile.compiler.passes.codegen import StepContext

NOTHING_WHOLE = CastsConfig(StepContext(nn.Module(), {}, {}, {}))  # no module the printer calls whole


class Casts(nn.Module):
    """Wan's spelling: ``(x.float() + a · g).type_as(x)``, a ``.to`` of a float32 value, a copy."""

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        h = (x.float() + a * 2.0).type_as(x)
        h = h.to(torch.float32) + 1.0
        return torch.ops.aten._to_copy.default(h, dtype=torch.float32) * h.float()


def _traced(*inputs: torch.Tensor) -> fx.GraphModule:
    gm = fx.symbolic_trace(Casts())
    propagate_shapes(gm, list(inputs))
    return gm


def _casts(gm: fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes
            if n.target in ("float", "to", "type_as") or "_to_copy" in str(n.target)]


def test_float32_casts_of_float32_values_go_and_the_value_is_the_same() -> None:
    x, a = torch.randn(2, 3), torch.randn(2, 3)
    gm = _traced(x, a)
    want = gm(x, a)
    result = drop_noop_casts(gm, NOTHING_WHOLE)
    assert result.modified and result.stats == {"casts_removed": 4}
    assert _casts(gm) == ["aten._to_copy.default"]  # a copy makes a new tensor: it stays
    assert torch.equal(gm(x, a), want)
    assert "float()" not in gm.code and "type_as" not in gm.code


def test_real_casts_stay() -> None:
    """bfloat16 in: ``x.float()`` upcasts, ``type_as(x)`` comes back down and ``.to(float32)`` goes up
    again; only the last ``h.float()``, of a float32 value, is a no-op."""
    x, a = torch.randn(2, 3, dtype=torch.bfloat16), torch.randn(2, 3)
    gm = _traced(x, a)
    want = gm(x, a)
    result = drop_noop_casts(gm, NOTHING_WHOLE)
    assert result.stats == {"casts_removed": 1}
    assert _casts(gm) == ["float", "type_as", "to", "aten._to_copy.default"]
    assert torch.equal(gm(x, a), want)


def test_a_marked_cast_stays() -> None:
    x, a = torch.randn(2, 3), torch.randn(2, 3)
    gm = _traced(x, a)
    first = next(n for n in gm.graph.nodes if n.target == "float")
    first.meta[SUBLAYER_META] = ("attn", 0)  # a sublayer's output that happens to be a cast
    assert drop_noop_casts(gm, NOTHING_WHOLE).stats == {"casts_removed": 3}
    assert _casts(gm) == ["float", "aten._to_copy.default"]



def test_casts_inside_a_module_that_runs_whole_stay() -> None:
    """U-ViT's attention casts q, k, v to float32 and back (no-ops in float32); a block the step
    computes whole is called as ``m.mid_block(x)``, so its casts stay and the call stays one line;
    a block spelled out (its MLP reused) loses them."""
    import l2c_compile
    from l2c_compile.samplers import make_plan
    from tests.helpers import tiny_uvit
    from tests.test_codegen import reusing

    plan = make_plan("dpm-solver-2", 6)
    compiled = l2c_compile.compile(tiny_uvit(0, depth=4), plan, reusing(plan, 5, {0}))
    reports = {g["graph"]: next(p for p in g["passes"] if p["name"] == "casts") for g in compiled.info["graphs"]}
    assert all(r["stats"]["casts_removed"] == 0 for r in reports.values())  # blocks 1–4 run whole
    assert "m.mid_block(" in compiled.source and ".type_as(" not in compiled.source.split("# block 0")[1]
