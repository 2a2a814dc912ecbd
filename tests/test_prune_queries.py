"""The prune_queries pass: an attention whose output rows are sliced computes only those query rows
(SD3's context_pre_only last block: the text tokens' queries are dead)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l2c_compile.compiler.passes.prune_queries import SDPA, prune_queries


class JointTail(nn.Module):
    """The tail of a joint attention whose text outputs feed nothing (SD3's last block)."""

    def __init__(self, reshape_tokens: int | None = None, mask: bool = False) -> None:
        super().__init__()
        self.q_img, self.q_txt = nn.Linear(8, 8), nn.Linear(8, 8)
        self.reshape_tokens, self.mask = reshape_tokens, mask

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        n = img.shape[0]
        q = torch.cat([self.q_img(img).view(n, -1, 2, 4).transpose(1, 2),
                       self.q_txt(txt).view(n, -1, 2, 4).transpose(1, 2)], dim=2)  # (N, 2, T + L, 4)
        kv = torch.cat([img, txt], dim=1).view(n, -1, 2, 4).transpose(1, 2)
        mask = torch.ones(q.shape[2], kv.shape[2], dtype=torch.bool) if self.mask else None
        out = nn.functional.scaled_dot_product_attention(q, kv, kv, attn_mask=mask)
        out = out.transpose(1, 2).reshape(n, self.reshape_tokens or -1, 8).to(torch.float32)
        return out[:, : img.shape[1]]  # the image tokens' rows only


def _graph(module: nn.Module) -> torch.fx.GraphModule:
    example = (torch.randn(2, 6, 8), torch.randn(2, 3, 8))
    gm = torch.export.export(module, example).module()
    for node in list(gm.graph.nodes):  # export's own checks, which the capture drops (passes/trace.py)
        if node.target is torch.ops.aten._assert_tensor_metadata.default:
            gm.graph.erase_node(node)
    gm.recompile()
    return gm, example


def _sdpa(gm: torch.fx.GraphModule) -> torch.fx.Node:
    return next(n for n in gm.graph.nodes if n.op == "call_function" and n.target in SDPA)


def test_the_query_keeps_only_the_rows_that_are_read() -> None:
    torch.manual_seed(0)
    module = JointTail().eval()
    gm, example = _graph(module)
    want = module(*example)
    result = prune_queries(gm)
    assert result.modified and result.stats == {"attentions_pruned": 1, "query_rows_removed": 3}
    q = _sdpa(gm).args[0]
    assert q.target is not torch.ops.aten.cat.default  # the image stream's queries, taken directly
    assert not any("q_txt" in str(n.target) for n in gm.graph.nodes)  # the text queries are dead code
    assert not any(n.target is torch.ops.aten.slice.Tensor for n in gm.graph.nodes)
    torch.testing.assert_close(gm(*example), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"mask": True}, {"reshape_tokens": 9}], ids=["masked", "token-count-spelled-out"])
def test_attentions_it_cannot_prune_safely_are_left_alone(kwargs) -> None:
    gm, _ = _graph(JointTail(**kwargs).eval())
    before = gm.code
    assert not prune_queries(gm).modified
    assert gm.code == before


def test_sd3_s_last_block_computes_no_text_queries() -> None:
    """SD3's context_pre_only last block: the text tokens' query projection and attention rows are
    gone from the step code, and the sampler still equals the reference."""
    pytest.importorskip("diffusers")
    import l2c_compile
    from l2c_compile.compiler import reference
    from l2c_compile.samplers import make_plan
    from tests.families import case_inputs, case_model
    from tests.helpers import rel_error

    model = case_model("sd3")
    plan = make_plan("flow-euler", 3, noise_schedule="flow", time_input="sigma_1000")
    sampler = l2c_compile.compile(model, plan, None)
    step = sampler.source.split("def step_0")[1]
    last = step.split("# block 2:")[1].split("# final layer")[0]
    assert "attn.add_q_proj" not in last and "attn.add_k_proj" in last  # text keys and values still count
    assert "transformer_blocks[1].attn.add_q_proj" in sampler.source  # the other blocks keep theirs
    pruned = [p["stats"] for g in sampler.record.graphs for p in g["passes"] if p["name"] == "prune_queries"]
    assert pruned == [{"attentions_pruned": 1, "query_rows_removed": 5}]
    noise, y = case_inputs("sd3", model)
    assert rel_error(sampler(noise, y, 5.0), reference.sample(model, plan, None, noise, y, 5.0)) <= 1e-5
