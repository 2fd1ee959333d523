"""Up-front checks of the train images (issue 7, bad input): UNSUP.CORRUPT_IMAGES."""
import logging
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from ..registry import UserInputError

logger = logging.getLogger(__name__)
POLICIES = ("error", "skip")


class CorruptImageError(UserInputError, ValueError):
    """Train images that cannot be read or decoded."""


def _readable(path) -> bool:
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()  # a full decode catches truncated JPEGs that verify() accepts
        return True
    except Exception:
        return False


def check_images(items, policy: str, workers: int = 8):
    """Open and decode every item's image (item[0] is the path). ``policy`` "error" raises a
    CorruptImageError naming up to 5 bad files; "skip" drops them and logs the count."""
    if policy not in POLICIES:
        raise UserInputError(f"UNSUP.CORRUPT_IMAGES: unknown value {policy!r}; choose one of: "
                             + ", ".join(POLICIES))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ok = list(pool.map(_readable, [it[0] for it in items]))
    bad = [it[0] for it, good in zip(items, ok) if not good]
    if not bad:
        return list(items)
    if policy == "error":
        raise CorruptImageError(
            f"{len(bad)} unreadable or corrupt train image(s): {', '.join(bad[:5])}"
            + (" ..." if len(bad) > 5 else "")
            + "; fix or remove them, or set UNSUP.CORRUPT_IMAGES skip to drop them")
    logger.warning(f"skipped {len(bad)} unreadable images (first: {', '.join(bad[:5])})")
    return [it for it, good in zip(items, ok) if good]
