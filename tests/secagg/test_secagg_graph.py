"""Neighbourhood graphs: regular, symmetric, reproducible from the seed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.errors import SecAggConfigError
from fedrec.secagg.graph import build_graph, check_threshold, degree_of, neighbours_of

SEED = bytes(range(32))


@st.composite
def graphs(draw):
    n = draw(st.integers(min_value=2, max_value=40))
    ids = sorted(draw(st.sets(st.integers(0, 2**64 - 1), min_size=n, max_size=n)))
    k = draw(st.integers(min_value=1, max_value=n - 1))
    if k % 2 == 1 and n % 2 == 1:
        k -= 1
    if k == 0:
        k = 2 if n > 2 else 1
    return ids, k, draw(st.binary(min_size=32, max_size=32))


@settings(deadline=None, max_examples=80)
@given(graphs())
def test_graph_is_k_regular_symmetric_and_loop_free(case) -> None:
    ids, k, seed = case
    graph = build_graph(ids, degree=k, seed=seed, round_id=1)
    assert set(graph) == set(ids)
    for node, peers in graph.items():
        assert len(peers) == k
        assert node not in peers
        for peer in peers:
            assert node in graph[peer]
    node = ids[len(ids) // 2]
    assert neighbours_of(node, ids, degree=k, seed=seed, round_id=1) == graph[node]


def test_complete_graph() -> None:
    ids = [3, 9, 27, 81]
    graph = build_graph(ids, degree=None, seed=SEED, round_id=0)
    assert graph[9] == {3, 27, 81}
    assert build_graph(ids, degree=3, seed=SEED, round_id=0) == graph


def test_graph_depends_on_seed_and_round() -> None:
    ids = list(range(100, 160))
    base = build_graph(ids, degree=6, seed=SEED, round_id=0)
    assert base == build_graph(ids, degree=6, seed=SEED, round_id=0)
    assert base != build_graph(ids, degree=6, seed=bytes(32), round_id=0)
    assert base != build_graph(ids, degree=6, seed=SEED, round_id=1)


def test_infeasible_settings_are_refused() -> None:
    with pytest.raises(SecAggConfigError, match="both odd"):
        degree_of(7, 3)
    with pytest.raises(SecAggConfigError):
        degree_of(5, 5)
    with pytest.raises(SecAggConfigError):
        build_graph([1], degree=None, seed=SEED, round_id=0)
    with pytest.raises(SecAggConfigError):
        build_graph([2, 1], degree=None, seed=SEED, round_id=0)
    with pytest.raises(SecAggConfigError):
        build_graph([1, 2, 3], degree=2, seed=b"short", round_id=0)
    with pytest.raises(SecAggConfigError):
        neighbours_of(4, [1, 2, 3], degree=2, seed=SEED, round_id=0)


def test_threshold_policy() -> None:
    check_threshold(4, 6, allow_minority_threshold=False)
    with pytest.raises(SecAggConfigError, match="majority"):
        check_threshold(3, 6, allow_minority_threshold=False)
    check_threshold(3, 6, allow_minority_threshold=True)
    with pytest.raises(SecAggConfigError):
        check_threshold(7, 6, allow_minority_threshold=True)
    with pytest.raises(SecAggConfigError):
        check_threshold(0, 6, allow_minority_threshold=True)
