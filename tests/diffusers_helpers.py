"""Tiny random diffusers DiT models and pipelines, built from configs (no hub access)."""

from __future__ import annotations

from pathlib import Path

import torch


def output_rel_error(a, b) -> float:
    """max |a − b| / max |b| of two pipeline outputs (numpy arrays, tensors or lists of PIL images), in
    float64."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def pipe_and_drop_in(pipe, compiled, **kw):
    """``(drop-in output, pipe(...) output)`` for the same arguments and seed: ``.images``, or a
    video pipeline's ``.frames``."""
    want, got = (call(generator=torch.Generator().manual_seed(1), **kw) for call in (pipe, compiled))
    return tuple(out.images if hasattr(out, "images") else out.frames for out in (got, want))


def tiny_transformer(seed: int = 0, *, layers: int = 2, heads: int = 2, patch: int = 2, learn_sigma: bool = True):
    """A random ``DiTTransformer2DModel`` (1000 classes + the null row, as DiTPipeline assumes)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=8, in_channels=4, out_channels=8 if learn_sigma else 4,
        num_layers=layers, sample_size=8, patch_size=patch, num_embeds_ada_norm=1000)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # diffusers zero-initialises the adaLN gates; random weights exercise every path
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def tiny_pipeline(seed: int = 0, *, layers: int = 2):
    """A ``DiTPipeline`` with a tiny random transformer and VAE and diffusers' DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        layers_per_block=1, norm_num_groups=4, sample_size=8).eval()
    scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False,
                              set_alpha_to_one=False, num_train_timesteps=1000)
    return DiTPipeline(transformer=tiny_transformer(seed, layers=layers), vae=vae, scheduler=scheduler)


def save_tiny_pipeline(folder: Path, seed: int = 0, *, layers: int = 2) -> Path:
    """``tiny_pipeline`` written with ``save_pretrained``; returns the folder."""
    tiny_pipeline(seed, layers=layers).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# PixArt (text-to-image): tiny transformer, T5 encoder, tokenizer, pipeline
# ---------------------------------------------------------------------------------------------

TEXT_DIM = 12  # the tiny T5's d_model = the transformer's caption_channels
TEXT_LEN = 6  # max_sequence_length of the tiny pipelines
WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "tree", "house", "small", "big", "the"]


def tiny_pixart_transformer(seed: int = 0, *, layers: int = 2, sample_size: int = 8, heads: int = 2):
    """A random ``PixArtTransformer2DModel`` (learned σ, adaLN-single, caption projection)."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=layers,
        sample_size=sample_size, patch_size=2, cross_attention_dim=16, caption_channels=TEXT_DIM,
        norm_num_groups=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # diffusers zero-initialises some projections; random weights exercise every path
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def tiny_tokenizer():
    """A T5 tokenizer over a dozen words, built in memory (no hub access)."""
    from tokenizers import Tokenizer, models, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(w, -1.0) for w in WORDS]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0)


def tiny_pixart_pipeline(seed: int = 0, *, layers: int = 2, sigma: bool = False):
    """A ``PixArtAlphaPipeline`` (or ``PixArtSigmaPipeline``) with a tiny random transformer, VAE and
    T5 encoder, a tiny tokenizer, and the DPM-Solver++ scheduler PixArt ships with."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        layers_per_block=1, norm_num_groups=4, sample_size=8).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=len(WORDS) + 3, d_model=TEXT_DIM, d_kv=4, d_ff=16, num_layers=1,
                                 num_heads=2, relative_attention_num_buckets=8)).eval()
    scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                            num_train_timesteps=1000)
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    return cls(tokenizer=tiny_tokenizer(), text_encoder=t5, vae=vae,
               transformer=tiny_pixart_transformer(seed, layers=layers), scheduler=scheduler)


def prompt_inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ``prompt_embeds`` / ``negative_prompt_embeds`` (batch, TEXT_LEN, TEXT_DIM) with masks
    that pad a different tail in every row (they stand in for the tokenizer and T5)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in ("prompt", "negative_prompt"):
        mask = torch.ones(batch, TEXT_LEN, dtype=torch.long)
        for i in range(batch):
            mask[i, TEXT_LEN - 1 - i % (TEXT_LEN - 1):] = 0
        out[f"{name}_embeds"] = torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=g)
        out[f"{name}_attention_mask"] = mask
    return out


SD3_TEXT_LEN = 5  # joint prompt tokens of the tiny SD3 (CLIP + T5 in a real pipeline)
SD3_TEXT_DIM = 16  # joint_attention_dim
SD3_POOLED_DIM = 12  # pooled_projection_dim (< the text width: the packed row is zero-padded)


def tiny_sd3_transformer(seed: int = 0, *, layers: int = 3, heads: int = 2, dual: tuple[int, ...] = (0,)):
    """A random SD3.5-shaped ``SD3Transformer2DModel``: ``layers`` joint blocks (the last one
    context_pre_only), SD3.5's second attention in blocks ``dual``, RMS q/k norms; 8×8 latents."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=layers, attention_head_dim=8,
        num_attention_heads=heads, joint_attention_dim=SD3_TEXT_DIM, caption_projection_dim=8 * heads,
        pooled_projection_dim=SD3_POOLED_DIM, pos_embed_max_size=8, dual_attention_layers=dual,
        qk_norm="rms_norm")
    with torch.no_grad():  # diffusers zero-initialises the adaLN gates: make every branch count
        for param in model.parameters():
            param.normal_(0.0, 0.1)
    return model.eval()


def sd3_prompt_inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random prompt / negative prompt embeddings (batch, SD3_TEXT_LEN, SD3_TEXT_DIM) and pooled
    embeddings (batch, SD3_POOLED_DIM) for the tiny SD3, under ``StableDiffusion3Pipeline``'s keyword
    names (``prompt_embeds``, ``pooled_prompt_embeds``, ``negative_…``)."""
    g = torch.Generator().manual_seed(seed + 7)
    out = {}
    for name in ("prompt", "negative_prompt"):
        out[f"{name}_embeds"] = torch.randn(batch, SD3_TEXT_LEN, SD3_TEXT_DIM, generator=g)
        pooled = "pooled_prompt" if name == "prompt" else "negative_pooled_prompt"
        out[f"{pooled}_embeds"] = torch.randn(batch, SD3_POOLED_DIM, generator=g)
    return out


FLUX_TEXT_LEN = 5  # T5 prompt tokens of the tiny FLUX (max_sequence_length in a real pipeline)
FLUX_TEXT_DIM = 16  # joint_attention_dim
FLUX_POOLED_DIM = 12  # pooled_projection_dim


def tiny_flux_transformer(seed: int = 0, *, layers: int = 2, single_layers: int = 2, heads: int = 2,
                          guidance_embeds: bool = True):
    """A random FLUX.1-shaped ``FluxTransformer2DModel``: ``layers`` double-stream and
    ``single_layers`` single-stream blocks, 3-axis rotary embeddings, 4 latent channels (16 packed);
    ``guidance_embeds``: FLUX.1-dev (True) or schnell (False)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=layers, num_single_layers=single_layers, attention_head_dim=8,
        num_attention_heads=heads, joint_attention_dim=FLUX_TEXT_DIM, pooled_projection_dim=FLUX_POOLED_DIM,
        guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4))
    with torch.no_grad():  # diffusers zero-initialises the adaLN gates: make every branch count
        for param in model.parameters():
            param.normal_(0.0, 0.1)
    return model.eval()


def flux_prompt_inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random prompt / negative prompt embeddings (batch, FLUX_TEXT_LEN, FLUX_TEXT_DIM) and pooled
    embeddings (batch, FLUX_POOLED_DIM) for the tiny FLUX, under ``FluxPipeline``'s keyword names
    (``prompt_embeds``, ``pooled_prompt_embeds``, ``negative_…``)."""
    g = torch.Generator().manual_seed(seed + 11)
    out = {}
    for name in ("prompt", "negative_prompt"):
        out[f"{name}_embeds"] = torch.randn(batch, FLUX_TEXT_LEN, FLUX_TEXT_DIM, generator=g)
        pooled = "pooled_prompt" if name == "prompt" else "negative_pooled_prompt"
        out[f"{pooled}_embeds"] = torch.randn(batch, FLUX_POOLED_DIM, generator=g)
    return out

# ---------------------------------------------------------------------------------------------
# Stable Diffusion 3: tiny CLIP-L/G stand-ins, T5, VAE and the whole pipeline
# ---------------------------------------------------------------------------------------------

SD3_CLIP_LEN = 5  # the tiny CLIP tokenizers' model_max_length (77 in SD3)
SD3_T5_LEN = 6  # max_sequence_length the tests pass for the tiny T5 (256 by default in SD3)


def tiny_clip_tokenizer(folder: Path):
    """A ``CLIPTokenizer`` over the dozen ``WORDS`` (one BPE token each), written to ``folder`` as
    vocab.json and merges.txt and read back (no hub access); ``model_max_length`` ``SD3_CLIP_LEN``."""
    import json

    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    merges: dict[str, None] = {}
    for word in WORDS:  # BPE merges that rebuild each word from its characters
        parts = [*word[:-1], word[-1] + "</w>"]
        for p in parts:
            vocab.setdefault(p, len(vocab))
        joined = parts[0]
        for p in parts[1:]:
            merges[f"{joined} {p}"] = None
            joined += p
            vocab.setdefault(joined, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=SD3_CLIP_LEN,
                         pad_token="!")


def tiny_sd3_pipeline(folder: Path, seed: int = 0, *, layers: int = 3, dynamic: bool = False,
                      encoders: bool = True):
    """A ``StableDiffusion3Pipeline`` with the tiny SD3.5-shaped transformer, a one-level random VAE
    (SD3's latent ``scaling_factor`` and ``shift_factor``; vae_scale_factor 1: 8×8 images), two tiny
    ``CLIPTextModelWithProjection`` (hidden 8, projection 6: joint width 16, pooled 12), a tiny T5
    and the flow-matching Euler scheduler with SD3's shift 3 (``dynamic``: SD3.5-style dynamic
    shifting from the image sequence length). ``encoders=False``: no text encoders or tokenizers
    (the pipeline then takes ``prompt_embeds`` only). ``folder``: where the CLIP vocabularies go."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        layers_per_block=1, norm_num_groups=4, sample_size=8, scaling_factor=1.5305,
                        shift_factor=0.0609).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=dynamic, base_image_seq_len=16,
                                                max_image_seq_len=64)
    parts: dict = dict.fromkeys(("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
                                 "tokenizer_3"))
    if encoders:
        tokenizer = tiny_clip_tokenizer(folder / "clip_vocab")
        clips = []
        for _ in range(2):
            config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16,
                                    num_hidden_layers=2, num_attention_heads=2, projection_dim=6,
                                    max_position_embeddings=SD3_CLIP_LEN, bos_token_id=0, eos_token_id=1,
                                    pad_token_id=2)
            clips.append(CLIPTextModelWithProjection(config).eval())
        t5 = T5EncoderModel(T5Config(vocab_size=len(WORDS) + 3, d_model=SD3_TEXT_DIM, d_kv=4, d_ff=16,
                                     num_layers=1, num_heads=2, relative_attention_num_buckets=8)).eval()
        parts = dict(text_encoder=clips[0], tokenizer=tokenizer, text_encoder_2=clips[1], tokenizer_2=tokenizer,
                     text_encoder_3=t5, tokenizer_3=tiny_tokenizer())
    return StableDiffusion3Pipeline(transformer=tiny_sd3_transformer(seed, layers=layers), scheduler=scheduler,
                                    vae=vae, **parts)


WAN_TEXT_LEN = 5  # umT5 prompt tokens of the tiny Wan (max_sequence_length: 512 in a real pipeline)
WAN_TEXT_DIM = 16  # text_dim (umT5's 4096)
WAN_SIZE = dict(num_frames=9, height=32, width=48)  # → latents (4, 3, 4, 6): 3 frames of 2×3 patches


def tiny_wan_transformer(seed: int = 0, *, layers: int = 2, heads: int = 2):
    """A random Wan 2.1-shaped ``WanTransformer3DModel`` (text-to-video): ``layers`` blocks,
    (1, 2, 2) patches, 3-D rotary embeddings over heads of 8 channels, FP32 norms with the
    cross-attention norm, RMS q/k norms across heads; 4 latent channels."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=WAN_TEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    with torch.no_grad():  # random everything, the adaLN tables and norms included: every branch counts
        for param in model.parameters():
            param.normal_(0.0, 0.1)
    return model.eval()


def wan_prompt_inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random prompt / negative prompt embeddings (batch, WAN_TEXT_LEN, WAN_TEXT_DIM) for the tiny
    Wan, the last token zero as the pipeline pads a short prompt."""
    g = torch.Generator().manual_seed(seed + 13)
    out = {}
    for name in ("prompt", "negative_prompt"):
        embeds = torch.randn(batch, WAN_TEXT_LEN, WAN_TEXT_DIM, generator=g)
        embeds[:, -1] = 0.0
        out[f"{name}_embeds"] = embeds
    return out


# ---------------------------------------------------------------------------------------------
# Wan 2.1: a tiny umT5, tokenizer, Wan VAE and the whole WanPipeline
# ---------------------------------------------------------------------------------------------

WAN_T5_LEN = 6  # max_sequence_length the tests pass for the tiny umT5 (512 by default in WanPipeline)


def tiny_wan_pipeline(seed: int = 0, *, layers: int = 2, unipc: bool = True, encoders: bool = True):
    """A ``WanPipeline`` (Wan 2.1 text-to-video) with the tiny Wan transformer, a tiny random
    ``AutoencoderKLWan`` (4 latent channels, Wan's 4× temporal and 8× spatial compression, its
    ``latents_mean`` / ``latents_std`` de-normalisation with non-trivial values), a tiny
    ``UMT5EncoderModel`` with the in-memory T5 tokenizer, and Wan's scheduler: a flow
    ``UniPCMultistepScheduler`` with ``flow_shift`` 3 (``unipc=False``: the flow-matching Euler
    scheduler with ``shift`` 3). ``encoders=False``: no text encoder or tokenizer (embeddings in)."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
        WanPipeline,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, -0.4],
                           latents_std=[1.5, 0.8, 2.0, 1.2]).eval()
    if unipc:
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                            num_train_timesteps=1000)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    text_encoder, tokenizer = None, None
    if encoders:
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS) + 3, d_model=WAN_TEXT_DIM, d_kv=4, d_ff=16,
                                                   num_layers=1, num_heads=2,
                                                   relative_attention_num_buckets=8)).eval()
        tokenizer = tiny_tokenizer()
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                       transformer=tiny_wan_transformer(seed, layers=layers), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe
# FLUX.1: tiny CLIP (pooled), T5, VAE and the whole pipeline
# ---------------------------------------------------------------------------------------------

FLUX_T5_LEN = 6  # max_sequence_length the tests pass for the tiny T5 (512 by default in FluxPipeline)


def tiny_flux_pipeline(folder: Path, seed: int = 0, *, guidance_embeds: bool = True, dynamic: bool = True,
                       encoders: bool = True):
    """A ``FluxPipeline`` with the tiny FLUX transformer (``guidance_embeds``: FLUX.1-dev, else
    schnell), a one-level random VAE with FLUX's ``scaling_factor`` / ``shift_factor``
    (vae_scale_factor 1: a 2-pixel patch, 8 px → 16 packed tokens), a tiny ``CLIPTextModel`` (its
    pooled output: hidden 12 = pooled_projection_dim), a tiny T5 (d_model 16) and the flow-matching
    Euler scheduler as FLUX.1 configures it: ``dynamic`` (dev: shift 3 unused, μ from the image
    sequence length over 16–64 tokens), else schnell's static shift 1. ``encoders=False``: no text
    encoders or tokenizers (the pipeline then takes ``prompt_embeds`` only). ``folder``: where the
    CLIP vocabulary goes."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        layers_per_block=1, norm_num_groups=4, sample_size=8, scaling_factor=0.3611,
                        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0 if dynamic else 1.0, use_dynamic_shifting=dynamic,
                                                base_image_seq_len=16, max_image_seq_len=64, base_shift=0.5,
                                                max_shift=1.15)
    parts: dict = dict.fromkeys(("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"))
    if encoders:
        tokenizer = tiny_clip_tokenizer(folder / "clip_vocab")
        config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=FLUX_POOLED_DIM, intermediate_size=16,
                                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=SD3_CLIP_LEN,
                                bos_token_id=0, eos_token_id=1, pad_token_id=2)
        t5 = T5EncoderModel(T5Config(vocab_size=len(WORDS) + 3, d_model=FLUX_TEXT_DIM, d_kv=4, d_ff=16,
                                     num_layers=1, num_heads=2, relative_attention_num_buckets=8)).eval()
        parts = dict(text_encoder=CLIPTextModel(config).eval(), tokenizer=tokenizer, text_encoder_2=t5,
                     tokenizer_2=tiny_tokenizer())
    transformer = tiny_flux_transformer(seed, guidance_embeds=guidance_embeds)
    return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae, **parts)
