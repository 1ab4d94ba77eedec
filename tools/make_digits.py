"""Write ``filter_templates/data/digits.npz`` once from scikit-learn's bundled copy of the UCI
Optical Recognition of Handwritten Digits test set (1,797 8x8 images, values 0-16), with the fixed
stratified train/test split the package has always used, so that the package reads the very same
bytes without scikit-learn. Run from the repository root: ``python tools/make_digits.py``;
``tests/test_data.py`` checks the file against scikit-learn wherever scikit-learn is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = Path(__file__).resolve().parent.parent / "filter_templates" / "data" / "digits.npz"
TEST_SIZE = 360  # of 1797: a 1437 / 360 split, stratified by class
SPLIT_SEED = 0


def main() -> None:
    bunch = load_digits()
    images = bunch.images.astype(np.uint8)
    assert np.array_equal(images, bunch.images), "the digits are integers 0-16"
    target = bunch.target.astype(np.uint8)
    train, test = train_test_split(
        np.arange(len(target)), test_size=TEST_SIZE, stratify=bunch.target, random_state=SPLIT_SEED
    )
    np.savez_compressed(OUT, images=images, target=target, test=np.sort(test).astype(np.int16))
    print(f"{OUT}: {OUT.stat().st_size:,} bytes; {len(target)} images, {len(test)} for testing")


if __name__ == "__main__":
    main()
