"""Pictures: loss curves and the like, drawn with matplotlib, headless unless asked to show.

This module is imported only by the code that draws, so `import rnnlab` stays light. Each function
writes a PNG and returns its path; `show=True` also opens a window where a display exists (matplotlib
picks the interactive backend; set MPLBACKEND to choose one).
"""

from __future__ import annotations

from pathlib import Path


def figure_grid(rows: int, cols: int, figsize: tuple[float, float], *, show: bool = False):
    """(fig, axes) with rows x cols panels. Headless: a bare Figure drawn by the Agg canvas, no pyplot, no
    display, no window state. With show=True: pyplot, whose backend matplotlib picks for the display (or
    MPLBACKEND). Write it with `save`."""
    if show:
        import matplotlib.pyplot as plt

        return plt.subplots(rows, cols, figsize=figsize)
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols)


def _figure(show: bool, figsize: tuple[float, float]):
    """(fig, ax): a figure of one panel, as `figure_grid`."""
    return figure_grid(1, 1, figsize, show=show)


def save(fig, path: Path, show: bool = False) -> Path:
    """Write `fig` as a PNG (creating its folder) and return the path; show it first if asked."""
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
    return save(fig, path, show)


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
        paths.append(save(fig, Path(out_dir) / ("loss.png" if key == "loss" else "accuracy.png"), show))
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
    return save(fig, path, show)


def memory_sweep(rows: list[dict], chance: float, path: Path, *, budget: str = "", show: bool = False) -> Path:
    """Test accuracy against the distance D of the memory task: one line per cell, chance dashed; `budget`
    (the training budget shared by the cells, in words) goes under the title."""
    fig, ax = _figure(show, (6, 4))
    for i, cell in enumerate(dict.fromkeys(r["cell"] for r in rows)):
        mine = sorted((r for r in rows if r["cell"] == cell), key=lambda r: r["distance"])
        points = [(r["distance"], r["accuracy"]) for r in mine]
        # cells often tie (all at 1.0, or all at chance): each later line is thinner, so the ones under it show
        (line,) = ax.plot([d for d, _ in points], [a for _, a in points], marker="os^D"[i % 4],
                          markersize=max(3, 10 - 2.5 * i), linewidth=max(1.0, 3.5 - i), label=cell)
        if all(len(r.get("accuracies", [])) > 1 for r in mine):  # several seeds: their range as a band
            ax.fill_between([r["distance"] for r in mine], [min(r["accuracies"]) for r in mine],
                            [max(r["accuracies"]) for r in mine], color=line.get_color(), alpha=0.15)
    ax.axhline(chance, color="grey", linestyle="dashed", label=f"chance (1/{round(1 / chance)})")
    ax.set_xscale("log")  # D spans 5..100: equal ratios, equal spacing
    distances = sorted({r["distance"] for r in rows})
    ax.set_xticks(distances, [str(d) for d in distances])
    ax.minorticks_off()
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Distractors D between the signal and the answer")
    ax.set_ylabel("Test accuracy")
    ax.set_title("Long-range memory: remember the first token" + (f"\n{budget}" if budget else ""))
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save(fig, path, show)


def trajectory(sentences: list[list[str]], paths: list[list[list[float]]], boundary, path: Path, *,
               axes: tuple[str, str], title: str, limits: tuple[float, float] | None = None,
               show: bool = False) -> Path:
    """Paths of 2-D points p_0 -> p_1 -> ... -> p_T, one per sentence, the words beside the points: the
    hidden states of the handout's question 5 (see `explain.plot_trajectories`).

    boundary = (w, c) or None: the plane is shaded green where w . p + c > 0 (class 1) and red
    elsewhere, with the line w . p + c = 0 dashed; None leaves the plane blank (more than 2 classes).
    """
    import numpy as np

    fig, ax = _figure(show, (6, 5.5))
    pts = np.array([p for ps in paths for p in ps], dtype=float)
    if limits is None:  # the points' box with a margin
        span = max(float(np.ptp(pts, axis=0).max()), 1e-6)
        lo, hi = pts.min(axis=0) - 0.15 * span, pts.max(axis=0) + 0.15 * span
    else:
        lo, hi = np.array([limits[0]] * 2), np.array([limits[1]] * 2)
    if boundary is not None:
        (w0, w1), c = boundary
        xx, yy = np.meshgrid(np.linspace(lo[0], hi[0], 201), np.linspace(lo[1], hi[1], 201))
        d = w0 * xx + w1 * yy + c
        ax.contourf(xx, yy, (d > 0).astype(float), levels=[-0.5, 0.5, 1.5], colors=["#f4cccc", "#d9ead3"], alpha=0.8)
        if d.min() < 0 < d.max():
            ax.contour(xx, yy, d, levels=[0.0], colors="grey", linestyles="dashed")
    for words, points in zip(sentences, paths):
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        (line,) = ax.plot(xs, ys, marker="o", label=" ".join(words))
        for word, (x, y) in zip(["s_0", *words], points):
            ax.annotate(word, (x, y), textcoords="offset points", xytext=(5, 5), color=line.get_color())
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save(fig, path, show)
