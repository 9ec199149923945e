"""helper/metrics.py's translation retrieval on constructed embeddings with a known answer."""

from __future__ import annotations

import pytest
import torch

from helper.metrics import retrieval_accuracy


def test_retrieval_counts_the_translations_found_both_ways():
    candidates = torch.eye(4)  # (N, H): four orthogonal "English" embeddings
    queries = candidates.clone() * 3  # cosine ignores the length: every query finds its own translation...
    queries[1] = candidates[2] + 0.1 * candidates[1]  # ...except query 1, nearest to candidate 2
    forward, backward = retrieval_accuracy(queries, candidates)
    assert forward == pytest.approx(3 / 4)
    # candidate 1's nearest query is still query 1 (the only one with a component on it); candidate 2's is query 2
    # (cos 1) before query 1 (cos 0.995)
    assert backward == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ"):
        retrieval_accuracy(queries[:3], candidates)
