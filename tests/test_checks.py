"""UNSUP.CORRUPT_IMAGES: unreadable train images stop the run naming them, or are skipped and
counted (issue 7, bad input)."""
import logging

import numpy as np
import pytest
from PIL import Image

import dcmip  # noqa: F401
from dcmip.data.checks import CorruptImageError, check_images
from dcmip.registry import UserInputError


@pytest.fixture()
def images(tmp_path):
    """Two good JPEGs and one of each kind of bad file, as (path, pid, camid) items."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(2):
        path = tmp_path / f"000{i}_c1s1_000001_00.jpg"
        Image.fromarray(rng.integers(0, 255, (128, 64, 3), dtype=np.uint8)).save(path, quality=90)
        items.append((str(path), i, 1))
    good = open(items[0][0], "rb").read()
    bad = {"truncated": good[: len(good) // 2], "empty": b"", "text": b"not an image, a text file\n"}
    for i, (kind, data) in enumerate(bad.items(), start=2):
        path = tmp_path / f"000{i}_c2s1_000001_00.jpg"
        path.write_bytes(data)
        items.append((str(path), i, 2))
    return items


def test_every_kind_of_bad_file_is_named(images):
    with pytest.raises(CorruptImageError) as e:
        check_images(images, "error")
    msg = str(e.value)
    assert msg.startswith("3 unreadable or corrupt train image(s): ")
    for path, *_ in images[2:]:
        assert path in msg
    for path, *_ in images[:2]:
        assert path not in msg
    assert "UNSUP.CORRUPT_IMAGES skip" in msg
    assert isinstance(e.value, UserInputError)


def test_a_truncated_jpeg_alone_is_caught(images):
    """PIL's verify() accepts a JPEG cut short; only a full decode fails on it."""
    with pytest.raises(CorruptImageError, match="0002_c2s1"):
        check_images(images[:3], "error")


def test_skip_drops_only_bad_files_and_logs_the_count(images, caplog):
    with caplog.at_level(logging.WARNING, logger="dcmip.data.checks"):
        kept = check_images(images, "skip")
    assert kept == images[:2]
    assert "skipped 3 unreadable images" in caplog.text and images[2][0] in caplog.text


def test_clean_data_is_returned_whole(images):
    assert check_images(images[:2], "error") == images[:2]
    assert check_images([], "error") == []


def test_first_five_offenders_then_ellipsis(tmp_path):
    items = []
    for i in range(7):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(b"")
        items.append((str(path), i, 1))
    with pytest.raises(CorruptImageError) as e:
        check_images(items, "error")
    msg = str(e.value)
    assert msg.startswith("7 unreadable") and items[4][0] in msg and items[5][0] not in msg and " ..." in msg


def test_unknown_policy_lists_the_choices(images):
    with pytest.raises(UserInputError, match="UNSUP.CORRUPT_IMAGES: unknown value 'ignore'; choose one of: error, skip"):
        check_images(images, "ignore")
