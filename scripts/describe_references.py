"""What well-trained networks look like, family by family: the figures behind README's
"Reference patterns" section.

    pip install -e ".[bench]"          # matplotlib
    python scripts/describe_references.py

Reads the shipped library (entropy_probe/patterns/data/references.json) and writes
reports/references/families.png (per family: every reference's layers over relative depth, for
the raw ΔH/dim and the scale-free shape excess, with the family band) and
reports/references/families.json (per family and depth third: median and sign of both
quantities).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from entropy_probe._io import atomic_write_text
from entropy_probe.patterns.compare import family_band
from entropy_probe.patterns.pattern import Quantity
from entropy_probe.patterns.reference import load_library

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "reports" / "references"
THIRDS = (("early", 0.0, 1 / 3), ("middle", 1 / 3, 2 / 3), ("late", 2 / 3, 1.0001))


def summary() -> dict[str, object]:
    library = load_library(Path("/nonexistent-user-dir"))
    out: dict[str, object] = {}
    for family, members in library.families.items():
        fam: dict[str, object] = {"members": [m.name for m in members]}
        for quantity in (Quantity.DELTA_H_PER_DIM, Quantity.SHAPE_EXCESS):
            per_third = {}
            for label, lo, hi in THIRDS:
                # one median per network, then the median over networks: each counts once
                medians = []
                for ref in members:
                    vals = [
                        v for pts in ref.points[quantity].values() for d, v in pts if lo <= d < hi
                    ]
                    if vals:
                        medians.append(statistics.median(vals))
                per_third[label] = {
                    "median": statistics.median(medians) if medians else None,
                    "networks_negative": sum(m < 0 for m in medians),
                    "networks": len(medians),
                }
            fam[str(quantity)] = per_third
        out[family] = fam
    return out


def plot(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    library = load_library(Path("/nonexistent-user-dir"))
    families = list(library.families.items())
    fig, axes = plt.subplots(2, len(families), figsize=(4.2 * len(families), 7), squeeze=False)
    for col, (family, members) in enumerate(families):
        for row, quantity in enumerate((Quantity.DELTA_H_PER_DIM, Quantity.SHAPE_EXCESS)):
            ax = axes[row][col]
            for i, ref in enumerate(members):
                pts = sorted(p for g in ref.points[quantity].values() for p in g)
                ax.plot(
                    [d for d, _ in pts],
                    [v for _, v in pts],
                    "o-",
                    ms=3,
                    lw=0.6,
                    alpha=0.8,
                    color=f"C{i}",
                    label=ref.name,
                )
            band = family_band(family, members, quantity)
            for group, points in band.points.items():
                depths = [p.depth for p in points]
                ax.fill_between(
                    depths,
                    [p.lower for p in points],
                    [p.upper for p in points],
                    alpha=0.12,
                    color="k",
                    label=f"band ({group})",
                )
            ax.axhline(0.0, color="k", lw=0.5)
            ax.set_title(f"{family}: {quantity}", fontsize=9)
            ax.set_xlabel("relative depth", fontsize=8)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    data = summary()
    atomic_write_text(OUT / "families.json", json.dumps(data, indent=1) + "\n")
    plot(OUT / "families.png")
    print(json.dumps(data, indent=1))
    print(f"wrote {OUT.relative_to(ROOT)}/families.json and families.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
