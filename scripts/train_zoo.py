"""Train the zoo (entropy_probe.patterns.zoo) for several seeds, with snapshots, into .cache/zoo.

    python scripts/train_zoo.py                        # every member, seeds 0 1 2
    python scripts/train_zoo.py --members mnist_cnn nuclei_unet --seeds 0
    python scripts/train_zoo.py --force                # retrain even finished members

Each (member, seed) goes to ``<out-dir>/<member>/seed<k>/``: ``epoch<e>.safetensors`` snapshots
(epoch 0 = the random init, fractional and early epochs = partly trained, the last = converged)
and ``metrics.json`` (held-out metric at every snapshot and epoch, baselines, time, versions,
provenance). A (member, seed) whose metrics.json is complete is skipped, so an interrupted run
resumes where it stopped. ``<out-dir>/index.json`` lists every finished run. One thread by
default: the weights' bits depend on the thread count, and on a shared machine one thread is
also the fastest. Profile a snapshot with ``entropy-probe ... zoo:NAME --weights FILE``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from entropy_probe._io import atomic_write_text
from entropy_probe.patterns.zoo import ZOO, get_spec, list_members
from entropy_probe.patterns.zoo_train import MemberResult, read_member_result, train_member

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".cache" / "zoo"


def _table(results: list[MemberResult]) -> str:
    head = f"{'member':<16} {'seed':>4} {'epochs':>6} {'metric':<9} {'final':>8} {'baseline':>9} "
    head += f"{'time s':>7}  snapshots (epoch: metric)"
    lines = [head, "-" * len(head)]
    for r in results:
        snaps = ", ".join(f"{s.epoch:g}: {s.metric:.4f}" for s in r.snapshots)
        extra = "".join(f" {k}={v:.4f}" for k, v in r.baselines.items() if k != "trivial")
        lines.append(
            f"{r.name:<16} {r.seed:>4} {r.epochs:>6} {r.metric:<9} {r.final_metric:>8.4f} "
            f"{r.baseline:>9.4f} {r.train_seconds:>7.1f}  {snaps}"
            + (f"  (baselines:{extra})" if extra else "")
            + ("  [already done]" if r.skipped else "")
        )
    return "\n".join(lines)


def _write_index(out_dir: Path) -> None:
    runs = []
    for name in list_members():
        for seed_dir in sorted((out_dir / name).glob("seed*")):
            result = read_member_result(seed_dir)
            if result is None:
                continue
            runs.append(
                {
                    "name": name,
                    "family": result.family,
                    "seed": result.seed,
                    "directory": f"{name}/{seed_dir.name}",
                    "metric": result.metric,
                    "direction": result.direction,
                    "final_metric": result.final_metric,
                    "baselines": result.baselines,
                    "snapshots": {f"{s.epoch:g}": s.file for s in result.snapshots},
                }
            )
    atomic_write_text(out_dir / "index.json", json.dumps({"runs": runs}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--members", nargs="+", default=list(ZOO), metavar="NAME")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on cuda)")
    parser.add_argument("--force", action="store_true", help="retrain finished members too")
    args = parser.parse_args(argv)
    for name in args.members:
        get_spec(name)  # unknown names fail before any training starts

    start = time.perf_counter()
    results = []
    for name in args.members:
        for seed in args.seeds:
            result = train_member(
                name,
                seed,
                out_dir=args.out_dir,
                threads=args.threads,
                device=args.device,
                resume=not args.force,
                log=lambda line: print(line, flush=True),
            )
            state = "skipped (complete)" if result.skipped else f"{result.train_seconds:.1f}s"
            print(f"== {name} seed{seed}: {result.metric} {result.final_metric:.4f} [{state}]")
            results.append(result)
            _write_index(args.out_dir)
    print()
    print(_table(results))
    print(f"\ntotal {time.perf_counter() - start:.0f}s; runs in {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
