"""Train a Fashion-MNIST reference diffusion model (DiT-FMNIST or U-ViT-FMNIST), CPU or CUDA.

    python -m l2c_compile.fmnist.train_model --model DiT-FMNIST --minutes 40 --out runs/dit
    python -m l2c_compile.fmnist.train_model --model DiT-FMNIST --device cuda --batch 128 ...

ε-prediction with the plain MSE loss of DDPM, over the model's own β table and timestep
convention (DiT: integer step i; U-ViT: continuous time · 1000 = i + 1, DPM-Solver's discrete VP
knots), class-label dropout 0.1 for classifier-free guidance, AdamW with a short warm-up and an
EMA of the weights (the EMA is what ships). The wall-clock budget is enforced inside the loop;
a full training state is checkpointed atomically every few minutes and at the end, and a run
started on the same ``--out`` resumes from it. At the end the EMA weights are written as
safetensors together with a model card.

Every random draw (batch order, timesteps, noise, label dropout) comes from one CPU generator, so
a run is resumable on any device; on CUDA the training set lives on the device and the matrix
products use TF32.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l2c_compile.errors import L2CError
from l2c_compile.fmnist import specs
from l2c_compile.fmnist.data import load_tensors
from l2c_compile.io import atomic_path, write_text_atomic
from l2c_compile.runtime import features
from l2c_compile.samplers.schedules import alphas_cumprod

STATE_FILE = "train_state.pt"


def build_spec(name: str) -> Any:
    """The :class:`ModelSpec` of a Fashion-MNIST model, by name."""
    table = specs.fmnist_specs()
    if name not in table:
        raise L2CError(f"unknown Fashion-MNIST model {name!r}; choose one of {', '.join(table)}")
    return table[name]


def model_timesteps(steps: torch.Tensor, time_input: str) -> torch.Tensor:
    """What the network receives for discrete steps ``steps`` (0..999): i, or 1000·t_c = i + 1."""
    return steps.float() + (1.0 if time_input == "continuous" else 0.0)


def diffusion_loss(
    model: nn.Module,
    spec: Any,
    x0: torch.Tensor,
    y: torch.Tensor,
    sqrt_ac: torch.Tensor,
    sqrt_1m_ac: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """The DDPM ε-MSE on a batch, with random steps, noise and CFG label dropout."""
    n, dev = x0.shape[0], x0.device
    steps = torch.randint(0, len(sqrt_ac), (n,), generator=gen).to(dev)  # (N,)
    noise = torch.randn(x0.shape, generator=gen).to(dev)  # (N, C, H, W)
    x_t = sqrt_ac[steps].view(n, 1, 1, 1) * x0 + sqrt_1m_ac[steps].view(n, 1, 1, 1) * noise
    drop = (torch.rand(n, generator=gen) < 0.1).to(dev)
    y_in = model.drop_labels(y, drop_mask=drop)  # (N,) null class where dropped
    out = model(x_t, model_timesteps(steps, spec.time_input), y_in)  # (N, C_out, H, W)
    return (model.eps(out) - noise).pow(2).mean()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay · ema + (1 − decay) · model, on every floating parameter and buffer."""
    pairs = zip(ema.state_dict().values(), model.state_dict().values(), strict=True)
    floats = [(e, p) for e, p in pairs if e.is_floating_point()]
    torch._foreach_lerp_([e for e, _ in floats], [p for _, p in floats], 1.0 - decay)


def ema_decay(step: int, target: float) -> float:
    """EMA decay with a warm-up, so early weights are not averaged in for thousands of steps."""
    return min(target, (1.0 + step) / (10.0 + step))


def lr_at(step: int, base: float, warmup: int) -> float:
    """Linear warm-up, then constant."""
    return base * min(1.0, (step + 1) / max(1, warmup))


def run_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options of a run that shape the result (recorded per run for the model card)."""
    keys = ("batch", "lr", "warmup", "ema", "seed", "grad_clip", "device")
    return {k: getattr(args, k) for k in keys}


def run_history(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs recorded in a training state (states from before the history field: one run)."""
    if "history" in state:
        return json.loads(state["history"])
    old = json.loads(state["args"])  # the first version stored only its own options
    args = {k: old[k] for k in ("batch", "lr", "warmup", "ema", "seed")}
    return [
        {
            "from": 0,
            "to": int(state["step"]),
            "args": {**args, "grad_clip": 0.0, "device": "cpu"},
        }
    ]


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the full training state atomically (a crash never leaves half a checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict[str, Any]:
    """Read a training state written by :func:`save_state` (tensors and plain data only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated pickle, a refused object …
        from l2c_compile.filekind import torch_load_problem

        with path.open("rb") as fh:
            head = fh.read(512)
        raise L2CError(f"cannot resume from {path}: {torch_load_problem(exc, head)}") from None


def model_card(spec: Any, info: dict[str, Any]) -> str:
    """The Markdown model card shipped next to the weights."""
    from l2c_compile.models.registry import count_params

    kw = ", ".join(f"{k}={v}" for k, v in spec.kwargs.items())
    retrain = "\n".join(
        f"python -m l2c_compile.fmnist.train_model --model {spec.name} --out runs/{spec.name} "
        f"--max-steps {run['to']} --minutes 600 "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in run["args"].items())
        + f"  # steps {run['from']}–{run['to']}"
        for run in info["history"]
    )
    return f"""# {spec.name}

{spec.description}.

Trained in this repository by `l2c_compile/fmnist/train_model.py` on the Fashion-MNIST training
set (60,000 images, Debian package `dataset-fashion-mnist`), 28×28 padded with background to
32×32, pixel values in [-1, 1], one channel. Pixel space: there is no VAE.

| | |
|---|---|
| architecture | `{spec.family}`: {kw} |
| parameters | {count_params(spec):,} |
| tokens per block | {spec.tokens} (patch {spec.patch}) |
| noise schedule | {spec.noise_schedule} β, 1000 steps; model time `{spec.time_input}` |
| objective | ε-prediction, MSE; class dropout 0.1 (null label {spec.num_classes}) |
| optimiser | AdamW lr {info["lr"]:g} (warm-up {info["warmup"]} steps), batch {info["batch"]}, weight decay 0 |
| EMA | decay {info["ema"]} (with warm-up); the shipped weights are the EMA |
| steps | {info["step"]:,} ({info["images"]:,} images, {info["images"] / 60000:.2f} epochs) |
| final loss | {info["final_loss"]:.4f} (ε-MSE, mean of the last {info["loss_window"]} steps, training weights) |
| wall time | {info["wall_minutes"]:.1f} min on {info["device"]}, {info["threads"]} CPU thread(s); CPU time {info["cpu_minutes"]:.1f} min |
| machine | {info["machine"]} |
| seed | {info["seed"]} |
| default sampler | {spec.default_sampler}, CFG scale {spec.default_cfg_scale} (family convention) |

Retrain. A run on a folder that already holds a training state resumes it, so
the runs below, one after the other on the same `--out`, repeat the shipped training (`--minutes`
only bounds each run's wall time; the step counts are what matters):

```
{retrain}
```
"""


def machine_description(device: torch.device | None = None) -> str:
    """CPU model, logical core count, OS, torch version and the GPU if used, for the model card."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # not Linux: keep platform's answer
    gpu = f"{torch.cuda.get_device_name(device)}, " if device is not None and device.type == "cuda" else ""
    return f"{gpu}{cpu}, {os.cpu_count()} logical cores, {platform.system()}, torch {torch.__version__}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the training script."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, choices=sorted(specs.SPEC_FIELDS))
    p.add_argument("--out", type=Path, required=True, help="folder for the training state and logs")
    p.add_argument("--minutes", type=float, default=40.0, help="wall-clock budget of this run")
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps in total"
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:k]")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument(
        "--weights", type=Path, default=None, help="final EMA safetensors (default: assets)"
    )
    p.add_argument("--card", type=Path, default=None, help="model card path (default: assets)")
    return p.parse_args(argv)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) training under the wall-clock budget; write weights and card at the end."""
    from l2c_compile.models.registry import build_model, save_checkpoint

    start, cpu_start = time.monotonic(), time.process_time()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        features.require("cuda", f"--device {args.device}")
        torch.backends.cuda.matmul.allow_tf32 = True
    spec = build_spec(args.model)
    x_all, y_all = load_tensors("train")  # (60000, 1, 32, 32), (60000,)
    x_all, y_all = x_all.to(device), y_all.to(device)
    ac = torch.from_numpy(alphas_cumprod(spec.noise_schedule).copy()).float()
    sqrt_ac, sqrt_1m_ac = ac.sqrt().to(device), (1 - ac).sqrt().to(device)

    torch.manual_seed(args.seed)
    model = build_model(spec).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(
        model.parameters(), lr=args.lr, weight_decay=0.0, fused=device.type == "cuda"
    )
    gen = torch.Generator().manual_seed(args.seed)
    step, elapsed_before, cpu_before, losses = 0, 0.0, 0.0, []
    history: list[dict[str, Any]] = []
    order, cursor = torch.randperm(len(x_all), generator=gen), 0
    state_path = args.out / STATE_FILE
    if state_path.exists():
        state = load_state(state_path)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, elapsed_before, losses = state["step"], state["elapsed"], state["losses"].tolist()
        cpu_before = float(state.get("cpu", 0.0))
        history = run_history(state)
        if "order" in state:  # continue the epoch where it stopped, as an uninterrupted run would
            order, cursor = state["order"], int(state["cursor"])
        print(
            f"resumed {args.model} at step {step} ({elapsed_before / 60:.1f} min trained)",
            flush=True,
        )

    first_step = step
    pending: list[torch.Tensor] = []

    def flush_losses() -> None:
        """Move the pending losses to ``losses``; a non-finite one stops the run."""
        if not pending:
            return
        values = torch.stack(pending).tolist()
        pending.clear()
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            at = step - len(values) + bad
            raise RuntimeError(f"loss is {values[bad]} at step {at}; lower --lr")
        losses.extend(values)

    def this_run() -> dict[str, Any]:
        return {"from": first_step, "to": step, "args": run_args(args)}

    def snapshot() -> None:
        flush_losses()
        save_state(
            state_path,
            {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "gen": gen.get_state(),
                "step": step,
                "losses": torch.tensor(losses),
                "elapsed": elapsed_before + time.monotonic() - start,
                "cpu": cpu_before + time.process_time() - cpu_start,
                "order": order,
                "cursor": cursor,
                "history": json.dumps([*history, this_run()]),
            },
        )

    deadline = start + 60.0 * args.minutes
    last_ckpt = time.monotonic()
    t_log = time.monotonic()
    while time.monotonic() < deadline and (args.max_steps is None or step < args.max_steps):
        if cursor + args.batch > len(order):
            order, cursor = torch.randperm(len(x_all), generator=gen), 0
        idx = order[cursor : cursor + args.batch].to(device)
        cursor += args.batch
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup)
        loss = diffusion_loss(model, spec, x_all[idx], y_all[idx], sqrt_ac, sqrt_1m_ac, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        update_ema(ema, model, ema_decay(step, args.ema))
        pending.append(loss.detach())  # read back every log_every steps: no sync per step
        step += 1
        if step % args.log_every == 0:
            flush_losses()
            now = time.monotonic()
            recent = sum(losses[-args.log_every :]) / args.log_every
            print(
                f"step {step:6d}  loss {recent:.4f}  "
                f"{(now - t_log) / args.log_every:.2f} s/step  "
                f"{(now - start) / 60:5.1f}/{args.minutes:g} min",
                flush=True,
            )
            t_log = now
        if time.monotonic() - last_ckpt > 60.0 * args.checkpoint_minutes:
            snapshot()
            last_ckpt = time.monotonic()
    snapshot()

    window = min(len(losses), 200)
    info = {
        "step": step,
        "images": step * args.batch,
        "batch": args.batch,
        "lr": args.lr,
        "warmup": args.warmup,
        "ema": args.ema,
        "seed": args.seed,
        "threads": args.threads,
        "device": str(device),
        "history": [*history, this_run()],
        "loss_window": window,
        "final_loss": sum(losses[-window:]) / max(1, window),
        "wall_minutes": (elapsed_before + time.monotonic() - start) / 60.0,
        "cpu_minutes": (cpu_before + time.process_time() - cpu_start) / 60.0,
        "machine": machine_description(device),
    }
    ema = ema.to("cpu")
    ema.model_name = spec.name
    save_checkpoint(ema, args.weights or specs.checkpoint_path(spec.name))
    write_text_atomic(args.card or specs.card_path(spec.name), model_card(spec, info))
    print(
        f"done: {step} steps, final loss {info['final_loss']:.4f}, {info['wall_minutes']:.1f} min",
        flush=True,
    )
    return info


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m l2c_compile.fmnist.train_model``."""
    args = parse_args(argv)
    try:
        train(args)
    except L2CError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
