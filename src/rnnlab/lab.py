"""The lab handout's experiment, step for step (`rnnlab lab`).

The handout (`shared/seed/lab-handout.txt`, "LABORATORY: LSTM-RNN In Class", Part 2) trains a vanilla
RNN on two sentences, "The movie is good" -> 1 and "The movie is bad" -> 0. Its code template is a
table of steps 1-5 (the numbers used here); the template's own comments count differently ("# 5.
Training Loop" is in step 3, "# 7. Test After Training" in step 5):

    1. vocabulary {The, movie, is, good, bad}, one-hot words (m = 5), the two sentences, n = 2, T = 4,
       torch.manual_seed(42)
    2. W (n x n), U (n x m), b, W_out (2 x n), b_out; learning rate 0.1, 300 epochs, cross-entropy
    3. for each epoch and sentence: s_t = tanh(W s_{t-1} + U x_t + b), logits = W_out s_T + b_out,
       cross-entropy, loss.backward(), manual SGD p -= 0.1 * p.grad, zero the gradients;
       every 50 epochs print "Epoch [50/300] - Loss: 0.0816" (the epoch's summed loss)
    4. plot the loss curve ("Training Loss Curve", x Epoch, y Total Loss, grid)
    5. predict both sentences; expected bad -> 0, good -> 1

We also print each word's hidden state s_t (n = 2, so it is readable) and the class probabilities.
The handout leaves the initialisation open; ours is `Classifier`'s (uniform in +-1/sqrt(n), as torch.nn
does), seeded with the lab's seed through its own generator, so the run is the same on every machine.
"""

from __future__ import annotations

import csv
import importlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnlab.config import Config
from rnnlab.errors import UserError
from rnnlab.explain import Trace, plot_trajectories, trace
from rnnlab.model import Classifier
from rnnlab.optim import SGD

VOCAB = {"The": 0, "movie": 1, "is": 2, "good": 3, "bad": 4}  # the handout's, case as given
TRAIN_DATA = [(("The", "movie", "is", "good"), 1), (("The", "movie", "is", "bad"), 0)]
TEST_SENTENCES = [["The", "movie", "is", "bad"], ["The", "movie", "is", "good"]]


@dataclass
class LabResult:
    loss_history: list[float]  # summed loss of each epoch
    predictions: list[int]  # argmax class of each test sentence
    probabilities: list[list[float]]  # softmax(logits) of each test sentence
    states: list[list[list[float]]]  # s_1..s_T of each test sentence
    files: list[Path] = field(default_factory=list)  # what the run wrote
    model: Classifier | None = None


def sentence_ids(words: list[str], where: str = "sentence") -> torch.Tensor:
    """(1, T) ids of the words; an unknown word is a UserError naming it and the vocabulary."""
    for w in words:
        if w not in VOCAB:
            raise UserError(f"unknown word {w!r}; the lab's vocabulary is {', '.join(VOCAB)} (case-sensitive)",
                            path=where)
    return torch.tensor([[VOCAB[w] for w in words]])


def traces(model: Classifier, sentences: list[list[str]]) -> list:
    """`explain.trace` of each sentence (words of the lab's vocabulary) with the lab's classes "0", "1"."""
    ids = [sentence_ids(s, where=f"sentence {i}")[0].tolist() for i, s in enumerate(sentences, start=1)]
    return [trace(model, i, s, ["0", "1"]) for i, s in zip(ids, sentences)]


def explain_lab(texts: list[str] | None = None) -> tuple[Classifier, list[Trace]]:
    """(model, traces) with the lab handout's model, trained here as `rnnlab lab` trains it (about a second).
    The lab's words are split on spaces and kept case-sensitive; default: the handout's two test sentences."""
    sentences = [t.split() for t in texts] if texts else [list(s) for s in TEST_SENTENCES]
    for i, words in enumerate(sentences, start=1):  # check the words before the second of training
        if not words:
            raise UserError(f"sentence {i} is empty; give it some of the lab's words, e.g. \"The movie is good\"")
        sentence_ids(words, where=f"sentence {i}")
    model, _ = train_lab_model(Config.lab(), log=lambda _: None)
    return model, traces(model, sentences)


def train_lab_model(config: Config, log=print) -> tuple[Classifier, list[float]]:
    """Steps 2-3 of the handout: the model, and its training on the two sentences; (model, loss per epoch)."""
    torch.manual_seed(config.seed)  # as the handout does; the model also seeds its own generator
    model = Classifier(len(VOCAB), config.hidden, 2, cell=config.cell, phi=config.phi, embed_dim=None,
                       backward=config.backward, seed=config.seed)
    optimizer = SGD(model.parameters(), lr=config.lr)

    # step 3 (the template's "# 5. Training Loop"): one backward and one SGD step per sentence, the epoch's
    # losses summed
    loss_history = []
    for epoch in range(config.epochs):
        total_loss = 0.0
        for sentence, label in TRAIN_DATA:
            logits = model(sentence_ids(list(sentence)))  # (1, 2)
            loss = F.cross_entropy(logits, torch.tensor([label]))
            total_loss += loss.item()
            loss.backward()
            optimizer.step()  # p -= lr * p.grad
            optimizer.zero_grad(set_to_none=False)  # p.grad.zero_(), as the handout
        loss_history.append(total_loss)
        if (epoch + 1) % 50 == 0:
            log(f"Epoch [{epoch + 1}/{config.epochs}] - Loss: {total_loss:.4f}")
    return model, loss_history


def run_lab(config: Config | None = None, out_dir: str | Path = "runs/lab", *, test_sentences=None,
            show: bool = False, log=print) -> LabResult:
    """Train the handout's model and test it; write the loss curve, history and config to `out_dir`."""
    config = (config or Config.lab()).validate()
    # matplotlib takes ~0.3 s to import: let a thread load it while the model trains (module imports
    # are thread-safe; the plots wait for it below)
    preload = threading.Thread(target=importlib.import_module, args=("matplotlib.figure",), daemon=True)
    preload.start()
    tests = [list(s) for s in (test_sentences or TEST_SENTENCES)]
    test_ids = [sentence_ids(s, where=f"test sentence {i + 1}") for i, s in enumerate(tests)]

    model, loss_history = train_lab_model(config, log)

    # step 5 (the template's "# 7. Test After Training"), with the hidden state after each word (question 5)
    log("\n==== Testing ====")
    predictions, probabilities, all_states = [], [], []
    with torch.no_grad():
        for words, ids in zip(tests, test_ids):
            outputs, _ = model.states(ids)  # (T, 1, n)
            states = outputs[:, 0].tolist()
            for t, (w, s) in enumerate(zip(words, states), start=1):
                log(f"  s_{t} after {w!r:8} = [{', '.join(f'{v:+.4f}' for v in s)}]")
            p = model.predict_proba(ids)[0]
            prediction = int(torch.argmax(p))
            log(f"Sentence: {words} → Prediction: {prediction}   (p(0) = {p[0]:.4f}, p(1) = {p[1]:.4f})")
            predictions.append(prediction)
            probabilities.append(p.tolist())
            all_states.append(states)

    result = LabResult(loss_history, predictions, probabilities, all_states, model=model)
    preload.join()
    result.files = _write_run(config, Path(out_dir), result, tests, show)
    for f in result.files:
        log(f"wrote {f}")
    return result


def _write_run(config: Config, out: Path, result: LabResult, sentences: list[list[str]], show: bool) -> list[Path]:
    from rnnlab import plots  # matplotlib is imported only when a picture is drawn

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json() + "\n")
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "total_loss"])
        w.writerows((i + 1, f"{v:.8f}") for i, v in enumerate(result.loss_history))
    (out / "predictions.json").write_text(json.dumps(
        {"predictions": result.predictions, "probabilities": result.probabilities, "states": result.states},
        indent=2) + "\n")
    files = [out / "config.json", out / "history.csv", out / "predictions.json"]
    files.append(plots.loss_curve(result.loss_history, out / "loss_curve.png", show=show))
    # the handout's question 5: each sentence's path through the state plane (n = 2), or through the plane of
    # its top two principal components (n > 2)
    files.append(plot_trajectories(result.model, traces(result.model, sentences), out / "trajectory.png", show=show))
    return files
