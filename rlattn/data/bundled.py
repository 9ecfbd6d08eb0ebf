"""The datasets that ship with rlattn: registry, file access, and the gzip recipe.

The math sets are gzip-compressed JSONL files in ``rlattn/data/math/`` (package data, so an
installed wheel and a fresh clone both have them; provenance and licences in that folder's
README.md). Countdown is generated on demand (``rlattn.data.countdown``), not shipped.

Naming scheme: every set has one flat name (``gsm8k_train``, ``math500``, ...), which is also a
``family`` plus a ``split``: ``load_dataset("gsm8k", split="test")`` is ``gsm8k_test``. Benchmarks
(math500, aime24, ...) are a family of their own with the single split ``test``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from typing import IO

__all__ = ["BUNDLED_DATASETS", "BundledDataset", "gzip_jsonl", "open_bundled"]


@dataclass(frozen=True)
class BundledDataset:
    """One bundled dataset: where it lives and what it must contain."""

    name: str
    family: str
    split: str
    rows: int
    description: str
    file: str | None = None  # path inside the rlattn.data package; None for generated sets
    sha256: str | None = None  # of the original, uncompressed JSONL


def _math(name, family, split, rows, description, sha256):
    return BundledDataset(name, family, split, rows, description, f"math/{name}.jsonl.gz", sha256)


#: name -> :class:`BundledDataset`. Row counts are checked by the tests.
BUNDLED_DATASETS: dict[str, BundledDataset] = {
    d.name: d
    for d in (
        _math("gsm8k_train", "gsm8k", "train", 7473, "GSM8K train (integer answers)",
              "1953047a3c227794d8ec4f862e9991746ab3c58cd4d2894b285f5109de50aa1d"),
        _math("gsm8k_test", "gsm8k", "test", 1319, "GSM8K test (integer answers)",
              "3fe4a663e385666a19dba5e6bdcf057c6993b1aa0c15080437b84baaf00178f2"),
        _math("math_train", "math", "train", 7498,
              "MATH train (Hendrycks et al.), boxed answers; fields level, type",
              "4b840677410d84bf49a2be42624daa278e6d7cd6e8c001529437a5c16c36acd6"),
        _math("math500", "math500", "test", 500, "MATH-500 (PRM800K split); fields level, type",
              "5fc059738309e80cbf9390fb1c02dd1577eea8a2da008c20cc75b7597fb8d730"),
        _math("aime24", "aime24", "test", 30, "AIME 2024 I+II",
              "52751f6e3279d54bd9c11853d86e3ee70448c82e140477ba8833661ac2376f38"),
        _math("aime25", "aime25", "test", 30, "AIME 2025 I+II (MathArena text)",
              "d3facadfe15eaad9bbbd087edd2363ea7c2a7188cbb391980afe6876ec875946"),
        _math("amc23", "amc23", "test", 40, "AMC 12 2023 A+B",
              "83e1cb1d2fb8c27c4629cf2fb608cabc8c443b56ff16f25f615acfb076248e05"),
        _math("minerva_math", "minerva_math", "test", 272, "Minerva MIT OCW problems",
              "fe560058567ba1db284e962aee3b811302278df247d3dc7e10c94db220d202e7"),
        _math("olympiadbench", "olympiadbench", "test", 675,
              "OlympiadBench OE_TO_maths_en_COMP",
              "db2ec84705db43eb32a082db60780301723e0b502f73770c927ffc6f39d5b0b6"),
        _math("arith_smollm2_train", "arith_smollm2", "train", 69,
              "arith_train problems the embedded SmolLM2-135M-Instruct solves sometimes: pass rate 1/8-5/8 of 8 "
              "samples (scripts/filter_difficulty.py); fields steps, ops, pass_rate",
              "bf5c76ced8f5e77eb0266a0509b83a40b5d4aea916f296596d18cac75afc183f"),
        BundledDataset("countdown_train", "countdown", "train", 20_000,
                       "Countdown, generated (seed 0, 3-4 numbers; rlattn.data.countdown)"),
        BundledDataset("countdown_test", "countdown", "test", 512,
                       "Countdown, generated (seed 1, 3-4 numbers; rlattn.data.countdown)"),
        BundledDataset("arith_train", "arith", "train", 4000,
                       "Graded arithmetic word problems, 1-3 steps, generated (seed 0; rlattn.data.arithmetic)"),
        BundledDataset("arith_test", "arith", "test", 600,
                       "Graded arithmetic word problems, held out (seed 1, disjoint texts; rlattn.data.arithmetic)"),
    )
}


def family_splits(family: str) -> dict[str, BundledDataset]:
    """split -> dataset for one family (empty if the family is unknown)."""
    return {d.split: d for d in BUNDLED_DATASETS.values() if d.family == family}


def open_bundled(name: str) -> IO[bytes]:
    """Open a bundled math set's decompressed JSONL bytes (works from a wheel or a zip too)."""
    info = BUNDLED_DATASETS[name]
    if info.file is None:
        raise ValueError(f"{name!r} is generated, not a bundled file")
    resource = resources.files("rlattn.data").joinpath(info.file)
    try:
        raw = resource.open("rb")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"bundled file {info.file!r} for {name!r} is missing from the rlattn.data package "
            "(a broken install? reinstall rlattn)"
        ) from None
    return gzip.GzipFile(fileobj=raw, mode="rb")


def gzip_jsonl(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Gzip ``src`` into ``dst`` reproducibly; return the sha256 of the uncompressed ``src``.

    Level 9, ``mtime=0`` and no file name in the header, so the same input gives the same bytes
    on every run (with the same zlib). This is how the shipped ``math/*.jsonl.gz`` were made; see
    the README next to them for the one-off command.
    """
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as gz:
            while chunk := fin.read(1 << 20):
                digest.update(chunk)
                gz.write(chunk)
    return digest.hexdigest()


def sha256_of_bundled(name: str) -> str:
    """sha256 of a bundled set's decompressed bytes (compare with ``BUNDLED_DATASETS[name]``)."""
    digest = hashlib.sha256()
    with open_bundled(name) as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
