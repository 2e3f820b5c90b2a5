"""Pictures: loss curves and the like, drawn with matplotlib, headless (Agg) unless asked to show.

This module is imported only by the code that draws, so `import rnnlab` stays light. Each function
writes a PNG and returns its path; `show=True` also opens a window where a display exists (matplotlib
picks the interactive backend; set MPLBACKEND to choose one).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib


def _pyplot(show: bool):
    """pyplot on the Agg backend (no window, no display needed) unless a window is wanted."""
    if not show and "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, show: bool) -> Path:
    plt = _pyplot(show)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    if show:
        plt.show()
    plt.close(fig)
    return path


def loss_curve(loss_history: list[float], path: Path, *, show: bool = False) -> Path:
    """The handout's step 6: x Epoch, y Total Loss, "Training Loss Curve", with a grid."""
    fig, ax = _pyplot(show).subplots(figsize=(6, 4))
    ax.plot(range(1, len(loss_history) + 1), loss_history)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Total Loss")
    ax.set_title("Training Loss Curve")
    ax.grid(True)
    return _save(fig, path, show)
