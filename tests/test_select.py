"""models/select.py: what a model name or folder means, shared by every command."""

from __future__ import annotations

from pathlib import Path

import pytest

from l2c_compile.errors import L2CError
from l2c_compile.models.select import (
    make_spec_plan,
    registry_model,
    select_model,
    select_spec,
    spec_blocks,
    spec_kinds,
)


def test_exactly_one_of_a_name_and_a_folder():
    with pytest.raises(L2CError, match="pass --model NAME"):
        select_spec(None, None)
    with pytest.raises(L2CError, match="brings its own model"):
        select_spec("DiT-FMNIST", Path("somewhere"))
    with pytest.raises(L2CError, match="brings its own model"):
        select_model(None, Path("somewhere"), init="random")


def test_weight_sources_are_checked_before_anything_is_built():
    with pytest.raises(L2CError, match="not both"):
        registry_model("DiT-XL/2", Path("w.pt"), "random", 0)
    with pytest.raises(L2CError, match="only choice is 'random'"):
        registry_model("DiT-XL/2", None, "zeros", 0)
    with pytest.raises(L2CError, match="ships no weights"):
        registry_model("DiT-XL/2", None, None, 0)


def test_a_shipped_model_resolves_with_its_weights_layout_and_plan():
    spec, model = select_model("DiT-FMNIST", None)
    assert not model.training
    assert spec_blocks(spec) == len(model.transformer_blocks())
    assert spec_kinds(spec) == ("attn", "mlp")
    plan = make_spec_plan(spec, None, 10)
    assert (plan.sampler, plan.nfe) == (spec.default_sampler, 10)
    assert make_spec_plan(select_spec("U-ViT-FMNIST", None), None, 10).sampler == "dpm-solver-2"
