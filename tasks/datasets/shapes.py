"""``shapes``: the built-in image-text few-shot dataset (no download).

Each class is a combination of five attributes. Two are seen only in the image (colour, fill
pattern), two are stated only in the text (material, place) and one is in both (shape). Images vary
in position, scale, rotation, lighting, background clutter and pixel noise; captions vary in wording
(synonyms), word order, which attributes they mention and distractor phrases. So neither modality
alone identifies a class reliably and combining them helps.

Generated deterministically from a seed in a few seconds and cached on disk as ``.npz`` (images) +
``.json`` (text), keyed by the generator's parameters and version.
"""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np

from tasks.atomic import atomic_write, atomic_write_text
from tasks.datasets.base import DATASETS, FewShotDataset
from tasks.errors import BenchmarkError
from tasks.paths import cache_dir

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2

SHAPES: dict[str, list[str]] = {
    "circle": ["circle", "disc", "round token"],
    "square": ["square", "square tile", "quadrate"],
    "triangle": ["triangle", "three-cornered piece", "trigon"],
    "star": ["star", "five-pointed star", "starlet"],
    "cross": ["cross", "plus sign", "cruciform piece"],
    "crescent": ["crescent", "half moon", "sickle shape"],
}
COLOURS: dict[str, float] = {  # name -> hue in degrees
    "red": 0.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 240.0, "magenta": 300.0,
}
PATTERNS = ("solid", "striped", "dotted")
MATERIALS: dict[str, list[str]] = {
    "wood": ["wooden", "made of wood", "carved from timber"],
    "metal": ["metal", "made of steel", "forged from iron"],
    "glass": ["glass", "made of glass", "blown from glass"],
    "stone": ["stone", "made of stone", "cut from granite"],
    "paper": ["paper", "made of paper", "folded from card"],
}
PLACES: dict[str, list[str]] = {
    "desert": ["in the desert", "among the dunes", "from the arid sands"],
    "coast": ["by the sea", "on the coast", "near the shore"],
    "mountains": ["in the mountains", "on a high peak", "among alpine rocks"],
    "forest": ["in the forest", "among the trees", "deep in the woods"],
}
OPENERS = ["a photo of", "here is", "someone found", "look at", "we saw", "there is"]
FILLER_NOUNS = ["object", "thing", "item", "piece"]
DISTRACTORS = [
    "next to a {c} lamp", "on a {w} day", "under {c} light", "beside a {c} cup",
    "with a {c} ribbon", "on a {w} morning", "near an old chair", "on a table",
]
DISTRACTOR_COLOURS = list(COLOURS) + ["white", "black", "orange", "purple", "grey"]
WEATHER = ["sunny", "rainy", "cloudy", "windy", "foggy"]

# Class families: one per shape, crossing its looks (image-only) with its stories (text-only).
FAMILY_SHAPES = ("circle", "triangle", "star", "cross")
LOOKS_PER_SHAPE = 4
STORIES_PER_SHAPE = 15

# Probability that a caption mentions each text attribute.
P_MENTION = {"shape": 0.8, "material": 0.7, "place": 0.7}


def _class_attributes(n_classes: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """Attribute combinations of the classes.

    Classes come in families that share a shape: within a family, every one of ``LOOKS_PER_SHAPE``
    looks (colour, pattern) is crossed with every one of ``STORIES_PER_SHAPE`` stories (material,
    place). So each look is shared by many classes that only the text tells apart, and each story by
    several classes that only the image tells apart.
    """
    looks = list(itertools.product(COLOURS, PATTERNS))
    stories = list(itertools.product(MATERIALS, PLACES))
    combos = []
    for shape in FAMILY_SHAPES:
        shape_looks = [looks[i] for i in rng.choice(len(looks), LOOKS_PER_SHAPE, replace=False)]
        shape_stories = [stories[i] for i in rng.choice(len(stories), STORIES_PER_SHAPE, replace=False)]
        combos += [(shape, c, p, m, pl) for (c, p) in shape_looks for (m, pl) in shape_stories]
    if n_classes > len(combos):
        raise BenchmarkError(f"shapes: n_classes={n_classes} exceeds the {len(combos)} classes the generator makes")
    picks = rng.permutation(len(combos))[:n_classes]
    keys = ("shape", "colour", "pattern", "material", "place")
    return [dict(zip(keys, combos[i])) for i in picks]


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` in local coordinates ``u, v`` (unit size)."""
    r = np.hypot(u, v)
    if shape == "circle":
        return r < 0.9
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.75
    if shape == "triangle":
        return (v > -0.5) & (v < 0.9 - 1.732 * np.abs(u) * 0.95 * 1.2)
    if shape == "star":
        theta = np.arctan2(v, u)
        return r < 0.45 + 0.5 * np.clip(np.cos(5 * theta), 0, 1) ** 2
    if shape == "cross":
        return ((np.abs(u) < 0.3) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.3) & (np.abs(u) < 0.95))
    if shape == "crescent":
        return (r < 0.9) & (np.hypot(u - 0.45, v) > 0.7)
    raise ValueError(shape)


def _pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if pattern == "solid":
        return np.ones_like(u, dtype=bool)
    if pattern == "striped":
        return np.sin(u * np.pi * 2.6) > 0
    if pattern == "dotted":
        return np.cos(u * np.pi * 3.2) * np.cos(v * np.pi * 3.2) > 0.3
    raise ValueError(pattern)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Hue in degrees, saturation and value in 0..1 -> rgb ``[..., 3]``."""
    k = lambda n: (n + h / 60.0) % 6  # noqa: E731
    f = lambda n: v - v * s * np.clip(np.minimum(k(n), 4 - k(n)), 0, 1)  # noqa: E731
    return np.stack([f(5), f(3), f(1)], axis=-1)


def _render(attrs: list[dict[str, str]], labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one image per label. Returns uint8 ``[n, 3, size, size]``."""
    n = len(labels)
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    Y, X = np.meshgrid(axis, axis, indexing="ij")
    # Background: dark, slightly tinted, with clutter blobs of random colours.
    bg = rng.uniform(0.05, 0.3, size=(n, 1, 1, 1)) + rng.uniform(-0.05, 0.05, size=(n, 1, 1, 3))
    img = np.broadcast_to(bg, (n, size, size, 3)).copy()
    for _ in range(3):
        px, py = rng.uniform(-1, 1, size=(2, n, 1, 1))
        radius = rng.uniform(0.06, 0.16, size=(n, 1, 1))
        blob = (X - px) ** 2 + (Y - py) ** 2 < radius**2
        colour = _hsv_to_rgb(rng.uniform(0, 360, n), rng.uniform(0.2, 0.9, n), rng.uniform(0.3, 0.8, n))
        img = np.where(blob[..., None], colour[:, None, None, :], img)
    # The object: random position, scale and rotation.
    cx, cy = rng.uniform(-0.3, 0.3, size=(2, n, 1, 1))
    scale = rng.uniform(0.45, 0.7, size=(n, 1, 1))
    theta = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    dx, dy = X - cx, Y - cy
    u = (np.cos(theta) * dx + np.sin(theta) * dy) / scale
    v = (-np.sin(theta) * dx + np.cos(theta) * dy) / scale
    shape_of = np.array([attrs[c]["shape"] for c in labels])
    pattern_of = np.array([attrs[c]["pattern"] for c in labels])
    hue = np.array([COLOURS[attrs[c]["colour"]] for c in labels]) + rng.normal(0, 10, n)
    colour = _hsv_to_rgb(hue, rng.uniform(0.55, 1.0, n), rng.uniform(0.65, 1.0, n))
    mask = np.zeros((n, size, size), dtype=bool)
    on = np.zeros((n, size, size), dtype=bool)
    for shape in SHAPES:
        idx = np.flatnonzero(shape_of == shape)
        mask[idx] = _shape_mask(shape, u[idx], v[idx])
    for pattern in PATTERNS:
        idx = np.flatnonzero(pattern_of == pattern)
        on[idx] = _pattern_mask(pattern, u[idx], v[idx])
    shade = np.where(on, 1.0, 0.35)[..., None] * colour[:, None, None, :]
    img = np.where(mask[..., None], shade, img)
    # Global lighting and sensor noise.
    img = img * rng.uniform(0.75, 1.15, size=(n, 1, 1, 1)) + rng.normal(0, 0.06, size=img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 3, 1, 2)


def _caption(a: dict[str, str], rng: np.random.Generator) -> str:
    """One caption of an item of a class with attributes ``a``."""
    pick = lambda options: options[rng.integers(len(options))]  # noqa: E731
    mention = {k: rng.random() < p for k, p in P_MENTION.items()}
    noun = pick(SHAPES[a["shape"]]) if mention["shape"] else pick(FILLER_NOUNS)
    material = pick(MATERIALS[a["material"]]) if mention["material"] else None
    if material is not None and not material.startswith(("made", "carved", "forged", "blown", "cut", "folded")):
        head, material = f"{material} {noun}", None  # adjective form goes before the noun
    else:
        head = noun
    clauses = [c for c in (material, pick(PLACES[a["place"]]) if mention["place"] else None) if c]
    for _ in range(rng.integers(0, 3)):
        clauses.append(pick(DISTRACTORS).format(c=pick(DISTRACTOR_COLOURS), w=pick(WEATHER)))
    order = rng.permutation(len(clauses))
    parts = [pick(OPENERS), "a", head] + [clauses[i] for i in order]
    return " ".join(parts)


def _class_text(a: dict[str, str]) -> str:
    return f"a {a['shape']} {MATERIALS[a['material']][1]}, usually found {PLACES[a['place']][0]}"


def _class_name(a: dict[str, str]) -> str:
    return f"{a['colour']} {a['pattern']} {a['material']} {a['shape']} ({a['place']})"


def generate(n_classes: int = 240, items_per_class: int = 40, image_size: int = 32, seed: int = 0,
             split_fractions: tuple[float, float, float] = (0.625, 0.125, 0.25)) -> FewShotDataset:
    """Generate the dataset in memory (a few seconds for the default size)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, GENERATOR_VERSION]))
    attrs = _class_attributes(n_classes, rng)
    labels = np.repeat(np.arange(n_classes), items_per_class)
    images = np.concatenate([
        _render(attrs, labels[i : i + 2048], image_size, rng) for i in range(0, len(labels), 2048)
    ])
    captions = [_caption(attrs[c], rng) for c in labels]
    order = rng.permutation(n_classes)
    n_train = round(split_fractions[0] * n_classes)
    n_val = round(split_fractions[1] * n_classes)
    splits = {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }
    return FewShotDataset(
        name="shapes",
        images=images,
        labels=labels.astype(np.int64),
        class_names=[_class_name(a) for a in attrs],
        splits=splits,
        captions=captions,
        class_texts=[_class_text(a) for a in attrs],
        mean=tuple(images.reshape(len(images), 3, -1).mean(axis=(0, 2)) / 255),
        std=tuple(images.reshape(len(images), 3, -1).std(axis=(0, 2)) / 255),
        info={"generator_version": GENERATOR_VERSION, "seed": seed, "attributes": attrs},
    )


@DATASETS.register("shapes")
class ShapesDataset:
    """Built-in synthetic image-text dataset: 240 classes, 40 items each, 32x32 RGB + captions."""

    @staticmethod
    def load(data_root: str | None = None, n_classes: int = 240, items_per_class: int = 40,
             image_size: int = 32, seed: int = 0, download: bool = False) -> FewShotDataset:
        """Load from the cache (``data_root`` or the user cache dir), generating it if needed;
        ``download`` is accepted for a uniform loader API and ignored (nothing to download)."""
        root = Path(data_root) if data_root else cache_dir()
        stem = root / f"shapes-v{GENERATOR_VERSION}-c{n_classes}-i{items_per_class}-s{image_size}-seed{seed}"
        npz, meta = stem.with_suffix(".npz"), stem.with_suffix(".json")
        if npz.exists() and meta.exists():
            try:
                arrays = np.load(npz)
                text = json.loads(meta.read_text())
                return FewShotDataset(
                    name="shapes", images=arrays["images"], labels=arrays["labels"],
                    class_names=text["class_names"],
                    splits={k: arrays[f"split_{k}"] for k in ("train", "val", "test")},
                    captions=text["captions"], class_texts=text["class_texts"],
                    mean=tuple(text["mean"]), std=tuple(text["std"]), info=text["info"],
                )
            except (OSError, ValueError, KeyError) as err:
                log.warning("shapes cache %s is unreadable (%s); regenerating it", npz, err)
        data = generate(n_classes, items_per_class, image_size, seed)
        try:
            root.mkdir(parents=True, exist_ok=True)
            arrays = {"images": data.images, "labels": data.labels,
                      **{f"split_{k}": v for k, v in data.splits.items()}}
            atomic_write(npz, lambda f: np.savez(f, **arrays))
            atomic_write_text(meta, json.dumps({
                "class_names": data.class_names, "captions": data.captions,
                "class_texts": data.class_texts, "mean": data.mean, "std": data.std, "info": data.info,
            }))
        except OSError as err:
            log.warning("could not cache the shapes dataset in %s (%s); it will be regenerated next time", root, err)
        return data


def save_figure(path: str | Path, seed: int = 0, n_images: int = 6) -> Path:
    """Draw a few classes (a shared look, a shared story) with their captions into a PNG."""
    from PIL import Image, ImageDraw

    data = ShapesDataset.load(seed=seed)
    attrs = data.info["attributes"]
    first = attrs[0]
    same_look = [c for c, a in enumerate(attrs) if (a["shape"], a["colour"], a["pattern"]) ==
                 (first["shape"], first["colour"], first["pattern"])][:3]
    same_story = [c for c, a in enumerate(attrs) if (a["shape"], a["material"], a["place"]) ==
                  (first["shape"], first["material"], first["place"]) and c not in same_look][:2]
    classes = same_look + same_story
    scale, pad, text_w = 3, 4, 560
    size = data.image_shape[1] * scale
    canvas = Image.new("RGB", (n_images * (size + pad) + text_w, len(classes) * (size + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    items = data.items_by_class()
    for row, c in enumerate(classes):
        y = row * (size + pad)
        for col, i in enumerate(items[c][:n_images]):
            img = Image.fromarray(data.images[i].transpose(1, 2, 0)).resize((size, size), Image.NEAREST)
            canvas.paste(img, (col * (size + pad), y))
        x = n_images * (size + pad) + 8
        draw.text((x, y + 4), f"class: {data.class_names[c]}", fill="black")
        draw.text((x, y + 22), f"class text: {data.class_texts[c]}", fill="navy")
        draw.text((x, y + 40), f"caption: {data.captions[items[c][0]]}", fill="darkgreen")
        draw.text((x, y + 58), f"caption: {data.captions[items[c][1]]}", fill="darkgreen")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
