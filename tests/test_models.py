"""Model families, registry and checkpoints: official layouts (spec §7), tracing, guidance, I/O."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import fx

from l2c_compile.errors import L2CError
from l2c_compile.metrics.macs import model_table
from l2c_compile.models import (
    MODELS,
    DiT,
    UViT,
    build_model,
    count_params,
    get_spec,
    init_random,
    num_blocks,
)
from l2c_compile.models.dit import sincos_pos_embed_2d

TINY = ["DiT-Tiny", "U-ViT-Tiny"]


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    return init_random(build_model(name), seed)


def inputs(name: str, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    spec = get_spec(name)
    x = torch.randn(n, *spec.latent_shape, generator=g)  # (N, C, H, W)
    t = torch.linspace(900.0, 10.0, n)  # (N,)
    y = torch.arange(n) % spec.num_classes  # (N,)
    return x, t, y


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- official layouts


def expected_dit_xl2_256() -> dict[str, tuple[int, ...]]:
    """Spec §7.1, written out key by key."""
    d, exp = 1152, {}
    exp["pos_embed"] = (1, 256, d)
    exp["x_embedder.proj.weight"], exp["x_embedder.proj.bias"] = (d, 4, 2, 2), (d,)
    exp["t_embedder.mlp.0.weight"], exp["t_embedder.mlp.0.bias"] = (d, 256), (d,)
    exp["t_embedder.mlp.2.weight"], exp["t_embedder.mlp.2.bias"] = (d, d), (d,)
    exp["y_embedder.embedding_table.weight"] = (1001, d)
    for i in range(28):
        b = f"blocks.{i}."
        exp[b + "attn.qkv.weight"], exp[b + "attn.qkv.bias"] = (3 * d, d), (3 * d,)
        exp[b + "attn.proj.weight"], exp[b + "attn.proj.bias"] = (d, d), (d,)
        exp[b + "mlp.fc1.weight"], exp[b + "mlp.fc1.bias"] = (4 * d, d), (4 * d,)
        exp[b + "mlp.fc2.weight"], exp[b + "mlp.fc2.bias"] = (d, 4 * d), (d,)
        exp[b + "adaLN_modulation.1.weight"], exp[b + "adaLN_modulation.1.bias"] = (
            (6 * d, d),
            (6 * d,),
        )
    exp["final_layer.linear.weight"], exp["final_layer.linear.bias"] = (32, d), (32,)
    exp["final_layer.adaLN_modulation.1.weight"] = (2 * d, d)
    exp["final_layer.adaLN_modulation.1.bias"] = (2 * d,)
    return exp


def expected_uvit_h2() -> dict[str, tuple[int, ...]]:
    """Spec §7.2, written out key by key."""
    d, exp = 1152, {}
    exp["pos_embed"] = (1, 258, d)
    exp["patch_embed.proj.weight"], exp["patch_embed.proj.bias"] = (d, 4, 2, 2), (d,)
    exp["label_emb.weight"] = (1001, d)
    names = (
        [f"in_blocks.{i}" for i in range(14)]
        + ["mid_block"]
        + [f"out_blocks.{i}" for i in range(14)]
    )
    for name in names:
        b = name + "."
        for ln in ("norm1", "norm2"):
            exp[b + ln + ".weight"], exp[b + ln + ".bias"] = (d,), (d,)
        exp[b + "attn.qkv.weight"] = (3 * d, d)
        exp[b + "attn.proj.weight"], exp[b + "attn.proj.bias"] = (d, d), (d,)
        exp[b + "mlp.fc1.weight"], exp[b + "mlp.fc1.bias"] = (4 * d, d), (4 * d,)
        exp[b + "mlp.fc2.weight"], exp[b + "mlp.fc2.bias"] = (d, 4 * d), (d,)
        if name.startswith("out_blocks"):
            exp[b + "skip_linear.weight"], exp[b + "skip_linear.bias"] = (d, 2 * d), (d,)
    exp["norm.weight"], exp["norm.bias"] = (d,), (d,)
    exp["decoder_pred.weight"], exp["decoder_pred.bias"] = (16, d), (16,)
    return exp


def test_dit_xl2_state_dict_matches_official_layout() -> None:
    model = build_model("DiT-XL/2", device="meta")
    assert shapes(model) == expected_dit_xl2_256()
    assert len(model.state_dict()) == 292
    assert model.pos_embed.requires_grad is False  # fixed table, but stored


def test_uvit_h2_state_dict_matches_official_layout() -> None:
    model = build_model("U-ViT-H/2", device="meta")
    assert shapes(model) == expected_uvit_h2()
    assert len(model.state_dict()) == 355
    assert isinstance(model.final_layer, torch.nn.Identity)  # conv=False: no parameters


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("DiT-XL/2", 675_129_632),
        ("DiT-XL/2-512", 676_014_368),
        ("DiT-L/2", 458_102_816),
        ("U-ViT-H/2", 500_832_016),
    ],
)
def test_parameter_counts(name: str, params: int) -> None:
    assert count_params(name) == params
    assert sum(p.numel() for p in build_model(name, device="meta").parameters()) == params


@pytest.mark.parametrize("name", TINY)
def test_count_params_matches_a_real_build(name: str) -> None:
    assert count_params(name) == sum(p.numel() for p in build_model(name).parameters())


def test_build_on_meta_allocates_nothing() -> None:
    model = build_model("DiT-XL/2", device="meta")
    assert all(t.is_meta for t in model.state_dict().values())
    assert not model.training


def test_pos_embed_is_the_official_sincos_table() -> None:
    # Spec §7.1: first half encodes the meshgrid's first (w-major) coordinate, second half the
    # other; each half is [sin | cos] with ω_k = 1 / 10000^(2k/(D/2)).
    d, g = 16, 4
    table = sincos_pos_embed_2d(d, g)  # (g², D)
    omega = [1.0 / 10000 ** (2 * k / (d // 2)) for k in range(d // 4)]
    for row in range(g):
        for col in range(g):
            v = table[row * g + col]
            for k, w in enumerate(omega):
                assert v[k] == pytest.approx(math.sin(col * w))
                assert v[d // 4 + k] == pytest.approx(math.cos(col * w))
                assert v[d // 2 + k] == pytest.approx(math.sin(row * w))
                assert v[3 * d // 4 + k] == pytest.approx(math.cos(row * w))
    model = build_model("DiT-Tiny")
    ref = torch.from_numpy(sincos_pos_embed_2d(64, 8)).float()[None]
    assert torch.equal(model.pos_embed.data, ref)


def test_official_init_is_adaln_zero() -> None:
    model = build_model("DiT-Tiny")
    for block in model.transformer_blocks():
        assert not block.adaLN_modulation[-1].weight.any()
    assert not model.final_layer.linear.weight.any()
    x, t, y = inputs("DiT-Tiny")
    assert not model(x, t, y).any()  # zero output layer: the untrained model predicts zeros


# --------------------------------------------------------------------------- forward and tracing


@pytest.mark.parametrize(("name", "channels"), [("DiT-Tiny", 8), ("U-ViT-Tiny", 4)])
def test_forward_shapes_and_shared_attributes(name: str, channels: int) -> None:
    model = tiny(name)
    x, t, y = inputs(name, n=3)
    out = model(x, t, y)
    assert out.shape == (3, channels, 16, 16)
    assert torch.isfinite(out).all()
    assert model.in_channels == 4 and model.out_channels == channels and model.input_size == 16
    assert model.null_class == 10
    blocks = model.transformer_blocks()
    assert len(blocks) == num_blocks(name)
    assert all(hasattr(b, "attn") and hasattr(b, "mlp") for b in blocks)
    assert model.eps(out).shape == (3, 4, 16, 16)


@pytest.mark.parametrize("name", TINY)
def test_symbolic_trace_matches_eager_at_any_batch(name: str) -> None:
    model = tiny(name)
    gm = fx.symbolic_trace(model)
    for n in (1, 3):
        x, t, y = inputs(name, n=n)
        torch.testing.assert_close(gm(x, t, y), model(x, t, y), rtol=0, atol=0)
    targets = {n.target for n in gm.graph.nodes}
    assert torch.nn.functional.scaled_dot_product_attention in targets
    assert "size" not in targets  # no shape reads that could bake in a batch size


def test_uvit_blocks_run_in_unet_order_with_skips() -> None:
    model = tiny("U-ViT-Tiny")
    order: list[int] = []
    for i, block in enumerate(model.transformer_blocks()):
        block.register_forward_hook(lambda m, a, o, i=i: order.append(i))
    model(*inputs("U-ViT-Tiny"))
    assert order == [0, 1, 2, 3, 4]
    assert [b.skip_linear is not None for b in model.transformer_blocks()] == [False] * 3 + [
        True
    ] * 2


def test_dit_sublayer_outputs_are_ungated() -> None:
    # The block must be x + gate * attn(...), then + gate * mlp(...), with attn/mlp outputs ungated.
    model = tiny("DiT-Tiny")
    block = model.transformer_blocks()[1]
    seen: dict[str, torch.Tensor] = {}
    block.attn.register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o))
    block.mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("mlp", o))
    x = torch.randn(2, 64, 64)  # (N, T, D)
    c = torch.randn(2, 64)  # (N, D)
    out = block(x, c)
    chunks = block.adaLN_modulation(c).chunk(6, dim=1)
    gate_msa, gate_mlp = chunks[2], chunks[5]
    mid = x + gate_msa.unsqueeze(1) * seen["attn"]
    torch.testing.assert_close(out, mid + gate_mlp.unsqueeze(1) * seen["mlp"])


@pytest.mark.parametrize(("name", "gated"), [("DiT-Tiny", True), ("U-ViT-Tiny", False)])
def test_compiler_finds_every_residual_branch(name: str, gated: bool) -> None:
    from l2c_compile.compiler.passes.sublayers import find_sublayers
    from l2c_compile.compiler.passes.trace import trace_step

    model = tiny(name)
    for cfg in (False, True):  # with CFG the guidance arithmetic must not look like a branch
        subs = find_sublayers(trace_step(model, cfg=cfg))
        assert len(subs) == 2 * num_blocks(name)
        assert all((s.gate is not None) == gated for s in subs)


@pytest.mark.parametrize("name", TINY)
def test_forward_never_drops_labels(name: str) -> None:
    model = tiny(name)
    x, t, y = inputs(name, n=8)
    eval_out = model(x, t, y)
    model.train()
    torch.testing.assert_close(model(x, t, y), eval_out, rtol=0, atol=0)
    dropped = model.drop_labels(y, drop_mask=torch.arange(8) % 2 == 0)
    assert dropped.tolist() == [10, 1, 10, 3, 10, 5, 10, 7]
    g = torch.Generator().manual_seed(0)
    many = model.drop_labels(torch.zeros(20_000, dtype=torch.long), generator=g)
    assert 0.09 < (many == 10).float().mean().item() < 0.11  # p = 0.1 as upstream


def test_null_class_rows() -> None:
    assert build_model("DiT-XL/2", device="meta").null_class == 1000
    assert build_model("U-ViT-H/2", device="meta").null_class == 1000
    assert build_model("DiT-Tiny").y_embedder.embedding_table.num_embeddings == 11


# --------------------------------------------------------------------------- guidance


def test_dit_guidance_on_three_channels_by_default() -> None:
    model = tiny("DiT-Tiny")
    cond, uncond = torch.randn(2, 8, 16, 16), torch.randn(2, 8, 16, 16)
    eps = model.guide(cond, uncond, 4.0)
    assert eps.shape == (2, 4, 16, 16)
    torch.testing.assert_close(eps[:, :3], uncond[:, :3] + 4.0 * (cond[:, :3] - uncond[:, :3]))
    torch.testing.assert_close(eps[:, 3], cond[:, 3], rtol=0, atol=0)  # passed through unguided
    eps_t = model.guide(cond, uncond, torch.tensor(4.0))  # the traced path passes a tensor
    torch.testing.assert_close(eps_t, eps)


def test_dit_guidance_on_all_eps_channels() -> None:
    model = DiT(
        input_size=8, hidden_size=32, depth=1, num_heads=2, num_classes=3, cfg_channels=None
    )
    cond, uncond = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8)
    eps = model.guide(cond, uncond, 1.5)
    torch.testing.assert_close(eps, uncond[:, :4] + 1.5 * (cond[:, :4] - uncond[:, :4]))


def test_dit_forward_with_cfg_matches_upstream_semantics() -> None:
    model = tiny("DiT-Tiny")
    x, t, y = inputs("DiT-Tiny", n=2)
    xx = torch.cat([x, x])  # (2N, ...) as upstream sample.py builds it
    tt, yy = torch.cat([t, t]), torch.cat([y, torch.full_like(y, model.null_class)])
    out = model.forward_with_cfg(xx, tt, yy, 4.0)
    raw = model(xx, tt, yy)
    cond, uncond = raw.chunk(2)
    guided = uncond[:, :3] + 4.0 * (cond[:, :3] - uncond[:, :3])
    torch.testing.assert_close(out[:2, :3], guided)
    torch.testing.assert_close(out[2:, :3], guided)
    torch.testing.assert_close(out[:, 3:], raw[:, 3:], rtol=0, atol=0)
    torch.testing.assert_close(model.guide(cond, uncond, 4.0), out[:2, :4])


def test_uvit_guidance_convention() -> None:
    model = tiny("U-ViT-Tiny")
    cond, uncond = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(model.guide(cond, uncond, 0.4), cond + 0.4 * (cond - uncond))
    assert model.eps(cond) is cond


# --------------------------------------------------------------------------- random weights


@pytest.mark.parametrize("name", TINY)
def test_init_random_is_deterministic(name: str) -> None:
    a, b, c = tiny(name, seed=1), tiny(name, seed=1), tiny(name, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", TINY)
def test_every_sublayer_affects_the_output(name: str) -> None:
    model = tiny(name)
    x, t, y = inputs(name)
    with torch.no_grad():
        base = model(x, t, y)
        for block in model.transformer_blocks():
            for sub in (block.attn, block.mlp):
                handle = sub.register_forward_hook(lambda m, a, o: torch.zeros_like(o))
                changed = (model(x, t, y) - base).norm() / base.norm()
                handle.remove()
                assert changed > 1e-3


@pytest.mark.parametrize(
    ("name", "deep"),
    [("DiT-Tiny", {"depth": 28}), ("U-ViT-Tiny", {"depth": 28})],  # XL / H depth, tiny width
)
def test_init_random_stays_order_one_through_28_blocks(name: str, deep: dict[str, int]) -> None:
    spec = get_spec(name)
    spec = dataclasses.replace(spec, name=name + "-deep", kwargs={**spec.kwargs, **deep})
    model = init_random(build_model(spec), 0)
    stream: list[float] = []
    for block in model.transformer_blocks():
        block.register_forward_hook(lambda m, a, o: stream.append(o.pow(2).mean().sqrt().item()))
    with torch.no_grad():
        out = model(*inputs(name))
    assert 0.3 < out.std().item() < 3.0
    assert max(stream) < 5.0  # the residual stream does not grow with depth


def test_init_random_refuses_meta_models() -> None:
    with pytest.raises(L2CError, match="meta"):
        init_random(build_model("DiT-Tiny", device="meta"), 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["DiT-XL/2", "U-ViT-H/2"])
def test_init_random_full_size_models_stay_order_one(name: str) -> None:
    model = init_random(build_model(name), 0)
    with torch.no_grad():
        out = model(*inputs(name, n=1))
    assert torch.isfinite(out).all() and 0.3 < out.std().item() < 3.0


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_family_and_size() -> None:
    dit = {
        f"DiT-{s}/{p}{r}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8) for r in ("", "-512")
    }
    uvit = {f"U-ViT-{s}/2" for s in ("S", "M", "L", "H")}
    assert dit | uvit | {"DiT-Tiny", "U-ViT-Tiny"} <= set(MODELS)
    assert get_spec("DiT-XL/2-512").latent_shape == (4, 64, 64)
    assert get_spec("DiT-B/4").latent_shape == (4, 32, 32)


def test_spec_conventions() -> None:
    dit, uvit = get_spec("DiT-XL/2"), get_spec("U-ViT-H/2")
    assert (dit.noise_schedule, dit.time_input, dit.default_sampler, dit.default_cfg_scale) == (
        "linear",
        "discrete",
        "ddim",
        4.0,
    )
    assert (uvit.noise_schedule, uvit.time_input, uvit.default_sampler, uvit.default_cfg_scale) == (
        "scaled_linear",
        "continuous",
        "dpm-solver-2",
        0.4,
    )
    assert dit.num_classes == uvit.num_classes == 1000
    assert uvit.kwargs["num_classes"] == 1001 and uvit.kwargs["conv"] is False
    assert num_blocks(dit) == 28 and num_blocks(uvit) == 29 and num_blocks("U-ViT-S/2") == 13
    assert json.loads(json.dumps(uvit.to_dict()))["kwargs"]["embed_dim"] == 1152
    with pytest.raises(TypeError):
        uvit.kwargs["depth"] = 2  # specs are immutable


def test_unknown_model_name() -> None:
    with pytest.raises(L2CError, match=r"unknown model 'U-ViT-H2'.*did you mean 'U-ViT-H/2'"):
        get_spec("U-ViT-H2")
    with pytest.raises(L2CError, match="unknown model"):
        build_model("GPT-2")
    assert get_spec("dit-xl/2") is MODELS["DiT-XL/2"]


def test_build_model_names_the_model() -> None:
    assert isinstance(build_model("U-ViT-Tiny"), UViT)
    assert build_model("DiT-Tiny").model_name == "DiT-Tiny"
    with pytest.raises(L2CError, match="invalid device"):
        build_model("DiT-Tiny", device="warp-drive")


def test_model_table_rows() -> None:
    rows = {r["name"]: r for r in model_table(["DiT-XL/2", "U-ViT-H/2", "DiT-Tiny"])}
    xl, h = rows["DiT-XL/2"], rows["U-ViT-H/2"]
    assert set(xl) == {
        "name",
        "family",
        "depth",
        "hidden",
        "heads",
        "patch",
        "tokens",
        "params",
        "macs_per_forward",
        "latent",
        "description",
    }
    assert (xl["depth"], xl["hidden"], xl["heads"], xl["patch"], xl["tokens"]) == (
        28,
        1152,
        16,
        2,
        256,
    )
    assert (h["depth"], h["tokens"], h["params"], h["latent"]) == (29, 258, 500_832_016, "4x32x32")
    assert xl["params"] == 675_129_632 and xl["family"] == "dit"
    assert rows["DiT-Tiny"]["tokens"] == 64


@pytest.mark.parametrize("name", TINY)
def test_low_precision_forward_tracks_float32(name: str) -> None:
    # Timestep frequencies are rebuilt in float32 every call, so a bf16 cast cannot round them.
    model = tiny(name)
    x, t, y = inputs(name)
    ref = model(x, t, y)
    low = model.to(torch.bfloat16)(x.bfloat16(), t, y)
    assert low.dtype == torch.bfloat16
    assert ((low.float() - ref).norm() / ref.norm()).item() < 5e-2


def test_sizes_come_from_the_family_declaration():
    """Blocks, repeating units, width and sequence length of every registry model are read from
    its family's declared Shape (no family is special-cased in models/), and agree with the
    model built from the same spec."""
    from l2c_compile.models.registry import (
        MODELS,
        build_model,
        depth_units,
        num_blocks,
        with_depth_units,
    )
    from l2c_compile.models.spec import family_shape

    for name in ("DiT-FMNIST", "U-ViT-FMNIST", "DiT-Tiny", "U-ViT-Tiny", "DiT-S/8", "U-ViT-S/2"):
        spec = MODELS[name]
        with torch.device("meta"):
            model = build_model(spec)
        assert num_blocks(spec) == len(model.transformer_blocks()), name
        assert tuple(model.pos_embed.shape[1:]) == (spec.tokens, spec.hidden), name
        for units in (1, 3):
            assert depth_units(with_depth_units(spec, units)) == units
    with pytest.raises(L2CError, match="not a registry family"):
        family_shape("pixart")
