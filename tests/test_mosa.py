"""MoSA: the split is a partition, a sparse step trains only the active modules, the merge is exact and free."""

from __future__ import annotations

import pytest
import torch
from circuitml.moe import BottleneckAdapter, MoSAAdapter
from torch.utils.flop_counter import FlopCounterMode

from circuitml.errors import ConfigError


def _trained(strategy: str = "stochastic", n: int = 4) -> MoSAAdapter:
    torch.manual_seed(0)
    mosa = MoSAAdapter(12, 6, num_modules=n, strategy=strategy, seed=1)
    with torch.no_grad():
        for p in mosa.adapter.parameters():
            p.normal_()  # a trained-looking adapter (up starts at zero)
    return mosa


def test_split_is_a_balanced_partition() -> None:
    mosa = _trained()
    for name, p in mosa.adapter.named_parameters():
        owner = mosa.owner(name)
        assert owner.shape == p.shape and owner.min() >= 0 and owner.max() < 4
        counts = torch.bincount(owner.reshape(-1), minlength=4)
        assert int(counts.max() - counts.min()) <= 1  # every entry in exactly one module, equal sizes


def test_merge_is_exact_with_the_standard_shape_and_flops() -> None:
    mosa = _trained()
    merged = mosa.merge()
    standard = BottleneckAdapter(12, 6)
    assert isinstance(merged, BottleneckAdapter)
    assert [p.shape for p in merged.parameters()] == [p.shape for p in standard.parameters()]
    h = torch.randn(9, 12)

    def flops(m) -> int:
        with FlopCounterMode(display=False) as fc:
            m(h)
        return fc.get_total_flops()

    assert flops(merged) == flops(standard) > 0
    # the merge is the sum of the N sparse modules (naively, module by module) ...
    for name, p in merged.named_parameters():
        owner = mosa.owner(name)
        modules = [mosa.adapter.get_parameter(name) * (owner == i) for i in range(4)]
        torch.testing.assert_close(p, sum(modules))
    # ... and computes what the ensemble of all modules computes
    torch.testing.assert_close(merged(h), mosa.eval()(h))
    everything = torch.ones(4, dtype=torch.bool)
    torch.testing.assert_close(merged(h), mosa.train()(h, subset=everything))


def test_sparse_step_updates_only_active_modules() -> None:
    mosa = _trained()
    before = {k: p.detach().clone() for k, p in mosa.adapter.named_parameters()}
    subset = torch.tensor([True, False, True, False])
    mosa.train()
    mosa(torch.randn(16, 12), subset=subset).pow(2).sum().backward()
    torch.optim.SGD(mosa.parameters(), lr=0.1).step()
    for name, p in mosa.adapter.named_parameters():
        active = subset[mosa.owner(name)]
        assert torch.equal(p[~active], before[name][~active])
        assert (p[active] != before[name][active]).any()


def test_hierarchical_subsets_are_tree_nodes_and_mix_levels() -> None:
    mosa = _trained("hierarchical", n=8)
    gen = torch.Generator().manual_seed(0)
    sizes = set()
    for _ in range(200):
        m = mosa.sample_subset(gen)
        idx = m.nonzero().squeeze(1)
        k = len(idx)
        assert (
            k in (1, 2, 4, 8) and int(idx[0]) % k == 0 and torch.equal(idx, torch.arange(idx[0], idx[0] + k))
        )
        sizes.add(k)
    assert sizes == {1, 2, 4, 8}
    stochastic = _trained("stochastic", n=8)
    assert all(int(stochastic.sample_subset(gen).sum()) == 4 for _ in range(20))


def test_fresh_mosa_is_the_identity_and_bad_settings_raise() -> None:
    h = torch.randn(3, 5)
    torch.testing.assert_close(MoSAAdapter(5, 2).train()(h), h)
    with pytest.raises(ConfigError, match="power of two"):
        MoSAAdapter(5, 2, num_modules=3, strategy="hierarchical")
    with pytest.raises(ConfigError, match="strategy"):
        MoSAAdapter(5, 2, strategy="random")
