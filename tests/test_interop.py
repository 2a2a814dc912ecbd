"""Other tools' schedule files (SmoothCache, InvarDiff, cache-dit) and the static baselines.

Oracles: counts made directly from each file (written here, in tmp_path, from the formats' rules:
SmoothCache 1 = compute with per-block keys winning over shared ones; InvarDiff true = reuse and the
step gate = trunk reuse; cache-dit 1 = compute); ``import_router`` of a shipped router for the
SmoothCache file written from it by thresholding (entry i reads router row nfe − 1 − i, as L2C's DiT
runtime counts rows from the smallest timestep); the reference executor for compiled baselines.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.errors import L2CError
from l2c_compile.families import get_family
from l2c_compile.families.base import family_of
from l2c_compile.families.vocabulary import Layout
from l2c_compile.models.registry import get_spec
from l2c_compile.models.select import make_spec_plan, spec_blocks
from l2c_compile.samplers import make_plan
from l2c_compile.schedule import (
    ImportTarget,
    Schedule,
    deepcache,
    default_threshold,
    export_schedule,
    fora,
    import_router,
    import_schedule,
    load_router,
    step_mask,
)
from l2c_compile.schedule.interop import export_text
from tests.families import CASES, case_model, case_plan
from tests.helpers import free_form_schedule, rel_error
from tests.test_cli import assert_one_line_error, cli, ok_json

ASSETS = Path(l2c_compile.__file__).parent / "assets/routers"
SHARED = Path(__file__).resolve().parents[1].parent / "shared/data/routers"
DDIM = make_plan("ddim", 10)


def _toy_flux_layout() -> Layout:
    return Layout(((2, ("attn", "mlp", "txt_mlp")), (2, ("attn", "mlp"))))


def _target(family: str = "dit", depth: int = 3, plan=DDIM, layout: Layout | None = None) -> ImportTarget:
    fam = get_family(family)
    return ImportTarget("test", fam, layout or Layout.uniform(depth, fam.kinds), plan)


def _write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _reuse_counts(schedule: Schedule) -> dict[str, int]:
    """Sublayers reused one by one (trunk calls aside), per kind."""
    return {k: sum(len(c.reused(k)) for c in schedule.calls) for k in schedule.kinds}


# ---------------------------------------------------------------------------------------------
# SmoothCache
# ---------------------------------------------------------------------------------------------


def _random_bits(rng: random.Random, n: int, p: float = 0.4) -> list[int]:
    return [1] + [0 if rng.random() < p else 1 for _ in range(n - 1)]


@pytest.mark.parametrize(("family", "components"), [
    ("dit", {"attn": "attn", "mlp": "mlp"}),
    ("uvit", {"attn": "attn", "mlp": "mlp"}),
    ("diffusers-dit", {"attn1": "attn", "ff": "mlp"}),
    ("pixart", {"attn1": "attn", "attn2": "cross", "ff": "mlp"}),
    ("wan", {"attn1": "attn", "attn2": "cross", "ffn": "mlp"}),
])
def test_smoothcache_counts_equal_the_file(family: str, components: dict[str, str], tmp_path: Path) -> None:
    rng, depth = random.Random(1), 4
    doc = {comp: _random_bits(rng, DDIM.nfe) for comp in components}
    per_block = family != "uvit"  # U-ViT's block indices are ambiguous: shared keys only
    if per_block:
        doc |= {f"{comp}-{b}": _random_bits(rng, DDIM.nfe) for comp in components for b in (0, 2)}
    sched = import_schedule(_write(tmp_path / "s.json", doc), "smoothcache", _target(family, depth))
    want = {kind: sum(doc.get(f"{comp}-{b}", doc[comp]).count(0) for b in range(depth))
            for comp, kind in components.items()}
    assert _reuse_counts(sched) == want
    assert sched.source["kind"] == "smoothcache" and sched.source["file"] == "s.json"
    assert len(sched.source["sha256"]) == 64


def test_smoothcache_on_sd3_follows_the_blocks_that_have_each_kind(tmp_path: Path) -> None:
    """SD3.5's second attention is in its first blocks only, the last block has no text MLP: a
    shared key reuses the kind in exactly the blocks that have it, and the export writes it back."""
    model = case_model("sd3")
    fam, plan = family_of(model), case_plan("sd3", 6)
    layout = fam.layout(model)
    assert layout.blocks("attn2") != layout.blocks("attn") != layout.blocks("txt_mlp")
    doc = {"attn": [1, 0, 1, 0, 1, 1], "attn2": [1, 0, 0, 0, 0, 0], "ff": [1] * 6, "ff_context": [1, 0] * 3}
    sched = import_schedule(_write(tmp_path / "s.json", doc), "smoothcache", ImportTarget("t", fam, layout, plan))
    want = {kind: doc[comp].count(0) * len(layout.blocks(kind))
            for comp, kind in {"attn": "attn", "attn2": "attn2", "ff": "mlp", "ff_context": "txt_mlp"}.items()}
    assert _reuse_counts(sched) == want
    assert export_schedule(sched, "smoothcache", family=fam) == doc


def test_a_component_without_a_key_always_computes(tmp_path: Path) -> None:
    sched = import_schedule(_write(tmp_path / "s.json", {"attn1": [1, 0] * 5}), "smoothcache",
                            _target("diffusers-dit"))
    assert _reuse_counts(sched) == {"attn": 5 * 3, "mlp": 0}


def _router_files() -> list:
    out = [pytest.param(ASSETS / "DiT-FMNIST-ddim-20.safetensors", "DiT-FMNIST", 20, id="DiT-FMNIST-ddim-20")]
    p = SHARED / "DDIM20_router.pt"
    out.append(pytest.param(p, "DiT-XL/2", 20, id="DDIM20", marks=pytest.mark.skipif(not p.exists(), reason="no file")))
    return out


@pytest.mark.parametrize(("router", "model", "nfe"), _router_files())
def test_smoothcache_from_an_l2c_router_agrees_with_import_router(router: Path, model: str, nfe: int,
                                                                  tmp_path: Path) -> None:
    spec = get_spec(model)
    depth, plan = spec_blocks(spec), make_spec_plan(spec, None, nfe)
    theta = default_threshold("dit")
    computed = torch.sigmoid(load_router(router).logits.float()) > theta  # (rows, 2·depth): attn0, mlp0, …
    doc: dict[str, list[int]] = {}
    for b in range(depth):
        for k, comp in enumerate(("attn", "mlp")):
            # L2C's DiT caches at odd calls and numbers router rows from the smallest t: row nfe − 1 − i
            doc[f"{comp}-{b}"] = [int(computed[nfe - 1 - i, 2 * b + k]) if i % 2 else 1 for i in range(nfe)]
    assert all(plan.calls[i].router_index == nfe - 1 - i for i in range(1, nfe, 2))
    target = ImportTarget(model, get_family("dit"), Layout.uniform(depth), plan)
    got = import_schedule(_write(tmp_path / "l2c.json", doc), "smoothcache", target)
    want = import_router(router, plan, model=model, depth=depth, threshold=theta)
    assert got.calls == want.calls and got.version == want.version == 1


# ---------------------------------------------------------------------------------------------
# InvarDiff
# ---------------------------------------------------------------------------------------------


def _books(rng: random.Random, nfe: int, names: dict[str, int], p_gate: float = 0.25) -> dict:
    """A book file: the step gate, then each dotted path's [steps][width] table."""
    step = [False] + [rng.random() < p_gate for _ in range(nfe - 1)]
    doc: dict = {"step_cache_book": step}
    shared: dict[int, list[list[bool]]] = {}
    for path, width in names.items():
        rows = shared.get(width) if path.endswith(("context_attn", "ip_attn")) else None
        rows = rows or [[t > 0 and (step[t] or rng.random() < 0.4) for _ in range(width)] for t in range(nfe)]
        if path.endswith(".attn") and path.startswith("transformer"):
            shared[width] = rows
        book, _, leaf = path.partition(".")
        if leaf:
            doc.setdefault(book, {})[leaf] = rows
        else:
            doc[book] = rows
    return doc


INVARDIFF = {
    "dit": ({"msa_cache_book": 3, "mlp_cache_book": 3}, None),
    "uvit": ({"msa_cache_book": 3, "mlp_cache_book": 3}, None),
    "diffusers-dit": ({"msa_cache_book": 3, "mlp_cache_book": 3}, None),
    "pixart": ({"module_cache_book.self_attn": 3, "module_cache_book.cross_attn": 3, "module_cache_book.ffn": 3},
               None),
    "wan": ({"module_cache_book.self_attn": 3, "module_cache_book.cross_attn": 3, "module_cache_book.ffn": 3},
            None),  # the books InvarDiff's Wan 2.1 runtime writes
    "toy-flux": ({"transformer_cache_book.attn": 2, "transformer_cache_book.context_attn": 2,
                  "transformer_cache_book.ip_attn": 2, "transformer_cache_book.ff": 2,
                  "transformer_cache_book.context_ff": 2, "single_transformer_cache_book.attn": 2,
                  "single_transformer_cache_book.mlp": 2}, _toy_flux_layout()),
    "flux": ({"transformer_cache_book.attn": 2, "transformer_cache_book.context_attn": 2,
              "transformer_cache_book.ip_attn": 2, "transformer_cache_book.ff": 2,
              "transformer_cache_book.context_ff": 2, "single_transformer_cache_book.attn": 2,
              "single_transformer_cache_book.mlp": 2}, _toy_flux_layout()),
}
_DECIDES = {"msa_cache_book": "attn", "mlp_cache_book": "mlp", "module_cache_book.self_attn": "attn",
            "module_cache_book.cross_attn": "cross", "module_cache_book.ffn": "mlp",
            "transformer_cache_book.attn": "attn", "transformer_cache_book.ff": "mlp",
            "transformer_cache_book.context_ff": "txt_mlp", "single_transformer_cache_book.attn": "attn",
            "single_transformer_cache_book.mlp": "mlp"}


def _leaf(doc: dict, path: str) -> list[list[bool]]:
    book, _, leaf = path.partition(".")
    return doc[book][leaf] if leaf else doc[book]


@pytest.mark.parametrize("family", sorted(INVARDIFF))
def test_invardiff_counts_equal_the_file(family: str, tmp_path: Path) -> None:
    names, layout = INVARDIFF[family]
    doc = _books(random.Random(2), DDIM.nfe, names)
    sched = import_schedule(_write(tmp_path / "b.json", doc), "invardiff", _target(family, layout=layout))
    step = doc["step_cache_book"]
    want: dict[str, int] = {}
    for path, kind in _DECIDES.items():
        if path in names:
            want[kind] = want.get(kind, 0) + sum(sum(r) for t, r in enumerate(_leaf(doc, path)) if not step[t])
    assert _reuse_counts(sched) == want
    assert [c.trunk for c in sched.calls] == step and sched.version == 2


@pytest.mark.parametrize("family", sorted(INVARDIFF))
def test_invardiff_round_trip_is_exact(family: str, tmp_path: Path) -> None:
    names, layout = INVARDIFF[family]
    layout = layout or Layout.uniform(3, get_family(family).kinds)
    sched = free_form_schedule(DDIM, layout.depth, random.Random(3), 0.4, 0.3, layout=layout)
    doc = export_schedule(sched, "invardiff", family=family)
    paths = {f"{b}.{k}" for b, v in doc.items() if isinstance(v, dict) for k in v}
    assert paths | {b for b, v in doc.items() if isinstance(v, list)} == {*names, "step_cache_book"}
    back = import_schedule(_write(tmp_path / "b.json", doc), "invardiff", _target(family, layout=layout))
    assert back.calls == sched.calls
    assert export_schedule(back, "invardiff", family=family) == doc


# ---------------------------------------------------------------------------------------------
# cache-dit
# ---------------------------------------------------------------------------------------------


def test_cachedit_mask_imports_as_trunk_reuse_only_when_asked(tmp_path: Path) -> None:
    mask = [1, 1, 0, 1, 0, 0, 1, 0, 1, 1]
    path = _write(tmp_path / "m.json", {"steps_computation_mask": mask, "steps_computation_policy": "static"})
    with pytest.raises(L2CError, match=r"residual.*--cachedit-as-trunk"):
        import_schedule(path, "cachedit", _target())
    sched = import_schedule(path, "cachedit", _target(), cachedit_as_trunk=True)
    assert [c.trunk for c in sched.calls] == [v == 0 for v in mask]
    assert sched.stats()["trunk_calls"] == mask.count(0) and sched.source["semantics"] == "trunk-output"
    assert export_schedule(sched, "cachedit", family="dit", cachedit_as_trunk=True)["steps_computation_mask"] == mask
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("cache_config:\n  steps_computation_mask: [" + ", ".join(map(str, mask)) + "]\n")
    assert import_schedule(yaml_path, "cachedit", _target(), cachedit_as_trunk=True).calls == sched.calls


@pytest.mark.parametrize(("doc", "needle"), [
    ({"steps_computation_mask": "fast"}, "policy name 'fast'"),
    ({"steps_computation_mask": [1] * 10, "steps_computation_policy": "dynamic"}, "only 'static' masks"),
    ([0] + [1] * 9, "first call has nothing cached"),
    ([1] * 9, "9 entries but the ddim plan has 10 model calls"),
    ([1, 2] + [1] * 8, "holds 2"),
])
def test_cachedit_refusals(doc: object, needle: str, tmp_path: Path) -> None:
    with pytest.raises(L2CError, match=needle) as err:
        import_schedule(_write(tmp_path / "m.json", doc), "cachedit", _target(), cachedit_as_trunk=True)
    assert "\n" not in str(err.value) and str(err.value).startswith("m.json: ")


# ---------------------------------------------------------------------------------------------
# Round trips and refusals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["dit", "diffusers-dit", "pixart"])
def test_smoothcache_round_trip_is_exact(family: str, tmp_path: Path) -> None:
    layout = Layout.uniform(4, get_family(family).kinds)
    sched = free_form_schedule(DDIM, 4, random.Random(4), 0.5, 0.0, layout=layout)
    doc = export_schedule(sched, "smoothcache", family=family)
    back = import_schedule(_write(tmp_path / "s.json", doc), "smoothcache", _target(family, 4))
    assert back.calls == sched.calls and export_schedule(back, "smoothcache", family=family) == doc
    shared = fora(DDIM, layout, interval=2, model="test", compute_last=True)
    doc = export_schedule(shared, "smoothcache", family=family)  # SmoothCache's own FORA files
    assert all(v == [1, 0, 1, 0, 1, 0, 1, 0, 1, 1] for v in doc.values()) and len(doc) == len(layout.kinds)
    back = import_schedule(_write(tmp_path / "f.json", doc), "smoothcache", _target(family, 4))
    assert back.calls == shared.calls


def test_cachedit_round_trip_is_exact(tmp_path: Path) -> None:
    sched = step_mask(DDIM, Layout.uniform(3), first=2, last=1, every=3, model="test")
    doc = export_schedule(sched, "cachedit", family="dit", cachedit_as_trunk=True)
    path = tmp_path / "m.json"
    path.write_text(export_text(doc))
    assert import_schedule(path, "cachedit", _target(), cachedit_as_trunk=True).calls == sched.calls


@pytest.mark.parametrize(("fmt", "doc", "target", "needle"), [
    ("smoothcache", {"attn": [1, 0] * 10}, _target(), "20 entries but the ddim plan has 10 model calls"),
    ("smoothcache", {"attn": [1, 0, 1, 0, 1]}, _target(plan=make_plan("dpm-solver-2", 10)),
     "one per dpm-solver-2 solver step"),
    ("smoothcache", {"attn-5": [1] * 10}, _target(), "block 5 but the model has 3 blocks"),
    ("smoothcache", {"attn2": [1] * 10}, _target(), "unknown SmoothCache component 'attn2'"),
    ("smoothcache", {"ff": [1] * 10}, _target(), "unknown SmoothCache component 'ff'"),
    ("smoothcache", {"attn-0": [1] * 10}, _target("uvit"), "ambiguous for uvit"),
    ("smoothcache", {"attn": [1] * 10}, _target("toy-flux", layout=_toy_flux_layout()), "block groups apart"),
    ("smoothcache", {"attn": [0] + [1] * 9}, _target(), "before any earlier call computed it"),
    ("smoothcache", {"attn": [True] * 10}, _target(), "holds True"),
    ("smoothcache", [1, 0], _target(), "JSON object mapping component keys"),
    ("invardiff", {"step_cache_book": [False] * 10, "msa_cache_book": [[False] * 4] * 10,
                   "mlp_cache_book": [[False] * 3] * 10}, _target(), "msa_cache_book[0] must be 3"),
    ("invardiff", {"step_cache_book": [False] * 10, "msa_cache_book": [[False] * 3] * 10}, _target(),
     "lacks 'mlp_cache_book'"),
    ("invardiff", {"step_cache_book": [False] * 10, "transformer_cache_book": {"attn": [[False]] * 10}},
     _target(), "import them for a FLUX model"),
    ("invardiff", {"step_cache_book": [True] + [False] * 9, "msa_cache_book": [[False] * 3] * 10,
                   "mlp_cache_book": [[False] * 3] * 10}, _target(), "no earlier trunk output"),
    ("invardiff", {"msa_cache_book": [[False] * 3] * 10}, _target(), "lacks step_cache_book"),
    ("invardiff", {"step_cache_book": [False] * 9, "msa_cache_book": [[False] * 3] * 9,
                   "mlp_cache_book": [[False] * 3] * 9}, _target(), "9 entries but the ddim plan has 10"),
])
def test_import_refusals_are_one_line(fmt: str, doc: object, target: ImportTarget, needle: str,
                                      tmp_path: Path) -> None:
    with pytest.raises(L2CError) as err:
        import_schedule(_write(tmp_path / "x.json", doc), fmt, target)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and msg.startswith("x.json: "), msg


def test_invardiff_joint_attention_books_must_agree(tmp_path: Path) -> None:
    names, layout = INVARDIFF["toy-flux"]
    doc = _books(random.Random(5), DDIM.nfe, names, p_gate=0.0)
    rows = doc["transformer_cache_book"]["context_attn"]
    doc["transformer_cache_book"]["context_attn"] = [[not v for v in r] for r in rows]
    with pytest.raises(L2CError, match=r"context_attn and transformer_cache_book\.attn differ at step 0"):
        import_schedule(_write(tmp_path / "b.json", doc), "invardiff", _target("toy-flux", layout=layout))


def test_export_refusals(tmp_path: Path) -> None:
    layout = Layout.uniform(3)
    trunk = step_mask(DDIM, layout, first=1, last=1, every=2, model="test")
    with pytest.raises(L2CError, match="call 1 reuses the whole trunk, which SmoothCache cannot express"):
        export_schedule(trunk, "smoothcache", family="dit")
    assert export_schedule(trunk, "invardiff", family="dit")["step_cache_book"][1] is True
    sublayers = fora(DDIM, layout, interval=2, model="test")
    with pytest.raises(L2CError, match="call 1 reuses single sublayers"):
        export_schedule(sublayers, "cachedit", family="dit", cachedit_as_trunk=True)
    drop = Schedule.from_dict({**sublayers.to_dict(), "mode": "drop"})
    with pytest.raises(L2CError, match="drop schedule drops sublayers"):
        export_schedule(drop, "smoothcache", family="dit")
    uvit = deepcache(DDIM, Layout.uniform(3), interval=2, start=0, stop=1, model="test")
    with pytest.raises(L2CError, match="per-block keys, and those are ambiguous for uvit"):
        export_schedule(uvit, "smoothcache", family="uvit")
    with pytest.raises(L2CError, match="cannot tell the model family of 'test'"):
        export_schedule(sublayers, "smoothcache")


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


def test_baseline_cadences() -> None:
    layout = Layout.uniform(3)
    f = fora(DDIM, layout, interval=3, model="t")
    assert [c.reuses for c in f.calls] == [i % 3 != 0 for i in range(10)]
    assert all(c.reused("attn") == (0, 1, 2) for c in f.calls if c.reuses) and f.version == 2
    assert not fora(DDIM, layout, interval=3, model="t", compute_last=True).calls[-1].reuses
    m = step_mask(DDIM, layout, first=2, last=2, every=3, model="t")
    assert [int(not c.trunk) for c in m.calls] == [1, 1, 0, 0, 1, 0, 0, 1, 1, 1]
    d = deepcache(DDIM, layout, interval=2, start=1, stop=3, model="t")
    assert [c.reused("mlp") for c in d.calls[:2]] == [(), (1, 2)]
    with pytest.raises(L2CError, match=r"blocks \[2, 5\)"):
        deepcache(DDIM, layout, interval=2, start=2, stop=5, model="t")
    with pytest.raises(L2CError, match="FORA interval must be an integer"):
        fora(DDIM, layout, interval=0, model="t")


@pytest.mark.parametrize("name", ["dit", "uvit", "toy-flux", "sd3"])
@pytest.mark.parametrize("which", ["fora", "step-mask", "deepcache"])
def test_compiled_baseline_equals_reference(name: str, which: str) -> None:
    model = case_model(name)
    layout = family_of(model).layout(model)
    plan = case_plan(name, 6)
    sched = {"fora": lambda: fora(plan, layout, interval=2, model="t"),
             "step-mask": lambda: step_mask(plan, layout, first=1, last=1, every=2, model="t"),
             "deepcache": lambda: deepcache(plan, layout, interval=3, start=1, stop=layout.depth, model="t")}[which]()
    noise, y = CASES[name].inputs(model, 0)
    want = reference.sample(model, plan, sched, noise, y, CASES[name].cfg_scale)
    got = l2c_compile.compile(model, plan, sched)(noise, y, CASES[name].cfg_scale)
    assert rel_error(got, want) <= 1e-5
    assert not torch.equal(want, reference.sample(model, plan, None, noise, y, CASES[name].cfg_scale))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_import_export_round_trip(tmp_path: Path) -> None:
    doc = {f"{c}-{b}": _random_bits(random.Random(b), 10) for b in range(3) for c in ("attn", "mlp")}
    src = _write(tmp_path / "sc.json", doc)
    out = ok_json("schedule", "import", src, "--format", "smoothcache", "-m", "DiT-Tiny", "--nfe", "10",
                  "-o", tmp_path / "s.json")
    assert out["source"]["kind"] == "smoothcache"
    assert out["skipped_attn"] == sum(doc[f"attn-{b}"].count(0) for b in range(3))
    got = ok_json("schedule", "export", tmp_path / "s.json", "--format", "smoothcache", "-o", tmp_path / "back.json")
    assert got["format"] == "smoothcache" and json.loads((tmp_path / "back.json").read_text()) == doc
    books = ok_json("schedule", "export", tmp_path / "s.json", "--format", "invardiff", "-o", tmp_path / "b.json")
    assert books["keys"] == ["step_cache_book", "msa_cache_book", "mlp_cache_book"]
    again = ok_json("schedule", "import", tmp_path / "b.json", "--format", "invardiff", "-m", "DiT-Tiny",
                    "--nfe", "10", "-o", tmp_path / "s2.json")
    assert again["skipped_total"] == out["skipped_total"]
    assert Schedule.load(tmp_path / "s2.json").calls == Schedule.load(tmp_path / "s.json").calls


@pytest.mark.parametrize(("kind", "extra", "stats"), [
    ("fora", ("--interval", "3"), {"skipped_attn": 6 * 3}),
    ("step-mask", ("--first", "2", "--last", "1", "--every", "3"), {"trunk_calls": 4}),  # calls 2, 3, 5, 6
    ("deepcache", ("--interval", "2", "--blocks", "1:3"), {"skipped_mlp": 4 * 2}),  # calls 1, 3, 5, 7 × blocks 1, 2
])
def test_cli_heuristic_baselines(kind: str, extra: tuple[str, ...], stats: dict, tmp_path: Path) -> None:
    out = ok_json("schedule", "heuristic", "-m", "DiT-Tiny", "--nfe", "9", "--kind", kind, *extra,
                  "-o", tmp_path / "h.json")
    assert {k: out[k] for k in stats} == stats and out["source"]["baseline"] == kind
    assert Schedule.load(tmp_path / "h.json").version == 2


@pytest.mark.parametrize(("args", "needle"), [
    (("heuristic", "--kind", "fora"), "--kind fora needs --interval"),
    (("heuristic", "--kind", "fora", "--interval", "2", "--blocks", "0:1"), "--blocks does not apply to --kind fora"),
    (("heuristic", "--kind", "deepcache", "--interval", "2", "--blocks", "1-3"), "--blocks must be A:B"),
    (("heuristic", "--kind", "deepcache", "--interval", "2", "--blocks", "1:9"), "blocks [1, 9)"),
    (("heuristic", "--kind", "random", "--fraction", "0.5", "--every", "2"), "--every does not apply"),
    (("heuristic", "--kind", "fora2", "--interval", "2"), "unknown heuristic 'fora2'"),
])
def test_cli_heuristic_bad_input(args: tuple[str, ...], needle: str, tmp_path: Path) -> None:
    result = cli("schedule", *args, "-m", "DiT-Tiny", "--nfe", "9", "-o", tmp_path / "h.json")
    assert_one_line_error(result, needle)
    assert not (tmp_path / "h.json").exists()


def test_cli_import_and_export_bad_input(tmp_path: Path) -> None:
    src = _write(tmp_path / "sc.json", {"attn": [1, 0] * 10})
    out = tmp_path / "s.json"
    common = ("-m", "DiT-Tiny", "--nfe", "10", "-o", out)
    assert_one_line_error(cli("schedule", "import", src, "--format", "smoothcache", *common),
                          "sc.json: key 'attn' has 20 entries")
    assert_one_line_error(cli("schedule", "import", src, "--format", "smothcache", *common), "unknown --format")
    assert_one_line_error(cli("schedule", "import", src, "--format", "cachedit", *common), "--cachedit-as-trunk")
    assert_one_line_error(cli("schedule", "import", src, "--format", "invardiff", "--threshold", "0.1", *common),
                          "--threshold applies to routers")
    assert not out.exists()
    mask = tmp_path / "steps.json"
    ok_json("schedule", "heuristic", "--kind", "step-mask", "--first", "1", "--last", "1", "--every", "2", *common[:4],
            "-o", mask)
    assert_one_line_error(cli("schedule", "export", mask, "--format", "smoothcache", "-o", tmp_path / "e.json"),
                          "reuses the whole trunk, which SmoothCache cannot express")
    assert_one_line_error(cli("schedule", "export", mask, "-o", tmp_path / "e.json"), "--format needs the file format")
    not_json = tmp_path / "notes.txt"
    not_json.write_text("keep me")
    assert_one_line_error(cli("schedule", "export", mask, "--format", "invardiff", "-o", not_json),
                          "not a JSON file; refusing to overwrite")
    assert not (tmp_path / "e.json").exists() and not_json.read_text() == "keep me"
    ok = ok_json("schedule", "export", mask, "--format", "cachedit", "--cachedit-as-trunk", "-o", tmp_path / "m.json")
    assert ok["keys"] == ["steps_computation_mask", "steps_computation_policy"]
