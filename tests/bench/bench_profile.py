"""Benchmark: `entropy-probe profile` vs WeightWatcher's ``analyze()`` on the same model.

Run on demand (not part of the test suite)::

    pip install weightwatcher
    python tests/bench/bench_profile.py --out bench_profile.json

Both tools get the same in-memory timm model at random init (no hub downloads). timm
zero-initialises the last BatchNorm γ of every residual block, and a layer with γ = 0 folded in
is rank deficient outright, which entropy_probe settles without decomposing it; a trained
checkpoint has no such layers. ``--bn-like-trained`` redraws every BatchNorm's γ and running
variance from U(0.5, 1) so that every layer is decomposed, as in a trained checkpoint.
Times are wall-clock; entropy_probe's is the best of ``--repeat`` runs and includes the traced
forward pass, WeightWatcher's is one run of ``analyze()`` with its defaults. ``first_call_s``
is the process's first profile (the warm-up: lazy initialisation, and scratch memory not yet
kept, see entropy/_buffers.py). Compare the ratio, not absolute seconds: the machines are
shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from _timing import best_of  # this folder is sys.path[0] when run as a script


def redraw_batchnorms(model: torch.nn.Module, seed: int = 1) -> int:
    """γ and running variance of every BatchNorm drawn from U(0.5, 1); returns how many."""
    gen = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.affine:
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * 0.5 + 0.5)
                var = module.running_var
                if var is not None:
                    var.copy_(torch.rand(var.shape, generator=gen) * 0.5 + 0.5)
                count += 1
    return count


def bench_model(
    name: str, *, device: str, repeat: int, spectral: bool, ww: bool, bn_like_trained: bool
) -> dict[str, Any]:
    import timm

    from entropy_probe import LoadedModel, profile_loaded

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    redrawn = redraw_batchnorms(model) if bn_like_trained else 0
    shape = tuple(model.pretrained_cfg["input_size"])
    loaded = LoadedModel(source=f"timm:{name}", format="timm", module=model, input_shape=shape)
    start = time.perf_counter()
    result = profile_loaded(loaded, method="paper", device=device)  # warm-up
    first_call_s = time.perf_counter() - start
    row: dict[str, Any] = {
        "model": name,
        "batchnorms_redrawn": redrawn,
        "params": sum(p.numel() for p in model.parameters()),
        "analysed_layers": len(result.analysed),
        "device": result.device,
        "paper_s": best_of(repeat, lambda: profile_loaded(loaded, method="paper", device=device)),
        "first_call_s": first_call_s,
    }
    if spectral:
        row["spectral_s"] = best_of(
            1, lambda: profile_loaded(loaded, method="spectral", device=device)
        )
    if ww:
        import weightwatcher

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            watcher = weightwatcher.WeightWatcher(model=model)
            start = time.perf_counter()
            details = watcher.analyze()
            row["weightwatcher_s"] = time.perf_counter() - start
            row["weightwatcher_layers"] = len(details)
        row["ratio_ww_over_paper"] = row["weightwatcher_s"] / row["paper_s"]
    return row


def float64_matmul_gflops(device: str) -> float:
    """This machine's float64 matmul throughput right now (a 1024×2048 by 2048×1024 product,
    best of 5): the profile's Gram products run at up to this rate, so a shared machine's
    current share of its cores shows here."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    a = torch.randn(1024, 2048, dtype=torch.float64, device=dev)
    b = torch.randn(2048, 1024, dtype=torch.float64, device=dev)

    def product() -> None:
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    return 2 * 1024 * 2048 * 1024 / best_of(5, product) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_base_patch16_224"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-spectral", action="store_true")
    parser.add_argument("--no-weightwatcher", action="store_true")
    parser.add_argument(
        "--bn-like-trained",
        action="store_true",
        help="redraw BatchNorm γ and variance from U(0.5, 1): no zero-γ layers, as when trained",
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    gflops_at_start = float64_matmul_gflops(args.device)
    rows = [
        bench_model(
            name,
            device=args.device,
            repeat=args.repeat,
            spectral=not args.no_spectral,
            ww=not args.no_weightwatcher,
            bn_like_trained=args.bn_like_trained,
        )
        for name in args.models
    ]
    meta = {
        "float64_matmul_gflops_at_start": gflops_at_start,
        "float64_matmul_gflops_at_end": float64_matmul_gflops(args.device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "loadavg_1min": os.getloadavg()[0],
    }
    for row in rows:
        cells = [f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
        print("  ".join(cells))
    print(json.dumps(meta))
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
