"""Recall code against hand-built rank matrices and an independent implementation (torch.topk)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_xmr.evaluate import ranks_of_targets, recalls, rerank_order


def test_hand_built_ranks():
    order = np.array([[3, 1, 2, 0], [0, 1, 2, 3], [2, 3, 0, 1]])
    targets = [[1], [0], [1]]
    ranks = ranks_of_targets(order, targets)
    assert ranks.tolist() == [1, 0, 3]
    r = recalls(ranks, ks=(1, 2, 4))
    assert r == {"R@1": pytest.approx(100 / 3), "R@2": pytest.approx(200 / 3), "R@4": pytest.approx(100.0)}


def test_multiple_targets_take_the_best_rank():
    order = np.array([[5, 4, 3, 2, 1, 0]])
    assert ranks_of_targets(order, [[0, 3, 4]]).tolist() == [1]
    assert ranks_of_targets(order[:, :2], [[0]]).tolist() == [2]  # absent -> len


def test_rerank_reorders_only_the_head():
    bi = np.array([[7, 6, 5, 4, 3]])
    out = rerank_order(bi, np.array([[0.1, 0.9, 0.5]], np.float32), 3)
    assert out.tolist() == [[6, 5, 7, 4, 3]]


def test_recall_matches_torch_topk_oracle():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    sims = rng.normal(size=(57, 23)).astype(np.float32)
    target = rng.integers(0, 23, 57)
    order = np.argsort(-sims, axis=1, kind="stable")
    ours = recalls(ranks_of_targets(order, [[t] for t in target]), ks=(1, 5, 10))
    top = torch.from_numpy(sims).topk(10, dim=1).indices
    for k in (1, 5, 10):
        hit = (top[:, :k] == torch.from_numpy(target)[:, None]).any(1).float().mean().item() * 100
        assert ours[f"R@{k}"] == pytest.approx(hit, abs=1e-4)
