"""A synthetic person re-ID dataset in Market-1501's layout, generated from a seed in seconds.

The demo data lets the whole pipeline (unsupervised training, clustering, evaluation) run on a
CPU without downloading anything. It is written exactly like Market-1501::

    <root>/bounding_box_train/0001_c3s1_000123_01.jpg    training identities
    <root>/query/0121_c1s1_000456_01.jpg                 one image per (test identity, camera)
    <root>/bounding_box_test/0121_c2s1_000789_01.jpg     the other test images (the gallery)

so that one dataset class reads it and the real Market-1501 alike (``PPPP_cCsS_FFFFFF_BB``:
person id, 1-based camera, sequence, frame, box). Test identities are disjoint from training
identities, every identity is seen by several cameras and several times by each.

To make re-ID a real task, appearance is split into two sources of variation:

* **Identity** (:class:`Identity`, fixed across cameras): clothing colours and the torso's
  pattern (solid, stripes, checks, two-tone, open jacket, chest logo), sleeve length, trousers /
  shorts / skirt, shoes, hair style and colour, hat, bag or backpack, and body proportions
  (build, head size, leg length, waist, stance).
* **Camera** (:class:`Camera`, fixed per camera, jittered per image): colour cast, brightness,
  contrast, saturation, blur, sensor noise, JPEG quality, background colour and texture,
  person scale and crop position, and how often people are seen from the back. With
  ``camera_shift="strong"`` neighbouring cameras sit at opposite ends of every range (issue
  13's two-camera set: a scene change that camera-agnostic clustering mistakes for identity).

Clothing colours come from a small palette shared by all identities and the cameras shift
colours strongly, so matching by colour histogram mostly fails; the identity cues (pattern,
proportions, accessories) stay consistent and can be learned.

Every random choice is drawn from a numpy Generator seeded by ``(seed, kind, ids...)``, so an
identity looks the same whatever the number of identities, and the same seed gives byte-
identical files. This module needs only numpy and Pillow (not torch or fastreid), so the data
can be made before anything heavier is installed.
"""
import functools
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["generate_demo_dataset", "render_image", "preview_grid", "sample_identity",
           "sample_camera", "IMAGE_HEIGHT", "IMAGE_WIDTH"]

logger = logging.getLogger(__name__)

# Bump whenever the drawing changes, so that existing demo folders are regenerated.
GENERATOR_VERSION = 2
MARKER_NAME = "demo_params.json"
SUBSETS = ("bounding_box_train", "query", "bounding_box_test")

IMAGE_HEIGHT, IMAGE_WIDTH = 128, 64
# People are drawn on a 2x larger canvas and scaled down, which anti-aliases the shapes.
_MODEL_W, _MODEL_H = 128, 256

# Kinds of random stream; each is seeded by (seed, kind, ...) so the streams are independent.
_STREAM_CAMERA, _STREAM_IDENTITY, _STREAM_IMAGE, _STREAM_LAYOUT, _STREAM_PASSERBY, _STREAM_STRONG_CAMERA = range(6)
CAMERA_SHIFTS = ("normal", "strong")
_BACKGROUNDS = ("floor", "gradient", "bars", "tiles", "noise")
# Passers-by who appear at the edge of some crops (as in detector boxes of crowded scenes).
_NUM_PASSERSBY = 200

# Clothing palette with weights: dark and neutral colours dominate, as in real street scenes,
# which makes colour alone a weak identity cue.
_PALETTE = {
    "black": ((25, 25, 28), 6), "white": ((230, 230, 225), 4), "grey": ((128, 128, 128), 4),
    "dark_grey": ((70, 70, 74), 4), "navy": ((30, 40, 90), 3), "blue": ((50, 90, 180), 2),
    "light_blue": ((140, 180, 220), 2), "red": ((190, 35, 40), 2), "maroon": ((110, 30, 40), 1),
    "green": ((40, 130, 60), 1), "olive": ((110, 110, 50), 1), "yellow": ((225, 200, 50), 1),
    "orange": ((230, 120, 40), 1), "pink": ((230, 150, 180), 1), "purple": ((110, 60, 150), 1),
    "brown": ((110, 75, 45), 2), "beige": ((200, 180, 140), 2), "teal": ((40, 130, 130), 1),
}
_PALETTE_RGB = np.array([rgb for rgb, _ in _PALETTE.values()], dtype=np.float64)
_PALETTE_P = np.array([w for _, w in _PALETTE.values()], dtype=np.float64)
_PALETTE_P /= _PALETTE_P.sum()
_SKIN = np.array([(240, 205, 180), (225, 180, 150), (195, 150, 110), (150, 105, 75),
                  (100, 70, 50)], dtype=np.float64)
_HAIR = np.array([(20, 15, 15), (60, 40, 25), (110, 75, 40), (190, 160, 100), (150, 150, 150)],
                 dtype=np.float64)
TOP_PATTERNS = ("solid", "hstripes", "vstripes", "checks", "two_tone", "open_jacket", "logo")


@dataclass(frozen=True)
class Identity:
    """Appearance of one person: identical in every camera (before the camera's changes)."""
    skin: Tuple[int, int, int]
    hair: Tuple[int, int, int]
    hair_style: str          # "short", "long" or "buzz"
    hat: Optional[str]       # None, "cap" or "beanie"
    hat_colour: Tuple[int, int, int]
    top_pattern: str         # one of TOP_PATTERNS
    top_colour: Tuple[int, int, int]
    top_colour2: Tuple[int, int, int]
    stripe_period: int       # model-canvas pixels
    long_sleeves: bool
    bottom: str              # "pants", "shorts" or "skirt"
    bottom_colour: Tuple[int, int, int]
    shoe_colour: Tuple[int, int, int]
    bag: Optional[str]       # None, "shoulder" or "backpack"
    bag_colour: Tuple[int, int, int]
    bag_side: int            # shoulder bag side: +1 = the image's right in a front view
    build: float             # width factor of shoulders and limbs
    head_size: float
    leg_ratio: float         # fraction of the neck-to-ground height taken by the legs
    waist_ratio: float       # waist width / shoulder width
    height: float            # fraction of the camera's person height
    stance: float            # distance between the feet, model pixels


@dataclass(frozen=True)
class Camera:
    """What one camera does to every image it takes (jittered a little per image)."""
    gains: Tuple[float, float, float]   # per-channel colour cast
    brightness: float
    contrast: float
    saturation: float
    blur: float                         # Gaussian sigma in output pixels
    noise: float                        # sensor noise std, 0-255 scale
    jpeg_quality: int
    background: str                     # "floor", "gradient", "bars", "tiles" or "noise"
    bg_colour: Tuple[int, int, int]
    bg_colour2: Tuple[int, int, int]
    bg_param: float                     # horizon height or bar period, depending on background
    scale: float                        # person height / image height
    crowd: float                        # probability of a passer-by at the edge of the crop
    y_offset: float                     # where the feet are, in output pixels above the bottom
    p_back: float                       # probability of seeing a person from the back


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _colour(rng: np.random.Generator, jitter: float = 18.0) -> Tuple[int, int, int]:
    """A palette colour with a small per-identity shift (so two "reds" are not identical)."""
    rgb = _PALETTE_RGB[rng.choice(len(_PALETTE_RGB), p=_PALETTE_P)]
    return tuple(int(v) for v in np.clip(rgb + rng.normal(0, jitter, 3), 0, 255))


def _pick(rng: np.random.Generator, table: np.ndarray) -> Tuple[int, int, int]:
    rgb = table[rng.integers(len(table))] + rng.normal(0, 8, 3)
    return tuple(int(v) for v in np.clip(rgb, 0, 255))


def sample_identity(seed: int, pid: int, stream: int = _STREAM_IDENTITY) -> Identity:
    """The appearance of person ``pid``; depends only on ``(seed, pid)``."""
    rng = _rng(seed, stream, pid)
    pattern = TOP_PATTERNS[rng.integers(len(TOP_PATTERNS))]
    top = _colour(rng)
    top2 = _colour(rng)
    # A pattern must be visible: re-draw the second colour until it contrasts with the first.
    while pattern != "solid" and np.abs(np.subtract(top, top2)).sum() < 120:
        top2 = _colour(rng)
    bag = rng.choice(["none", "shoulder", "backpack"], p=[0.45, 0.3, 0.25])
    hat = rng.choice(["none", "cap", "beanie"], p=[0.75, 0.15, 0.1])
    return Identity(
        skin=_pick(rng, _SKIN), hair=_pick(rng, _HAIR),
        hair_style=str(rng.choice(["short", "long", "buzz"], p=[0.5, 0.35, 0.15])),
        hat=None if hat == "none" else str(hat), hat_colour=_colour(rng),
        top_pattern=pattern, top_colour=top, top_colour2=top2,
        stripe_period=int(rng.integers(10, 26)), long_sleeves=bool(rng.random() < 0.6),
        bottom=str(rng.choice(["pants", "shorts", "skirt"], p=[0.7, 0.15, 0.15])),
        bottom_colour=_colour(rng), shoe_colour=_colour(rng, jitter=10),
        bag=None if bag == "none" else str(bag), bag_colour=_colour(rng),
        bag_side=int(rng.choice([-1, 1])),
        build=float(rng.uniform(0.8, 1.25)), head_size=float(rng.uniform(0.85, 1.15)),
        leg_ratio=float(rng.uniform(0.5, 0.6)), waist_ratio=float(rng.uniform(0.72, 0.95)),
        height=float(rng.uniform(0.9, 1.0)), stance=float(rng.uniform(0, 10)),
    )


def sample_camera(seed: int, cam: int, shift: str = "normal") -> Camera:
    """The settings of camera ``cam`` (0-based); depends only on ``(seed, cam, shift)``.

    ``shift`` "normal": every setting drawn from its range. "strong": even and odd cameras
    take opposite ends (warm / cold and three times stronger colour cast, dark / bright, dull /
    vivid, soft / hard, blurred and noisy / sharp, small / large, mostly back / front views)
    and each camera another background kind.
    """
    if shift not in CAMERA_SHIFTS:
        raise ValueError(f"camera_shift={shift!r}: choose one of {CAMERA_SHIFTS}")
    if shift == "strong":
        return _strong_camera(seed, cam)
    rng = _rng(seed, _STREAM_CAMERA, cam)
    # Colour cast: log-normal per-channel gains, renormalised so the cast does not also
    # change the overall brightness (that is the brightness factor's job).
    gains = np.exp(rng.normal(0, 0.18, 3))
    gains /= gains.mean()
    background = str(rng.choice(["floor", "gradient", "bars", "tiles", "noise"]))
    bg = rng.uniform(40, 210, 3)
    bg2 = np.clip(bg + rng.normal(0, 45, 3), 0, 255)
    bg_param = rng.uniform(0.55, 0.8) if background in ("floor", "tiles") else rng.uniform(8, 20)
    return Camera(
        gains=tuple(float(g) for g in gains), brightness=float(rng.uniform(0.6, 1.3)),
        contrast=float(rng.uniform(0.7, 1.15)), saturation=float(rng.uniform(0.45, 1.25)),
        blur=float(rng.choice([0.0, 0.3, 0.6, 0.9])), noise=float(rng.uniform(1, 7)),
        jpeg_quality=int(rng.integers(70, 96)), background=background,
        bg_colour=tuple(int(v) for v in bg), bg_colour2=tuple(int(v) for v in bg2),
        bg_param=float(bg_param), scale=float(rng.uniform(0.8, 0.95)),
        crowd=float(rng.uniform(0.0, 0.4)),
        y_offset=float(rng.uniform(1, 8)), p_back=float(rng.uniform(0.1, 0.9)),
    )


def _strong_camera(seed: int, cam: int) -> Camera:
    rng = _rng(seed, _STREAM_STRONG_CAMERA, cam)
    side = 1.0 if cam % 2 else -1.0  # -1: the low end of every range, +1: the high end
    # Warm (red up, blue down) or cold, plus a random cast, three times the normal spread.
    gains = np.exp(side * np.array([-0.35, 0.0, 0.35]) + rng.normal(0, 0.1, 3))
    gains /= gains.mean()
    background = _BACKGROUNDS[(cam * 2 + int(rng.integers(2))) % len(_BACKGROUNDS)]
    bg = np.clip((120 + side * 70) + rng.normal(0, 20, 3), 0, 255)
    bg2 = np.clip(bg + rng.normal(0, 45, 3), 0, 255)
    bg_param = rng.uniform(0.55, 0.8) if background in ("floor", "tiles") else rng.uniform(8, 20)

    def end(low: float, high: float) -> float:
        return float((low if side < 0 else high) * rng.uniform(0.97, 1.03))

    return Camera(
        gains=tuple(float(g) for g in gains), brightness=end(0.6, 1.3), contrast=end(0.7, 1.15),
        saturation=end(0.4, 1.3), blur=0.9 if side < 0 else 0.0, noise=end(7, 1),
        jpeg_quality=70 if side < 0 else 95, background=background,
        bg_colour=tuple(int(v) for v in bg), bg_colour2=tuple(int(v) for v in bg2),
        bg_param=float(bg_param), scale=end(0.8, 0.95), crowd=float(rng.uniform(0.0, 0.4)),
        y_offset=end(8, 1), p_back=end(0.85, 0.15),
    )


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------

# Pixel coordinates, computed once: every image needs them.
_MODEL_YY, _MODEL_XX = np.mgrid[0:_MODEL_H, 0:_MODEL_W]
_IMAGE_YY, _IMAGE_XX = np.mgrid[0:IMAGE_HEIGHT, 0:IMAGE_WIDTH].astype(np.float64)


# Images are made identity by identity: a small cache keeps the current identity's textures
# (passers-by, drawn in between, mostly miss it).
@functools.lru_cache(maxsize=32)
def _top_texture(ident: Identity, back: bool) -> Image.Image:
    """The torso's fabric on the whole model canvas (it is later masked by the torso shape).

    Computed in canvas coordinates so stripes stay put relative to the body (the torso spans
    rows ~45-140 of the canvas: the two-tone split and the logo sit at fixed rows within it).
    Logos and open jackets are front-only details; from the back those tops look plain.
    """
    yy, xx = _MODEL_YY, _MODEL_XX
    period, half = ident.stripe_period, ident.stripe_period // 2
    cx = _MODEL_W // 2
    pattern = ident.top_pattern
    if back and pattern in ("logo", "open_jacket"):
        pattern = "solid"
    if pattern == "hstripes":
        second = (yy % period) < half
    elif pattern == "vstripes":
        second = (xx % period) < half
    elif pattern == "checks":
        second = ((yy // half) + (xx // half)) % 2 == 1
    elif pattern == "two_tone":  # a shirt under a short jacket / a colour-blocked top
        second = yy > 95
    elif pattern == "open_jacket":
        second = np.abs(xx - cx) < 9
    elif pattern == "logo":
        second = (np.abs(xx - cx) < 9) & (np.abs(yy - 72) < 9)
    else:
        second = np.zeros_like(xx, dtype=bool)
    # RGBA, the mode of the canvas it is pasted on, so that pasting needs no conversion.
    out = np.where(second[..., None], np.array(ident.top_colour2 + (255,), np.uint8),
                   np.array(ident.top_colour + (255,), np.uint8))
    return Image.fromarray(out, "RGBA")


def _draw_person(ident: Identity, back: bool, stride: float, swing: float) -> Image.Image:
    """The person on a transparent ``_MODEL_W x _MODEL_H`` canvas, feet at the bottom.

    ``back`` draws the back view; ``stride`` (-1..1) raises one foot and spreads the legs,
    ``swing`` (-1..1) swings the arms, as in different frames of a walk.
    """
    im = Image.new("RGBA", (_MODEL_W, _MODEL_H), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    cx = _MODEL_W / 2
    ground = _MODEL_H - 2
    head_h = 34 * ident.head_size
    head_w = head_h * 0.78
    head_top = 4.0
    neck_y = head_top + head_h
    shoulder_y = neck_y + 4
    leg_len = (ground - neck_y) * ident.leg_ratio
    hip_y = ground - leg_len
    shoulder_w = 60 * ident.build
    waist_w = shoulder_w * ident.waist_ratio
    arm_w = 12 * np.sqrt(ident.build)
    leg_w = waist_w / 2 - 1
    shoe_h = 9
    ankle_y = ground - shoe_h
    # From the back the person's own left and right swap sides in the image.
    side = -ident.bag_side if back else ident.bag_side

    # Long hair hangs behind the shoulders: drawn first, so the torso covers it in front view.
    if ident.hair_style == "long" and ident.hat != "beanie":
        d.rectangle([cx - head_w / 2 - 2, head_top + head_h * 0.4, cx + head_w / 2 + 2,
                     shoulder_y + (30 if back else 10)], fill=ident.hair)

    # Arms hang outside the torso; a swing moves the hands forward/back (up/out in 2D).
    for s in (-1, 1):
        sx = cx + s * (shoulder_w / 2 - arm_w / 2)
        hand_x = sx + s * (4 + 3 * abs(swing))
        hand_y = hip_y + 0.12 * leg_len - 10 * abs(swing) * (1 if s * swing > 0 else 0.4)
        arm = [(sx - arm_w / 2, shoulder_y + 2), (sx + arm_w / 2, shoulder_y + 2),
               (hand_x + arm_w * 0.4, hand_y), (hand_x - arm_w * 0.4, hand_y)]
        d.polygon(arm, fill=ident.skin)
        sleeve_end = hand_y - 6 if ident.long_sleeves else shoulder_y + (hand_y - shoulder_y) * 0.3
        t = (sleeve_end - shoulder_y - 2) / (hand_y - shoulder_y - 2)
        sleeve = [arm[0], arm[1],
                  (arm[1][0] + t * (arm[2][0] - arm[1][0]), sleeve_end),
                  (arm[0][0] + t * (arm[3][0] - arm[0][0]), sleeve_end)]
        d.polygon(sleeve, fill=ident.top_colour)
        d.ellipse([hand_x - 5, hand_y - 4, hand_x + 5, hand_y + 6], fill=ident.skin)

    # Legs: one foot raised and the feet spread by the stride.
    spread = ident.stance / 2 + 3 * abs(stride)
    pelvis_h = 0.14 * leg_len
    legs = []
    for s in (-1, 1):
        foot_x = cx + s * (leg_w / 2 + 1 + spread)
        lift = 6 * stride * s if stride * s > 0 else 0
        top_x = cx + s * (leg_w / 2 + 1)
        legs.append(([(top_x - leg_w / 2, hip_y), (top_x + leg_w / 2, hip_y),
                      (foot_x + leg_w * 0.4, ankle_y - lift),
                      (foot_x - leg_w * 0.4, ankle_y - lift)], foot_x, ankle_y - lift))
    for poly, _, _ in legs:  # bare legs unless trousers cover them
        d.polygon(poly, fill=ident.bottom_colour if ident.bottom == "pants" else ident.skin)
    if ident.bottom == "shorts":
        for poly, _, _ in legs:
            knee = hip_y + 0.42 * leg_len
            t = (knee - hip_y) / (poly[2][1] - hip_y)
            d.polygon([poly[0], poly[1], (poly[1][0] + t * (poly[2][0] - poly[1][0]), knee),
                       (poly[0][0] + t * (poly[3][0] - poly[0][0]), knee)],
                      fill=ident.bottom_colour)
    d.rectangle([cx - waist_w / 2, hip_y - 4, cx + waist_w / 2, hip_y + pelvis_h],
                fill=ident.bottom_colour)
    if ident.bottom == "skirt":
        hem = hip_y + 0.5 * leg_len
        d.polygon([(cx - waist_w / 2, hip_y - 4), (cx + waist_w / 2, hip_y - 4),
                   (cx + waist_w * 0.7, hem), (cx - waist_w * 0.7, hem)], fill=ident.bottom_colour)
    for _, foot_x, foot_y in legs:
        d.ellipse([foot_x - leg_w * 0.55, foot_y - 2, foot_x + leg_w * 0.55 + 3, foot_y + shoe_h],
                  fill=ident.shoe_colour)

    # Torso: the patterned fabric pasted through a trapezoid mask.
    mask = Image.new("L", im.size, 0)
    ImageDraw.Draw(mask).polygon([(cx - shoulder_w / 2, shoulder_y), (cx + shoulder_w / 2,
                                  shoulder_y), (cx + waist_w / 2, hip_y + 2),
                                  (cx - waist_w / 2, hip_y + 2)], fill=255)
    im.paste(_top_texture(ident, back), (0, 0), mask)

    # Neck, head, hair, hat.
    d.rectangle([cx - head_w * 0.2, neck_y - 4, cx + head_w * 0.2, shoulder_y + 2], fill=ident.skin)
    head = [cx - head_w / 2, head_top, cx + head_w / 2, neck_y]
    if ident.hair_style == "buzz":
        d.ellipse(head, fill=ident.skin)
        d.chord(head, 180, 360, fill=ident.hair if not back else ident.skin)
        if back:  # very short hair reads as a darker skull from behind
            d.ellipse([head[0] + 2, head[1], head[2] - 2, head[3] - head_h * 0.3], fill=ident.hair)
    else:
        d.ellipse(head, fill=ident.hair)
        if not back:
            d.ellipse([head[0] + 3, head_top + head_h * 0.3, head[2] - 3, neck_y], fill=ident.skin)
    if ident.hat == "cap":
        d.chord([head[0] - 1, head_top - 2, head[2] + 1, head_top + head_h * 0.75], 180, 360,
                fill=ident.hat_colour)
        if not back:
            d.rectangle([head[0] - 3, head_top + head_h * 0.3, head[2] + 3,
                         head_top + head_h * 0.38], fill=ident.hat_colour)
    elif ident.hat == "beanie":
        d.chord([head[0] - 2, head_top - 4, head[2] + 2, head_top + head_h * 0.95], 180, 360,
                fill=ident.hat_colour)

    # Bags are drawn last: they cover the clothes.
    if ident.bag == "backpack":
        if back:
            d.rounded_rectangle([cx - shoulder_w * 0.38, shoulder_y + 6, cx + shoulder_w * 0.38,
                                 shoulder_y + (hip_y - shoulder_y) * 0.85], radius=6,
                                fill=ident.bag_colour)
        else:
            for s in (-1, 1):
                x = cx + s * shoulder_w * 0.28
                d.rectangle([x - 3, shoulder_y, x + 3, shoulder_y + (hip_y - shoulder_y) * 0.6],
                            fill=ident.bag_colour)
    elif ident.bag == "shoulder":
        strap_x = cx - side * shoulder_w * 0.35
        bag_x = cx + side * (waist_w / 2 + 6)
        d.line([(strap_x, shoulder_y), (bag_x, hip_y - 6)], fill=ident.bag_colour, width=4)
        d.rectangle([bag_x - 11, hip_y - 10, bag_x + 11, hip_y + 16], fill=ident.bag_colour)
    return im


def _background(cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """The camera's scene behind the person (float HxWx3), shifted a little per image."""
    h, w = IMAGE_HEIGHT, IMAGE_WIDTH
    yy, xx = _IMAGE_YY, _IMAGE_XX
    # Lighting and what passes behind the person change from frame to frame.
    c1 = np.array(cam.bg_colour, np.float64) + rng.normal(0, 12, 3)
    c2 = np.array(cam.bg_colour2, np.float64) + rng.normal(0, 12, 3)
    if cam.background == "floor":
        horizon = h * cam.bg_param + rng.uniform(-6, 6)
        t = (yy > horizon).astype(np.float64)
    elif cam.background == "tiles":
        horizon = h * cam.bg_param + rng.uniform(-6, 6)
        tile = cam.bg_param * 20  # 11-16 px: the horizon height doubles as the tile seed
        t = (yy > horizon) * (((xx + rng.uniform(0, tile)) % tile < 2) | (yy % 10 < 1.5)) * 0.7
    elif cam.background == "gradient":
        t = np.clip(yy / h + rng.uniform(-0.2, 0.2), 0, 1)
    elif cam.background == "bars":
        t = ((xx + rng.uniform(0, cam.bg_param)) % cam.bg_param) < cam.bg_param / 2
    else:  # "noise": a blotchy wall, low-frequency noise upsampled
        coarse = rng.random((h // 16 + 1, w // 16 + 1))
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            (w, h), Image.BILINEAR), np.float64) / 255
    t = np.asarray(t, np.float64)[..., None]
    return c1 * (1 - t) + c2 * t


def _paste_person(canvas: Image.Image, ident: Identity, cam: Camera, rng: np.random.Generator,
                  x_shift: float) -> None:
    """Draw ``ident`` in a random view and walking phase and paste it, feet near the bottom."""
    back = bool(rng.random() < cam.p_back)
    person = _draw_person(ident, back, stride=rng.uniform(-1, 1), swing=rng.uniform(-1, 1))
    # Scale and crop jitter, as a detector's boxes would have.
    person_h = IMAGE_HEIGHT * cam.scale * ident.height * rng.uniform(0.93, 1.07)
    size = (max(1, round(_MODEL_W * person_h / _MODEL_H)), max(1, round(person_h)))
    person = person.resize(size, Image.BILINEAR, reducing_gap=2.0)
    x = round(IMAGE_WIDTH / 2 - size[0] / 2 + x_shift + rng.uniform(-5, 5))
    y = round(IMAGE_HEIGHT - cam.y_offset - size[1] + rng.uniform(-4, 4))
    canvas.paste(person, (x, y), person)  # an RGBA image is its own (alpha) mask


def render_image(ident: Identity, cam: Camera, rng: np.random.Generator,
                 seed: int = 0) -> Image.Image:
    """One ``IMAGE_WIDTH x IMAGE_HEIGHT`` RGB crop of ``ident`` seen by ``cam``.

    ``rng`` draws the per-image jitter: view, walking phase, scale, crop position, lighting,
    blur, noise and whether a passer-by (one of ``_NUM_PASSERSBY`` people of ``seed``, never a
    dataset identity) is partly in the crop.
    """
    canvas = Image.fromarray(np.clip(_background(cam, rng), 0, 255).astype(np.uint8), "RGB")
    if rng.random() < cam.crowd:
        passerby = sample_identity(seed, int(rng.integers(_NUM_PASSERSBY)), _STREAM_PASSERBY)
        _paste_person(canvas, passerby, cam, rng, rng.choice([-1, 1]) * rng.uniform(26, 38))
    _paste_person(canvas, ident, cam, rng, 0.0)

    # The camera's colour response -- cast and brightness (per-channel gains G), contrast k
    # around the image mean m, saturation s around each pixel's grey level -- is one affine map:
    #   out = S (m + k (G x - m)) = k S G x + (1 - k) m,   S = s I + (1 - s) / 3 * ones.
    gains = np.array(cam.gains) * cam.brightness * rng.uniform(0.9, 1.1)
    k, sat = cam.contrast, cam.saturation
    mean = float(np.mean(np.asarray(canvas, np.float32).mean(axis=(0, 1)) * gains))
    matrix = k * (sat * np.eye(3) + (1 - sat) / 3) * gains[None, :]
    affine = np.concatenate([matrix, np.full((3, 1), (1 - k) * mean)], axis=1)
    out = canvas.convert("RGB", tuple(affine.ravel().tolist()))  # clips to 0..255
    sigma = max(0.0, cam.blur + rng.uniform(-0.15, 0.25))
    if sigma > 0.05:
        out = out.filter(ImageFilter.GaussianBlur(sigma))
    noise = rng.standard_normal((IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.float32) * cam.noise
    return Image.fromarray(np.clip(np.asarray(out, np.float32) + noise, 0, 255).astype(np.uint8),
                           "RGB")


def preview_grid(seed: int = 0, pids=range(1, 9), num_cams: int = 6, camera_shift: str = "normal") -> Image.Image:
    """A grid for eyeballing the data: one row per identity, one column per camera.

    Every identity is shown in every camera (the dataset itself uses only some cameras per
    identity), with the same drawing code as :func:`generate_demo_dataset`.
    """
    pids = list(pids)
    grid = Image.new("RGB", (num_cams * (IMAGE_WIDTH + 2), len(pids) * (IMAGE_HEIGHT + 2)), "white")
    cams = [sample_camera(seed, c, camera_shift) for c in range(num_cams)]
    for row, pid in enumerate(pids):
        ident = sample_identity(seed, pid)
        for col, cam in enumerate(cams):
            img = render_image(ident, cam, _rng(seed, _STREAM_IMAGE, pid, col, 0), seed)
            grid.paste(img, (col * (IMAGE_WIDTH + 2), row * (IMAGE_HEIGHT + 2)))
    return grid


# ---------------------------------------------------------------------------------------------
# The dataset on disk
# ---------------------------------------------------------------------------------------------

def _check_range(name: str, value, low: int, high: int) -> Tuple[int, int]:
    lo, hi = (int(v) for v in value)
    if not low <= lo <= hi <= high:
        raise ValueError(f"{name}={tuple(value)} must satisfy {low} <= min <= max <= {high}.")
    return lo, hi


def _existing_counts(root: Path) -> Dict[str, int]:
    return {s: sum(1 for p in (root / s).glob("*.jpg")) if (root / s).is_dir() else 0
            for s in SUBSETS}


def generate_demo_dataset(root, seed: int = 0, num_train_ids: int = 120, num_test_ids: int = 60,
                          num_cams: int = 6, cams_per_id: Tuple[int, int] = (2, 4),
                          images_per_cam: Tuple[int, int] = (3, 6),
                          camera_shift: str = "normal") -> Dict[str, int]:
    """Write the demo dataset into ``root`` (created if needed) and return its counts.

    Args:
        root: output folder; it receives ``bounding_box_train/``, ``query/``,
            ``bounding_box_test/`` and the marker file ``demo_params.json``.
        seed: everything is a deterministic function of the seed and the other arguments.
        num_train_ids: training identities, person ids ``1..num_train_ids``.
        num_test_ids: test identities, the next ``num_test_ids`` person ids.
        num_cams: cameras ``c1..c<num_cams>``.
        cams_per_id: (min, max) cameras that see each identity, inclusive; min >= 2 so every
            query has a cross-camera match.
        images_per_cam: (min, max) images of an identity in each camera that sees it, inclusive;
            min >= 2 so every camera keeps gallery images next to its query.
        camera_shift: "normal" or "strong" (see :func:`sample_camera`); e.g. ``num_cams=2,
            cams_per_id=(2, 2), camera_shift="strong"`` is the two-camera set of issue 13.

    Returns:
        ``{"train_ids", "train_images", "test_ids", "query_images", "gallery_images",
        "cameras"}``.

    The parameters are written to ``demo_params.json``. A second call with the same parameters
    (and all files still there) returns at once; different parameters regenerate the folders.
    A ``root`` that has Market folders but no marker is refused rather than overwritten.
    """
    root = Path(root)
    if num_train_ids < 1 or num_test_ids < 1:
        raise ValueError("num_train_ids and num_test_ids must both be at least 1.")
    if num_cams < 2:
        raise ValueError(f"num_cams={num_cams}: re-ID needs at least 2 cameras.")
    cams_per_id = _check_range("cams_per_id", cams_per_id, 2, num_cams)
    images_per_cam = _check_range("images_per_cam", images_per_cam, 2, 10_000)
    params = {"generator_version": GENERATOR_VERSION, "seed": int(seed),
              "num_train_ids": int(num_train_ids), "num_test_ids": int(num_test_ids),
              "num_cams": int(num_cams), "cams_per_id": list(cams_per_id),
              "images_per_cam": list(images_per_cam)}
    if camera_shift not in CAMERA_SHIFTS:
        raise ValueError(f"camera_shift={camera_shift!r}: choose one of {CAMERA_SHIFTS}")
    if camera_shift != "normal":  # absent for "normal": the markers of existing folders stay valid
        params["camera_shift"] = camera_shift

    marker = root / MARKER_NAME
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except ValueError:  # a marker cut short by a crash: the folders are ours, regenerate
            old = {}
        counts = old.get("counts")
        if old.get("params") == params and counts and _existing_counts(root) == {
                "bounding_box_train": counts["train_images"], "query": counts["query_images"],
                "bounding_box_test": counts["gallery_images"]}:
            logger.info("Demo dataset in %s is up to date (%s).", root, MARKER_NAME)
            return counts
    elif any(_existing_counts(root).values()):
        raise FileExistsError(
            f"{root} already holds Market-format images but no {MARKER_NAME}, so they were not "
            f"made by this generator; refusing to overwrite them. Choose another root or "
            f"delete that folder.")

    start = time.perf_counter()
    # The marker goes first (without counts): if generation is interrupted, the next call
    # still knows these folders are ours and regenerates them.
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"params": params}, indent=1))
    for subset in SUBSETS:
        shutil.rmtree(root / subset, ignore_errors=True)
        (root / subset).mkdir()

    cams = [sample_camera(seed, c, camera_shift) for c in range(num_cams)]
    layout = _rng(seed, _STREAM_LAYOUT)
    # Frames increase per camera along the "recording", so file names are unique and ordered.
    next_frame = layout.integers(1, 500, num_cams)
    counts = {"train_ids": num_train_ids, "train_images": 0, "test_ids": num_test_ids,
              "query_images": 0, "gallery_images": 0, "cameras": num_cams}
    for pid in range(1, num_train_ids + num_test_ids + 1):
        ident = sample_identity(seed, pid)
        is_train = pid <= num_train_ids
        n_cams = int(layout.integers(cams_per_id[0], cams_per_id[1] + 1))
        for cam in sorted(layout.choice(num_cams, n_cams, replace=False)):
            n_images = int(layout.integers(images_per_cam[0], images_per_cam[1] + 1))
            query_index = int(layout.integers(n_images))
            for k in range(n_images):
                img = render_image(ident, cams[cam], _rng(seed, _STREAM_IMAGE, pid, cam, k), seed)
                if is_train:
                    subset, key = "bounding_box_train", "train_images"
                elif k == query_index:
                    subset, key = "query", "query_images"
                else:
                    subset, key = "bounding_box_test", "gallery_images"
                next_frame[cam] += layout.integers(3, 30)
                name = f"{pid:04d}_c{cam + 1}s1_{int(next_frame[cam]):06d}_01.jpg"
                img.save(root / subset / name, quality=cams[cam].jpeg_quality)
                counts[key] += 1

    marker.write_text(json.dumps({"params": params, "counts": counts}, indent=1))
    logger.info("Generated the demo dataset in %s in %.1f s: %s", root,
                time.perf_counter() - start, counts)
    return counts
