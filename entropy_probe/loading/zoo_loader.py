"""``zoo:NAME`` (+ ``--weights FILE``): the project's own zoo architectures.

Without ``--weights`` the architecture has random initial weights (``pretrained=False``), like
``timm:NAME``. With weights (a snapshot written by ``scripts/train_zoo.py``), the metric recorded
for that snapshot in the ``metrics.json`` beside it is added to the notes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from entropy_probe.loading._base import LoadedModel, Loader, LoadOptions
from entropy_probe.loading.torch_file import load_into, read_weights


def _snapshot_info(weights: Path) -> dict[str, Any] | None:
    """The metrics.json entry for ``weights`` when it lies in a zoo run directory."""
    from entropy_probe.patterns.zoo_train import METRICS_FILE

    try:
        record = json.loads((weights.parent / METRICS_FILE).read_text(encoding="utf-8"))
        snaps = record["snapshots"]
        match = next(s for s in snaps if s["file"] == weights.name)
        return {
            "epoch": float(match["epoch"]),
            "metric_name": str(record["metric"]),
            "metric": float(match["metric"]),
            "final_epoch": int(record["epochs"]),
            "seed": int(record["seed"]),
        }
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None


class ZooLoader(Loader):
    scheme = "zoo"
    accepts_weights = True
    description = "zoo:NAME, the project's own trained networks (+ --weights FILE snapshot)"

    def load(self, ident: str, options: LoadOptions) -> LoadedModel:
        from entropy_probe.patterns.zoo import get_spec

        spec = get_spec(ident)  # unknown names: UnknownNameError with close matches
        model = spec.build()
        notes: list[str] = []
        meta: dict[str, Any] = {
            "architecture": spec.architecture,
            "family": spec.family,
            "task": spec.task,
            "dataset": spec.dataset,
        }
        trained = options.weights is not None
        if options.weights is not None:
            state = read_weights(options.weights, trust_pickle=options.trust_pickle)
            load_into(model, state, f"zoo:{ident}", strict=options.strict)
            info = _snapshot_info(Path(options.weights))
            if info is not None:
                meta["snapshot"] = info
                notes.append(
                    f"zoo snapshot at epoch {info['epoch']:g} of {info['final_epoch']} "
                    f"(seed {info['seed']}): held-out {info['metric_name']} {info['metric']:.4f}"
                )
                if info["epoch"] == 0:
                    trained = False
                    notes.append("epoch 0 is the saved random initialisation: untrained weights")
        else:
            notes.append(
                "no --weights given: the architecture has RANDOM initial weights, so this profile "
                "describes an untrained network"
            )
        return LoadedModel(
            source=f"zoo:{ident}",
            format="zoo",
            module=model.eval(),
            input_shape=options.input_shape or spec.input_shape,
            pretrained=trained,
            notes=notes,
            meta=meta,
        )
