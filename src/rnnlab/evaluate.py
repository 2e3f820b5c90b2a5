"""Evaluation and prediction of a trained classifier: `rnnlab evaluate` and `rnnlab predict`.

    probabilities = softmax(W_out s_T + b_out)   for each sentence, without gradients
    loss          = mean_i -log p(y_i | sentence_i)   (nats)
    accuracy, per-class precision / recall / F1 and the confusion matrix counts[true][predicted]

Training (train.py) validates and tests through `evaluate_ids` / `evaluate_dataset`; the commands
load a checkpoint and call `evaluate` / `predict`. The language model's evaluation is in lm.py.
Left out: calibration measures, ROC curves, thresholds other than argmax.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from rnnlab import checkpoint
from rnnlab.data import Dataset, Vocab, batches, load_dataset, tokenize
from rnnlab.model import Classifier


# -- metrics ------------------------------------------------------------------------------------------
def confusion_matrix(y_true: list[int], y_pred: list[int], num_classes: int) -> list[list[int]]:
    """counts[true][predicted]"""
    m = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(y_true, y_pred):
        m[t][p] += 1
    return m


def metrics(y_true: list[int], y_pred: list[int], label_names: list[str], loss: float | None = None) -> dict:
    """Accuracy, per-class precision / recall / F1 and the confusion matrix."""
    C = len(label_names)
    cm = confusion_matrix(y_true, y_pred, C)
    per_class = {}
    for c, name in enumerate(label_names):
        tp = cm[c][c]
        predicted = sum(cm[t][c] for t in range(C))
        actual = sum(cm[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    n = len(y_true)
    return {"n": n, "accuracy": sum(cm[c][c] for c in range(C)) / n if n else 0.0, "loss": loss,
            "per_class": per_class, "confusion": cm, "label_names": list(label_names)}


@torch.no_grad()
def predict_ids(model: Classifier, ids: list[list[int]], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Class probabilities (N, C) on the CPU for encoded sentences, in their order; `progress` draws a bar
    (on stderr) over the batches."""
    from rnnlab.train import _progress  # train imports this module

    device = model.W_out.device  # batches are built on the CPU; the model may sit on a GPU
    probs = []
    bar = _progress(-(-len(ids) // batch_size), 0, "scoring", progress)
    for x, lengths, _ in batches(ids, [0] * len(ids), batch_size, shuffle=False):
        probs.append(model.predict_proba(x.to(device), lengths.to(device)).cpu())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return torch.cat(probs) if probs else torch.empty(0, model.num_classes)


def evaluate_ids(model: Classifier, ids: list[list[int]], labels: list[int], label_names: list[str],
                 progress: bool = False) -> dict:
    probs = predict_ids(model, ids, progress=progress)
    y = torch.tensor(labels)
    loss = float(F.nll_loss(torch.log(probs.clamp_min(1e-45)), y)) if len(labels) else float("nan")
    return metrics(labels, probs.argmax(1).tolist(), label_names, loss)


def evaluate_dataset(model: Classifier, ds: Dataset, vocab: Vocab, lowercase: bool, label_names: list[str],
                     progress: bool = False) -> dict:
    """`evaluate_ids` on a labelled data set, plus its unknown-word rate; each text is tokenised once."""
    tokens = [tokenize(t, lowercase) for t in ds.texts]
    result = evaluate_ids(model, [vocab.encode(t) for t in tokens], ds.labels, label_names, progress)
    total = sum(len(t) for t in tokens)
    result["unknown_rate"] = sum(vocab.count_unknown(t) for t in tokens) / total if total else 0.0
    return result


# -- evaluate and predict -----------------------------------------------------------------------------
def evaluate(checkpoint_path, data, fmt: str | None = None, *, text_column=None, label_column=None,
             encoding: str | None = None) -> dict:
    """Metrics of a trained model on a labelled file; labels must be among the model's classes."""
    model, config, vocab, label_names, _ = checkpoint.load_model(checkpoint_path)
    ds = load_dataset(data, fmt, text_column=text_column, label_column=label_column, label_names=label_names,
                      encoding=encoding)
    return evaluate_dataset(model, ds, vocab, config.lowercase, label_names, progress=sys.stderr.isatty())


def predict(checkpoint_path, texts: list[str]) -> list[dict]:
    """For each text: the label, the class probabilities and the words the model has never seen."""
    model, config, vocab, label_names, _ = checkpoint.load_model(checkpoint_path)
    tokens = [tokenize(t, config.lowercase) for t in texts]
    probs = predict_ids(model, [vocab.encode(t) for t in tokens], progress=sys.stderr.isatty())
    results = []
    for text, toks, p in zip(texts, tokens, probs.tolist()):
        c = max(range(len(p)), key=p.__getitem__)
        results.append({"text": text, "label": label_names[c], "class": c,
                        "probabilities": dict(zip(label_names, p)),
                        "unknown_words": [t for t in toks if t not in vocab.stoi]})
    return results
