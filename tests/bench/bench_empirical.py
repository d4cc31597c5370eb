"""Benchmark: an empirical entropy profile vs plain inference over the same samples.

Run on demand (not part of the test suite)::

    python tests/bench/bench_empirical.py                       # resnet50, 256 samples, auto
    python tests/bench/bench_empirical.py --device cuda --out bench_empirical.json

The model is a timm architecture with random weights (timing does not depend on training) at
its default input size; the inputs are real (``--data``, default the nuclei image crops),
loaded once and shared by both measurements. Three wall-clock times, each the best of
``--repeat`` runs after one warm-up batch:

* ``inference_s``: the forward passes alone, batch by batch, inputs moved to the device;
* ``capture_s``: ``entropy_probe.empirical.capture.measure`` — the same forward passes with
  every hook, on-the-fly projection, and the estimation of every layer;
* ``profile_s``: ``profile_loaded(..., data=...)`` end to end (walk, analytic profile, capture).

The ratios capture_s / inference_s and profile_s / inference_s are the figures to compare
(issue 4's target: under 2× on GPU for resnet50 at 256 samples). Machines are shared:
compare ratios, not absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from _timing import best_of  # this folder is sys.path[0] when run as a script


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import timm

    from entropy_probe import LoadedModel, profile_loaded
    from entropy_probe.empirical.capture import measure
    from entropy_probe.empirical.inputs import load_inputs
    from entropy_probe.entropy.profile import resolve_device
    from entropy_probe.plugins import get_registry
    from entropy_probe.walk.dispatch import walk

    dev = resolve_device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    shape = tuple(model.pretrained_cfg["input_size"])
    if args.input_size:
        shape = (shape[0], args.input_size, args.input_size)
    model.to(dev)
    loaded = LoadedModel(
        source=f"timm:{args.model}", format="timm", module=model, input_shape=shape
    )
    inputs = load_inputs(args.data, loaded, samples=args.samples).inputs
    records = walk(loaded, get_registry())

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def inference() -> None:
        with torch.no_grad():
            for start in range(0, len(inputs), args.batch_size):
                model(inputs[start : start + args.batch_size].to(dev))
        sync()

    def capture() -> Any:
        return measure(
            loaded,
            records,
            inputs,
            estimator=args.estimator,
            batch_size=args.batch_size,
            progress=False,
            device=dev,
        )

    with torch.no_grad():  # warm-up: kernels, allocator, lazy library loading
        model(inputs[: args.batch_size].to(dev))
    sync()
    inference_s = best_of(args.repeat, inference)
    last: dict[str, Any] = {}
    capture_s = best_of(args.repeat, lambda: last.update(result=capture()))
    result = last["result"]
    row: dict[str, Any] = {
        "model": args.model,
        "input_shape": list(shape),
        "samples": len(inputs),
        "batch_size": args.batch_size,
        "estimator": args.estimator,
        "device": str(dev),
        "params": sum(p.numel() for p in model.parameters()),
        "measured_rows": len(result.by_record) + len(result.rows),
        "inference_s": round(inference_s, 3),
        "capture_s": round(capture_s, 3),
        "capture_ratio": round(capture_s / inference_s, 3),
        "stored_mib": round(result.stored_bytes / 2**20, 2),
        "projection_mib": round(result.projection_bytes / 2**20, 1),
    }
    if not args.skip_profile:
        profile_s = best_of(
            args.repeat,
            lambda: profile_loaded(
                loaded,
                device=str(dev),
                data=inputs,
                samples=len(inputs),
                batch_size=args.batch_size,
                estimator=args.estimator,
                progress=False,
            ),
        )
        row["profile_s"] = round(profile_s, 3)
        row["profile_ratio"] = round(profile_s / inference_s, 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--estimator", default="gaussian")
    parser.add_argument("--data", default="nuclei")
    parser.add_argument("--input-size", type=int, default=0, help="override H = W")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--skip-profile", action="store_true", help="skip the end-to-end run")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    row = bench(args)
    row["machine"] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    for key, value in row.items():
        print(f"{key:>15}: {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
