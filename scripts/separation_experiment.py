"""Does the agreement score separate well-trained networks from untrained and partly trained
ones? (issue 5, DESIGN.md 2.6–2.7). One command:

    pip install -e ".[bench]"                          # weightwatcher + matplotlib
    python scripts/train_zoo.py                        # seeds 0 1 2 (once, ~15 min, cached)
    python scripts/separation_experiment.py            # writes reports/separation/

Held-out networks only: zoo seeds 1 and 2 (the references use seed 0) with their snapshots
(epoch 0 = random init, fractional and early epochs = partly trained, last = converged), the
embedded default model against random inits of its architecture, and each vendor network of
the asset wheels against iid re-inits of its own weights, compared with a band that leaves
that network out. Every score comes from the shipped reference library.

For three per-layer quantities (the score design iterations) it reports the AUC of the score
for trained vs init and trained vs partly trained, and two scale controls: a random init
rescaled layer by layer to the trained network's weight norms (must still score like an
init), and a function-preserving rescale of every conv that feeds a BatchNorm (weights, bias
and running statistics; must not change the score). WeightWatcher's alpha is computed on the
same torch checkpoints, side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from entropy_probe._io import atomic_write_text
from entropy_probe.api import profile_loaded
from entropy_probe.entropy.profile import Profile, compute_profile
from entropy_probe.loading import LoadedModel, LoadOptions, load_model
from entropy_probe.patterns.build import ASSET_REFERENCES, REFERENCE_SEEDS, asset_path
from entropy_probe.patterns.pattern import Quantity
from entropy_probe.patterns.reference import ReferenceLibrary, load_library
from entropy_probe.patterns.select import compare_with
from entropy_probe.patterns.zoo import ZooSpec, get_spec, list_members
from entropy_probe.patterns.zoo_train import member_dir, read_member_result
from entropy_probe.plugins import get_registry
from entropy_probe.walk.dispatch import walk
from entropy_probe.walk.records import BatchNormParams, LayerRecord

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT_SEEDS = (1, 2)
OUT = ROOT / "reports" / "separation"
BN_SCALE = 3.0


@dataclass
class Row:
    group: str  # zoo member, "default", or vendor network name
    family: str
    seed: int
    stage: str  # init | partial | trained | rescaled_init | bn_rescaled
    epoch: float | None
    metric: float | None
    scores: dict[str, float | None] = field(default_factory=dict)
    ww_alpha: float | None = None  # mean alpha over the layers WeightWatcher analysed
    ww_good: float | None = None  # fraction of those with 2 <= alpha <= 6
    ww_layers: int = 0


# --------------------------------------------------------------------------------------------
# scoring


def scores_of(
    profile: Profile, library: ReferenceLibrary, exclude: tuple[str, ...] = ()
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in Quantity:
        result = compare_with(profile, "auto", quantity=q, library=library, exclude=exclude)
        out[str(q)] = result.score
        if q is Quantity.SHAPE_EXCESS:  # design v1: both sides of the band penalised alike
            credits = [max(0.0, min(1.0, 2.0 - abs(x.deviation))) for x in result.layers]
            out["shape_excess_symmetric"] = sum(credits) / len(credits) if credits else None
    return out


def weightwatcher(model: nn.Module) -> tuple[float | None, float | None, int]:
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        details = ww.WeightWatcher(model=model).analyze()
    if details is None or len(details) == 0 or "alpha" not in details:
        return None, None, 0
    alphas = [float(a) for a in details["alpha"] if a is not None and math.isfinite(float(a))]
    if not alphas:
        return None, None, 0
    good = sum(2.0 <= a <= 6.0 for a in alphas) / len(alphas)
    return sum(alphas) / len(alphas), good, len(alphas)


def torch_profile(model: nn.Module, name: str, input_shape: tuple[int, ...]) -> Profile:
    loaded = LoadedModel(source=name, format="torch", module=model, input_shape=input_shape)
    return profile_loaded(loaded, progress=False)


# --------------------------------------------------------------------------------------------
# controls


def rescaled_to(init: nn.Module, trained: nn.Module) -> nn.Module:
    """``init`` with every weight tensor rescaled to the norm of ``trained``'s."""
    target = dict(trained.named_parameters())
    with torch.no_grad():
        for name, param in init.named_parameters():
            if name.endswith("weight") and param.dim() >= 2:
                param.mul_(target[name].norm() / param.norm().clamp_min(1e-30))
    return init


def bn_rescaled(model: nn.Module, a: float = BN_SCALE) -> tuple[nn.Module, int]:
    """Scale every conv whose output goes straight into a BatchNorm by ``a``, with the
    BatchNorm's running statistics (and eps) scaled to match: the same function."""
    pairs = []
    modules = list(model.named_modules())
    for (_, first), (_, second) in itertools.pairwise(modules):
        if (
            isinstance(first, nn.Conv2d)
            and isinstance(second, nn.BatchNorm2d)
            and first.out_channels == second.num_features
        ):
            pairs.append((first, second))
    with torch.no_grad():
        for conv, bn in pairs:
            conv.weight.mul_(a)
            if conv.bias is not None:
                conv.bias.mul_(a)
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.mul_(a)
            bn.running_var.mul_(a * a)
            bn.eps *= a * a
    return model, len(pairs)


# --------------------------------------------------------------------------------------------
# network sets


def zoo_rows(library: ReferenceLibrary, zoo_dir: Path, log: Callable[[str], None]) -> list[Row]:
    rows = []
    for name in list_members():
        spec = get_spec(name)
        for seed in HELD_OUT_SEEDS:
            result = read_member_result(member_dir(zoo_dir, name, seed))
            if result is None:
                log(f"skip {name} seed {seed}: not trained (python scripts/train_zoo.py)")
                continue
            snaps = sorted(result.snapshots, key=lambda s: s.epoch)
            final = snaps[-1]

            def build(
                file: str, spec: ZooSpec = spec, directory: Path = result.directory
            ) -> nn.Module:
                model = spec.build()
                model.load_state_dict(load_file(directory / file))
                return model.eval()

            for snap in snaps:
                stage = "init" if snap.epoch == 0 else "trained" if snap is final else "partial"
                model = build(snap.file)
                row = Row(name, spec.family, seed, stage, snap.epoch, snap.metric)
                row.scores = scores_of(torch_profile(model, name, spec.input_shape), library)
                row.ww_alpha, row.ww_good, row.ww_layers = weightwatcher(model)
                rows.append(row)
            control = rescaled_to(build(snaps[0].file), build(final.file))
            row = Row(name, spec.family, seed, "rescaled_init", 0.0, None)
            row.scores = scores_of(torch_profile(control, name, spec.input_shape), library)
            row.ww_alpha, row.ww_good, row.ww_layers = weightwatcher(control)
            rows.append(row)
            scaled, count = bn_rescaled(build(final.file))
            if count:
                row = Row(name, spec.family, seed, "bn_rescaled", final.epoch, final.metric)
                row.scores = scores_of(torch_profile(scaled, name, spec.input_shape), library)
                row.ww_alpha, row.ww_good, row.ww_layers = weightwatcher(scaled)
                rows.append(row)
            log(f"{name} seed {seed}: {len(snaps)} snapshots")
    return rows


def default_rows(library: ReferenceLibrary) -> list[Row]:
    from entropy_probe.default_model import (
        build_default_model,
        default_model_info,
        load_default_model,
    )

    info = default_model_info()
    shape = (1, 28, 28)
    trained = load_default_model().eval()
    rows = [Row("default", "classifier_cnn", 0, "trained", float(info.epochs), info.accuracy)]
    rows[0].scores = scores_of(torch_profile(trained, "default", shape), library)
    rows[0].ww_alpha, rows[0].ww_good, rows[0].ww_layers = weightwatcher(trained)
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        init = build_default_model().eval()
        row = Row("default", "classifier_cnn", seed, "init", 0.0, None)
        row.scores = scores_of(torch_profile(init, "default", shape), library)
        row.ww_alpha, row.ww_good, row.ww_layers = weightwatcher(init)
        rows.append(row)
        control = rescaled_to(init, trained)
        row = Row("default", "classifier_cnn", seed, "rescaled_init", 0.0, None)
        row.scores = scores_of(torch_profile(control, "default", shape), library)
        rows.append(row)
    scaled, _ = bn_rescaled(load_default_model().eval())
    row = Row("default", "classifier_cnn", 0, "bn_rescaled", float(info.epochs), info.accuracy)
    row.scores = scores_of(torch_profile(scaled, "default", shape), library)
    rows.append(row)
    return rows


def _reinit(records: Iterable[LayerRecord], seed: int) -> list[LayerRecord]:
    """The same architecture with iid Gaussian weights and fresh BatchNorm statistics."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for record in records:
        weight = record.weight
        if weight is not None and weight.is_floating_point():
            fan_in = max(1, weight[0].numel())
            weight = torch.randn(weight.shape, generator=gen) * math.sqrt(2.0 / fan_in)
        bn = record.batchnorm
        if bn is not None:
            gamma = None if bn.weight is None else torch.ones_like(bn.weight)
            bn = BatchNormParams(torch.ones_like(bn.running_var), gamma, bn.eps)
        out.append(replace(record, weight=weight, batchnorm=bn))
    return out


def vendor_rows(library: ReferenceLibrary) -> list[Row]:
    registry = get_registry()
    rows = []
    for entry in ASSET_REFERENCES:
        loaded = load_model(str(asset_path(entry)), LoadOptions(input_shape=entry.input_shape))
        records = walk(loaded, registry)

        def prof(
            recs: list[LayerRecord], name: str = entry.name, at: LoadedModel = loaded
        ) -> Profile:
            return compute_profile(
                recs, registry.rules, source=name, format=at.format, input_shape=at.input_shape
            )

        exclude = (entry.name,)  # never scored against a band it helped build
        if not library.family(entry.family, exclude=exclude):
            print(f"skip {entry.name}: no other {entry.family} reference to compare it with")
            continue
        row = Row(entry.name, entry.family, 0, "trained", None, None)
        row.scores = scores_of(prof(records), library, exclude)
        rows.append(row)
        for seed in (0, 1, 2):
            row = Row(entry.name, entry.family, seed, "init", 0.0, None)
            row.scores = scores_of(prof(_reinit(records, seed)), library, exclude)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# summary


def auc(positives: list[float], negatives: list[float]) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (Mann–Whitney)."""
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def paired_auc(
    rows: list[Row], key: str, value: Callable[[Row, str], float | None], stage: str
) -> float | None:
    """AUC over (trained, ``stage``) pairs of the same architecture only."""
    wins, pairs = 0.0, 0
    for t in rows:
        vt = value(t, key)
        if t.stage != "trained" or vt is None:
            continue
        for n in rows:
            vn = value(n, key)
            if n.stage == stage and n.group == t.group and vn is not None:
                wins += (vt > vn) + 0.5 * (vt == vn)
                pairs += 1
    return wins / pairs if pairs else None


def summarise(rows: list[Row]) -> dict[str, object]:
    designs: dict[str, object] = {}
    scored = [str(q) for q in Quantity] + ["shape_excess_symmetric", "ww_alpha", "ww_good"]

    def value(row: Row, key: str) -> float | None:
        if key == "ww_alpha":
            return -row.ww_alpha if row.ww_alpha is not None else None  # lower alpha = better
        if key == "ww_good":
            return row.ww_good
        return row.scores.get(key)

    for key in scored:
        by_stage: dict[str, list[float]] = {}
        for row in rows:
            v = value(row, key)
            if v is not None:
                by_stage.setdefault(row.stage, []).append(v)
        pos = by_stage.get("trained", [])

        # controls: the rescaled init must score like the init it came from; the BN rescale
        # must leave the trained network's score where it was
        def gaps(stage: str, partner: str, key: str = key) -> list[float]:
            """|score difference| of each ``stage`` row and the ``partner`` row of its run."""
            return [
                abs((value(r, key) or 0.0) - (value(o, key) or 0.0))
                for r in rows
                if r.stage == stage
                for o in rows
                if o.stage == partner and o.group == r.group and o.seed == r.seed
                if value(r, key) is not None and value(o, key) is not None
            ]

        rescale_gap = gaps("rescaled_init", "init")
        bn_gap = gaps("bn_rescaled", "trained")
        designs[key] = {
            "within_architecture_auc_trained_vs_init": paired_auc(rows, key, value, "init"),
            "within_architecture_auc_trained_vs_partial": paired_auc(rows, key, value, "partial"),
            "auc_trained_vs_init": auc(pos, by_stage.get("init", [])),
            "auc_trained_vs_partial": auc(pos, by_stage.get("partial", [])),
            "auc_trained_vs_rescaled_init": auc(pos, by_stage.get("rescaled_init", [])),
            "max_rescaled_init_vs_init_gap": max(rescale_gap) if rescale_gap else None,
            "max_bn_rescale_gap": max(bn_gap) if bn_gap else None,
            "median_by_stage": {
                s: sorted(v)[len(v) // 2] for s, v in sorted(by_stage.items()) if v
            },
            "n_by_stage": {s: len(v) for s, v in sorted(by_stage.items())},
        }
    return designs


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = ["init", "rescaled_init", "partial", "trained"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = sorted({r.group for r in rows})
    for ax, key, title in (
        (axes[0], "shape_excess", "entropy-probe agreement score (shape_excess)"),
        (axes[1], "ww_alpha", "WeightWatcher mean alpha (lower = better trained)"),
    ):
        for gi, group in enumerate(groups):
            for si, stage in enumerate(stages):
                vals = [
                    (r.ww_alpha if key == "ww_alpha" else r.scores.get(key))
                    for r in rows
                    if r.group == group and r.stage == stage
                ]
                vals = [v for v in vals if v is not None]
                x = [si + (gi - len(groups) / 2) * 0.06] * len(vals)
                ax.scatter(x, vals, s=18, label=group if si == 0 else None, color=f"C{gi}")
        ax.set_xticks(range(len(stages)), stages)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo-dir", type=Path, default=ROOT / ".cache" / "zoo")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    library = load_library()
    if set(HELD_OUT_SEEDS) & set(REFERENCE_SEEDS):
        raise SystemExit("held-out seeds overlap the reference seeds")
    rows = zoo_rows(library, args.zoo_dir, print) + default_rows(library) + vendor_rows(library)
    summary = summarise(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "command": "python scripts/separation_experiment.py",
        "held_out_seeds": list(HELD_OUT_SEEDS),
        "reference_seeds": list(REFERENCE_SEEDS),
        "seconds": round(time.perf_counter() - start, 1),
        "summary": summary,
        "rows": [asdict(r) for r in rows],
    }
    atomic_write_text(args.out / "results.json", json.dumps(document, indent=1) + "\n")
    plot(rows, args.out / "separation.png")
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}/results.json and separation.png ({document['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
