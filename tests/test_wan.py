"""Wan 2.1 text-to-video (diffusers' ``WanTransformer3DModel``): what is Wan's own.

The contract suite (``test_family_contract.py``) runs the family like every other (compiled ==
reference under random and free-form schedules, MACs, router files, generated code, artifact
reload); these tests pin the adapter against ``WanPipeline`` itself, the block's three residual
branches (the cross-attention ungated), the video latent shape the compiled sampler is made for,
the rotary writes a reused attention takes with it, the FFN's float32 upcast in bfloat16, and
the spec, record and size checks.
"""

from __future__ import annotations

import hashlib
import json
import operator
import random

import pytest
import torch

pytest.importorskip("diffusers")

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.compiler.passes.sublayers import find_sublayers
from l2c_compile.compiler.passes.trace import trace_step
from l2c_compile.diffusers.pipelines import pipeline_plan
from l2c_compile.diffusers.spec import spec_from_config
from l2c_compile.diffusers.wan import DiffusersWan
from l2c_compile.errors import L2CError
from l2c_compile.families import family_of, latent_shape
from l2c_compile.samplers import make_plan
from l2c_compile.schedule import CallSchedule, Schedule
from tests.diffusers_helpers import (
    WAN_SIZE,
    WAN_TEXT_DIM,
    WAN_TEXT_LEN,
    tiny_wan_transformer,
    wan_prompt_inputs,
)
from tests.helpers import random_schedule, rel_error

PLAN = make_plan("unipc-flow", 4, shift=3.0)


def _model(**size) -> DiffusersWan:
    return DiffusersWan(tiny_wan_transformer(0), text_len=WAN_TEXT_LEN, **{**WAN_SIZE, **size}).eval()


def _inputs(model: DiffusersWan, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    p = wan_prompt_inputs(batch)
    noise = torch.randn(batch, *latent_shape(model), generator=torch.Generator().manual_seed(5))
    return noise, torch.stack([p["prompt_embeds"], p["negative_prompt_embeds"]], dim=1)  # (N, 2, L, D)


def _pipeline(model: DiffusersWan):
    """A ``WanPipeline`` around the same transformer with Wan's UniPC; no text encoder or VAE
    (prompt embeddings in, latents out)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model.transformer,
                       scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_adapter_calls_the_transformer_as_the_pipeline_does() -> None:
    """``WanPipeline.__call__``: the latents as they are, ``t.expand(N)`` of the scheduler's int64
    timestep, the prompt embeddings; the float32 timestep the compiled step passes is the same."""
    model = _model()
    x, y = _inputs(model)
    t = torch.tensor(999)  # UniPCMultistepScheduler.timesteps are int64
    want = model.transformer(hidden_states=x, timestep=t.expand(2), encoder_hidden_states=y[:, 0],
                             attention_kwargs=None, return_dict=False)[0]
    got = model(x, torch.full((2,), 999.0), y[:, 0])
    assert got.shape == x.shape == (2, 4, 3, 4, 6)
    assert torch.equal(got, want)


@pytest.mark.parametrize("scale", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_compute_everything_reproduces_the_wan_pipeline(scale: float) -> None:
    """The compiled loop (plan from the pipeline's own scheduler, CFG batched) against the
    pipeline's, which calls the transformer twice per step (prompt, negative prompt)."""
    model = _model()
    noise, y = _inputs(model)
    pipe = _pipeline(model)
    cfg = scale > 1.0  # WanPipeline guides when guidance_scale > 1
    want = pipe(prompt_embeds=y[:, 0], negative_prompt_embeds=y[:, 1], **WAN_SIZE, num_inference_steps=5,
                guidance_scale=scale, latents=noise.clone(), output_type="latent").frames
    sampler = l2c_compile.compile(model, pipeline_plan(pipe.scheduler, 5), None, cfg=cfg)
    got = sampler(noise, y if cfg else y[:, 0], scale if cfg else None)
    assert got.shape == want.shape == (2, 4, 3, 4, 6)
    assert rel_error(got, want) <= 1e-5


def test_self_attention_and_ffn_are_gated_the_cross_attention_is_not() -> None:
    """WanTransformerBlock: x + attn1·gate_msa; x + attn2(norm2(x), prompt); x + ffn·c_gate_msa."""
    model = _model()
    found = {s.key: s for s in find_sublayers(trace_step(model, cfg=True))}
    assert sorted(found) == sorted((k, b) for b in (0, 1) for k in ("attn", "cross", "mlp"))
    for b in (0, 1):
        attn, cross, mlp = found[("attn", b)], found[("cross", b)], found[("mlp", b)]
        assert cross.gate is None and attn.gate is not None and mlp.gate is not None
        # the gates are chunks 2 and 5 (gate_msa, c_gate_msa) of the block's six adaLN values
        assert attn.gate.target is operator.getitem and mlp.gate.target is operator.getitem
        assert (attn.gate.args[1], mlp.gate.args[1]) == (2, 5) and attn.gate.args[0] is mlp.gate.args[0]
        assert cross.path == f"transformer.blocks.{b}.attn2"


def test_a_reused_attention_takes_its_projections_and_rotary_writes_with_it() -> None:
    """diffusers writes the rotary embedding into ``empty_like`` slices; a reused self-attention
    leaves none of them (nor its projections) in the step, and the generated code spells the ops."""
    model = _model()
    layout = family_of(model).layout(model)
    calls = [CallSchedule(c.index, float(c.timestep), c.role, c.router_index,
                          reuse={k: ([0] if k == "attn" and c.index > 0 else []) for k in layout.kinds})
             for c in PLAN.calls]
    sched = Schedule(model="t", depth=layout.depth, sampler=PLAN.sampler, nfe=PLAN.nfe, threshold=None,
                     source={"kind": "test"}, calls=tuple(calls), kinds=layout.kinds, groups=layout)
    sampler = l2c_compile.compile(model, PLAN, sched, hoist=False)
    noise, y = _inputs(model)
    assert rel_error(sampler(noise, y, 5.0), reference.sample(model, PLAN, sched, noise, y, 5.0)) <= 1e-5
    reuse_step = sampler.source.split("# ── step graph 1")[1]
    block0 = reuse_step.split("# block 0:")[1].split("# block 1:")[0]
    assert "cache_attn_0" in block0 and "attn1." not in block0 and "copy_" not in block0 and "empty_like" not in block0
    assert "attn2.to_q" in block0 and "ffn.net" in block0  # the other branches still run
    assert ".type_as(" not in block0 and ".to(torch.float32)" not in block0  # float32: Wan's casts are no-ops
    assert ".copy_(" in reuse_step.split("# block 1:")[1]  # block 1 computes its attention, rotary and all
    assert "torch.ops.aten.layer_norm" not in sampler.source and "F.layer_norm(" in sampler.source
    assert "F.rms_norm(" in sampler.source and "torch.conv3d(xx, m.transformer.patch_embedding.weight" in sampler.source


def test_bfloat16_keeps_the_ffn_upcast_before_its_gate() -> None:
    """In bfloat16 the FFN output is cast to float32 before ``c_gate_msa`` (a no-op in float32):
    discovery follows the cast, and the bf16 sampler stays near the float32 reference."""
    model = _model()
    layout = family_of(model).layout(model)
    sched = random_schedule(PLAN, layout.depth, random.Random(1), 0.5, layout=layout)
    sampler = l2c_compile.compile(model, PLAN, sched, dtype="bfloat16")
    assert "= b0_mlp.to(torch.float32)" in sampler.source  # the upcast, then c_gate_msa
    noise, y = _inputs(model)
    assert rel_error(sampler(noise, y, 5.0), reference.sample(model, PLAN, sched, noise, y, 5.0)) <= 5e-2


def test_a_sampler_made_for_one_frame_count_refuses_another() -> None:
    model = _model()
    sampler = l2c_compile.compile(model, PLAN, None)
    _, y = _inputs(model)
    longer = torch.randn(2, *latent_shape(_model(num_frames=17)))  # 5 latent frames, not 3
    with pytest.raises(L2CError, match=r"noise must have shape \(N, 4, 3, 4, 6\) with N >= 1, got \(2, 4, 5, 4, 6\)") as exc:
        sampler(longer, y, 5.0)
    assert "\n" not in str(exc.value)
    with pytest.raises(L2CError, match=r"noise must have shape \(N, 4, 3, 4, 6\)"):
        sampler(torch.randn(2, 4, 4, 6), y, 5.0)  # an image latent


def test_sizes_the_pipeline_would_round_and_image_conditioned_transformers_are_refused() -> None:
    from diffusers import WanTransformer3DModel

    transformer = tiny_wan_transformer(0)
    for size, needle in (({"num_frames": 10}, r"num_frames − 1 must be a multiple of 4 .* got 10"),
                         ({"height": 36}, r"height and width must be multiples of 16 and 16 pixels, got 36×48"),
                         ({"num_frames": 0}, r"num_frames must be a positive integer, got 0")):
        with pytest.raises(L2CError, match=needle):
            DiffusersWan(transformer, text_len=WAN_TEXT_LEN, **{**WAN_SIZE, **size})
    i2v = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                out_channels=4, text_dim=WAN_TEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=1,
                                image_dim=8, added_kv_proj_dim=16, rope_max_seq_len=32)
    with pytest.raises(L2CError, match=r"image-conditioned .* takes the text-to-video transformer"):
        DiffusersWan(i2v)
    with pytest.raises(L2CError, match="wraps a WanTransformer3DModel, got Linear"):
        DiffusersWan(torch.nn.Linear(2, 2))


def test_the_spec_gives_video_latents_depth_and_the_adapter_record() -> None:
    model = _model()
    config = dict(model.transformer.config)
    default = spec_from_config("WanTransformer3DModel", config)  # WanPipeline: 81 frames of 480×832
    assert default.latent_shape == (4, 21, 60, 104) and default.depth == 2
    assert default.default_sampler == "unipc-flow" and default.time_input == "sigma_1000"
    spec = spec_from_config("WanTransformer3DModel", config, WAN_TEXT_LEN, height=32, width=48, num_frames=9)
    assert spec.latent_shape == latent_shape(model) == (4, 3, 4, 6)
    record = spec.to_dict()
    assert record["latent_shape"] == [4, 3, 4, 6]
    assert record["wan"] == {"text_len": WAN_TEXT_LEN, "num_frames": 9, "height": 32, "width": 48,
                             "vae_scale_factor": 8}
    again = DiffusersWan.from_record(model.transformer, record)
    assert again.record() == model.record() and latent_shape(again) == latent_shape(model)
    with pytest.raises(L2CError, match="Wan record lacks its frame count"):
        DiffusersWan.from_record(model.transformer, {"wan": {"text_len": 5, "height": 32, "width": 48}})
    with pytest.raises(L2CError, match="Wan record lacks its prompt length and image size"):
        DiffusersWan.from_record(model.transformer, {"flux": model.record()})
    assert default.to_dict()["wan"]["num_frames"] == 81
    # a square image family's latent and record are as before (FLUX: the height alone, no frames)
    flux = spec_from_config("FluxTransformer2DModel", {"in_channels": 64, "num_layers": 2, "num_single_layers": 3},
                            512, height=512)
    assert flux.latent_shape == (16, 64, 64) and "num_frames" not in flux.to_dict()["flux"]


def test_the_condition_is_the_prompt_embeddings_prompt_first() -> None:
    model = _model()
    _, y = _inputs(model)
    assert model.example_condition(3, True, "cpu").shape == (3, 2, WAN_TEXT_LEN, WAN_TEXT_DIM)
    assert model.example_condition(3, False, "cpu").shape == (3, WAN_TEXT_LEN, WAN_TEXT_DIM)
    cond, uncond = model.cfg_conditions(y)
    assert torch.equal(cond, y[:, 0]) and torch.equal(uncond, y[:, 1])
    c, u = torch.ones(1, 4, 3, 4, 6), torch.zeros(1, 4, 3, 4, 6)
    assert torch.equal(model.guide(c, u, 5.0), torch.full_like(c, 5.0))  # u + s·(c − u)
    sampler = l2c_compile.compile(model, PLAN, None)
    with pytest.raises(L2CError, match=rf"the prompt condition must have shape \(2, 2, {WAN_TEXT_LEN}, 16\)"):
        sampler(torch.randn(2, *latent_shape(model)), y[:, 0], 5.0)


def _loaded_in_bf16(transformer):
    """``transformer`` as ``from_pretrained(torch_dtype=torch.bfloat16)`` loads it (which needs
    ``accelerate`` for Wan): each state-dict tensor bf16, except those with a
    ``_keep_in_fp32_modules`` entry among its name's parts, float32 (diffusers'
    ``model_loading_utils.load_model_dict_into_meta``); non-persistent buffers as built."""
    from diffusers import WanTransformer3DModel

    keep = WanTransformer3DModel._keep_in_fp32_modules
    loaded = WanTransformer3DModel.from_config(transformer.config).eval()
    state = {k: v.to(torch.float32 if any(m in k.split(".") for m in keep) else torch.bfloat16)
             for k, v in transformer.state_dict().items()}
    loaded.load_state_dict(state, assign=True)
    return loaded


def test_bfloat16_keeps_what_wan_keeps_in_float32_as_from_pretrained_loads_it(tmp_path) -> None:
    """``WanTransformer3DModel._keep_in_fp32_modules``: ``from_pretrained(torch_dtype=bf16)`` keeps
    the norms, time embedder, adaLN tables and rotary tables in float32. Such a mixed model
    compiles as it is, ``compile(dtype="bfloat16")`` of a float32 one gives the same tensors (and
    the same samples), and the artifact keeps them."""
    from l2c_compile.families import fp32_kept, model_dtype

    model = _model()
    mixed = DiffusersWan(_loaded_in_bf16(model.transformer), text_len=WAN_TEXT_LEN, **WAN_SIZE).eval()
    kept = fp32_kept(mixed)
    names = set(kept.values())
    assert {"transformer.scale_shift_table", "transformer.blocks.0.scale_shift_table",
            "transformer.condition_embedder.time_embedder.linear_1.weight", "transformer.blocks.1.norm2.weight"} <= names
    assert all(p.dtype == torch.float32 for p in mixed.parameters() if id(p) in kept)
    assert model_dtype(mixed) == torch.bfloat16 and next(mixed.parameters()).dtype == torch.float32

    layout = family_of(model).layout(model)
    sched = random_schedule(PLAN, layout.depth, random.Random(2), 0.5, layout=layout)
    from_loaded = l2c_compile.compile(mixed, PLAN, sched)
    info = spec_from_config("WanTransformer3DModel", dict(model.transformer.config), WAN_TEXT_LEN, height=32, width=48,
                            num_frames=9).to_dict()
    converted = l2c_compile.compile(model, PLAN, sched, dtype="bfloat16", model_info=info)
    assert from_loaded.record.dtype == converted.record.dtype == "bfloat16"
    assert {n: t.dtype for n, t in converted.model.state_dict().items()} == \
        {n: t.dtype for n, t in from_loaded.model.state_dict().items()}
    noise, y = _inputs(model)
    out = converted(noise, y, 5.0)
    assert torch.equal(from_loaded(noise, y, 5.0), out)
    assert rel_error(out, reference.sample(model, PLAN, sched, noise, y, 5.0)) <= 5e-2

    converted.save(tmp_path / "art")
    again = l2c_compile.load(tmp_path / "art")
    assert torch.equal(again(noise, y, 5.0), out)
    assert again.model.transformer.blocks[0].scale_shift_table.dtype == torch.float32
    assert again.model.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    # verify runs the float32 reference on the artifact's own model, then puts each tensor back
    from l2c_compile.runtime.verify import restore_dtypes, tensor_dtypes, verify_artifact

    dtypes = tensor_dtypes(again.model)
    assert dtypes["transformer.rope.freqs_cos"] == torch.float32  # a kept buffer: never narrowed
    again.model.float()
    restore_dtypes(again.model, dtypes)
    assert tensor_dtypes(again.model) == dtypes and torch.equal(again(noise, y, 5.0), out)
    result = verify_artifact(tmp_path / "art")
    assert result.dtype == "bfloat16" and result.max_rel_error <= 5e-2

    # an artifact whose kept tensor was narrowed is refused, in one line
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "art" / "weights.safetensors"
    state = load_file(str(weights))
    state["transformer.blocks.0.scale_shift_table"] = state["transformer.blocks.0.scale_shift_table"].bfloat16()
    save_file(state, str(weights))
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())  # rehashed, as a tamperer would
    manifest["files"]["weights.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (tmp_path / "art" / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    with pytest.raises(L2CError, match=r"holds transformer.blocks.0.scale_shift_table in torch.bfloat16, but the "
                                       r"model keeps it in torch.float32 with bfloat16 weights$"):
        l2c_compile.load(tmp_path / "art")
