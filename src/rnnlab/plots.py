"""Pictures: loss curves and the like, drawn with matplotlib, headless unless asked to show.

This module is imported only by the code that draws, so `import rnnlab` stays light. Each function
writes a PNG and returns its path; `show=True` also opens a window where a display exists (matplotlib
picks the interactive backend; set MPLBACKEND to choose one).
"""

from __future__ import annotations

from pathlib import Path


def _figure(show: bool, figsize: tuple[float, float]):
    """(fig, ax). Headless: a bare Figure drawn by the Agg canvas, no pyplot, no display, no window
    state. With show=True: pyplot, whose backend matplotlib picks for the display (or MPLBACKEND)."""
    if show:
        import matplotlib.pyplot as plt

        return plt.subplots(figsize=figsize)
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _save(fig, path: Path, show: bool) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    if show:
        import matplotlib.pyplot as plt

        plt.show()
        plt.close(fig)
    return path


def loss_curve(loss_history: list[float], path: Path, *, show: bool = False) -> Path:
    """The handout's step 6: x Epoch, y Total Loss, "Training Loss Curve", with a grid."""
    fig, ax = _figure(show, (6, 4))
    ax.plot(range(1, len(loss_history) + 1), loss_history)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Total Loss")
    ax.set_title("Training Loss Curve")
    ax.grid(True)
    return _save(fig, path, show)


def training_curves(history: list[dict], out_dir: Path, *, show: bool = False) -> list[Path]:
    """loss.png and accuracy.png: train and validation per epoch."""
    epochs = [r["epoch"] for r in history]
    paths = []
    for key, label in (("loss", "Cross-entropy loss"), ("acc", "Accuracy")):
        fig, ax = _figure(show, (6, 4))
        ax.plot(epochs, [r[f"train_{key}"] for r in history], marker="o", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], marker="o", label="validation")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        ax.set_title(f"Training {label.lower()}")
        ax.grid(True)
        ax.legend()
        paths.append(_save(fig, Path(out_dir) / ("loss.png" if key == "loss" else "accuracy.png"), show))
    return paths


def confusion(matrix: list[list[int]], label_names: list[str], path: Path, *, show: bool = False) -> Path:
    """The confusion matrix: rows the true class, columns the predicted one, counts in the cells."""
    C = len(label_names)
    fig, ax = _figure(show, (1.2 * C + 2.5, 1.2 * C + 2))
    ax.imshow(matrix, cmap="Blues")
    top = max(max(row) for row in matrix) or 1
    for i in range(C):
        for j in range(C):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center",
                    color="white" if matrix[i][j] > top / 2 else "black")
    ax.set_xticks(range(C), label_names)
    ax.set_yticks(range(C), label_names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title("Confusion matrix (test)")
    return _save(fig, path, show)
