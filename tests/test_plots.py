"""The training curves: whole-epoch ticks only, and titles that say what is drawn."""

from __future__ import annotations

import pytest

from rnnlab import plots


@pytest.mark.parametrize("n_epochs", [1, 2, 3, 7, 40])
def test_training_curves_tick_whole_epochs_and_name_both_splits(tmp_path, monkeypatch, n_epochs):
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 1 - 0.5 / e,
                "val_acc": 0.9 - 0.5 / e} for e in range(1, n_epochs + 1)]
    caught, real_save = [], plots.save
    monkeypatch.setattr(plots, "save", lambda fig, p, show=False: caught.append(fig) or real_save(fig, p, show))
    paths = plots.training_curves(history, tmp_path)
    assert [p.name for p in paths] == ["loss.png", "accuracy.png"] and all(p.is_file() for p in paths)
    for fig in caught:
        (ax,) = fig.axes
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks  # no 1.5, 2.5
        assert "training and validation" in ax.get_title()
        assert [line.get_label() for line in ax.get_lines()] == ["train", "validation"]
