"""Adapter: diffusers' ``PixArtTransformer2DModel`` (text-to-image, PixArt-α/Σ) as the compiler sees
a model.

The transformer is held unmodified at ``self.transformer``; its cacheable sublayers are declared
by module path in the ``pixart`` family (``families/builtin.py``), three per block: ``transformer_blocks.{i}.attn1`` (self-attention, gated by
adaLN-single), ``transformer_blocks.{i}.attn2`` (cross-attention to the prompt, ungated) and
``transformer_blocks.{i}.ff`` (gated). fx cannot trace it (its forward branches on values), so it
asks for the ``torch.export`` capture.

The condition ``y`` is the prompt, packed into one tensor so the compiled step keeps its
``(x, t, y, cfg_scale)`` signature: the T5 embeddings ``(L, D)`` with the attention mask (1 keep,
0 pad) as one more channel, ``(N, L, D + 1)`` for one prompt per row. With classifier-free
guidance the rows carry the prompt and the negative prompt, ``(N, 2, L, D + 1)``
(:func:`pack_condition`); the unconditional half of the batch is the negative prompt, as in
``PixArtAlphaPipeline``. Guidance is the pipeline's: ``u + s · (c − u)``, then the first
``in_channels`` channels (the learned-σ half is dropped). Micro-conditions (the 1024-px models'
``resolution`` and ``aspect_ratio``) are the pipeline's, fixed by the image size the adapter is
made for. Sources: diffusers ``PixArtAlphaPipeline.__call__``, ``PixArtTransformer2DModel.forward``.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import PixArtTransformer2DModel
from torch import nn

from l2c_compile.diffusers.prompted import PromptAdapter
from l2c_compile.diffusers.records import prompt_record
from l2c_compile.errors import L2CError


def pack_condition(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Prompt embeddings (N, L, D) and their attention mask (N, L) → the condition (N, L, D + 1).

    The mask becomes the embeddings' dtype (0/1 exactly). L2CError when the shapes disagree.
    """
    if embeds.dim() != 3 or mask.shape != embeds.shape[:2]:
        raise L2CError(
            f"prompt embeddings must be (N, L, D) with a (N, L) mask, got {tuple(embeds.shape)} "
            f"and {tuple(mask.shape)}"
        )
    return torch.cat([embeds, mask.to(embeds.dtype).unsqueeze(-1)], dim=-1)  # (N, L, D + 1)


class DiffusersPixArt(PromptAdapter):
    """ε(x, t, y) of a diffusers ``PixArtTransformer2DModel``; the model is ``self.transformer``.

    ``text_len``: the prompt length L the sampler is made for (the pipeline's
    ``max_sequence_length``: 120 for PixArt-α, 300 for PixArt-Σ). ``height`` / ``width``: the image
    size in pixels (default: the model's ``sample_size · 8``); only square latents are supported.
    """

    l2c_capture = "export"
    # the tensors a prompt condition packs (pack_condition), as the pipeline names them: prompt, negative
    condition_keys = (("prompt_embeds", "prompt_attention_mask"),
                      ("negative_prompt_embeds", "negative_prompt_attention_mask"))
    pack_condition = staticmethod(pack_condition)

    def __init__(
        self,
        transformer: PixArtTransformer2DModel,
        text_len: int = 120,
        height: int | None = None,
        width: int | None = None,
        vae_scale_factor: int = 8,
    ) -> None:
        super().__init__()
        if not isinstance(transformer, PixArtTransformer2DModel):
            raise L2CError(
                f"DiffusersPixArt wraps a PixArtTransformer2DModel, got {type(transformer).__name__}"
            )
        config = transformer.config
        if config.norm_type != "ada_norm_single":
            raise L2CError(
                f"PixArtTransformer2DModel with norm_type {config.norm_type!r} is not supported "
                "(only ada_norm_single)"
            )
        side = int(config.sample_size) * vae_scale_factor
        height, width = height or side, width or side
        if height != width or height % vae_scale_factor:
            raise L2CError(
                f"only square images whose side is a multiple of {vae_scale_factor} are supported, "
                f"got {height}×{width}"
            )
        if isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 1:
            raise L2CError(f"text_len must be a positive integer, got {text_len!r}")
        self.transformer = transformer
        self.in_channels = int(config.in_channels)
        self.out_channels = int(config.out_channels or config.in_channels)
        self.input_size = height // vae_scale_factor
        self.text_len = text_len
        self.text_dim = int(config.caption_channels)
        self.height, self.width = height, width
        self.micro_conditions = bool(transformer.use_additional_conditions)
        # The pipeline's micro-conditions for this size (used only by the 1024-px models).
        self.register_buffer(
            "resolution", torch.tensor([[float(height), float(width)]]), persistent=False
        )
        self.register_buffer(
            "aspect_ratio", torch.tensor([[float(height / width)]]), persistent=False
        )

    @classmethod
    def from_record(cls, transformer: PixArtTransformer2DModel, record: dict) -> DiffusersPixArt:
        """The adapter for an artifact's model record: its ``pixart`` entry gives the prompt length
        and image size; L2CError when it lacks them."""
        return cls(transformer, **prompt_record(record, "pixart", "PixArt"))

    @classmethod
    def pipeline_text_len(cls, folder: str | os.PathLike[str]) -> int:
        """The prompt length the pipeline saved in ``folder`` encodes to by default: its
        ``max_sequence_length`` default (120 for PixArt-α, 300 for PixArt-Σ); the class default
        (120) for a model folder or a pipeline without one."""
        import diffusers

        from l2c_compile.inputs import read_json

        root = Path(folder)
        length = int(inspect.signature(cls).parameters["text_len"].default)
        if (root / "model_index.json").is_file():
            index = read_json(root / "model_index.json", "diffusers config")
            pipeline = getattr(diffusers, str(index.get("_class_name")), None) if isinstance(index, dict) else None
            params = inspect.signature(pipeline.__call__).parameters if pipeline is not None else {}
            if "max_sequence_length" in params:
                length = int(params["max_sequence_length"].default)
        return length

    def prompt_condition(self, pipe: Any, prompts: list[str], *, negative_prompt: str = "", cfg: bool,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        """``prompts`` encoded by ``pipe`` for this adapter's prompt length (:func:`prompt_condition`)."""
        return prompt_condition(pipe, prompts, negative_prompt=negative_prompt, cfg=cfg, text_len=self.text_len,
                                device=device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) latents; t: (N,) timesteps; y: (N, L, D + 1) packed prompt → (N, C_out, H, W)."""
        embeds, mask = y[..., :-1], y[..., -1]  # (N, L, D), (N, L)
        added = {"resolution": None, "aspect_ratio": None}
        if self.micro_conditions:
            n = x.shape[0]
            added = {
                "resolution": self.resolution.expand(n, 2).to(embeds.dtype),  # (N, 2)
                "aspect_ratio": self.aspect_ratio.expand(n, 1).to(embeds.dtype),
            }  # (N, 1)
        return self.transformer(
            x,
            encoder_hidden_states=embeds,
            encoder_attention_mask=mask,
            timestep=t,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]

    def transformer_blocks(self) -> list[nn.Module]:
        """The transformer blocks in execution order."""
        return list(self.transformer.transformer_blocks)

    def example_condition(self, n: int, cfg: bool, device: torch.device | str) -> torch.Tensor:
        """A zero prompt with a full mask, (n, [2,] L, D + 1), to capture a step with."""
        dtype = next(self.transformer.parameters()).dtype
        y = torch.zeros(n, self.text_len, self.text_dim + 1, dtype=dtype, device=device)
        y[..., -1] = 1.0
        return torch.stack([y, y], dim=1) if cfg else y

    def eps(self, out: torch.Tensor) -> torch.Tensor:
        """ε from a raw output (N, C_out, H, W): its first ``in_channels`` channels."""
        return out[:, : self.in_channels]

    def guide(
        self, cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor
    ) -> torch.Tensor:
        """The pipeline's CFG ``u + s · (c − u)`` on the ε channels → (N, C, H, W)."""
        c = self.in_channels
        u = uncond[:, :c]
        return u + scale * (cond[:, :c] - u)



@torch.no_grad()
def prompt_condition(
    pipe,
    prompts: list[str],
    *,
    negative_prompt: str = "",
    cfg: bool,
    text_len: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Encode ``prompts`` with a PixArt pipeline's own tokenizer and T5 encoder
    (``pipe.encode_prompt``, ``max_sequence_length = text_len``) into the condition the compiled
    sampler takes: (N, 2, L, D + 1) with ``cfg`` (the negative prompt as the second entry), else
    (N, L, D + 1). L2CError when the pipeline has no text encoder or tokenizer, or no prompt is given.
    """
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise L2CError(
            f"this {type(pipe).__name__} has no text encoder and tokenizer to encode prompts with"
        )
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise L2CError("pass at least one non-empty prompt")
    pe, pm, ne, nm = pipe.encode_prompt(
        list(prompts),
        cfg,
        negative_prompt=negative_prompt,
        device=pipe._execution_device,
        clean_caption=False,
        max_sequence_length=text_len,
    )
    y = pack_condition(pe, pm)  # (N, L, D + 1)
    if cfg:
        y = torch.stack([y, pack_condition(ne, nm)], dim=1)  # (N, 2, L, D + 1)
    return y.to(device)
