"""The end-of-run check that every rank holds the same weights notices a difference."""
import torch

from pretrain.engine import ranks_disagree, weights_fingerprint


def test_fingerprint_changes_when_weights_are_swapped_or_nudged():
    a, b = torch.randn(3, 4), torch.randn(5)
    base = weights_fingerprint([a, b]).item()
    assert weights_fingerprint([a.clone(), b.clone()]).item() == base
    assert weights_fingerprint([b, a]).item() != base          # same numbers, other places
    nudged = a.clone()
    nudged[0, 0] += 1e-3
    assert ranks_disagree([base, weights_fingerprint([nudged, b]).item()])
    assert not ranks_disagree([base, base, base])
