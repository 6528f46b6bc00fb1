"""The structure of a dataset's ground truth: what partial-label methods can exploit.

Class frequencies (the long tail), labels per image, and co-occurrence: P(i | j), the share of the images
with class j that also have class i, and its lift P(i | j) / P(i) (1: independent; the `simple` scenes
are close to 1 everywhere, real data and the `contexts` scenes are not). `mlpl info` prints them and the
report shows them (docs/outputs.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelStatistics:
    classes: list[str]
    frequency: np.ndarray  # [C] share of images with each class
    labels_per_image: np.ndarray  # [K + 1] count of images with 0..K labels
    cooccurrence: np.ndarray  # [C, C] P(row class | column class); NaN where the column class never occurs

    @property
    def lift(self) -> np.ndarray:
        """[C, C] P(i | j) / P(i): above 1 where classes come together, below where they avoid each other."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.cooccurrence / self.frequency[:, None]

    @property
    def n_images(self) -> int:
        return int(self.labels_per_image.sum())

    @property
    def labels_per_image_text(self) -> str:
        """`1: 282, 2: 257, …`: how many images have each number of labels (counts of 0 left out)."""
        return ", ".join(f"{k}: {int(v)}" for k, v in enumerate(self.labels_per_image) if v)

    @property
    def tail_ratio(self) -> float:
        """Frequency of the commonest class over that of the rarest that occurs."""
        seen = self.frequency[self.frequency > 0]
        return float(seen.max() / seen.min()) if seen.size else float("nan")

    def top_pairs(self, n: int, min_count: int = 5) -> list[tuple[str, str, float, float]]:
        """The n (i, j, P(i | j), lift) with the highest lift, i ≠ j, among pairs seen together in at least
        min_count images."""
        lift = self.lift.copy()
        np.fill_diagonal(lift, np.nan)
        together = self.cooccurrence * self.frequency[None, :] * self.n_images
        lift[~(together >= min_count)] = np.nan
        order = [k for k in np.argsort(-np.nan_to_num(lift, nan=-np.inf), axis=None) if np.isfinite(lift.flat[k])]
        pairs = [np.unravel_index(k, lift.shape) for k in order[:n]]
        return [(self.classes[i], self.classes[j], float(self.cooccurrence[i, j]), float(lift[i, j])) for i, j in pairs]


def label_statistics(labels: np.ndarray, classes: list[str]) -> LabelStatistics:
    """Statistics of a binary label matrix [N, C]."""
    y = np.asarray(labels, dtype=np.float64)
    counts = y.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cooc = (y.T @ y) / counts[None, :]
    cooc[:, counts == 0] = np.nan
    per_image = np.bincount(y.sum(1).astype(int), minlength=1) if len(y) else np.zeros(1, int)
    return LabelStatistics(list(classes), counts / max(len(y), 1), per_image, cooc)


def statistics_lines(stats: LabelStatistics, pairs: int = 5) -> list[str]:
    """The statistics for a terminal: frequencies (commonest first), labels per image, top pairs by lift."""
    order = np.argsort(-stats.frequency, kind="stable")
    mean = float((np.arange(len(stats.labels_per_image)) * stats.labels_per_image).sum() / max(stats.n_images, 1))
    lines = [f"classes by frequency (tail ratio {stats.tail_ratio:.1f}): "
             + ", ".join(f"{stats.classes[c]} {stats.frequency[c]:.2f}" for c in order),
             f"labels per image: mean {mean:.2f}; {stats.labels_per_image_text}"]
    top = stats.top_pairs(pairs)
    if top:
        lines.append("co-occurring pairs (P(a | b), lift): " + "; ".join(
            f"{a} | {b} {p:.2f} ×{lift:.1f}" for a, b, p, lift in top))
    return lines
