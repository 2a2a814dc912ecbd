"""The families l2c-compile ships: DiT, U-ViT (``models/``), diffusers' DiT, PixArt, SD3, FLUX.1 and Wan
2.1 (``diffusers/``).

Sources: facebookresearch/DiT ``models.py`` and L2C's ``DiT/train_router.py`` (recipe, θ 0.1);
baofff/U-ViT ``libs/uvit.py`` and L2C's ``U-ViT/train_router_discrete.py`` (recipe, θ 0.9); diffusers'
``DiTPipeline`` and ``PixArtAlphaPipeline`` (guidance, samplers). Spec §2–§4.

Other tools' names (``KindDecl.invardiff``; SmoothCache uses the module attribute of ``path``):
InvarDiff's DiT books ``msa_cache_book``/``mlp_cache_book`` (zihaowu25/InvarDiff
``DiT/sample_InvarDiff_dit.py``) name ``DiTBlock.attn``/``.mlp``, so they apply to DiT, to diffusers'
DiT (the same weights) and to U-ViT's attention and MLP (block ids in execution order). PixArt's
three kinds take the names of InvarDiff's Wan books (``module_cache_book``: ``self_attn``,
``cross_attn``, ``ffn``; ``Wan2.1/invardiff_generate.py``), the same three sublayers in the same
order, each cached before its gate; and Wan's own blocks (``WanTransformerBlock``: ``attn1``,
``attn2``, ``ffn``), which they were written for.
"""

from __future__ import annotations

from l2c_compile.families.base import (
    BlockGroup,
    Family,
    KindDecl,
    KindWords,
    Recipe,
    Sampling,
    Shape,
    register_family,
)

ATTN_MLP = (KindDecl("attn", "attn", invardiff=("msa_cache_book",)),
            KindDecl("mlp", "mlp", invardiff=("mlp_cache_book",)))

DIT = register_family(Family(
    name="dit",
    groups=(BlockGroup(("blocks",), ATTN_MLP),),
    classes={"l2c_compile.models.dit.DiT": ""},
    recipe=Recipe("dit", "mean", 5.0, 0.1, 5e-6),
    threshold=0.1,
    router_layout="dit-official",
    guidance="null-class",
    guidance_rule="u + s·(c − u)",  # 1 = no guidance; DiT-XL/2 samples with 4
    sampling=Sampling("ddim", "linear", "discrete", 4.0),
    shape=Shape(width="hidden_size", side="input_size"),
))

UVIT = register_family(Family(
    name="uvit",
    groups=(BlockGroup(("in_blocks", "mid_block", "out_blocks"), ATTN_MLP),),
    classes={"l2c_compile.models.uvit.UViT": ""},
    recipe=Recipe("uvit", "sum", None, 0.9, 0.1),
    threshold=0.9,
    router_layout="uvit-official",
    guidance="null-class",
    guidance_rule="c + s·(c − u)",  # 0 = no guidance; U-ViT-H/2 uses 0.4
    sampling=Sampling("dpm-solver-2", "scaled_linear", "continuous", 0.4),
    # in_blocks and out_blocks pair up around one mid_block; time and label are tokens
    shape=Shape(width="embed_dim", side="img_size", unit=2, mid=1, time_token=True, label_token=True),
))

DIFFUSERS_DIT = register_family(Family(
    name="diffusers-dit",
    groups=(BlockGroup(("transformer_blocks",), (
        KindDecl("attn", "attn1", invardiff=("msa_cache_book",)),
        KindDecl("mlp", "ff", invardiff=("mlp_cache_book",)),
    )),),
    classes={"DiTTransformer2DModel": "", "l2c_compile.diffusers.dit.DiffusersDiT": "transformer"},
    router_family="dit",  # an official DiT's routers and θ apply to the same weights in diffusers
    guidance="null-class",
    guidance_rule="u + s·(c − u)",
    sampling=Sampling("ddim", "linear", "discrete", 4.0),
    diffusers_class="DiTTransformer2DModel",
    adapter="l2c_compile.diffusers.dit:DiffusersDiT",
))

PIXART = register_family(Family(
    name="pixart",
    groups=(BlockGroup(("transformer_blocks",), (
        KindDecl("attn", "attn1", invardiff=("module_cache_book.self_attn",)),  # gated by adaLN-single
        KindDecl("cross", "attn2", invardiff=("module_cache_book.cross_attn",)),  # to the prompt, ungated
        KindDecl("mlp", "ff", invardiff=("module_cache_book.ffn",)),
    )),),
    classes={"PixArtTransformer2DModel": "", "l2c_compile.diffusers.pixart.DiffusersPixArt": "transformer"},
    recipe=None,
    router_family="dit",  # trained with DiT's recipe; no official routers exist
    guidance="negative-condition",
    guidance_rule="u + s·(c − u)",
    sampling=Sampling("dpm-solver++", "linear", "discrete", 4.5),
    diffusers_class="PixArtTransformer2DModel",
    conditioning="text",
    adapter="l2c_compile.diffusers.pixart:DiffusersPixArt",
))

SD3 = register_family(Family(
    name="sd3",
    groups=(BlockGroup(("transformer_blocks",), (
        # joint attention: the image stream's and the text stream's outputs, each gated and added to
        # its own stream; the last block is context_pre_only, its text output feeds nothing
        KindDecl("attn", "attn", outputs=("img", "txt"),
                 outputs_of=lambda block: ("img",) if block.context_pre_only else ("img", "txt")),
        # SD3.5: a second image self-attention in the blocks of dual_attention_layers only
        KindDecl("attn2", "attn2", words=KindWords("second attention", "s"), after="attn", optional=True),
        KindDecl("mlp", "ff"),
        # the text MLP; the last block has none
        KindDecl("txt_mlp", "ff_context", words=KindWords("text MLP", "t"), after="mlp", optional=True),
    )),),
    classes={"SD3Transformer2DModel": "", "l2c_compile.diffusers.sd3.DiffusersSD3": "transformer"},
    recipe=None,
    router_family="dit",  # trained with DiT's recipe; no official routers exist
    guidance="negative-condition",
    guidance_rule="u + s·(c − u)",
    sampling=Sampling("flow-euler", "flow", "sigma_1000", 7.0),
    diffusers_class="SD3Transformer2DModel",
    conditioning="text",
    adapter="l2c_compile.diffusers.sd3:DiffusersSD3",
))

FLUX = register_family(Family(
    name="flux",
    groups=(
        BlockGroup(("transformer_blocks",), (  # double-stream: image and text side by side
            # joint attention: the image stream's and the text stream's outputs, each gated; InvarDiff
            # reuses it only when its attn and context_attn books agree (ip_attn follows attn)
            KindDecl("attn", "attn", outputs=("img", "txt"), invardiff=(
                "transformer_cache_book.attn", "transformer_cache_book.context_attn",
                "transformer_cache_book.ip_attn")),
            KindDecl("mlp", "ff", invardiff=("transformer_cache_book.ff",)),
            KindDecl("txt_mlp", "ff_context", words=KindWords("text MLP", "t"), after="mlp",
                     invardiff=("transformer_cache_book.context_ff",)),
        )),
        # single-stream: a parallel block, x + gate · proj_out(cat[attn, act(proj_mlp(h))]); each
        # branch is cached projected (InvarDiff's "mlp" is the hidden before proj_out, which is
        # linear: reusing it is reusing the projected branch)
        BlockGroup(("single_transformer_blocks",), (
            KindDecl("attn", "attn", projection="proj_out", invardiff=("single_transformer_cache_book.attn",)),
            KindDecl("mlp", "proj_mlp", projection="proj_out", invardiff=("single_transformer_cache_book.mlp",)),
        )),
    ),
    classes={"FluxTransformer2DModel": "", "l2c_compile.diffusers.flux.DiffusersFlux": "transformer"},
    recipe=None,
    router_family="dit",  # trained with DiT's recipe; no official routers exist
    guidance="distilled",  # FLUX.1-dev embeds the scale (in y); true CFG against a negative prompt is optional
    guidance_rule="u + s·(c − u)",
    sampling=Sampling("flow-euler", "flow", "sigma_1000", 1.0),
    diffusers_class="FluxTransformer2DModel",
    conditioning="text",
    adapter="l2c_compile.diffusers.flux:DiffusersFlux",
    # the packed transformer input holds 2×2 patches of C-channel latents; FluxPipeline's default 1024²
    latent=lambda config, size: (int(config["in_channels"]) // 4, *(2 * (size["height"] // 16),) * 2),
    default_size={"height": 1024},
    depth_keys=("num_layers", "num_single_layers"),
    # dev and schnell have the same shapes; dev's condition embeds the guidance scale
    variant=lambda config: f"(guidance_embeds={bool(config.get('guidance_embeds', False))})",
    pipeline_plan="l2c_compile.diffusers.flux:flux_plan",
))

WAN = register_family(Family(
    name="wan",
    groups=(BlockGroup(("blocks",), (
        # WanTransformerBlock: x + attn1(...) · gate_msa; x + attn2(norm2(x), prompt), ungated;
        # x + ffn(...) · c_gate_msa (the gates from the block's scale_shift_table + the time projection)
        KindDecl("attn", "attn1", invardiff=("module_cache_book.self_attn",)),
        KindDecl("cross", "attn2", invardiff=("module_cache_book.cross_attn",)),
        KindDecl("mlp", "ffn", invardiff=("module_cache_book.ffn",)),
    )),),
    classes={"WanTransformer3DModel": "", "l2c_compile.diffusers.wan.DiffusersWan": "transformer"},
    recipe=None,
    router_family="dit",  # trained with DiT's recipe; no official routers exist
    guidance="negative-condition",
    guidance_rule="u + s·(c − u)",
    sampling=Sampling("unipc-flow", "flow", "sigma_1000", 5.0),  # WanPipeline: UniPC, flow_shift, CFG 5
    diffusers_class="WanTransformer3DModel",
    conditioning="text",
    adapter="l2c_compile.diffusers.wan:DiffusersWan",
    # WanPipeline.prepare_latents: the Wan VAE compresses 4× in time and 8× in space
    latent=lambda config, size: (int(config["in_channels"]), (size["num_frames"] - 1) // 4 + 1,
                                 size["height"] // 8, size["width"] // 8),
    default_size={"num_frames": 81, "height": 480, "width": 832},
    pipeline_check="l2c_compile.diffusers.wan:check_pipeline_config",
))
