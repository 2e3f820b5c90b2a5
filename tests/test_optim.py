"""rnnlab.optim against torch.optim, the oracle: the same parameters and gradients go through both.

Everything runs in float64. Parameters must agree to TOL after every step: elementwise
|ours - torch| <= 1e-12 + 1e-12 * |torch|. The two sides round differently (torch fuses some operations,
e.g. `addcdiv_`, and keeps Adam's bias correction under the square root), so equality is not exact;
1e-12 leaves room for that rounding but not for any difference in the rule.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnlab.optim as optim
from rnnlab.errors import UserError
from rnnlab.optim import (
    SGD,
    Adagrad,
    Adam,
    CosineLR,
    Optimizer,
    StepLR,
    clip_grad_norm,
    make_optimizer,
)

TOL = dict(rtol=1e-12, atol=1e-12)
STEPS = 10

# one to four parameters, each a scalar, vector, matrix or 3-d tensor with sides 1..4
shapes_st = st.lists(st.lists(st.integers(1, 4), max_size=3).map(tuple), min_size=1, max_size=4)
seeds = st.integers(0, 2**31 - 1)


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0**e)


def make_params(shapes: list[tuple[int, ...]], gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


def clone_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


def set_grads(ours: list[torch.Tensor], theirs: list[torch.Tensor], gen: torch.Generator) -> None:
    """Fresh random gradients, identical on both sides. The last parameter never has a gradient, and now
    and then another one has none for a step (an unused parameter), which must skip it and its state."""
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        missing = i == len(ours) - 1 or torch.rand((), generator=gen).item() < 0.2
        g = None if missing else torch.randn(a.shape, generator=gen, dtype=torch.float64)
        a.grad = g
        b.grad = None if g is None else g.clone()


def check_against_torch(ours_cls, theirs_cls, hyper: dict, shapes: list, seed: int) -> None:
    """STEPS steps of rnnlab's optimiser and torch's from the same start with the same gradients.

    After each comparison torch's parameters are set to ours. Each side keeps its own optimiser state
    (momentum, G, m, v, t) for all STEPS steps, but the parameters restart equal at every step: with weight
    decay, p feeds back into g, and over 10 steps that feedback can amplify a 1-ulp rounding difference
    past 1e-12 (seen with Adam at beta2 = 0, lr = 1, where the step divides by |g|).
    """
    gen = torch.Generator().manual_seed(seed)
    ours_p = make_params([*shapes, (3,)], gen)  # (3,) is the parameter that never gets a gradient
    theirs_p = clone_params(ours_p)
    untouched = ours_p[-1].detach().clone()
    ours, theirs = ours_cls(ours_p, **hyper), theirs_cls(theirs_p, **hyper)
    for step in range(1, STEPS + 1):
        set_grads(ours_p, theirs_p, gen)
        ours.step()
        theirs.step()
        for a, b in zip(ours_p, theirs_p, strict=True):
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, step=step: f"after step {step}: {m}")
            assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)  # grads not modified
            with torch.no_grad():
                b.copy_(a)
        assert torch.equal(ours_p[-1], untouched)
        assert ours.step_count == step


# --- the optimisers against torch.optim ---------------------------------------------------------------


@pytest.mark.parametrize("weight_decay", [False, True])
@pytest.mark.parametrize("mode", ["plain", "momentum"])
@settings(max_examples=12, deadline=None)
@given(
    shapes=shapes_st,
    seed=seeds,
    lr=log_uniform(1e-3, 1.0),
    momentum=st.floats(0.01, 0.99),
    wd=log_uniform(1e-4, 0.1),
)
def test_sgd_matches_torch(mode, weight_decay, shapes, seed, lr, momentum, wd):
    hyper = dict(lr=lr, momentum=0.0 if mode == "plain" else momentum, weight_decay=wd if weight_decay else 0.0)
    check_against_torch(SGD, torch.optim.SGD, hyper, shapes, seed)


@settings(max_examples=60, deadline=None)
@given(
    shapes=shapes_st,
    seed=seeds,
    lr=log_uniform(1e-3, 1.0),
    weight_decay=st.one_of(st.just(0.0), log_uniform(1e-4, 0.1)),
    eps=log_uniform(1e-12, 1e-3),
)
def test_adagrad_matches_torch(shapes, seed, **hyper):
    check_against_torch(Adagrad, torch.optim.Adagrad, hyper, shapes, seed)


@settings(max_examples=60, deadline=None)
@given(
    shapes=shapes_st,
    seed=seeds,
    lr=log_uniform(1e-4, 1.0),
    beta1=st.one_of(st.just(0.9), st.floats(0.0, 0.999)),
    beta2=st.one_of(st.just(0.999), st.floats(0.0, 0.9999)),
    eps=log_uniform(1e-12, 1e-3),
    weight_decay=st.one_of(st.just(0.0), log_uniform(1e-4, 0.1)),
)
def test_adam_matches_torch(shapes, seed, lr, beta1, beta2, eps, weight_decay):
    hyper = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    check_against_torch(Adam, torch.optim.Adam, hyper, shapes, seed)


@settings(max_examples=12, deadline=None)
@given(shapes=shapes_st, seed=seeds, lr=log_uniform(1e-3, 1.0))
def test_plain_sgd_fused_path_equals_the_loop_and_torch(shapes, seed, lr):
    """SGD's fused fast path (one foreach update) against its plain loop (fused=False) and torch.optim."""
    check_against_torch(lambda ps, **h: SGD(ps, **h, fused=True), lambda ps, **h: SGD(ps, **h, fused=False),
                        dict(lr=lr), shapes, seed)
    check_against_torch(lambda ps, **h: SGD(ps, **h, fused=False), torch.optim.SGD, dict(lr=lr), shapes, seed)


def test_sgd_fused_path_runs_only_for_the_plain_rule(monkeypatch):
    calls = []
    real = torch._foreach_add_
    monkeypatch.setattr(torch, "_foreach_add_", lambda *a, **k: calls.append(1) or real(*a, **k))
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.ones(3)
    SGD([p], lr=0.5).step()
    assert calls == [1] and torch.equal(p.detach(), torch.full((3,), -0.5))
    SGD([p], lr=0.5, momentum=0.9).step()
    SGD([p], lr=0.5, fused=False).step()
    assert calls == [1]


@settings(max_examples=20, deadline=None)
@given(shapes=shapes_st, seed=seeds, lr=log_uniform(1e-3, 10.0))
def test_plain_sgd_is_p_minus_lr_grad(shapes, seed, lr):
    gen = torch.Generator().manual_seed(seed)
    params = make_params(shapes, gen)
    before = [p.detach().clone() for p in params]
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    fused = [p.detach().clone().requires_grad_() for p in params]
    for p, g in zip(fused, grads, strict=True):
        p.grad = g.clone()
    SGD(params, lr, fused=False).step()
    SGD(fused, lr).step()
    for p, q, p0, g in zip(params, fused, before, grads, strict=True):
        assert torch.equal(p.detach(), p0 - lr * g)  # the loop exactly: the same two float operations
        torch.testing.assert_close(q.detach(), p0 - lr * g, rtol=1e-12, atol=1e-12)  # fused: one rounding fewer


def test_zero_grad_zeroes_in_place_and_leaves_none_alone():
    a, b = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    a.grad = torch.full((2,), 5.0)
    grad_tensor = a.grad
    SGD([a, b], lr=0.1).zero_grad(set_to_none=False)
    assert a.grad is grad_tensor and torch.equal(a.grad, torch.zeros(2))
    assert b.grad is None


def test_zero_grad_sets_gradients_to_none_by_default_as_torch_optim():
    """The default is torch.optim's (set_to_none=True): same parameters, same gradients afterwards."""
    ours, theirs = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    for p in (ours, theirs):
        (p * 3).sum().backward()
    SGD([ours], lr=0.1).zero_grad()
    torch.optim.SGD([theirs], lr=0.1).zero_grad()
    assert ours.grad is None and theirs.grad is None
    (ours * 2).sum().backward()  # the next backward writes the gradient afresh
    assert torch.equal(ours.grad, torch.full((2,), 2.0))


# --- gradient clipping ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(shapes=shapes_st, seed=seeds, ratio=st.sampled_from([0.01, 0.5, 0.999, 1.0, 1.001, 2.0, 100.0]))
def test_clip_grad_norm_matches_torch(shapes, seed, ratio):
    """max_norm = ratio * norm: ratios up to 1 clip (at 1 by the factor norm / (norm + 1e-6)), above 1 not."""
    gen = torch.Generator().manual_seed(seed)
    ours = make_params([*shapes, (2,)], gen)  # (2,) has no gradient: ignored, stays None
    theirs = clone_params(ours)
    for a, b in zip(ours[:-1], theirs[:-1], strict=True):
        a.grad = torch.randn(a.shape, generator=gen, dtype=torch.float64)
        b.grad = a.grad.clone()
    before = [a.grad.clone() for a in ours[:-1]]
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in before])).item()
    max_norm = ratio * norm

    ours_norm = clip_grad_norm(ours, max_norm)
    theirs_norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)

    torch.testing.assert_close(ours_norm, theirs_norm, **TOL)
    for a, b in zip(ours[:-1], theirs[:-1], strict=True):
        torch.testing.assert_close(a.grad, b.grad, **TOL)
    assert ours[-1].grad is None
    scale = min(1.0, max_norm / (norm + 1e-6))  # the documented rule, computed independently
    for a, g in zip(ours[:-1], before, strict=True):
        torch.testing.assert_close(a.grad, scale * g, **TOL)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_clip_grad_norm_leaves_non_finite_gradients_alone(bad):
    a = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    a.grad = torch.tensor([1.0, bad, 2.0], dtype=torch.float64)
    b.grad = torch.full((2, 2), 10.0, dtype=torch.float64)
    before = [a.grad.clone(), b.grad.clone()]
    norm = clip_grad_norm([a, b], max_norm=1.0)
    assert not torch.isfinite(norm)
    assert math.isnan(norm.item()) == math.isnan(bad)
    for p, g in zip([a, b], before, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0, equal_nan=True)


def test_clip_grad_norm_without_gradients_is_zero():
    p = torch.zeros(3, requires_grad=True)
    assert clip_grad_norm([p], max_norm=1.0).item() == 0.0
    assert p.grad is None


# --- learning-rate schedules ---------------------------------------------------------------------------


def check_schedule(ours_schedule, theirs_schedule, base_lr: float) -> None:
    """30 steps of both schedules, each driving an optimiser over one parameter, lr compared every step."""
    ours_opt = SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    theirs_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    ours, theirs = ours_schedule(ours_opt), theirs_schedule(theirs_opt)
    for step in range(31):
        if step > 0:
            ours_opt.step()
            theirs_opt.step()
            ours.step()
            theirs.step()
        expected = theirs_opt.param_groups[0]["lr"]
        assert math.isclose(ours_opt.lr, expected, rel_tol=1e-12, abs_tol=1e-12), (step, ours_opt.lr)


@settings(max_examples=40, deadline=None)
@given(base_lr=log_uniform(1e-4, 1.0), step_size=st.integers(1, 12), gamma=st.floats(0.05, 1.0))
def test_step_lr_matches_torch(base_lr, step_size, gamma):
    check_schedule(
        lambda opt: StepLR(opt, step_size, gamma),
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size, gamma),
        base_lr,
    )


@settings(max_examples=40, deadline=None)
@given(base_lr=log_uniform(1e-4, 1.0), T_max=st.integers(1, 40), eta_fraction=st.floats(0.0, 1.0))
def test_cosine_lr_matches_torch(base_lr, T_max, eta_fraction):
    """T_max from 1 to 40: annealing that ends within the 30 steps (and climbs back), and that does not."""
    eta_min = eta_fraction * base_lr
    check_schedule(
        lambda opt: CosineLR(opt, T_max, eta_min),
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max, eta_min),
        base_lr,
    )


# --- checkpoints ---------------------------------------------------------------------------------------

OPTIMISER_CASES = {
    "sgd": lambda ps: SGD(ps, lr=0.1),
    "sgd-momentum": lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adagrad": lambda ps: Adagrad(ps, lr=0.1, weight_decay=0.01),
    "adam": lambda ps: Adam(ps, lr=0.01, betas=(0.8, 0.99), weight_decay=0.01),
}


@pytest.mark.parametrize("schedule", [lambda o: StepLR(o, step_size=3, gamma=0.5), lambda o: CosineLR(o, 8)])
@pytest.mark.parametrize("case", OPTIMISER_CASES)
def test_state_dict_round_trip(case, schedule, tmp_path):
    """Save after 5 steps, load into a fresh optimiser over copies of the parameters, run 5 more on both."""
    make = OPTIMISER_CASES[case]
    gen = torch.Generator().manual_seed(0)
    params = make_params([(4, 3), (3,), (2, 2, 2)], gen)
    opt = make(params)
    sched = schedule(opt)
    for _ in range(5):
        set_grads(params, clone_params(params), gen)
        opt.step()
        sched.step()
    path = tmp_path / "checkpoint.pt"
    torch.save({"optimizer": opt.state_dict(), "schedule": sched.state_dict()}, path)

    copies = clone_params(params)
    restored = make(copies)
    restored_sched = schedule(restored)
    checkpoint = torch.load(path, weights_only=True)
    restored.load_state_dict(checkpoint["optimizer"])
    assert restored.step_count == 5 and restored.lr == opt.lr  # the optimiser's state alone restores lr
    restored_sched.load_state_dict(checkpoint["schedule"])
    assert restored_sched.step_count == 5 and restored.lr == opt.lr

    for _ in range(5):
        set_grads(params, copies, gen)
        for o, s in [(opt, sched), (restored, restored_sched)]:
            o.step()
            s.step()
        assert restored.lr == opt.lr
        for a, b in zip(params, copies, strict=True):
            assert torch.equal(a, b)


def test_schedule_load_state_dict_sets_the_learning_rate():
    opt = SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    CosineLR(opt, T_max=10).load_state_dict({"base_lr": 0.1, "step_count": 5})
    assert opt.lr == pytest.approx(0.05, rel=1e-15)  # halfway down the cosine


def test_load_state_dict_rejects_a_mismatched_state():
    params = [torch.zeros(2, 3, requires_grad=True), torch.zeros(4, requires_grad=True)]
    for p in params:
        p.grad = torch.ones_like(p)
    adam = Adam(params)
    adam.step()
    state = adam.state_dict()
    with pytest.raises(ValueError, match="saved by Adam, not by SGD"):
        SGD(params, lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="for 2 parameters, the optimiser has 1"):
        Adam(params[:1]).load_state_dict(state)
    with pytest.raises(ValueError, match="shape"):
        Adam([torch.zeros(3, 2, requires_grad=True), params[1]]).load_state_dict(state)


# --- hyper-parameter checks ----------------------------------------------------------------------------

# (optimiser, keyword arguments, message); torch.optim rejects the same values except where noted
BAD_HYPER = [
    ("SGD", dict(lr=-0.1), "learning rate"),
    ("SGD", dict(lr=0.1, momentum=-0.5), "momentum"),
    ("SGD", dict(lr=0.1, weight_decay=-1e-4), "weight decay"),
    ("Adagrad", dict(lr=-0.1), "learning rate"),
    ("Adagrad", dict(weight_decay=-0.1), "weight decay"),
    ("Adagrad", dict(eps=-1e-10), "eps"),
    ("Adam", dict(lr=-0.1), "learning rate"),
    ("Adam", dict(betas=(1.0, 0.999)), "beta1"),
    ("Adam", dict(betas=(-0.1, 0.999)), "beta1"),
    ("Adam", dict(betas=(0.9, 1.0)), "beta2"),
    ("Adam", dict(eps=-1e-8), "eps"),
    ("Adam", dict(weight_decay=-0.1), "weight decay"),
]
STRICTER_THAN_TORCH = [  # torch accepts eps = 0, which divides by zero on a zero gradient
    ("Adagrad", dict(eps=0.0), "eps"),
    ("Adam", dict(eps=0.0), "eps"),
]


@pytest.mark.parametrize(("name", "kwargs", "match"), BAD_HYPER + STRICTER_THAN_TORCH)
def test_bad_hyper_parameters_raise_value_error(name, kwargs, match):
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=match) as error:
        getattr(optim, name)([p], **kwargs)
    assert isinstance(error.value, UserError)  # so the CLI prints it without a traceback
    if (name, kwargs, match) in BAD_HYPER:
        with pytest.raises(ValueError):
            getattr(torch.optim, name)([p], **kwargs)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda p: SGD([], lr=0.1), "empty"),
        (lambda p: SGD([p * 2], lr=0.1), "non-leaf"),
        (lambda p: StepLR(SGD([p], lr=0.1), step_size=0), "step_size"),
        (lambda p: StepLR(SGD([p], lr=0.1), step_size=2, gamma=0.0), "gamma"),
        (lambda p: CosineLR(SGD([p], lr=0.1), T_max=0), "T_max"),
        (lambda p: CosineLR(SGD([p], lr=0.1), T_max=5, eta_min=-1.0), "eta_min"),
        (lambda p: clip_grad_norm([p], max_norm=-1.0), "max_norm"),
        (lambda p: make_optimizer("rmsprop", [p], lr=0.1), "choose one of: sgd, adagrad, adam"),
        (lambda p: make_optimizer("adam", [p], lr=0.1, momentum=0.9), "sgd only"),
    ],
)
def test_other_bad_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build(torch.zeros(2, requires_grad=True))


# --- the factory (tests/test_source_scan.py checks that no library file uses torch.optim) -------------


@pytest.mark.parametrize(("name", "cls"), [("sgd", SGD), ("adagrad", Adagrad), ("adam", Adam)])
def test_make_optimizer(name, cls):
    model = torch.nn.Linear(3, 2)
    opt = make_optimizer(name, model.parameters(), lr=0.05, weight_decay=0.01)  # a generator is fine
    assert type(opt) is cls and isinstance(opt, Optimizer)
    assert opt.lr == 0.05 and opt.weight_decay == 0.01
    assert [id(p) for p in opt.params] == [id(p) for p in model.parameters()]  # the tensors themselves
    sgd = make_optimizer("sgd", model.parameters(), lr=0.05, momentum=0.9)
    assert sgd.momentum == 0.9
