"""Scratch buffers: reuse within and between analyses, per thread, bounded, releasable."""

from __future__ import annotations

import copy
import threading

import pytest
import timm
import torch

from entropy_probe import LoadedModel, profile_loaded, release_scratch_memory
from entropy_probe.entropy import _buffers as B
from entropy_probe.entropy import functional as F

CPU = torch.device("cpu")
F64 = torch.float64


def test_a_name_reuses_its_block_and_grows_it() -> None:
    pool = B.BufferPool()
    first = pool.take("gram", (3, 4), F64, CPU)
    again = pool.take("gram", (2, 5), F64, CPU)
    assert again.data_ptr() == first.data_ptr() and again.shape == (2, 5)
    other = pool.take("factor", (3, 4), F64, CPU)
    assert other.data_ptr() != first.data_ptr()
    bigger = pool.take("gram", (10, 10), F64, CPU)
    assert bigger.shape == (10, 10) and pool.nbytes() == (100 + 12) * 8


def test_a_reservation_sizes_the_first_block() -> None:
    pool = B.BufferPool()
    pool.reserve("batch", (4, 8, 8), F64, CPU)
    small = pool.take("batch", (1, 8, 8), F64, CPU)
    large = pool.take("batch", (4, 8, 8), F64, CPU)
    assert large.data_ptr() == small.data_ptr()


def test_scratch_allocates_afresh_unless_a_pool_is_active() -> None:
    a, b = (B.scratch("gram", (4, 4), F64, CPU) for _ in range(2))
    assert a.data_ptr() != b.data_ptr()  # two live fresh tensors
    pool = B.BufferPool()
    with pool.active():
        c = B.scratch("gram", (4, 4), F64, CPU)
        d = B.scratch("gram", (4, 4), F64, CPU)
        assert c.data_ptr() == d.data_ptr()
        inner = B.BufferPool()
        with inner.active():
            assert B.scratch("gram", (4, 4), F64, CPU).data_ptr() != c.data_ptr()
        assert B.scratch("gram", (4, 4), F64, CPU).data_ptr() == c.data_ptr()
    assert getattr(B._current, "pool", None) is None


def test_leaving_a_pool_trims_it_to_what_may_be_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = B.BufferPool()
    with pool.active():
        B.scratch("gram", (16,), F64, CPU)
    assert pool.nbytes() == 128  # under the limit: kept for the next analysis
    monkeypatch.setattr(B, "RETAINED_BYTES", 100)
    with pool.active():
        B.scratch("gram", (16,), F64, CPU)
    assert pool.nbytes() == 0  # over it: released


def test_each_thread_has_its_own_pool_and_can_release_it() -> None:
    release_scratch_memory()  # whatever earlier profiles on this thread kept
    mine = B.thread_pool()
    assert B.thread_pool() is mine
    theirs: list[B.BufferPool] = []
    worker = threading.Thread(target=lambda: theirs.append(B.thread_pool()))
    worker.start()
    worker.join()
    assert theirs[0] is not mine
    mine.take("gram", (32,), F64, CPU)
    assert release_scratch_memory() == 256
    assert mine.nbytes() == 0 and release_scratch_memory() == 0


def _resnet() -> LoadedModel:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    return LoadedModel(source="timm:resnet18", format="timm", module=model, input_shape=(3, 64, 64))


def _values(loaded: LoadedModel) -> list[tuple[float | None, ...]]:
    # CPU: scratch blocks are kept for CPU work only (a CUDA machine's "auto" would pick CUDA)
    profile = profile_loaded(loaded, method="paper", device="cpu")
    return [(layer.delta_h, layer.delta_h_raw, layer.spectral_shape) for layer in profile.layers]


def test_profiles_reuse_the_kept_blocks_and_agree() -> None:
    release_scratch_memory()
    loaded = _resnet()
    first = _values(loaded)
    pool = B.thread_pool()
    kept = {key: buffer.data_ptr() for key, buffer in pool._buffers.items()}
    assert kept and 0 < pool.nbytes() <= B.RETAINED_BYTES
    assert _values(loaded) == first
    assert {key: buffer.data_ptr() for key, buffer in pool._buffers.items()} == kept
    release_scratch_memory()


def test_profiles_on_two_threads_do_not_share_blocks() -> None:
    # one copy of the model per thread: a walk's hooks sit on the module itself
    loaded = _resnet()
    expected = _values(loaded)
    results: list[list[tuple[float | None, ...]]] = []

    def work(mine: LoadedModel) -> None:
        for _ in range(3):
            results.append(_values(mine))

    workers = [threading.Thread(target=work, args=(copy.deepcopy(loaded),)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(results) == 6 and all(result == expected for result in results)


def test_a_batch_needing_gradients_takes_no_scratch() -> None:
    # the autograd path never writes into pooled blocks a later call would overwrite
    pool = B.BufferPool()
    A = torch.randn(2, 4, 6, dtype=F64, requires_grad=True)
    with pool.active():
        value = F.sum_log_singular_values(A).sum()
    (grad,) = torch.autograd.grad(value, A)
    assert pool.nbytes() == 0
    torch.testing.assert_close(grad, torch.linalg.pinv(A.detach()).mT)


def test_blocks_made_under_inference_mode_are_replaced_outside_it() -> None:
    # an inference tensor cannot be written outside inference mode: a profile run under
    # torch.inference_mode must not break the next one on the thread
    A = torch.randn(3, 5, 9, dtype=F64)
    expected = F.sum_log_singular_values(A, "svd")
    pool = B.BufferPool()
    with torch.inference_mode(), pool.active():
        inside = F.sum_log_singular_values(A)
    assert all(buffer.is_inference() for buffer in pool._buffers.values())
    with pool.active():
        outside = F.sum_log_singular_values(A)
    assert not any(buffer.is_inference() for buffer in pool._buffers.values())
    torch.testing.assert_close(inside, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(outside, expected, rtol=1e-12, atol=0)
