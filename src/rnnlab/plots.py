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
    """loss.png and accuracy.png: train and validation per epoch, ticks on whole epochs only."""
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    paths = []
    for key, label in (("loss", "Cross-entropy loss"), ("acc", "Accuracy")):
        fig, ax = _figure(show, (6, 4))
        ax.plot(epochs, [r[f"train_{key}"] for r in history], marker="o", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], marker="o", label="validation")
        ax.set_xlabel("Epoch")
        if len(epochs) <= 12:  # an epoch is a whole pass: no 1.5
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"{label}: training and validation, per epoch")
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


# the model's classes: red and green for two (the handout's 0 = bad, 1 = good), a qualitative palette beyond
CLASS_COLOURS = {2: ["#d62728", "#2ca02c"]}
OTHER_CLASS_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
# each sentence's line and words: colours that are neither red nor green, so they never read as a class
SENTENCE_COLOURS = ["#1f4e99", "#e08a00", "#7b3fa0", "#5b3a29", "#c2449a", "#4d4d4d", "#8f8f00", "#138d9c"]
PER_PANEL = 3  # up to this many sentences share one panel; more get one small panel each (same axes)


def class_colours(num_classes: int) -> list[str]:
    """The fill colour of a point predicted as class k is class_colours(C)[k]."""
    return CLASS_COLOURS.get(num_classes, OTHER_CLASS_COLOURS * (num_classes // len(OTHER_CLASS_COLOURS) + 1))


def trajectory(sentences: list[list[str]], paths: list[list[list[float]]], predictions: list[list[int]],
               class_names: list[str], boundary, path: Path, *, exact: bool, axes: tuple[str, str], title: str,
               limits: tuple[float, float] | None = None, show: bool = False) -> Path:
    """Paths of 2-D points p_0 -> p_1 -> ... -> p_T, one per sentence, the words beside the points: the
    hidden states of the handout's question 5 (see `explain.plot_trajectories`).

    predictions[i][t]: the class the model itself gives point t of sentence i; each point is filled with that
    class's colour (`class_colours`), so a point's colour is the model's answer there, whatever the plane shows.
    boundary = (w, c) or None: the line w . p + c = 0 (class 1 where w . p + c > 0), dashed. exact=True: the
    plane is the whole state space (H = 2), so the line is the model's boundary and the regions are shaded
    with the class colours. exact=False: the plane is a projection; the line is the boundary restricted to the
    plane (states off the plane can lie on its other side), and the key says so; no shading.
    Up to PER_PANEL sentences share one panel; more get one small panel each, on the same axes. A word whose
    point lies on an already labelled point keeps its marker but not its label. The key sits outside the axes.
    """
    import numpy as np
    from matplotlib.lines import Line2D

    pts = np.array([p for ps in paths for p in ps], dtype=float)
    if limits is None:  # the points' box with a margin
        span = max(float(np.ptp(pts, axis=0).max()), 1e-6)
        lo, hi = pts.min(axis=0) - 0.15 * span, pts.max(axis=0) + 0.15 * span
    else:
        lo, hi = np.array([limits[0]] * 2), np.array([limits[1]] * 2)
    groups = [list(range(len(sentences)))] if len(sentences) <= PER_PANEL else [[i] for i in range(len(sentences))]
    cols = min(len(groups), 2)
    rows = -(-len(groups) // cols)
    size = (6, 5.5) if len(groups) == 1 else (4.2 * cols, 3.6 * rows)
    fig, grid = figure_grid(rows, cols, size, show=show)
    panels = list(np.atleast_1d(grid).ravel())
    colours = class_colours(len(class_names))
    for ax in panels[len(groups):]:  # an odd number of sentences leaves one grid cell empty
        ax.set_visible(False)
    for ax, group in zip(panels, groups):
        labelled = []  # the points of this panel that carry a word
        if boundary is not None:
            (w0, w1), c = boundary
            xx, yy = np.meshgrid(np.linspace(lo[0], hi[0], 201), np.linspace(lo[1], hi[1], 201))
            d = w0 * xx + w1 * yy + c
            if exact:
                ax.contourf(xx, yy, (d > 0).astype(float), levels=[-0.5, 0.5, 1.5], colors=colours[:2], alpha=0.15)
            if d.min() < 0 < d.max():
                ax.contour(xx, yy, d, levels=[0.0], colors="grey", linestyles="dashed")
        for i in group:
            points, colour = np.array(paths[i], dtype=float), SENTENCE_COLOURS[i % len(SENTENCE_COLOURS)]
            ax.plot(points[:, 0], points[:, 1], color=colour, linewidth=1.2, zorder=2)
            ax.scatter(points[:, 0], points[:, 1], c=[colours[k] for k in predictions[i]], s=36, edgecolors=colour,
                       linewidths=1.0, zorder=3, gid=f"sentence {i}")
            for t, (word, (x, y)) in enumerate(zip(["s_0", *sentences[i]], points)):
                # a word whose point sits on an already labelled one keeps its marker but not its label, so the
                # labels stay legible; the last word is always labelled
                near = min((np.hypot(*((np.array([x, y]) - q) / (hi - lo))) for q in labelled), default=1.0)
                if near < 0.045 and t < len(points) - 1:
                    continue
                labelled.append(np.array([x, y]))
                ax.annotate(word, (x, y), textcoords="offset points", xytext=(4, 4), color=colour,
                            fontsize=9 if len(groups) == 1 else 7)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_xlabel(axes[0], fontsize=None if len(groups) == 1 else 8)
        ax.set_ylabel(axes[1], fontsize=None if len(groups) == 1 else 8)
        ax.grid(True, alpha=0.3)
        if len(groups) > 1:
            i = group[0]
            text = " ".join(sentences[i])
            text = text if len(text) <= 48 else text[:45] + "..."
            ax.set_title(f"{text}\n→ {class_names[predictions[i][-1]]}", fontsize=8,
                         color=SENTENCE_COLOURS[i % len(SENTENCE_COLOURS)])
            ax.tick_params(labelsize=7)
    # the key, outside the axes: the sentences (one panel), then what the fills, the shading and the line mean
    handles = []
    if len(groups) == 1:
        for i, words in enumerate(sentences):
            text = " ".join(words)
            handles.append(Line2D([], [], color=SENTENCE_COLOURS[i % len(SENTENCE_COLOURS)],
                                  label=text if len(text) <= 40 else text[:37] + "..."))
    for k, name in enumerate(class_names):
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor=colours[k],
                              markeredgecolor="grey", label=f"the model predicts {name} here"))
    if boundary is not None:
        line = ("decision boundary (shaded: the class predicted there)" if exact else
                "decision boundary restricted to this plane\n(the other components move it: trust the fills)")
        handles.append(Line2D([], [], color="grey", linestyle="dashed", label=line))
    if len(groups) == 1:
        panels[0].set_title(title)
        panels[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    else:
        fig.suptitle(title)
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(handles)),
                   fontsize=8)
        fig.tight_layout()
    return save(fig, path, show)
