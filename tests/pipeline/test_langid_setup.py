"""The language model's set-up per process: the trie depth found by expanding each distinct row once equals a
plain breadth-first search over every state, on the bundled py3langid model."""

from __future__ import annotations

import numpy as np

from data_pipelines.filters.langid_fast import _array, _trie_depth, fast_identifier


def _plain_bfs_depth(nm: np.ndarray, rows: np.ndarray) -> int:
    """Every state of each level expanded over all 256 bytes: the obvious search, no shortcuts."""
    table = nm.reshape(-1, 256)
    depth = np.full(len(rows), -1, dtype=np.int64)
    depth[0] = 0
    frontier = np.array([0])
    level = 0
    while len(frontier):
        targets = np.unique(table[rows[frontier]].ravel())  # each state's 256 next states
        targets = targets[depth[targets] < 0]
        if not len(targets):
            break
        level += 1
        depth[targets] = level
        frontier = targets
    return level


def test_trie_depth_equals_a_plain_breadth_first_search_on_the_bundled_model():
    ident = fast_identifier()
    nm, rows = _array(ident.ident.tk_nextmove), _array(ident.ident.tk_row)
    assert ident.depth == _trie_depth(nm, rows) == _plain_bfs_depth(nm, rows) >= 4


def test_trie_depth_of_a_small_automaton():
    """States 0 -a-> 1 -b-> 2 -c-> 3 (every other byte back to 0, or to 1 on 'a'): depth 3, with rows shared."""
    rows_table = np.zeros((4, 256), dtype=np.uint32)
    rows_table[:, ord("a")] = 1  # every state: 'a' starts the match again
    rows_table[1, ord("b")] = 2
    rows_table[2, ord("c")] = 3
    rows = np.array([0, 1, 2, 0], dtype=np.uint16)  # state 3 has state 0's row (shared rows)
    assert _trie_depth(rows_table.ravel(), rows) == 3
