"""The shared memory updates against per-image loops written from METHODS §2-§4."""
import pytest
import torch
import torch.nn.functional as F

from dcmip.memory.updates import (hardest_momentum_update_, normalized_centroids, occurrence_index,
                                  sequential_momentum_update_)


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


def test_sequential_update_known_case():
    """Two images of entry 0 with m = 0.5: the second moves the entry the first produced."""
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    features = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    sequential_momentum_update_(memory, features, torch.tensor([0, 0]), 0.5)
    first = torch.tensor([1.0, 1.0]) / 2 ** 0.5
    second = F.normalize(0.5 * first + 0.5 * torch.tensor([0.0, 1.0]), dim=0)
    torch.testing.assert_close(memory[0], second.double())
    torch.testing.assert_close(memory[1], torch.tensor([0.0, 1.0], dtype=torch.float64))


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
