"""The shared memory updates against per-image loops written from METHODS §2-§4."""
import pytest
import torch
import torch.nn.functional as F

from dcmip.memory.updates import (batch_momentum_update_, grouped_momentum_update_, hardest_momentum_update_,
                                  normalized_centroids, occurrence_index, sequential_momentum_update_)
from dcmip.structures import LabelGroups


def naive_sequential(memory, features, labels, m):
    memory = memory.clone()
    for f, y in zip(features, labels.tolist()):
        memory[y] = F.normalize(m * memory[y] + (1 - m) * f, dim=0)
    return memory


def naive_hardest(memory, features, labels, m):
    out = memory.clone()
    for y in sorted(set(labels.tolist())):
        rows = [i for i, l in enumerate(labels.tolist()) if l == y]
        sims = [float(features[i] @ memory[y]) for i in rows]
        hard = rows[sims.index(min(sims))]
        out[y] = F.normalize(m * memory[y] + (1 - m) * features[hard], dim=0)
    return out


def random_case(seed, n=40, entries=7, d=16):
    g = torch.Generator().manual_seed(seed)
    memory = F.normalize(torch.randn(entries, d, generator=g, dtype=torch.float64), dim=1)
    features = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, entries, (n,), generator=g)
    return memory, features, labels


def test_occurrence_index():
    assert occurrence_index(torch.tensor([3, 1, 3, 3, 1, 0])).tolist() == [0, 0, 1, 2, 1, 0]
    assert occurrence_index(torch.tensor([], dtype=torch.long)).tolist() == []


@pytest.mark.parametrize("seed", range(5))
def test_sequential_update_matches_the_per_image_loop(seed):
    memory, features, labels = random_case(seed)
    expected = naive_sequential(memory, features, labels, 0.2)
    sequential_momentum_update_(memory, features, labels, 0.2)
    torch.testing.assert_close(memory, expected, atol=1e-12, rtol=0)


def test_sequential_update_with_a_host_side_round_bound():
    memory, features, labels = random_case(0)
    expected = naive_sequential(memory, features, labels, 0.1)
    bound = int(torch.bincount(labels).max()) + 3  # extra rounds are no-ops
    sequential_momentum_update_(memory, features, labels, 0.1, rounds=bound)
    torch.testing.assert_close(memory, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("entries", [16, 700])
@pytest.mark.parametrize("seed", range(3))
def test_sequential_update_with_heavy_multiplicity(seed, entries):
    """256 rows over 16 labels (every label ~16 times) and over 700 labels (mostly once)."""
    g = torch.Generator().manual_seed(100 + seed)
    memory = F.normalize(torch.randn(entries, 8, generator=g, dtype=torch.float64), dim=1)
    features = F.normalize(torch.randn(256, 8, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, entries, (256,), generator=g)
    expected = naive_sequential(memory, features, labels, 0.2)
    sequential_momentum_update_(memory, features, labels, 0.2)
    torch.testing.assert_close(memory, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("extra", [1, 50, 300])
def test_sequential_update_with_far_more_rounds_than_needed(extra):
    """A P x K batch (16 labels x 16 images, shuffled) with rounds well above K, even above B."""
    g = torch.Generator().manual_seed(extra)
    memory = F.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
    features = F.normalize(torch.randn(256, 8, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randperm(40, generator=g)[:16].repeat_interleave(16)[torch.randperm(256, generator=g)]
    expected = naive_sequential(memory, features, labels, 0.3)
    sequential_momentum_update_(memory, features, labels, 0.3, rounds=16 + extra)
    torch.testing.assert_close(memory, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("rounds", [None, 37, 60])
def test_sequential_update_with_a_single_label_repeated(rounds):
    """Every row carries label 2: round r's window is a single slot, the last one row n - 1."""
    g = torch.Generator().manual_seed(7)
    memory = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    features = F.normalize(torch.randn(37, 8, generator=g, dtype=torch.float64), dim=1)
    labels = torch.full((37,), 2)
    expected = naive_sequential(memory, features, labels, 0.2)
    sequential_momentum_update_(memory, features, labels, 0.2, rounds=rounds)
    torch.testing.assert_close(memory, expected, atol=1e-12, rtol=0)


def test_sequential_update_with_mixed_multiplicities():
    """Labels occurring 1..8 times, so later rounds' windows run past their rows and past n."""
    g = torch.Generator().manual_seed(3)
    labels = torch.cat([torch.full((k,), k) for k in range(1, 9)])[torch.randperm(36, generator=g)]
    memory = F.normalize(torch.randn(9, 8, generator=g, dtype=torch.float64), dim=1)
    features = F.normalize(torch.randn(36, 8, generator=g, dtype=torch.float64), dim=1)
    expected = naive_sequential(memory, features, labels, 0.4)
    for rounds in (None, 8, 12):
        out = memory.clone()
        sequential_momentum_update_(out, features, labels, 0.4, rounds=rounds)
        torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("rounds", [None, 0, 4])
def test_sequential_update_of_an_empty_batch(rounds):
    memory = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1)
    before = memory.clone()
    sequential_momentum_update_(memory, torch.empty(0, 4, dtype=torch.float64),
                                torch.empty(0, dtype=torch.long), 0.2, rounds=rounds)
    assert torch.equal(memory, before)


def test_sequential_update_known_case():
    """Two images of entry 0 with m = 0.5: the second moves the entry the first produced."""
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    features = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    sequential_momentum_update_(memory, features, torch.tensor([0, 0]), 0.5)
    first = torch.tensor([1.0, 1.0]) / 2 ** 0.5
    second = F.normalize(0.5 * first + 0.5 * torch.tensor([0.0, 1.0]), dim=0)
    torch.testing.assert_close(memory[0], second.double())
    torch.testing.assert_close(memory[1], torch.tensor([0.0, 1.0], dtype=torch.float64))



# ---- the batch grouped on the host (LabelGroups) ---------------------------------------------

def test_label_groups_known_case():
    """Labels 5, 3, 5, 7, 3, 5: rows in order of first occurrence (5, 3, 7); round r holds each
    label's r-th position, padded with its first where it has fewer."""
    groups = LabelGroups.from_labels([5, 3, 5, 7, 3, 5])
    assert groups.labels.tolist() == [5, 3, 7]
    assert groups.inverse.tolist() == [0, 1, 0, 2, 1, 0]
    assert groups.occurrence.tolist() == [[0, 1, 3], [2, 4, 3], [5, 1, 3]]
    assert groups.present.tolist() == [[True, True, True], [True, True, False], [True, False, False]]
    assert groups.rounds == 3 and not groups.complete
    torch.testing.assert_close(groups.mean_weights, torch.tensor([1 / 3, 1 / 2, 1 / 3, 1, 1 / 2, 1 / 3], dtype=torch.float64))
    assert LabelGroups.from_labels([4, 2, 2, 4]).complete


def test_label_groups_of_an_empty_batch():
    groups = LabelGroups.from_labels([])
    assert groups.rounds == 0 and groups.labels.numel() == 0 and groups.inverse.numel() == 0


@pytest.mark.parametrize("seed", range(4))
def test_label_groups_match_the_per_image_definition(seed):
    labels = torch.randint(0, 9, (50,), generator=torch.Generator().manual_seed(seed))
    groups = LabelGroups.from_labels(labels)
    assert torch.equal(groups.labels[groups.inverse], labels)
    occurrence = occurrence_index(labels)
    for i, (label, r) in enumerate(zip(labels.tolist(), occurrence.tolist())):
        row = groups.inverse[i]
        assert groups.present[r, row] and groups.occurrence[r, row] == i
    assert groups.present.sum() == len(labels)


@pytest.mark.parametrize("seed", range(5))
def test_grouped_update_matches_the_per_image_loop(seed):
    """Random labels (mixed multiplicities, incomplete rounds)."""
    memory, features, labels = random_case(seed)
    expected = naive_sequential(memory, features, labels, 0.2)
    grouped_momentum_update_(memory, features, LabelGroups.from_labels(labels), 0.2)
    torch.testing.assert_close(memory, expected, atol=1e-12, rtol=0)


def test_grouped_update_of_a_p_by_k_batch_and_a_view():
    """Every label K times (complete rounds), into a slice of a larger memory (DCMIP's proxies
    A are the first rows of its proxy table): the rest is untouched."""
    memory, features, _ = random_case(3, n=12, entries=10)
    labels = torch.tensor([2, 5, 2, 0, 5, 0, 2, 0, 5, 0, 2, 5])
    table = torch.cat([memory, memory.flip(0)])
    expected = naive_sequential(memory, features, labels, 0.1)
    groups = LabelGroups.from_labels(labels)
    assert groups.complete
    grouped_momentum_update_(table[:10], features, groups, 0.1)
    torch.testing.assert_close(table[:10], expected, atol=1e-12, rtol=0)
    assert torch.equal(table[10:], memory.flip(0))


def test_batch_update_takes_the_groups_or_the_bound():
    """With the collation's groups and with only its multiplicity bound: the same memory."""
    memory, features, labels = random_case(1)
    batch = {"clusters": labels, "multiplicity": {"clusters": int(torch.bincount(labels).max())}}
    by_bound = batch_momentum_update_(memory.clone(), features, batch, "clusters", 0.2)
    by_groups = batch_momentum_update_(memory.clone(), features,
                                       {**batch, "groups": {"clusters": LabelGroups.from_labels(labels)}},
                                       "clusters", 0.2)
    torch.testing.assert_close(by_groups, by_bound, atol=1e-12, rtol=0)


@pytest.mark.parametrize("seed", range(5))
def test_hardest_update_matches_the_loop(seed):
    memory, features, labels = random_case(seed)
    expected = naive_hardest(memory, features, labels, 0.1)
    hardest_momentum_update_(memory, features, labels, 0.1)
    torch.testing.assert_close(memory, expected, atol=1e-12, rtol=0)


def test_centroids():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    out = normalized_centroids(features, torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(out, torch.tensor([[2 ** -0.5, 2 ** -0.5], [0.0, 1.0]]))
