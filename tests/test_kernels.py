"""Fused reuse-epilogue kernels: torch fallback, Triton kernels (interpreter), custom-op tracing.

The oracle is a float64 reference written here, independent of the package's own references.
The Triton kernels run on CPU through Triton's interpreter, which must be switched on before
triton is imported, so ``test_triton_interpreter_subprocess`` re-runs this file's
``TestTritonInterpreter`` class in a child process with ``TRITON_INTERPRET=1``; in the parent
process that class skips.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from l2c_compile import kernels
from l2c_compile.errors import L2CError
from l2c_compile.kernels import _common
from l2c_compile.runtime import features

# By module path: the package's functions of the same names shadow the submodule attributes.
reuse1_mod = importlib.import_module("l2c_compile.kernels.reuse_residual_ln_modulate")
reuse2_mod = importlib.import_module("l2c_compile.kernels.reuse2_residual_ln_modulate")
layernorm_mod = importlib.import_module("l2c_compile.kernels.reuse_residual_layernorm")

REPO = Path(__file__).resolve().parents[1]
INTERP = os.environ.get("TRITON_INTERPRET") == "1"

# Per-dtype tiers (rtol, atol): both sides compute in >= fp32 and round once, so the gap is about
# one unit in the last place of the output dtype.
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
DTYPES = list(TOL)
# (B, T, D): prime rows x prime hidden, DiT-XL's hidden, the degenerate 1x1x1, D not a power of 2.
SHAPES = [(1, 1823, 781), (2, 37, 1152), (1, 1, 1), (3, 5, 100)]


# ----------------------------------------------------------------------------- test references


def _layer_norm64(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim in float64, written out (biased variance, no affine)."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def ref_reuse1(x, gate, cached, shift, scale, eps=1e-6):
    """DiT one-sublayer epilogue in float64, cast once to x's dtype."""
    x64 = x.double() + gate.double()[:, None, :] * cached.double()
    h = _layer_norm64(x64, eps) * (1 + scale.double()[:, None, :]) + shift.double()[:, None, :]
    return x64.to(x.dtype), h.to(x.dtype)


def ref_reuse2(x, gate1, cached1, gate2, cached2, shift, scale, eps=1e-6):
    """DiT whole-block epilogue in float64, cast once to x's dtype."""
    x64 = x.double() + gate1.double()[:, None, :] * cached1.double()
    x64 = x64 + gate2.double()[:, None, :] * cached2.double()
    h = _layer_norm64(x64, eps) * (1 + scale.double()[:, None, :]) + shift.double()[:, None, :]
    return x64.to(x.dtype), h.to(x.dtype)


def ref_layernorm(x, cached, weight, bias, eps=1e-5):
    """U-ViT epilogue in float64, cast once to x's dtype."""
    x64 = x.double() + cached.double()
    h = _layer_norm64(x64, eps) * weight.double() + bias.double()
    return x64.to(x.dtype), h.to(x.dtype)


def make_args(op: str, shape: tuple[int, int, int], dtype: torch.dtype, seed: int = 0) -> tuple:
    """Random inputs for ``op``; DiT vectors are strided chunks of one (B, 6D) adaLN output."""
    gen = torch.Generator().manual_seed(seed)
    b, _, d = shape

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen).to(dtype)

    x, c1, c2 = rand(*shape), rand(*shape), rand(*shape)
    if op == "layernorm":
        return x, c1, 1 + 0.1 * rand(d), rand(d)
    shift1, scale1, gate1, _, _, gate2 = rand(b, 6 * d).chunk(6, dim=1)  # (B, D) strided views
    if op == "reuse1":
        return x, gate1, c1, shift1, scale1
    return x, gate1, c1, gate2, c2, shift1, scale1


OPS: dict[str, tuple[Callable, Callable, Callable]] = {
    # name: (public entry point, Triton launcher, test reference)
    "reuse1": (
        kernels.reuse_residual_ln_modulate,
        reuse1_mod.reuse_residual_ln_modulate_triton,
        ref_reuse1,
    ),
    "reuse2": (
        kernels.reuse2_residual_ln_modulate,
        reuse2_mod.reuse2_residual_ln_modulate_triton,
        ref_reuse2,
    ),
    "layernorm": (
        kernels.reuse_residual_layernorm,
        layernorm_mod.reuse_residual_layernorm_triton,
        ref_layernorm,
    ),
}
OP_MODULES = {"reuse1": reuse1_mod, "reuse2": reuse2_mod, "layernorm": layernorm_mod}
TORCH_OPS = {
    "reuse1": torch.ops.l2c.reuse_residual_ln_modulate,
    "reuse2": torch.ops.l2c.reuse2_residual_ln_modulate,
    "layernorm": torch.ops.l2c.reuse_residual_layernorm,
}


def assert_matches(got: tuple, want: tuple, dtype: torch.dtype) -> None:
    """Both outputs have the input dtype and shape and agree with the reference within the tier."""
    rtol, atol = TOL[dtype]
    for name, g, w in zip(("x_new", "h"), got, want, strict=True):
        assert g.dtype == dtype and g.shape == w.shape and g.is_contiguous(), name
        torch.testing.assert_close(g.float(), w.float(), rtol=rtol, atol=atol, msg=name)


def _run_child(args: list[str], env_extra: dict[str, str], timeout: float) -> str:
    """Run a Python child in the repo root; fail with its output unless it exits 0."""
    env = {**os.environ, **env_extra}
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


# ----------------------------------------------------------------------------- torch fallback


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", list(OPS))
def test_cpu_entry_point_matches_reference(op: str, shape: tuple, dtype: torch.dtype) -> None:
    entry, _, ref = OPS[op]
    args = make_args(op, shape, dtype)
    assert_matches(entry(*args), ref(*args), dtype)


@pytest.mark.parametrize("op", list(OPS))
def test_package_reference_matches_test_reference(op: str) -> None:
    """The package's own reference (used as the CPU op) agrees with the independent one."""
    package_ref = {
        "reuse1": reuse1_mod.reuse_residual_ln_modulate_reference,
        "reuse2": reuse2_mod.reuse2_residual_ln_modulate_reference,
        "layernorm": layernorm_mod.reuse_residual_layernorm_reference,
    }[op]
    args = make_args(op, (2, 9, 48), torch.float32, seed=3)
    assert_matches(package_ref(*args), OPS[op][2](*args), torch.float32)


@pytest.mark.parametrize("op", list(OPS))
def test_inputs_untouched_and_non_default_eps(op: str) -> None:
    entry, _, ref = OPS[op]
    args = make_args(op, (2, 4, 24), torch.float32, seed=1)
    before = [a.clone() for a in args]
    got = entry(*args, eps=0.5)
    assert_matches(got, ref(*args, eps=0.5), torch.float32)
    # A large eps must change h, so the argument really reaches the kernel.
    assert not torch.allclose(got[1], ref(*args)[1], atol=1e-3)
    for a, b in zip(args, before, strict=True):
        assert torch.equal(a, b)
    assert all(out.data_ptr() != a.data_ptr() for out in got for a in args)


def test_reused_dit_block_equals_two_single_epilogues() -> None:
    """reuse2 is the composition x -> +g1*a -> +g2*m, then the next block's modulated LN."""
    x, g1, a, g2, m, shift, scale = make_args("reuse2", (2, 11, 64), torch.float32, seed=2)
    mid, _ = kernels.reuse_residual_ln_modulate(x, g1, a, shift, scale)
    want = kernels.reuse_residual_ln_modulate(mid, g2, m, shift, scale)
    got = kernels.reuse2_residual_ln_modulate(x, g1, a, g2, m, shift, scale)
    assert_matches(got, want, torch.float32)


# ----------------------------------------------------------------------------- input checks

BAD_INPUTS: list[tuple[str, str, Callable[[list], None]]] = [
    # (op, expected message fragment, mutation of a valid argument list)
    ("reuse1", "must be 3-D", lambda a: a.__setitem__(0, a[0][0])),
    ("reuse1", "cached shape", lambda a: a.__setitem__(2, a[2][:, :-1])),
    ("reuse1", "gate must have shape", lambda a: a.__setitem__(1, a[1][:, :-1])),
    ("reuse1", "dtype torch.int64 unsupported", lambda a: a.__setitem__(0, a[0].long())),
    ("reuse1", "cached dtype", lambda a: a.__setitem__(2, a[2].half())),
    ("reuse1", "scale dtype", lambda a: a.__setitem__(4, a[4].double())),
    ("reuse1", "must be contiguous", lambda a: a.__setitem__(0, a[0].transpose(0, 1))),
    ("reuse1", "unit stride", lambda a: a.__setitem__(3, a[3].repeat(1, 2)[:, ::2])),
    ("reuse2", "cached2 shape", lambda a: a.__setitem__(4, a[4][:1])),
    ("reuse2", "gate2 must have shape", lambda a: a.__setitem__(3, a[3][:1])),
    ("layernorm", "weight must have shape", lambda a: a.__setitem__(2, a[2][:-1])),
    ("layernorm", "bias dtype", lambda a: a.__setitem__(3, a[3].half())),
    ("layernorm", "eps must be", lambda a: a.append(-1.0)),
]


@pytest.mark.parametrize(("op", "message", "mutate"), BAD_INPUTS)
@pytest.mark.parametrize("via", ["entry", "launcher"])
def test_bad_inputs_raise_clear_value_error(op: str, message: str, mutate, via: str) -> None:
    args = list(make_args(op, (2, 3, 8), torch.float32))
    mutate(args)
    entry, launcher, _ = OPS[op]
    with pytest.raises(ValueError, match=message) as info:
        (entry if via == "entry" else launcher)(*args)
    assert isinstance(info.value, L2CError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("hidden", [1, 100, 781, 1152, 4096, 16384])
@pytest.mark.parametrize("interpreter", [False, True])
def test_launch_config_covers_the_row(hidden: int, interpreter: bool) -> None:
    cfg = _common.pick_config(hidden, interpreter)
    assert cfg.block_d >= hidden and cfg.block_d & (cfg.block_d - 1) == 0
    assert cfg.block_d < 2 * hidden or hidden == 1
    assert cfg.block_m >= 1 and cfg.block_m & (cfg.block_m - 1) == 0
    assert cfg.num_warps in (1, 2, 4, 8, 16)
    if not interpreter:  # register budget on a GPU: at most 4K elements per tile unless one row
        assert cfg.block_m * cfg.block_d <= max(4096, cfg.block_d)
    # One token per batch entry: no program tiles rows it can never get.
    assert _common.pick_config(hidden, interpreter, rows=1).block_m == 1


def test_zero_width_rows_are_refused() -> None:
    x = torch.zeros(2, 3, 0)
    with pytest.raises(ValueError, match="hidden size D is 0"):
        kernels.reuse_residual_layernorm(x, x, torch.zeros(0), torch.zeros(0))


@pytest.mark.skipif(INTERP, reason="CPU launches are allowed under TRITON_INTERPRET=1")
def test_launcher_refuses_cpu_without_interpreter() -> None:
    args = make_args("layernorm", (1, 2, 8), torch.float32)
    with pytest.raises(ValueError, match=r"TRITON_INTERPRET=1|needs the triton package"):
        layernorm_mod.reuse_residual_layernorm_triton(*args)


# ----------------------------------------------------------------------------- custom ops


class _Reuse1Block(torch.nn.Module):
    """Stand-in for emitted DiT step code: one epilogue between other ops."""

    def forward(self, x, gate, cached, shift, scale):
        x_new, h = kernels.reuse_residual_ln_modulate(x, gate, cached, shift, scale)
        return x_new * 2, h + 1


class _Reuse2Block(torch.nn.Module):
    """Stand-in for emitted DiT step code with a fully reused block."""

    def forward(self, x, gate1, cached1, gate2, cached2, shift, scale):
        x_new, h = kernels.reuse2_residual_ln_modulate(
            x, gate1, cached1, gate2, cached2, shift, scale
        )
        return x_new * 2, h + 1


class _LayerNormBlock(torch.nn.Module):
    """Stand-in for emitted U-ViT step code."""

    def forward(self, x, cached, weight, bias):
        x_new, h = kernels.reuse_residual_layernorm(x, cached, weight, bias)
        return x_new * 2, h + 1


_BLOCKS = {"reuse1": _Reuse1Block, "reuse2": _Reuse2Block, "layernorm": _LayerNormBlock}


def _block(op: str) -> torch.nn.Module:
    return _BLOCKS[op]()


def _op_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and "l2c" in str(n.target)]


@pytest.mark.parametrize("op", list(OPS))
def test_symbolic_trace_keeps_one_op_node(op: str) -> None:
    gm = torch.fx.symbolic_trace(_block(op))
    nodes = _op_nodes(gm)
    assert len(nodes) == 1 and nodes[0].target is TORCH_OPS[op]
    args = make_args(op, (2, 5, 16), torch.float32)
    torch.testing.assert_close(gm(*args), _block(op)(*args))


@pytest.mark.parametrize("op", list(OPS))
def test_make_fx_keeps_one_op_node(op: str) -> None:
    args = make_args(op, (2, 5, 16), torch.float32)
    gm = make_fx(_block(op))(*args)
    nodes = _op_nodes(gm)
    assert len(nodes) == 1 and nodes[0].target is TORCH_OPS[op].default
    # Nothing of the epilogue leaked out as decomposed aten ops.
    assert not any("layer_norm" in str(n.target) for n in gm.graph.nodes)
    torch.testing.assert_close(gm(*args), _block(op)(*args))


@pytest.mark.parametrize("op", list(OPS))
def test_torch_compile_fullgraph_without_break(op: str) -> None:
    graphs: list[torch.fx.GraphModule] = []

    def recording_backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    args = make_args(op, (2, 5, 16), torch.float32)
    compiled = torch.compile(_block(op), fullgraph=True, backend=recording_backend)
    torch.testing.assert_close(compiled(*args), _block(op)(*args))
    assert len(graphs) == 1 and len(_op_nodes(graphs[0])) == 1
    eager_compiled = torch.compile(_block(op), fullgraph=True, backend="eager")
    torch.testing.assert_close(eager_compiled(*args), _block(op)(*args))


@pytest.mark.parametrize("op", list(OPS))
def test_fake_tensor_shapes_and_trace_time_errors(op: str) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = make_args(op, (2, 5, 16), torch.bfloat16)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) for a in args]
        x_new, h = TORCH_OPS[op](*fake)
        assert x_new.shape == h.shape == (2, 5, 16)
        assert x_new.dtype == h.dtype == torch.bfloat16
        with pytest.raises(ValueError, match="shape"):
            TORCH_OPS[op](fake[0][:1], *fake[1:])


# ----------------------------------------------------------------------------- child processes

_NO_TRITON_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["triton"] = None  # any `import triton` now raises ImportError
    import torch
    from l2c_compile import kernels
    from l2c_compile.runtime import features
    assert not kernels.HAS_TRITON
    x = torch.randn(2, 3, 5); c = torch.randn(2, 3, 5); v = torch.randn(2, 5)
    x_new, h = kernels.reuse_residual_ln_modulate(x, v, c, v, v)
    want = torch.nn.functional.layer_norm(x + v[:, None] * c, (5,), eps=1e-6)
    assert torch.allclose(h, want * (1 + v[:, None]) + v[:, None], atol=1e-5)
    kernels.reuse2_residual_ln_modulate(x, v, c, v, c, v, v)
    w = torch.randn(5)
    x_new, h = kernels.reuse_residual_layernorm(x, c, w, w)
    assert torch.allclose(h, torch.nn.functional.layer_norm(x + c, (5,), w, w, 1e-5), atol=1e-5)
    print("no-triton ok")
    """
)


def test_package_works_without_triton() -> None:
    # TRITON_INTERPRET=1 too: asking for the interpreter without triton must still fall back.
    out = _run_child(["-c", _NO_TRITON_SCRIPT], {"TRITON_INTERPRET": "1"}, timeout=120)
    assert "no-triton ok" in out


@pytest.mark.skipif(INTERP, reason="this is the parent of the interpreter run")
def test_triton_interpreter_subprocess() -> None:
    pytest.importorskip("triton")
    out = _run_child(
        [
            "-m",
            "pytest",
            f"{Path(__file__).resolve().relative_to(REPO)}::TestTritonInterpreter",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
        ],
        {"TRITON_INTERPRET": "1"},
        timeout=240,
    )
    assert " passed" in out and "skipped" not in out and "failed" not in out


# ----------------------------------------------------------------------------- Triton kernels


@pytest.mark.skipif(not INTERP, reason="runs in a TRITON_INTERPRET=1 child process")
class TestTritonInterpreter:
    """The real kernel code, executed by Triton's interpreter on CPU tensors."""

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("shape", SHAPES, ids=str)
    @pytest.mark.parametrize("op", list(OPS))
    def test_kernel_matches_reference(self, op: str, shape: tuple, dtype: torch.dtype) -> None:
        _, launcher, ref = OPS[op]
        args = make_args(op, shape, dtype)
        assert_matches(launcher(*args), ref(*args), dtype)

    @pytest.mark.parametrize("op", list(OPS))
    def test_cpu_op_runs_the_kernel(self, op: str, monkeypatch: pytest.MonkeyPatch) -> None:
        module = OP_MODULES[op]
        calls: list[int] = []
        real = module.pick_config

        def spy(hidden: int, interpreter: bool, rows: int | None = None):
            calls.append(hidden)
            return real(hidden, interpreter, rows)

        monkeypatch.setattr(module, "pick_config", spy)
        entry, _, ref = OPS[op]
        args = make_args(op, (3, 7, 40), torch.float32)
        assert_matches(entry(*args, eps=0.25), ref(*args, eps=0.25), torch.float32)
        assert calls == [40]

    @pytest.mark.parametrize("op", ["reuse1", "reuse2"])
    def test_contiguous_and_strided_vectors_agree(self, op: str) -> None:
        _, launcher, _ = OPS[op]
        args = make_args(op, (4, 6, 24), torch.float16)
        dense = [a.contiguous() for a in args]
        assert any(not a.is_contiguous() for a in args)
        for got, want in zip(launcher(*args), launcher(*dense), strict=True):
            assert torch.equal(got, want)

    @pytest.mark.parametrize("shape", [(3, 5, 100), (1, 19, 1152)], ids=str)
    @pytest.mark.parametrize("op", list(OPS))
    def test_gpu_tiling_matches_reference(
        self, op: str, shape: tuple, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The tile a GPU launch would pick (several rows per program for narrow rows) is right."""
        module = OP_MODULES[op]
        real = module.pick_config
        monkeypatch.setattr(
            module, "pick_config", lambda hidden, interpreter, rows=None: real(hidden, False, rows)
        )
        _, launcher, ref = OPS[op]
        args = make_args(op, shape, torch.bfloat16)
        assert_matches(launcher(*args), ref(*args), torch.bfloat16)

    def test_batch_beyond_grid_limit_is_refused(self) -> None:
        x = torch.zeros(65536, 1, 1)
        with pytest.raises(ValueError, match="grid's limit"):
            reuse1_mod.reuse_residual_ln_modulate_triton(x, x[:, 0], x, x[:, 0], x[:, 0])

    def test_empty_batch_launches_nothing(self) -> None:
        x = torch.zeros(0, 4, 8)
        x_new, h = layernorm_mod.reuse_residual_layernorm_triton(
            x, x, torch.ones(8), torch.zeros(8)
        )
        assert x_new.shape == h.shape == (0, 4, 8)


# ----------------------------------------------------------------------------- CUDA (device runs)

needs_cuda = pytest.mark.skipif(not features.has("cuda"), reason=features.missing("cuda"))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", list(OPS))
def test_cuda_kernel_matches_reference(op: str, shape: tuple, dtype: torch.dtype) -> None:
    entry, launcher, ref = OPS[op]
    args = make_args(op, shape, dtype)
    cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    want = ref(*args)
    assert_matches([o.cpu() for o in launcher(*cuda_args)], want, dtype)
    assert_matches([o.cpu() for o in entry(*cuda_args)], want, dtype)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("op", list(OPS))
def test_cuda_inductor_fullgraph_keeps_the_op(op: str) -> None:
    torch._dynamo.reset()
    args = [a.cuda() for a in make_args(op, (2, 16, 1152), torch.bfloat16)]
    compiled = torch.compile(_block(op), fullgraph=True)
    for got, want in zip(compiled(*args), _block(op)(*args), strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
