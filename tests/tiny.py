"""The smallest commands that train something real: a VGG-19 at width 0.05 for one epoch on 8
synthetic images. Tests that need a run to exist, or a command to get as far as training before
a refusal, share these instead of spelling them out."""

from __future__ import annotations

TINY_DATA = ["--epochs", "1", "--limit-train", "8", "--limit-test", "8", "--batch-size", "8"]
TINY_TRAIN = ["--model", "vgg19", "--width", "0.05", "--dataset", "synthetic", *TINY_DATA, "--quiet"]
TINY_SWEEP = ["--models", "vgg19", "--templates", "base", "--widths", "0.05", "--datasets", "synthetic", *TINY_DATA]
TINY_REDUCE = ["--model", "vgg19", "--budget", "params=20K", "--templates", "base", *TINY_DATA]
