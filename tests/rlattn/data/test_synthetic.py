"""Synthetic backbone datasets: the red-square quadrant task and text-only key lookup."""

import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from rlattn.data.synthetic import (
    QUADRANT_QUESTION,
    QUADRANTS,
    SYNTHETIC_DATASETS,
    generate_key_lookup,
    generate_quadrant,
    load_synthetic,
    quadrant_image,
    quadrant_sample,
)

# Quadrant -> (rows, cols) as half-open ranges in a 32 x 32 image, written out by hand.
BOUNDS_32 = {"tl": ((0, 16), (0, 16)), "tr": ((0, 16), (16, 32)), "bl": ((16, 32), (0, 16)), "br": ((16, 32), (16, 32))}


def _red_mask(image: np.ndarray) -> np.ndarray:
    return image[..., 0] >= 128  # background R <= 40, square R >= 230


@pytest.mark.parametrize("quadrant", QUADRANTS)
def test_sample_square_inside_its_quadrant(quadrant):
    rng = np.random.default_rng(7)
    (r0, r1), (c0, c1) = BOUNDS_32[quadrant]
    for _ in range(50):
        image, (y0, x0, y1, x1) = quadrant_sample(quadrant, rng, size=32, square=8)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert (y1 - y0, x1 - x0) == (8, 8)
        assert r0 <= y0 and y1 <= r1 and c0 <= x0 and x1 <= c1
        expected = np.zeros((32, 32), bool)
        expected[y0:y1, x0:x1] = True
        assert (_red_mask(image) == expected).all()
        square = image[y0:y1, x0:x1]
        assert square[..., 0].min() >= 230 and square[..., 1:].max() <= 30
        background = image[~expected]
        assert background.max() <= 40


def test_square_can_touch_every_edge_of_its_quadrant():
    # Placement is uniform over all 16 - 8 + 1 = 9 offsets; 200 draws reach both ends.
    rng = np.random.default_rng(0)
    boxes = [quadrant_sample("br", rng, 32, 8)[1] for _ in range(200)]
    assert {b[0] for b in boxes} == set(range(16, 25))
    assert {b[1] for b in boxes} == set(range(16, 25))


def test_square_filling_the_quadrant():
    image, box = quadrant_sample("tr", np.random.default_rng(0), size=8, square=4)
    assert box == (0, 4, 4, 8)
    assert _red_mask(image).sum() == 16 and _red_mask(image)[0:4, 4:8].all()


def test_quadrant_image_is_the_sample_image():
    a = quadrant_image("bl", np.random.default_rng(3))
    b, _ = quadrant_sample("bl", np.random.default_rng(3))
    assert np.array_equal(a, b)


def test_generate_quadrant_columns_and_prompt():
    ds = generate_quadrant(8, seed=0)
    assert ds.column_names == ["id", "prompt", "image", "solution", "choices", "quadrant_index", "square_box"]
    assert all(c == ["tl", "tr", "bl", "br"] for c in ds["choices"])
    row = ds[0]
    assert row["id"] == "quadrant-0-0"
    (message,) = row["prompt"]
    assert message["role"] == "user"
    assert [part["type"] for part in message["content"]] == ["image", "text"]
    assert message["content"][1]["text"] == QUADRANT_QUESTION
    assert isinstance(row["image"], Image.Image) and row["image"].mode == "RGB" and row["image"].size == (32, 32)
    for row in ds:
        assert QUADRANTS[row["quadrant_index"]] == row["solution"]


def test_generate_quadrant_image_matches_box_and_solution():
    ds = generate_quadrant(12, seed=5, size=16, square=4)
    for row in ds:
        image = np.asarray(row["image"])
        y0, x0, y1, x1 = row["square_box"]
        expected = np.zeros((16, 16), bool)
        expected[y0:y1, x0:x1] = True
        assert (_red_mask(image) == expected).all()
        top, left = y1 <= 8, x1 <= 8
        assert row["solution"] == ("t" if top else "b") + ("l" if left else "r")


def test_quadrants_balanced_and_shuffled():
    ds = generate_quadrant(10, seed=0)
    assert Counter(ds["solution"]) == {"tl": 3, "tr": 3, "bl": 2, "br": 2}  # i % 4 over 0..9, as a multiset
    ds = generate_quadrant(40, seed=0)
    assert Counter(ds["solution"]) == {q: 10 for q in QUADRANTS}
    assert ds["solution"] != [QUADRANTS[i % 4] for i in range(40)]


def test_quadrant_determinism():
    a, b, c = generate_quadrant(6, seed=1), generate_quadrant(6, seed=1), generate_quadrant(6, seed=2)
    for name in ("id", "prompt", "solution", "quadrant_index", "square_box"):
        assert a[name] == b[name]
    for ra, rb in zip(a, b):
        assert np.array_equal(np.asarray(ra["image"]), np.asarray(rb["image"]))
    assert a["square_box"] != c["square_box"] or a["solution"] != c["solution"]
    assert not all(np.array_equal(np.asarray(x["image"]), np.asarray(y["image"])) for x, y in zip(a, c))


def test_pil_round_trip_is_lossless():
    ds = generate_quadrant(4, seed=3)
    rng = np.random.default_rng(3)
    order = rng.permutation(4)
    for i, row in enumerate(ds):
        # Regenerate row i from the same stream: same quadrant, same pixels.
        array, box = quadrant_sample(QUADRANTS[int(order[i]) % 4], rng)
        assert list(box) == row["square_box"]
        assert np.array_equal(np.asarray(row["image"]), array)
    assert type(ds.features["image"]).__name__ == "Image"


def test_key_lookup_answers_are_right():
    ds = generate_key_lookup(50, seed=0, num_keys=4)
    assert ds.column_names == ["id", "prompt", "problem", "solution", "choices"]
    assert all(c == [str(d) for d in range(10)] for c in ds["choices"])
    pattern = re.compile(r"((?:[a-z]=\d )*[a-z]=\d)\. What is ([a-z])\? Answer with one digit\.")
    positions = set()
    for i, row in enumerate(ds):
        assert row["id"] == f"key_lookup-0-{i}"
        assert row["prompt"] == [{"role": "user", "content": row["problem"]}]
        match = pattern.fullmatch(row["problem"])
        assert match, row["problem"]
        pairs = [item.split("=") for item in match.group(1).split(" ")]
        keys = [k for k, _ in pairs]
        assert len(keys) == 4 and len(set(keys)) == 4
        assert row["solution"] == dict(pairs)[match.group(2)]
        positions.add(keys.index(match.group(2)))
    assert positions == {0, 1, 2, 3}  # the queried key is drawn among all four places


def test_key_lookup_determinism():
    assert generate_key_lookup(5, seed=4)[:] == generate_key_lookup(5, seed=4)[:]
    assert generate_key_lookup(5, seed=4)["problem"] != generate_key_lookup(5, seed=5)["problem"]
    one = generate_key_lookup(3, seed=0, num_keys=1)
    assert all(p.count("=") == 1 for p in one["problem"])


def test_load_synthetic():
    assert set(SYNTHETIC_DATASETS) == {"synthetic_quadrant", "synthetic_key_lookup"}
    ds = load_synthetic("synthetic_quadrant", n=4, seed=1, size=16, square=4)
    assert len(ds) == 4 and ds[0]["image"].size == (16, 16)
    assert load_synthetic("synthetic_key_lookup", n=3, seed=2)[:] == generate_key_lookup(3, seed=2)[:]
    assert len(load_synthetic("synthetic_key_lookup")) == 512
    with pytest.raises(ValueError, match="synthetic_key_lookup.*synthetic_quadrant"):
        load_synthetic("synthetic_quadrants")
    with pytest.raises(ValueError, match="'num_keys'.*size, square"):
        load_synthetic("synthetic_quadrant", n=2, num_keys=3)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: quadrant_sample("top", np.random.default_rng(0)), r"quadrant .*tl, tr, bl, br.*'top'"),
        (lambda: quadrant_sample("tl", np.random.default_rng(0), size=31), r"size must be even.*31"),
        (lambda: quadrant_sample("tl", np.random.default_rng(0), size=32, square=17), r"square must be <= .*16.*17"),
        (lambda: quadrant_sample("tl", np.random.default_rng(0), square=0), r"square must be >= 1"),
        (lambda: generate_quadrant(0), r"n must be >= 1"),
        (lambda: generate_quadrant(4, size=10, square=6), r"square must be <= .*5"),
        (lambda: generate_key_lookup(4, num_keys=27), r"num_keys must be <= 26.*27"),
        (lambda: generate_key_lookup(4, num_keys=0), r"num_keys must be >= 1"),
        (lambda: generate_key_lookup(4, seed=1.5), r"seed must be an integer.*1.5"),
    ],
)
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
