"""Synthetic toy tasks: "where is the red square?" (an image) and key lookup (text).

Why: small policies (a latent backbone, docs/backbones.md; a tiny random LM) need tasks that a tiny, randomly
initialised model can learn in a few dozen GRPO steps on a CPU, with answers that an exact-match
reward checks, and (for the image task) a known target region, so patch credit can be scored as
*grounding accuracy*: does the top patch lie in the quadrant that holds the square?

- ``synthetic_quadrant``: a ``size x size`` RGB image (default 32 x 32), dark background with
  mild noise (every channel in 0..40), one red square (R in 230..255, G and B in 0..30) of side
  ``square`` placed uniformly at random *fully inside* one quadrant. Question:
  :data:`QUADRANT_QUESTION`; answer one of :data:`QUADRANTS` (``t``/``b`` = top/bottom half of
  the rows, ``l``/``r`` = left/right half of the columns). Chance is 0.25.
- ``synthetic_key_lookup``: text only, ``"q=3 f=7 x=1 b=9. What is x? Answer with one digit."``:
  distinct lowercase keys, digit values, one key queried. Chance is about 0.1.

Rows follow TRL's conversational form: ``prompt`` is a list of messages; for the image task the
user message has a ``{"type": "image"}`` part that TRL fills from the ``image`` column. Everything
is drawn from one ``numpy.random.default_rng(seed)``, so a dataset is a pure function of its
arguments. ``datasets`` stores the PIL images as PNG (lossless), so pixels round-trip exactly.
"""

from __future__ import annotations

import inspect
import string
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:  # `datasets` is imported lazily, so `vision` can use QUADRANTS cheaply
    import datasets

__all__ = [
    "KEY_LOOKUP_KEYS",
    "QUADRANTS",
    "QUADRANT_QUESTION",
    "SYNTHETIC_DATASETS",
    "generate_key_lookup",
    "generate_quadrant",
    "key_lookup_problem",
    "load_synthetic",
    "quadrant_image",
    "quadrant_sample",
]

#: The four answers: top-left, top-right, bottom-left, bottom-right (index = quadrant_index).
QUADRANTS: tuple[str, ...] = ("tl", "tr", "bl", "br")
QUADRANT_QUESTION = "Where is the red square? Answer with one of: tl, tr, bl, br."
#: The keys the key-lookup task draws from.
KEY_LOOKUP_KEYS = string.ascii_lowercase

# Pixel value ranges (inclusive). Background max < square red min, so "red" is unambiguous.
_BACKGROUND_MAX = 40
_RED_MIN, _RED_MAX = 230, 255
_SQUARE_OTHER_MAX = 30  # green and blue inside the square


# --------------------------------------------------------------------------------------------
# Argument checks (errors name the argument, the value and what is allowed)
# --------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _check_image_args(size: Any, square: Any) -> None:
    _check_int("size", size, minimum=2)
    if size % 2:
        raise ValueError(f"size must be even (the image splits into four equal quadrants), got {size!r}")
    _check_int("square", square, minimum=1)
    if square > size // 2:
        raise ValueError(f"square must be <= size // 2 = {size // 2} to fit inside a quadrant, got {square!r}")


def _check_quadrant(quadrant: Any) -> None:
    if quadrant not in QUADRANTS:
        raise ValueError(f"quadrant must be one of {', '.join(QUADRANTS)}, got {quadrant!r}")


# --------------------------------------------------------------------------------------------
# Quadrant task
# --------------------------------------------------------------------------------------------
def quadrant_sample(
    quadrant: str, rng: np.random.Generator, size: int = 32, square: int = 8
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One image with the red square inside ``quadrant``, and the square's box.

    Returns ``(image, (y0, x0, y1, x1))``: ``image`` is uint8 ``[size, size, 3]`` (RGB); the box
    is half-open, the square covers ``image[y0:y1, x0:x1]``, with ``y1 - y0 == x1 - x0 == square``.
    Draws from ``rng``: the background noise, then the square's position, then its colour.
    """
    _check_quadrant(quadrant)
    _check_image_args(size, square)
    half = size // 2
    image = rng.integers(0, _BACKGROUND_MAX + 1, size=(size, size, 3), dtype=np.uint8)  # [S, S, 3]
    y_base = 0 if quadrant[0] == "t" else half
    x_base = 0 if quadrant[1] == "l" else half
    # Uniform over every placement that keeps the square inside the quadrant.
    y0 = y_base + int(rng.integers(0, half - square + 1))
    x0 = x_base + int(rng.integers(0, half - square + 1))
    y1, x1 = y0 + square, x0 + square
    patch = image[y0:y1, x0:x1]  # [square, square, 3], a view
    patch[..., 0] = rng.integers(_RED_MIN, _RED_MAX + 1, size=(square, square), dtype=np.uint8)
    patch[..., 1:] = rng.integers(0, _SQUARE_OTHER_MAX + 1, size=(square, square, 2), dtype=np.uint8)
    return image, (y0, x0, y1, x1)


def quadrant_image(quadrant: str, rng: np.random.Generator, size: int = 32, square: int = 8) -> np.ndarray:
    """uint8 ``[size, size, 3]`` image with a red square inside ``quadrant`` (see :func:`quadrant_sample`)."""
    return quadrant_sample(quadrant, rng, size, square)[0]


def generate_quadrant(n: int, seed: int = 0, size: int = 32, square: int = 8) -> "datasets.Dataset":
    """``n`` rows of the "where is the red square?" task as a ``datasets.Dataset``.

    Quadrants are balanced (row ``i`` of the unshuffled list gets ``QUADRANTS[i % 4]``), then
    shuffled by ``seed``. Columns: ``id`` (``"quadrant-<seed>-<i>"``), ``prompt`` (one user message
    with an image part and :data:`QUADRANT_QUESTION`), ``image`` (``PIL.Image.Image``, RGB),
    ``solution`` (``"tl"``/``"tr"``/``"bl"``/``"br"``), ``choices`` (the four), ``quadrant_index`` (0-3, into
    :data:`QUADRANTS`), ``square_box`` (``[y0, x0, y1, x1]``, half-open).
    """
    import datasets
    from PIL import Image

    _check_int("n", n, minimum=1)
    _check_int("seed", seed)
    _check_image_args(size, square)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)  # [n]; row i gets quadrant order[i] % 4
    columns: dict[str, list] = {k: [] for k in ("id", "prompt", "image", "solution", "choices", "quadrant_index",
                                                "square_box")}
    for i in range(n):
        index = int(order[i]) % len(QUADRANTS)
        quadrant = QUADRANTS[index]
        array, box = quadrant_sample(quadrant, rng, size, square)
        columns["id"].append(f"quadrant-{seed}-{i}")
        columns["prompt"].append(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUADRANT_QUESTION}]}]
        )
        columns["image"].append(Image.fromarray(array))  # uint8 [S, S, 3] -> mode "RGB"
        columns["solution"].append(quadrant)
        columns["choices"].append(list(QUADRANTS))
        columns["quadrant_index"].append(index)
        columns["square_box"].append([int(v) for v in box])
    # Inference gives `image` the Image() feature (stored as PNG, decoded back to PIL on read).
    # Arrow unifies the content parts, so the image part reads back as {"type": "image", "text": None}.
    return datasets.Dataset.from_dict(columns)


# --------------------------------------------------------------------------------------------
# Key-lookup task (text only)
# --------------------------------------------------------------------------------------------
def key_lookup_problem(pairs: list[tuple[str, int]], query: str) -> str:
    """The question text, e.g. ``"a=3 b=7 c=1 d=9. What is c? Answer with one digit."``."""
    listing = " ".join(f"{key}={value}" for key, value in pairs)
    return f"{listing}. What is {query}? Answer with one digit."


def generate_key_lookup(n: int, seed: int = 0, num_keys: int = 4) -> "datasets.Dataset":
    """``n`` rows of the key-lookup task as a ``datasets.Dataset``.

    Each row draws ``num_keys`` distinct keys from a-z (listed in the drawn order), a digit 0-9
    for each (repeats allowed), and the queried key uniformly among them. Columns: ``id``
    (``"key_lookup-<seed>-<i>"``), ``prompt`` (one user message, string content), ``problem``
    (the text), ``solution`` (the queried key's digit, as a string), ``choices`` (the ten digits).
    """
    import datasets

    _check_int("n", n, minimum=1)
    _check_int("seed", seed)
    _check_int("num_keys", num_keys, minimum=1)
    if num_keys > len(KEY_LOOKUP_KEYS):
        raise ValueError(f"num_keys must be <= {len(KEY_LOOKUP_KEYS)} (distinct letters a-z), got {num_keys!r}")
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {k: [] for k in ("id", "prompt", "problem", "solution", "choices")}
    for i in range(n):
        letters = rng.choice(len(KEY_LOOKUP_KEYS), size=num_keys, replace=False)  # [num_keys]
        values = rng.integers(0, 10, size=num_keys)  # [num_keys]
        target = int(rng.integers(0, num_keys))
        pairs = [(KEY_LOOKUP_KEYS[int(k)], int(v)) for k, v in zip(letters, values)]
        problem = key_lookup_problem(pairs, pairs[target][0])
        columns["id"].append(f"key_lookup-{seed}-{i}")
        columns["prompt"].append([{"role": "user", "content": problem}])
        columns["problem"].append(problem)
        columns["solution"].append(str(pairs[target][1]))
        columns["choices"].append([str(d) for d in range(10)])
    return datasets.Dataset.from_dict(columns)


# --------------------------------------------------------------------------------------------
# By name
# --------------------------------------------------------------------------------------------
#: Dataset name (as a recipe would write it) -> generator ``fn(n, seed=..., **options)``.
SYNTHETIC_DATASETS: dict[str, Callable[..., "datasets.Dataset"]] = {
    "synthetic_quadrant": generate_quadrant,
    "synthetic_key_lookup": generate_key_lookup,
}


def load_synthetic(name: str, n: int = 512, seed: int = 0, **kwargs: Any) -> "datasets.Dataset":
    """The synthetic dataset ``name`` (a key of :data:`SYNTHETIC_DATASETS`) with ``n`` rows.

    ``kwargs`` go to the generator (``size``/``square`` for the quadrant task, ``num_keys`` for
    key lookup); an option the generator does not take raises a ValueError naming it.
    """
    if name not in SYNTHETIC_DATASETS:
        raise ValueError(f"unknown synthetic dataset {name!r}; valid names: {', '.join(sorted(SYNTHETIC_DATASETS))}")
    generator = SYNTHETIC_DATASETS[name]
    options = [p for p in inspect.signature(generator).parameters if p not in ("n", "seed")]
    for key in kwargs:
        if key not in options:
            raise ValueError(f"{name}: unknown option {key!r}; valid options: {', '.join(options)}")
    return generator(n, seed=seed, **kwargs)
