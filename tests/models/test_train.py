"""Tests of the ranker training loop, checkpoints, warm start and DDP (2 CPU processes, slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import RankerConfig
from models.inputs import FieldLayout
from models.ranker import build_ranker
from models.train import (
    clip_grad_norm,
    load_checkpoint,
    predict_logits,
    prefetch,
    save_checkpoint,
    train_ranker,
    warm_start,
)

ROOT = Path(__file__).resolve().parents[2]
# fields a, b carry the planted cross (label = a xor b); c is noise. Bucket 0 is the null bucket, unused.
LAYOUT = FieldLayout(("a", "b", "c"), (3, 3, 5))


def xor_batches(n: int, batch_size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """n rows: a, b uniform in {1, 2}, c uniform in {1..4}, label = 1 when a != b."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(1, 3, (n,), generator=g)
    b = torch.randint(1, 3, (n,), generator=g)
    c = torch.randint(1, 5, (n,), generator=g)
    sparse = torch.stack([a, b, c], dim=1)  # (n, 3)
    label = (a != b).float()  # (n,)
    numeric = torch.randn(n, 1, generator=g)  # noise
    return [
        {
            "sparse": sparse[i : i + batch_size],
            "numeric": numeric[i : i + batch_size],
            "label": label[i : i + batch_size],
        }
        for i in range(0, n, batch_size)
    ]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # the CI box shares 2 cores among many jobs; torch's intra-op threads then spin-wait and tiny models run
    # ~50x slower, so these tests use one thread and restore the setting afterwards
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TRAIN = xor_batches(1024, 64, seed=0)
VALID = xor_batches(256, 128, seed=1)


def _cfg(**kw) -> RankerConfig:
    base = dict(
        field_dim=4, cross_layers=2, experts=2, rank=4, mlp=[16], dropout=0.1, lr=0.02, epochs=4, patience=2
    )
    base.update(kw)
    return RankerConfig(**base)


def _train(cfg: RankerConfig, seed: int = 0):
    model = build_ranker(cfg, LAYOUT, None, n_counts=0, n_numeric=1, text_dim=0, image_dim=0, seed=seed)
    res = train_ranker(model, lambda: TRAIN, lambda: VALID, cfg, seed=seed, device="cpu", progress=False)
    return model, res


def test_dcnmix_learns_the_planted_cross_and_lr_cannot():
    # label = a xor b has no first-order signal: LR's AUC stays near 0.5, a cross of the two fields fits it
    _, mix = _train(_cfg(model="dcnmix"))
    _, lr = _train(_cfg(model="lr"))
    assert mix.train_loss[-1] < mix.train_loss[0]
    assert mix.best_auc > 0.9
    assert lr.best_auc < 0.6
    assert mix.samples_per_s > 0
    assert len(mix.history) == len(mix.train_loss) >= 1


def test_same_seed_same_weights_and_global_rng_untouched():
    cfg = _cfg(model="dcnmix", epochs=2, dropout=0.3)
    state = torch.random.get_rng_state()
    m1, r1 = _train(cfg, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    m2, r2 = _train(cfg, seed=3)
    assert r1.history == r2.history
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


def test_early_stopping_on_a_flat_validation_auc():
    # every validation row is identical -> all logits equal -> AUC 0.5 every epoch; best is epoch 0 and
    # with patience 1 training stops after epoch 1 (2 epochs of history), not after 6
    flat = [
        {
            "sparse": torch.tensor([[1, 1, 1]] * 4),
            "numeric": torch.zeros(4, 1),
            "label": torch.tensor([0.0, 1.0, 0.0, 1.0]),
        }
    ]
    cfg = _cfg(model="lr", epochs=6, patience=1)
    model = build_ranker(cfg, LAYOUT, None, 0, 1, 0, 0, seed=0)
    res = train_ranker(model, lambda: TRAIN[:2], lambda: flat, cfg, seed=0, device="cpu", progress=False)
    assert res.history == [0.5, 0.5]
    assert res.best_epoch == 0


def test_l2_only_touches_rows_used_in_batches():
    # field c bucket 0 (null) never occurs in the data: its row must not move, even with a large L2
    cfg = _cfg(model="dcnmix", epochs=1, l2_embedding=1.0)
    model = build_ranker(cfg, LAYOUT, None, 0, 1, 0, 0, seed=0)
    W = model.inputs.embedding.weight
    unused_row = LAYOUT.offsets[2] + 0
    before = W.detach().clone()
    train_ranker(model, lambda: TRAIN[:4], lambda: VALID, cfg, seed=0, device="cpu", progress=False)
    assert torch.equal(W[unused_row], before[unused_row])
    used_row = LAYOUT.offsets[2] + 1
    assert not torch.equal(W[used_row], before[used_row])


def test_checkpoint_round_trip_and_warm_start(tmp_path):
    cfg = _cfg(model="dcnmix", epochs=1)
    model, _ = _train(cfg)
    path = save_checkpoint(
        tmp_path / "ranker" / "model.pt", model, {"feature_stats": {"numeric_mean": [0.0]}}
    )
    loaded, meta = load_checkpoint(path)
    assert meta["config"]["model"] == "dcnmix" and meta["layout"]["sizes"] == [3, 3, 5]
    assert meta["feature_stats"] == {"numeric_mean": [0.0]}
    a, _ = predict_logits(model, VALID, "cpu")
    b, _ = predict_logits(loaded, VALID, "cpu")
    assert (a == b).all()
    with pytest.raises(ValueError, match="disagree"):
        save_checkpoint(tmp_path / "x.pt", model, {"n_numeric": 7})
    # warm start into a model whose field c has more buckets: the table is reshaped, the rest is copied
    bigger = build_ranker(cfg, FieldLayout(("a", "b", "c"), (3, 3, 9)), None, 0, 1, 0, 0, seed=1)
    copied = warm_start(bigger, path)
    assert "inputs.embedding.weight" not in copied
    assert "cross.U" in copied and torch.equal(bigger.cross.U, model.cross.U)
    assert not torch.equal(bigger.inputs.embedding.weight[:3], model.inputs.embedding.weight[:3])


def test_ddp_without_torchrun_is_an_error(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        _train(_cfg(ddp=True, epochs=1))


DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    sys.path.insert(0, os.environ["REPO_ROOT"])
    sys.path.insert(0, os.environ["TEST_DIR"])
    from test_train import LAYOUT, TRAIN, VALID, _cfg
    from models.ranker import build_ranker
    from models.train import train_ranker

    cfg = _cfg(model="dcnmix", epochs=2, ddp=True)
    model = build_ranker(cfg, LAYOUT, None, 0, 1, 0, 0, seed=0)
    train = TRAIN[:-1]  # 15 batches: 7 full rounds of 2, one per rank each; the 15th is left out
    res = train_ranker(model, lambda: train, lambda: VALID, cfg, seed=0, device="cpu", progress=False)
    rank = os.environ["RANK"]
    out = os.environ["OUT_DIR"]
    torch.save(model.state_dict(), os.path.join(out, f"state{rank}.pt"))
    with open(os.path.join(out, f"result{rank}.json"), "w") as f:
        json.dump({"history": res.history, "samples_per_s": res.samples_per_s}, f)
    """
)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = dict(
        os.environ,
        REPO_ROOT=str(ROOT),
        TEST_DIR=str(Path(__file__).parent),
        OUT_DIR=str(tmp_path),
        OMP_NUM_THREADS="1",
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    rank0 = "\n".join(line for line in proc.stderr.splitlines() if "[rank1]" not in line)
    assert proc.returncode == 0, rank0[-4000:]
    r0 = json.loads((tmp_path / "result0.json").read_text())
    r1 = json.loads((tmp_path / "result1.json").read_text())
    assert r0["history"] == r1["history"]  # validation AUC gathered from both ranks: same on both
    assert r0["samples_per_s"] > 0
    s0, s1 = torch.load(tmp_path / "state0.pt"), torch.load(tmp_path / "state1.pt")
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k  # DDP keeps the replicas identical


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_training_runs():
    cfg = _cfg(model="dcnmix", epochs=2, amp=True)
    model = build_ranker(cfg, LAYOUT, None, 0, 1, 0, 0, seed=0)
    res = train_ranker(model, lambda: TRAIN, lambda: VALID, cfg, seed=0, device="cuda", progress=False)
    assert res.best_auc > 0.9
    assert next(model.parameters()).device.type == "cuda"


# ---------------------------------------------------------------- sparse (lazy) Adam, clipping, prefetch


def _one_epoch(batches, lazy_adam: bool, **kw):
    cfg = _cfg(model="dcnmix", epochs=1, dropout=0.0, **kw)
    model = build_ranker(cfg, LAYOUT, None, 0, 1, 0, 0, seed=0)
    train_ranker(
        model, lambda: batches, lambda: VALID, cfg, seed=0, device="cpu", progress=False, lazy_adam=lazy_adam
    )
    return model


def test_lazy_adam_moves_only_the_rows_a_step_reads():
    # step 1 reads c = 1 (row offsets[c] + 1), step 2 does not: with sparse gradients + SparseAdam that
    # row ends where step 1 left it; dense Adam keeps moving it in step 2 with the momentum of step 1.
    # Null buckets (row 0 of each field) are never read: SparseAdam never moves them
    first = {k: v[:8] for k, v in TRAIN[0].items()}
    first["sparse"] = first["sparse"].clone()
    first["sparse"][:, 2] = 1
    second = {k: v[:8] for k, v in TRAIN[1].items()}
    second["sparse"] = second["sparse"].clone()
    second["sparse"][:, 2] = 2
    row = LAYOUT.offsets[2] + 1
    for lazy, moved in ((True, False), (False, True)):
        one, two = _one_epoch([first], lazy), _one_epoch([first, second], lazy)
        W1, W2 = one.inputs.embedding.weight, two.inputs.embedding.weight
        assert torch.equal(W1[row], W2[row]) is not moved, lazy
        assert not torch.equal(W1[row + 1], W2[row + 1])  # the row step 2 reads moves in both
    init = build_ranker(_cfg(model="dcnmix"), LAYOUT, None, 0, 1, 0, 0, seed=0).inputs.embedding.weight
    unread = [0, LAYOUT.offsets[1], LAYOUT.offsets[2]]  # null buckets: never in the data
    assert torch.equal(_one_epoch(TRAIN, True).inputs.embedding.weight[unread], init[unread])
    assert not two.inputs.embedding.sparse  # the sparse flag is only set during training


def test_clip_grad_norm_counts_duplicate_sparse_rows_once():
    # dense grad [3, 4]; sparse grad of a 3x1 table with row 1 listed twice (1 + 1 = 2 when coalesced):
    # global norm sqrt(9 + 16 + 4) = sqrt(29); max_norm 1 scales every gradient by 1 / sqrt(29)
    a = torch.nn.Parameter(torch.zeros(2))
    t = torch.nn.Parameter(torch.zeros(3, 1))
    a.grad = torch.tensor([3.0, 4.0])
    t.grad = torch.sparse_coo_tensor(
        torch.tensor([[1, 1]]), torch.tensor([[1.0], [1.0]]), (3, 1), check_invariants=True
    )
    norm = clip_grad_norm([a, t], 1.0)
    s = 29**0.5
    torch.testing.assert_close(norm, torch.tensor(s))
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 4.0]) / s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        t.grad.to_dense(), torch.tensor([[0.0], [2.0], [0.0]]) / s, rtol=1e-5, atol=1e-6
    )
    # below the bound nothing changes
    a.grad = torch.tensor([0.3, 0.4])
    clip_grad_norm([a], 1.0)
    torch.testing.assert_close(a.grad, torch.tensor([0.3, 0.4]))


def test_lazy_adam_training_is_reproducible_and_still_learns_the_cross():
    cfg = _cfg(model="dcnmix", epochs=2, dropout=0.3)
    m1, r1 = _train(cfg, seed=5)
    m2, r2 = _train(cfg, seed=5)
    assert r1.history == r2.history and r1.best_auc > 0.9
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


@settings(max_examples=15, deadline=None)
@given(items=st.lists(st.integers(), max_size=30), depth=st.integers(0, 5))
def test_prefetch_keeps_order_and_content(items, depth):
    assert list(prefetch(items, depth)) == items


def test_training_with_prefetch_gives_the_same_weights():
    cfg = _cfg(model="dcnmix", epochs=1, dropout=0.3)
    states = []
    for depth in (0, 3):
        model = build_ranker(cfg, LAYOUT, None, 0, 1, 0, 0, seed=0)
        res = train_ranker(
            model,
            lambda: TRAIN,
            lambda: VALID,
            cfg,
            seed=1,
            device="cpu",
            progress=False,
            prefetch_batches=depth,
        )
        states.append((res.history, model.state_dict()))
    assert states[0][0] == states[1][0]
    for k, v in states[0][1].items():
        assert torch.equal(v, states[1][1][k]), k


def test_prefetch_reraises_the_producer_error_in_place():
    def gen():
        yield 1
        yield 2
        raise KeyError("broken file")

    got = []
    with pytest.raises(KeyError, match="broken file"):
        for x in prefetch(gen(), 1):
            got.append(x)
    assert got == [1, 2]  # everything before the failure was delivered


def test_prefetch_stops_its_thread_when_the_consumer_stops_early():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    stream = prefetch(endless(), 2)
    assert [next(stream), next(stream)] == [0, 1]
    stream.close()  # what a `break` out of the training loop does
    assert not [t for t in threading.enumerate() if t.name == "batch-prefetch"]
    with pytest.raises(ValueError, match="depth"):
        list(prefetch([1], -1))


def test_ddp_ranks_get_the_same_number_of_training_batches() -> None:
    from models.train import _Dist, _my_rounds

    for n in (0, 1, 5, 6, 7):
        got = [list(_my_rounds(range(n), _Dist(rank=r, world=3, on=True))) for r in range(3)]
        assert got == [list(range(r, 3 * (n // 3), 3)) for r in range(3)]
    assert list(_my_rounds(range(4), _Dist())) == [0, 1, 2, 3]  # one process: every batch
