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
    low, high = min(min(row) for row in matrix), max(max(row) for row in matrix)
    for i in range(C):
        for j in range(C):  # white text on the darker half of the colour scale
            dark = high > low and matrix[i][j] - low > (high - low) / 2
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks(range(C), label_names)
    ax.set_yticks(range(C), label_names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title("Confusion matrix (test)")
    return _save(fig, path, show)


def trajectory_2d(sentences: list[list[str]], states: list[list[list[float]]], W_out, b_out, path: Path, *,
                  show: bool = False) -> Path:
    """The handout's question 5, drawn: with n = 2 each hidden state s_t is a point in the plane.

    Each sentence is a path s_0 = 0 -> s_1 -> ... -> s_T with its words beside the points; the
    background is the output layer's decision: class 1 where (W_out[1] - W_out[0]) s + (b_out[1] -
    b_out[0]) > 0, the line between the regions is where both logits are equal.
    """
    import numpy as np

    fig, ax = _figure(show, (6, 5.5))
    w = [float(W_out[1][k] - W_out[0][k]) for k in range(2)]  # the logit difference, a plane in s
    c = float(b_out[1] - b_out[0])
    grid = np.linspace(-1.1, 1.1, 201)  # tanh keeps every state inside (-1, 1)
    xx, yy = np.meshgrid(grid, grid)
    ax.contourf(xx, yy, (w[0] * xx + w[1] * yy + c > 0).astype(float), levels=[-0.5, 0.5, 1.5],
                colors=["#f4cccc", "#d9ead3"], alpha=0.8)
    ax.contour(xx, yy, w[0] * xx + w[1] * yy + c, levels=[0.0], colors="grey", linestyles="dashed")
    for words, path_states in zip(sentences, states):
        points = [[0.0, 0.0], *path_states]  # s_0 = 0, then one state per word
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        (line,) = ax.plot(xs, ys, marker="o", label=" ".join(words))
        for word, (x, y) in zip(["s_0", *words], points):
            ax.annotate(word, (x, y), textcoords="offset points", xytext=(5, 5), color=line.get_color())
    ax.set_xlim(-1.1, 1.1)
    ax.set_ylim(-1.1, 1.1)
    ax.set_xlabel("s[0]")
    ax.set_ylabel("s[1]")
    ax.set_title("Hidden state after each word (green: class 1, red: class 0)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path, show)
