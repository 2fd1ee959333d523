"""The authors' random erasing (issue 12 item 7) against a transcription of their code."""
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import dcmip  # noqa: F401
from dcmip.config import add_dcmip_config
from dcmip.data.transforms import AuthorsRandomErasing, build_train_transforms
from dcmip.registry import UserInputError
from fastreid.config import get_cfg


class TorchRandom:
    """The ``random`` module calls of the authors' code, drawn from a torch generator in the
    order AuthorsRandomErasing draws them."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def uniform(self, a, b):
        return a + (b - a) * torch.rand((), generator=self.g, dtype=torch.float64).item()

    def randint(self, a, b):  # inclusive, like random.randint
        return int(torch.randint(a, b + 1, (), generator=self.g))


def authors_random_erasing(img, random, probability=0.5, sl=0.02, sh=0.4, r1=0.3, mean=(0.4914, 0.4822, 0.4465)):
    """clustercontrast/utils/data/transforms.py RandomErasing.__call__, verbatim but for `random`."""
    if random.uniform(0, 1) >= probability:
        return img
    for attempt in range(100):
        area = img.size()[1] * img.size()[2]
        target_area = random.uniform(sl, sh) * area
        aspect_ratio = random.uniform(r1, 1 / r1)
        h = int(round(math.sqrt(target_area * aspect_ratio)))
        w = int(round(math.sqrt(target_area / aspect_ratio)))
        if w < img.size()[2] and h < img.size()[1]:
            x1 = random.randint(0, img.size()[1] - h)
            y1 = random.randint(0, img.size()[2] - w)
            img[0, x1:x1 + h, y1:y1 + w] = mean[0]
            img[1, x1:x1 + h, y1:y1 + w] = mean[1]
            img[2, x1:x1 + h, y1:y1 + w] = mean[2]
            return img
    return img


def new_cfg():
    cfg = get_cfg()
    add_dcmip_config(cfg)
    cfg.INPUT.SIZE_TRAIN = [64, 32]
    cfg.INPUT.REA.ENABLED = True
    cfg.INPUT.REA.PROB = 0.5
    return cfg


@pytest.mark.parametrize("size", [(256, 128), (320, 128), (24, 12), (5, 3)])
def test_equals_the_authors_erasing_draw_for_draw(size):
    mean = (0.485, 0.456, 0.406)
    ours = AuthorsRandomErasing(0.5, mean)
    for seed in range(100):
        img = torch.rand(3, *size, generator=torch.Generator().manual_seed(seed))
        expected = authors_random_erasing(img.clone(), TorchRandom(seed), mean=mean)
        got = ours(img.clone(), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(got, expected)


def test_area_and_aspect_follow_the_authors_ranges():
    """Area fraction up to 0.4 (fastreid's scale stops at 0.33) and aspect uniform in
    [0.3, 1/0.3]: the mean aspect of a uniform law is (0.3 + 3.33) / 2 = 1.82, while
    torchvision's log-uniform law over the same range has mean 1.27."""
    erasing = AuthorsRandomErasing(1.0, (0, 0, 0))
    g = torch.Generator().manual_seed(0)
    boxes = [erasing.region(256, 128, g) for _ in range(4000)]
    h = np.array([b[2] for b in boxes], float)
    w = np.array([b[3] for b in boxes], float)
    area = h * w / (256 * 128)
    assert area.min() > 0.015 and area.max() < 0.41 and area.max() > 0.36
    aspect = h / w
    assert aspect.min() > 0.28 and aspect.max() < 3.6
    # Rejections (w >= 128) remove wide large boxes, which lifts the mean a little (1.91).
    assert 1.7 < aspect.mean() < 2.1
    x1, y1 = np.array([b[0] for b in boxes]), np.array([b[1] for b in boxes])
    assert (x1 + h <= 256).all() and (y1 + w <= 128).all() and x1.min() == 0


def test_erased_pixels_read_the_authors_value_after_normalisation():
    cfg = new_cfg()
    cfg.INPUT.REA.PROB = 1.0
    transform = build_train_transforms(cfg)
    erasing = [t for t in transform.transforms if isinstance(t, AuthorsRandomErasing)]
    assert len(erasing) == 1
    img = torch.full((3, 64, 32), 7.0)
    box = erasing[0].region(64, 32, torch.Generator().manual_seed(4))
    out = erasing[0](img.clone(), generator=torch.Generator().manual_seed(4))
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    normalised = (out - mean) / std  # what the model computes
    x1, y1, h, w = box
    region = normalised[:, x1:x1 + h, y1:y1 + w]
    torch.testing.assert_close(region, torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1).expand_as(region),
                               rtol=0, atol=1e-6)
    mask = torch.ones(64, 32, dtype=torch.bool)
    mask[x1:x1 + h, y1:y1 + w] = False
    assert (out[:, mask] == 7.0).all()


def test_build_train_transforms_modes():
    cfg = new_cfg()
    image = Image.fromarray(np.full((80, 40, 3), 200, np.uint8))
    authors = build_train_transforms(cfg)
    names = [type(t).__name__ for t in authors.transforms]
    assert names[-2:] == ["ToTensor", "AuthorsRandomErasing"] and "RandomErasing" not in names
    assert authors(image).shape == (3, 64, 32)

    cfg.UNSUP.REA.MODE = "fastreid"
    names = [type(t).__name__ for t in build_train_transforms(cfg).transforms]
    assert names[-1] == "RandomErasing" and "AuthorsRandomErasing" not in names

    cfg.UNSUP.REA.MODE = "authors"
    cfg.INPUT.REA.ENABLED = False
    names = [type(t).__name__ for t in build_train_transforms(cfg).transforms]
    assert "RandomErasing" not in names and "AuthorsRandomErasing" not in names

    cfg.UNSUP.REA.MODE = "torchvision"
    with pytest.raises(UserInputError, match="UNSUP.REA.MODE.*authors, fastreid"):
        build_train_transforms(cfg)


def test_bad_erasing_parameters_are_named():
    with pytest.raises(UserInputError, match="UNSUP.REA.AREA"):
        AuthorsRandomErasing(0.5, (0, 0, 0), sl=0.5, sh=0.2)
    with pytest.raises(UserInputError, match="UNSUP.REA.MIN_ASPECT"):
        AuthorsRandomErasing(0.5, (0, 0, 0), r1=2.0)
