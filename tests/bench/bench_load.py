"""Load benchmark: peak memory of one large profile, and RSS over many profiles in one process.

Run on demand (not part of the test suite)::

    python tests/bench/bench_load.py --out bench_load.json
    python tests/bench/bench_load.py --skip-large --loop 30        # the loop only

``large``: a fresh subprocess builds timm ``vit_large_patch16_224`` (random init: no download)
and profiles it (``--method paper`` by default); it reports the peak RSS (``getrusage``
``ru_maxrss``) after building the model and after the profile, the profile's wall time, and
the model's weight bytes, so the profile's own peak is ``peak_after_profile - peak_after_build``.

``loop``: one process profiles ``--loop N`` models in turn (the embedded default model with
``--data digits``, and the random-init timm ``resnet18``, ``test_vit``, ``mobilenetv3_small_100``),
runs ``gc.collect()`` after each, and records the RSS after each profile. The growth from the
end of the first cycle to the end is what a leak would show.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_LARGE = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import timm, torch
torch.set_num_threads(int(sys.argv[3]))
from entropy_probe import LoadedModel, profile_loaded

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

name, method = sys.argv[1], sys.argv[2]
base = peak_mib()
torch.manual_seed(0)
model = timm.create_model(name, pretrained=False).eval()
shape = tuple(model.pretrained_cfg["input_size"])
built = peak_mib()
loaded = LoadedModel(source=f"timm:{name}", format="timm", module=model, input_shape=shape)
start = time.perf_counter()
result = profile_loaded(loaded, method=method, device="cpu", progress=False)
elapsed = time.perf_counter() - start
print(json.dumps({
    "model": name,
    "method": method,
    "params": sum(p.numel() for p in model.parameters()),
    "weight_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
    "layers": len(result.layers),
    "analysed": len(result.analysed),
    "peak_rss_after_import_mib": base,
    "peak_rss_after_build_mib": built,
    "peak_rss_after_profile_mib": peak_mib(),
    "profile_s": elapsed,
}))
"""

LOOP_SOURCES = (
    ("default", "digits"),
    ("timm:resnet18", None),
    ("timm:test_vit", None),
    ("timm:mobilenetv3_small_100", None),
)


def rss_mib() -> float:
    with Path("/proc/self/statm").open(encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_large(name: str, method: str, threads: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _LARGE, name, method, str(threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    row: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    row["profile_peak_mib"] = row["peak_rss_after_profile_mib"] - row["peak_rss_after_build_mib"]
    return row


def bench_loop(count: int) -> dict[str, Any]:
    import warnings

    warnings.simplefilter("ignore")
    from entropy_probe import profile_loaded
    from entropy_probe.loading import load_model

    rss: list[float] = []
    start = time.perf_counter()
    for i in range(count):
        source, data = LOOP_SOURCES[i % len(LOOP_SOURCES)]
        loaded = load_model(source)
        profile_loaded(loaded, device="cpu", data=data, samples=64, progress=False)
        del loaded
        gc.collect()
        rss.append(rss_mib())
    cycle = len(LOOP_SOURCES)
    return {
        "profiles": count,
        "sources": [s for s, _ in LOOP_SOURCES],
        "rss_after_each_mib": [round(v, 1) for v in rss],
        "rss_after_first_cycle_mib": rss[cycle - 1],
        "rss_at_end_mib": rss[-1],
        "growth_after_first_cycle_mib": rss[-1] - rss[cycle - 1],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_large_patch16_224")
    parser.add_argument("--method", default="paper", choices=["paper", "spectral", "both"])
    parser.add_argument("--loop", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.system()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
    }
    if not args.skip_large:
        report["large"] = bench_large(args.model, args.method, args.threads)
        print(json.dumps(report["large"], indent=2), flush=True)
    if args.loop:
        report["loop"] = bench_loop(args.loop)
        print(json.dumps({k: v for k, v in report["loop"].items() if k != "rss_after_each_mib"}))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
