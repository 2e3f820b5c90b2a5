"""The vanilla RNN classifier against a direct evaluation of the handout's equations."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlab.model import Classifier
from rnnlab.optim import SGD


def direct(model: Classifier, words: list[int]) -> torch.Tensor:
    """The handout's loop with column vectors: s_t = tanh(W s_{t-1} + U x_t + b); W_out s_T + b_out."""
    c = model.cell
    s = torch.zeros(model.hidden_size, 1, dtype=c.W.dtype)
    for w in words:
        x = torch.zeros(model.vocab_size, 1, dtype=c.W.dtype)
        x[w] = 1.0  # one-hot x_t
        s = torch.tanh(c.W @ s + c.U @ x + c.b.view(-1, 1))
    return (model.W_out @ s + model.b_out.view(-1, 1)).view(-1)


@settings(max_examples=25, deadline=None)
@given(V=st.integers(1, 12), H=st.integers(1, 9), C=st.integers(2, 4), T=st.integers(1, 8), seed=st.integers(0, 10**6))
def test_forward_equals_the_equation(V, H, C, T, seed):
    model = Classifier(V, H, C, seed=seed, dtype=torch.float64)
    words = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(seed)).tolist()
    logits = model(torch.tensor([words]))[0]
    torch.testing.assert_close(logits, direct(model, words), rtol=1e-12, atol=1e-12)


def test_one_hot_product_equals_column_lookup():
    # The code uses the lookup U[:, id] (no V x T one-hot matrix); it must equal U @ onehot.
    g = torch.Generator().manual_seed(0)
    U = torch.randn(6, 11, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 11, (3, 5), generator=g)
    one_hot = torch.nn.functional.one_hot(ids, 11).to(torch.float64)  # (B, T, V)
    torch.testing.assert_close(one_hot @ U.t(), U.t()[ids], rtol=0, atol=0)
    # and inside the model: one-hot vectors through a dense-input path equal the ids path
    model = Classifier(11, 6, seed=3, dtype=torch.float64)
    from rnnlab.recurrent import unroll

    out_ids, _ = unroll(model.cell, ids)
    out_dense, _ = unroll(model.cell, one_hot)
    torch.testing.assert_close(out_ids, out_dense, rtol=1e-12, atol=1e-12)


def test_sgd_step_is_p_minus_lr_grad():
    model = Classifier(5, 2, seed=42, dtype=torch.float64)
    loss = torch.nn.functional.cross_entropy(model(torch.tensor([[0, 1, 2, 3]])), torch.tensor([1]))
    loss.backward()
    expected = {n: (p.detach() - 0.1 * p.grad).clone() for n, p in model.named_parameters().items()}
    opt = SGD(model.parameters(), lr=0.1)
    opt.step()
    opt.zero_grad()
    for n, p in model.named_parameters().items():
        # SGD's fused path rounds p + (-lr) g once, the expression above rounds lr * g first: round-off apart
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-15, atol=1e-16)
        assert p.grad is None  # zero_grad's default, as torch.optim's: set_to_none


def test_gradients_match_gradcheck_float64():
    model = Classifier(5, 3, seed=1, dtype=torch.float64)
    ids = torch.tensor([[0, 1, 2, 4], [3, 3, 1, 0]])
    target = torch.tensor([0, 1])
    names = list(model.named_parameters())

    def loss_of(*params):
        for n, p in zip(names, params):
            setattr(model.cell if n in ("W", "U", "b") else model, n, p)
        return torch.nn.functional.cross_entropy(model(ids), target)

    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    assert torch.autograd.gradcheck(loss_of, params, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_parameter_names_and_count():
    model = Classifier(5, 2, 2)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters().items()}
    assert shapes == {"W": (2, 2), "U": (2, 5), "b": (2,), "W_out": (2, 2), "b_out": (2,)}
    assert model.num_parameters() == 4 + 10 + 2 + 4 + 2


def test_dropout_masks_scale_and_repeat():
    from rnnlab.model import _dropout

    x = torch.ones(200, 100)
    y = _dropout(x, 0.3, torch.Generator().manual_seed(0))
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.3) < 0.02  # 20,000 draws: 0.02 is > 6 standard deviations
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))  # inverted dropout keeps E[x]
    assert torch.equal(y, _dropout(x, 0.3, torch.Generator().manual_seed(0)))  # same generator, same mask
    assert torch.equal(_dropout(x, 0.0, torch.Generator()), x)


def test_dropout_is_training_only_and_same_for_both_backward_paths():
    ids, lengths = torch.randint(0, 20, (6, 7)), torch.tensor([7, 3, 5, 1, 7, 2])
    logits = {}
    for backward in ("autograd", "manual"):
        model = Classifier(20, 8, 3, cell="gru", embed_dim=5, backward=backward, seed=1, dtype=torch.float64)
        plain = model(ids, lengths)
        dropped = model(ids, lengths, dropout=(0.5, torch.Generator().manual_seed(4)))
        assert not torch.allclose(plain, dropped)
        torch.testing.assert_close(model.predict_proba(ids, lengths), torch.softmax(plain, -1))  # no dropout
        dropped.sum().backward()
        logits[backward] = (dropped.detach(), model.cell.W.grad.clone())
    torch.testing.assert_close(logits["manual"][0], logits["autograd"][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits["manual"][1], logits["autograd"][1], rtol=1e-10, atol=1e-12)
