"""Where a step's time goes: a fixed cost per Spark step and a cost per image.

A small batch's images/s mostly measures start-up (JVM, Spark session, store reads, model load,
commit, PCA); the rate a large batch reaches is the per-image cost alone. The split is a straight
line fitted through the steps of one demo run: wall seconds = fixed + per_image x new images.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


@dataclass(frozen=True)
class CostFit:
    fixed_s: float
    per_image_s: float
    steps: int

    @property
    def steady_rate(self) -> float:
        return 1 / self.per_image_s


def fit_costs(batches: pd.DataFrame) -> CostFit | None:
    """The line through (new images, step wall seconds); None without two step sizes to fit."""
    steps = batches[(batches["new"] > 0) & batches["step wall s"].notna()]
    if steps["new"].nunique() < 2:
        return None
    per_image, fixed = np.polyfit(steps["new"].astype(float), steps["step wall s"].astype(float), 1)
    if per_image <= 0:
        return None
    return CostFit(float(max(fixed, 0.0)), float(per_image), len(steps))


def plot_costs(batches: pd.DataFrame, fit: CostFit | None, reference: tuple[int, float] | None):
    """Left: each step's wall split into extraction and the rest. Right: the fitted line."""
    steps = batches[batches["step wall s"].notna()].reset_index(drop=True)
    figure, (split, line) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [f"{i + 1}. {phase}\n{new} new" for i, (phase, new) in enumerate(zip(steps["phase"], steps["new"]))]
    extraction = steps["extraction s"].astype(float)
    rest = (steps["step wall s"].astype(float) - extraction).clip(lower=0)
    split.bar(names, rest, color="tab:orange", label="start-up, store reads, commit, PCA")
    split.bar(names, extraction, bottom=rest, color="tab:green", label="extraction (fetch, decode, inference)")
    for x, (new, wall) in enumerate(zip(steps["new"], steps["step wall s"])):
        split.annotate(f"{new / wall:.1f} img/s" if new else "nothing new", (x, wall), ha="center",
                       va="bottom", fontsize=8)
    split.set(ylabel="seconds (Spark step, spark-submit to exit)", title="each step's wall time, and its images/s")
    split.tick_params(axis="x", labelsize=7)
    split.legend(fontsize=8, loc="upper left")
    line.scatter(steps["new"], steps["step wall s"], color="tab:purple", label="event-flow steps")
    if reference:
        line.scatter([reference[0]], [reference[1]], marker="*", s=160, color="black",
                     label="verger run, same photos (JVM start included)")
    if fit:
        xs = np.linspace(0, max([*steps["new"], reference[0] if reference else 0]), 50)
        line.plot(xs, fit.fixed_s + fit.per_image_s * xs, color="tab:purple", linestyle="--",
                  label=f"fit: {fit.fixed_s:.1f} s per step + {fit.per_image_s * 1000:.2f} ms per image")
        line.set_title(f"steady state {fit.steady_rate:.1f} img/s once start-up is paid")
    else:
        line.set_title("too few step sizes to separate fixed and per-image cost")
    line.set(xlabel="new images in the step", ylabel="step wall seconds")
    line.legend(fontsize=8, loc="upper left")
    for axes in (split, line):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure
