"""Official DiT ↔ diffusers ``DiTTransformer2DModel``: the same weights in either layout.

Key map (official → diffusers), per block ``i``::

    x_embedder.proj                 → pos_embed.proj
    t_embedder.mlp.{0,2}            → transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_{1,2}  (every i)
    y_embedder.embedding_table      → transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table  (every i)
    blocks.i.adaLN_modulation.1     → transformer_blocks.i.norm1.linear
    blocks.i.attn.qkv (rows q|k|v)  → transformer_blocks.i.attn1.to_{q,k,v}
    blocks.i.attn.proj              → transformer_blocks.i.attn1.to_out.0
    blocks.i.mlp.fc{1,2}            → transformer_blocks.i.ff.net.{0.proj,2}
    final_layer.adaLN_modulation.1  → proj_out_1;  final_layer.linear → proj_out_2
    pos_embed (fixed sin-cos table) → (diffusers builds the same table itself)

diffusers gives every block its own copy of the timestep/label embedders; converting back takes
block 0's and refuses a model whose copies differ. What no key map can change: diffusers' timestep
features divide the frequency exponent by ``half − 1`` where the official code divides by ``half``
(``Timesteps(downscale_freq_shift=1)``), so the same weights give slightly different outputs in
the two implementations (the tests measure it, and show the rest is exact).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DiTTransformer2DModel

from l2c_compile.errors import L2CError
from l2c_compile.models.dit import DiT


def to_diffusers(model: DiT) -> DiTTransformer2DModel:
    """A ``DiTTransformer2DModel`` holding ``model``'s weights (official layout → diffusers)."""
    d, heads = model.hidden_size, model.num_heads
    if model.blocks[0].mlp.fc1.out_features != 4 * d:
        raise L2CError("diffusers' DiT has an MLP ratio of 4; this DiT's differs")
    out = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=d // heads,
                                in_channels=model.in_channels, out_channels=model.out_channels,
                                num_layers=len(model.blocks), sample_size=model.input_size,
                                patch_size=model.patch_size, num_embeds_ada_norm=model.num_classes)
    out.load_state_dict(official_to_diffusers(model.state_dict()))
    return out.eval()


def from_diffusers(transformer: DiTTransformer2DModel) -> DiT:
    """An official-layout :class:`~l2c_compile.models.dit.DiT` holding ``transformer``'s weights."""
    c = transformer.config
    d = c.num_attention_heads * c.attention_head_dim
    out_channels = c.out_channels or c.in_channels
    if out_channels not in (c.in_channels, 2 * c.in_channels):
        raise L2CError(f"DiT outputs in_channels or 2·in_channels, this model has {out_channels}")
    model = DiT(input_size=c.sample_size, patch_size=c.patch_size, in_channels=c.in_channels, hidden_size=d,
                depth=c.num_layers, num_heads=c.num_attention_heads, num_classes=c.num_embeds_ada_norm,
                learn_sigma=out_channels == 2 * c.in_channels)
    state = diffusers_to_official(transformer.state_dict())
    state["pos_embed"] = transformer.pos_embed.pos_embed.detach().clone()
    model.load_state_dict(state)
    return model.eval()


# Official key → diffusers key, one table read both ways (the q/k/v split and the per-block
# embedder copies are the only parts that are not a rename).
TOP_KEYS = {
    "x_embedder.proj": "pos_embed.proj",
    "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
}
T_EMBEDDER_KEYS = {"t_embedder.mlp.0": "linear_1", "t_embedder.mlp.2": "linear_2"}
BLOCK_KEYS = {
    "adaLN_modulation.1": "norm1.linear",
    "attn.proj": "attn1.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
}
PARAMS = ("weight", "bias")


def official_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official DiT state dict → diffusers keys (tensors shared or split, never changed)."""
    depth = _depth(state, "blocks.")
    out = {f"{b}.{p}": state[f"{a}.{p}"] for a, b in TOP_KEYS.items() for p in PARAMS}
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"transformer_blocks.{i}."
        emb = dst + "norm1.emb."
        for a, b in T_EMBEDDER_KEYS.items():
            for p in PARAMS:
                out[f"{emb}timestep_embedder.{b}.{p}"] = state[f"{a}.{p}"]
        out[f"{emb}class_embedder.embedding_table.weight"] = state["y_embedder.embedding_table.weight"]
        for a, b in BLOCK_KEYS.items():
            for p in PARAMS:
                out[f"{dst}{b}.{p}"] = state[f"{src}{a}.{p}"]
        for p in PARAMS:
            q, k, v = state[f"{src}attn.qkv.{p}"].chunk(3, dim=0)
            out[f"{dst}attn1.to_q.{p}"], out[f"{dst}attn1.to_k.{p}"], out[f"{dst}attn1.to_v.{p}"] = q, k, v
    return out


def diffusers_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``DiTTransformer2DModel`` state dict → official DiT keys (without ``pos_embed``).

    L2CError when the blocks' embedder copies differ (such a model has no official form).
    """
    depth = _depth(state, "transformer_blocks.")
    emb = "transformer_blocks.0.norm1.emb."
    out = {f"{a}.{p}": state[f"{b}.{p}"] for a, b in TOP_KEYS.items() for p in PARAMS}
    out["y_embedder.embedding_table.weight"] = state[emb + "class_embedder.embedding_table.weight"]
    for a, b in T_EMBEDDER_KEYS.items():
        for p in PARAMS:
            out[f"{a}.{p}"] = state[f"{emb}timestep_embedder.{b}.{p}"]
    for i in range(1, depth):
        for key in [k for k in state if k.startswith(emb)]:
            other = key.replace("transformer_blocks.0.", f"transformer_blocks.{i}.", 1)
            if not torch.equal(state[other], state[key]):
                raise L2CError(f"block {i}'s {key.removeprefix(emb)} differs from block 0's: "
                               "the official DiT has one timestep/label embedder")
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}.", f"blocks.{i}."
        for a, b in BLOCK_KEYS.items():
            for p in PARAMS:
                out[f"{dst}{a}.{p}"] = state[f"{src}{b}.{p}"]
        for p in PARAMS:
            out[f"{dst}attn.qkv.{p}"] = torch.cat([state[f"{src}attn1.to_{n}.{p}"] for n in "qkv"], dim=0)
    return out


def _depth(state: dict[str, Any], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    if not ids or ids != set(range(len(ids))):
        raise L2CError(f"not a DiT state dict: no consecutive {prefix}{{i}} keys")
    return len(ids)
