"""Two CPU processes under torchrun (gloo): consistent replicas, one writer, exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]

# Each rank trains tiny_mlp on 256 digits (128 per rank, 8 steps of 16 per epoch), then saves
# its own final weights to RANKS/rank<N>.pt: the test's channel, since the tool itself writes
# only from rank 0. STOP > 0 stops every rank after that optimizer step; STOP < 0 resumes.
SCRIPT = textwrap.dedent(
    """
    import os, sys
    from dataclasses import replace
    from pathlib import Path
    import torch
    sys.path.insert(0, sys.argv[1])
    from train.helpers import CONFIG, digits_data, tiny_mlp
    from entropy_probe.train import fit

    out, ranks, stop = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])

    def on_step(epoch, step):
        if step == stop:
            raise SystemExit(3)

    model = tiny_mlp()
    config = replace(CONFIG, epochs=2, batch_size=16)
    result = fit(
        model, "classify", digits_data(), config, out_dir=out, resume=stop < 0, on_step=on_step
    )
    ranks.mkdir(exist_ok=True)
    torch.save(model.state_dict(), ranks / f"rank{os.environ['RANK']}.pt")
    # one write of one short line: the ranks share the pipe and finish together
    sys.stdout.write(f"steps {result.steps} notes {result.notes}\\n")
    sys.stdout.flush()
    """
)


def _torchrun(out: Path, ranks: Path, stop: int = 0) -> subprocess.CompletedProcess[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    args = ["--nproc_per_node", "2", "--no-python", sys.executable, "-c", SCRIPT]
    return subprocess.run(
        [*launcher, *args, str(TESTS), str(out), str(ranks), str(stop)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(path, weights_only=True)
    return state


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_gloo_processes_train_one_model_and_rank0_writes(tmp_path: Path):
    out, ranks = tmp_path / "out", tmp_path / "ranks"
    proc = _torchrun(out, ranks)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("steps 16") == 2  # 8 steps per epoch on each rank
    assert _same(_weights(ranks / "rank0.pt"), _weights(ranks / "rank1.pt"))
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint-e0001.pt", "checkpoint-e0002.pt", "metrics.jsonl", "run_config.json",
    ]  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["metric"] > 0.3  # chance: 0.1
    assert json.loads((out / "run_config.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_an_interrupted_ddp_run_resumes_exactly(tmp_path: Path):
    whole = _torchrun(tmp_path / "whole", tmp_path / "whole_ranks")
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut = _torchrun(tmp_path / "cut", tmp_path / "cut_ranks", stop=11)
    assert cut.returncode != 0
    resumed = _torchrun(tmp_path / "cut", tmp_path / "cut_ranks", stop=-1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint-e0001.pt" in resumed.stdout
    reference = _weights(tmp_path / "whole_ranks" / "rank0.pt")
    for rank in (0, 1):
        assert _same(reference, _weights(tmp_path / "cut_ranks" / f"rank{rank}.pt"))
