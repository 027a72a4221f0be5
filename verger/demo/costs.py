"""Where a step's time goes: a fixed cost per Spark step and a cost per image.

A small batch's images/s mostly measures start-up (JVM, Spark session, store reads, model load,
commit, PCA); the rate a large batch reaches is the per-image cost alone. Each step reports its
own extraction time, so the split is read from the steps, not fitted: fixed = step wall minus
extraction (the median over steps), per image = extraction seconds over new images (pooled).
A line fitted through (images, wall) was tried first; steps that ran while uploads still went on
are slower per image than later ones, and the fit then put most of their time into the intercept
(a "fixed cost" of 75 s on the full split where no step spent more than 90 s outside extraction).
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
    """Fixed and per-image cost from the steps that extracted something; None without any.

    Examples
    --------
    >>> steps = pd.DataFrame({"new": [1000, 3000, 0], "step wall s": [30.0, 50.0, 12.0],
    ...                       "extraction s": [10.0, 30.0, 0.0]})
    >>> fit_costs(steps)
    CostFit(fixed_s=20.0, per_image_s=0.01, steps=2)
    """
    steps = batches[(batches["new"] > 0) & batches["step wall s"].notna()]
    if steps.empty or steps["extraction s"].sum() <= 0:
        return None
    extraction = steps["extraction s"].astype(float)
    fixed = float(np.median(steps["step wall s"].astype(float) - extraction))
    per_image = float(extraction.sum() / steps["new"].sum())
    return CostFit(max(fixed, 0.0), per_image, len(steps))


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
    split.set(ylabel="seconds (Spark step, spark-submit to exit)")
    split.set_title("each step's wall time, and its images/s", pad=34)
    split.margins(y=0.12)
    split.tick_params(axis="x", labelsize=7, labelrotation=30)
    plt.setp(split.get_xticklabels(), ha="right", rotation_mode="anchor")
    split.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.08), ncols=2, frameon=False)
    line.scatter(steps["new"], steps["step wall s"], color="tab:purple", label="event-flow steps")
    if reference:
        line.scatter([reference[0]], [reference[1]], marker="*", s=160, color="black",
                     label="verger run, same photos (JVM start included)")
    if fit:
        xs = np.linspace(0, max([*steps["new"], reference[0] if reference else 0]), 50)
        line.plot(xs, fit.fixed_s + fit.per_image_s * xs, color="tab:purple", linestyle="--",
                  label=f"{fit.fixed_s:.1f} s per step + {fit.per_image_s * 1000:.2f} ms per image (from the steps' reports)")
        line.set_title(f"steady state {fit.steady_rate:.1f} img/s once start-up is paid")
    else:
        line.set_title("no step extracted anything: no per-image cost to show")
    line.set(xlabel="new images in the step", ylabel="step wall seconds")
    line.legend(fontsize=8, loc="upper left")
    for axes in (split, line):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure
