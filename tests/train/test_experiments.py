"""The guidance-experiment building blocks and a --quick run of the script end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from entropy_probe.api import profile_loaded
from entropy_probe.default_model import DefaultMnistCNN
from entropy_probe.loading import LoadedModel
from entropy_probe.patterns.pattern import layer_group
from entropy_probe.train.experiments import (
    Arm,
    Guidance,
    RunRecord,
    ScheduledLoss,
    cached_run,
    epochs_to_target,
    pick_best,
    render_table,
    rescale_init,
    seconds_to_target,
    summarise,
    three_way_split,
)

ROOT = Path(__file__).resolve().parents[2]


def _record(metrics: list[float | None], **kw: object) -> RunRecord:
    base: dict[str, object] = {
        "task": "classify",
        "split": "test",
        "arm": "plain",
        "optimizer": "adam",
        "seed": 0,
        "lr": 1e-3,
        "lam": 0.0,
        "guidance": None,
        "init_rescale": False,
        "metric_name": "accuracy",
        "higher_is_better": True,
        "metrics": metrics,
        "elapsed_s": [float(i + 1) for i in range(len(metrics))],
        "wall_s": float(len(metrics)),
    }
    base.update(kw)
    return RunRecord(**base)  # type: ignore[arg-type]


def test_epochs_to_target_first_epoch_reaching_it() -> None:
    assert epochs_to_target([0.5, 0.9, 0.8, 0.95], 0.9, True) == 2
    assert epochs_to_target([0.5, 0.6], 0.9, True) is None
    assert epochs_to_target([None, 0.95], 0.9, True) == 2
    assert epochs_to_target([0.3, 0.1, 0.05], 0.1, False) == 2  # lower is better (MSE)
    assert epochs_to_target([float("nan"), 0.05], 0.1, False) == 2
    assert seconds_to_target([0.5, 0.9], [1.5, 3.0], 0.9, True) == 3.0
    assert seconds_to_target([0.5], [1.5], 0.9, True) is None


def test_summary_counts_not_reached_and_diverged() -> None:
    runs = [
        _record([0.5, 0.9, 0.95], seed=0),
        _record([0.5, 0.7, 0.85], seed=1),  # not reached: counted as budget + 1 = 4
        _record([0.6], seed=2, diverged="the loss became nan"),
    ]
    (s,) = summarise(runs, target=0.9)
    assert (s.seeds, s.reached, s.diverged) == (3, 1, 1)
    assert s.epochs_median == 4 and s.epochs_min == 2 and s.epochs_max == 4
    assert s.final_median == pytest.approx(0.9)  # of 0.95 and 0.85; the diverged has none
    assert s.seconds_median == 2.0
    table = render_table([s], budget=3)
    assert "| plain | adam | 0.001 | 0 | 1/3, 1 diverged | >3 (2–>3) |" in table


def test_pick_best_by_mean_metric_and_direction() -> None:
    fast = _record([0.9, 0.9], lr=1e-2)
    slow = _record([0.5, 0.95], lr=1e-3)
    broken = _record([0.99], lr=1.0, diverged="nan")
    assert pick_best([slow, fast, broken]).lr == 1e-2
    mse = [_record([0.1, 0.05], higher_is_better=False, lr=1.0), _record([0.2, 0.04], lr=2.0)]
    assert pick_best([replace_hib(r) for r in mse]).lr == 1.0


def replace_hib(record: RunRecord) -> RunRecord:
    record.higher_is_better = False
    return record


def test_three_way_split_is_a_disjoint_cover() -> None:
    train, val, test = three_way_split(100, test_fraction=0.2, val_fraction=0.25, seed=3)
    assert (len(train), len(val), len(test)) == (60, 20, 20)
    joined = torch.cat([train, val, test]).sort().values
    assert torch.equal(joined, torch.arange(100))
    again = three_way_split(100, test_fraction=0.2, val_fraction=0.25, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again, strict=True))


def _per_dim(model: nn.Module, shape: tuple[int, ...]) -> dict[str, float]:
    loaded = LoadedModel(source="t", format="torch", module=model, input_shape=shape)
    profile = profile_loaded(loaded, device="cpu", progress=False)
    return {
        layer.name: float(layer.delta_h_per_dim)
        for layer in profile.layers
        if layer_group(layer.kind) is not None and layer.delta_h_per_dim is not None
    }


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (DefaultMnistCNN, (1, 28, 28)),  # conv + eval BatchNorm folded
        (
            lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
            (1, 8, 8),
        ),
    ],
)
def test_init_rescale_zeroes_delta_h_per_dim_of_every_layer(build: object, shape: tuple) -> None:
    torch.manual_seed(0)
    model = build()  # type: ignore[operator]
    before = _per_dim(model, shape)
    assert any(abs(v) > 0.1 for v in before.values())
    factors = rescale_init(model, shape)
    assert set(factors) == set(before)
    after = _per_dim(model, shape)
    assert all(abs(v) < 1e-6 for v in after.values()), after
    for name, factor in factors.items():
        assert factor == pytest.approx(math.exp(-before[name]))


def test_scheduled_loss_decays_linearly_to_zero() -> None:
    weight = nn.Parameter(torch.ones(()))
    loss = ScheduledLoss(lambda model, step: {"dense": weight * 2.0}, total=10)
    assert float(loss(nn.Identity(), 0)["dense"].detach()) == 2.0
    assert float(loss(nn.Identity(), 5)["dense"].detach()) == pytest.approx(1.0)
    assert float(loss(nn.Identity(), 12)["dense"].detach()) == 0.0


def test_cached_run_reuses_the_stored_record(tmp_path: Path) -> None:
    calls: list[int] = []

    def run() -> RunRecord:
        calls.append(1)
        return _record([0.5, 0.9])

    path = tmp_path / "r.json"
    first = cached_run(path, run, arm_name="plain")
    second = cached_run(path, run, arm_name="lr_tuned")
    assert len(calls) == 1
    assert second.metrics == first.metrics and second.arm == "lr_tuned"


def test_arm_key_names_every_setting() -> None:
    plain = Arm("plain", "sgd", 0.01).key("test", 3)
    guided = Arm("guided", "sgd", 0.01, 0.3, Guidance(mode="direction")).key("test", 3)
    assert plain != guided and "mode=direction" in guided and guided.endswith("_s3")
    assert Arm("lr_tuned", "sgd", 0.01).key("test", 3) == plain  # the same run, shared


def test_quick_run_end_to_end(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "guidance_experiment", ROOT / "scripts" / "guidance_experiment.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["guidance_experiment"] = module
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        code = module.main(
            [
                "--task",
                "dense_ae",
                "--quick",
                "--seeds",
                "2",
                "--cache",
                str(tmp_path / "cache"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("guidance_experiment", None)
    assert code == 0
    payload = json.loads((tmp_path / "out" / "dense_ae_quick.json").read_text())
    test_runs = [r for r in payload["runs"] if r["split"] == "test"]
    arms = {(r["arm"], r["optimizer"]) for r in test_runs}
    for arm in ("plain", "lr_tuned", "init_rescale", "tuned_rescale", "guided", "tuned_guided"):
        for opt in ("sgd", "adam"):
            assert (arm, opt) in arms
    assert all(len(r["metrics"]) == 2 for r in test_runs)
    assert sum(1 for r in test_runs if r["arm"] == "plain") == 4  # 2 optimizers x 2 seeds
    rescaled = [r for r in test_runs if r["init_rescale"]]
    assert rescaled and all(r["rescale_factors"] for r in rescaled)
    text = (tmp_path / "out" / "dense_ae_quick.md").read_text()
    assert "| init_rescale | adam |" in text and "target: test mse ≤" in text
