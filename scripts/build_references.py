"""Build the shipped reference library, entropy_probe/patterns/data/references.json, from scratch.

    python scripts/build_references.py              # trains missing zoo members, then profiles
    python scripts/build_references.py --check      # rebuild in memory, compare with the file

Members: the vendor-trained networks inside the pinned asset wheels (requirements/assets.txt)
and the project's zoo trained with the seeds in entropy_probe.patterns.build.REFERENCE_SEEDS
(checkpoints cached in .cache/zoo by scripts/train_zoo.py; missing ones are trained here first,
about 15 min on one CPU thread). Other zoo seeds are never references: the separation
experiment (scripts/separation_experiment.py) scores them as held-out networks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from entropy_probe._io import atomic_write_text
from entropy_probe.patterns.build import REFERENCE_SEEDS, build_references
from entropy_probe.patterns.reference import Reference, library_document
from entropy_probe.patterns.zoo import list_members
from entropy_probe.patterns.zoo_train import train_member

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "entropy_probe" / "patterns" / "data" / "references.json"
DEFAULT_ZOO = ROOT / ".cache" / "zoo"


def comparable(document: dict[str, object]) -> dict[str, object]:
    """The document without build dates (a rebuild on another day is the same library)."""
    text = json.dumps(document, sort_keys=True)
    data = json.loads(text)
    for ref in data["references"]:
        ref["provenance"].pop("date", None)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--zoo-dir", type=Path, default=DEFAULT_ZOO)
    parser.add_argument("--members", nargs="*", default=None, help="zoo members (default: all)")
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    members = args.members if args.members is not None else list_members()
    for seed in REFERENCE_SEEDS:
        for name in members:
            result = train_member(name, seed, out_dir=args.zoo_dir, log=print)
            state = "cached" if result.skipped else f"trained in {result.train_seconds:.0f}s"
            print(f"zoo {name} seed {seed}: {result.metric} {result.final_metric:.4f} ({state})")

    def shown(ref: Reference) -> None:
        prov = ref.provenance
        metric = f"{prov.metric} {prov.metric_value:.4f}" if prov.metric_value is not None else ""
        print(f"  {ref.family:<18} {ref.name:<22} {ref.layers:>3} layers  {metric}")

    refs = build_references(args.zoo_dir, zoo_members=members, on_built=shown)
    document = library_document(refs)
    if args.check:
        shipped = json.loads(args.out.read_text(encoding="utf-8"))
        same = comparable(shipped) == comparable(document)
        print("the shipped references match a rebuild" if same else "MISMATCH with a rebuild")
        return 0 if same else 1
    atomic_write_text(args.out, json.dumps(document, indent=1, allow_nan=False) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
