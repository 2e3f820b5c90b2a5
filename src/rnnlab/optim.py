"""Optimisers, gradient clipping and learning-rate schedules, written by hand.

Everything here updates tensors in place under `torch.no_grad()`; nothing calls `torch.optim`. Each
optimiser follows the update rule documented for its `torch.optim` namesake, and `tests/test_optim.py`
runs both side by side in float64 and checks that the parameters agree to 1e-12 after every step.

Notation used below: p a parameter, g its gradient, lr the learning rate, t the step number (1, 2, ...)
of that parameter, lambda the L2 weight decay. Every optimiser first adds the weight decay to the
gradient, g <- g + lambda * p (L2 regularisation, as torch.optim does; not AdamW's decoupled decay).

    SGD      p <- p - lr * g, with optional momentum.  Robbins & Monro (1951); Polyak (1964);
             Sutskever, Martens, Dahl & Hinton, "On the importance of initialization and momentum in
             deep learning" (ICML 2013); d2l.ai, chapter "Optimization Algorithms".
    Adagrad  G <- G + g^2;  p <- p - lr * g / (sqrt(G) + eps).  Duchi, Hazan & Singer (JMLR 2011);
             the update Karpathy's min-char-rnn.py uses for its RNN.
    Adam     bias-corrected running means of g and g^2.  Kingma & Ba (ICLR 2015).
    clip_grad_norm  rescale all gradients together when their global L2 norm is too large.
             Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks"
             (ICML 2013); d2l.ai, section "Gradient Clipping" in the RNN chapter.
    StepLR, CosineLR  the learning rate as a function of the step count; cosine annealing from
             Loshchilov & Hutter, "SGDR" (ICLR 2017), without the warm restarts.

What it leaves out, on purpose: parameter groups (one lr for all parameters), closures, `maximize`,
AMSGrad, AdamW, sparse and complex gradients, and the fused / foreach kernels torch uses for speed.
Also torch.optim's options that no rnnlab command sets: SGD's dampening and Nesterov momentum, and
Adagrad's lr_decay and initial_accumulator_value (their defaults, 0, are the rules written here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch

from rnnlab import choices
from rnnlab.errors import UserError

OPTIMIZERS = choices.OPTIMIZERS  # the names make_optimizer accepts


class HyperParameterError(UserError, ValueError):
    """A hyper-parameter out of its range: a `ValueError` for library callers, a `UserError` for the CLI."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise HyperParameterError(message)


def _as_list(params: Iterable[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    """A list of tensors from a tensor or any iterable of tensors (a generator such as model.parameters())."""
    return [params] if isinstance(params, torch.Tensor) else list(params)


class Optimizer:
    """What every optimiser shares: the parameters, the learning rate, per-parameter state and checkpoints.

    `params` is a list of leaf tensors (any iterable is accepted and copied into a list). `state[i]` holds
    the buffers of `params[i]` (SGD's momentum, Adagrad's G, Adam's m, v and step count `t`), created the first
    time that parameter has a gradient. A parameter whose `.grad` is None is skipped by `step()`: it and
    its state stay as they are. `step_count` counts the calls to `step()`. A schedule may change `lr`
    between steps.
    """

    def __init__(self, params: Iterable[torch.Tensor] | torch.Tensor, lr: float):
        self.params = _as_list(params)
        _check(len(self.params) > 0, "the optimiser got an empty list of parameters")
        for p in self.params:
            _check(isinstance(p, torch.Tensor), f"parameters must be tensors, got {type(p).__name__}")
            _check(p.is_leaf, "cannot optimise a non-leaf tensor; pass the model's parameters themselves")
        _check(0.0 <= lr, f"invalid learning rate: {lr}; it must be >= 0")
        self.lr = float(lr)
        self.step_count = 0
        self.state: list[dict] = [{} for _ in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients before the next backward: set them to None (the default, as torch.optim's
        since torch 2.0: the next backward writes each gradient as it is, with no zero-fill before it and
        no addition into it), or, with set_to_none=False, zero every existing gradient in place (as the
        lab handout's `p.grad.zero_()`). A gradient that is None stays None."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.zero_()

    def _with_grads(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        """(p, g, state) for each parameter that has a gradient this step."""
        for p, state in zip(self.params, self.state, strict=True):
            if p.grad is not None:
                yield p, p.grad, state

    def step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Plain data and tensors only, so that `torch.load(path, weights_only=True)` can read it back.

        The hyper-parameters other than `lr` are not saved: they come from the run's config. `lr` is saved
        because a schedule changes it.
        """
        return {
            "optimizer": type(self).__name__,
            "lr": self.lr,
            "step_count": self.step_count,
            "state": [
                {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()} for state in self.state
            ],
        }

    def load_state_dict(self, d: dict) -> None:
        """Restore what `state_dict` saved, onto the device and dtype of this optimiser's parameters."""
        name = type(self).__name__
        _check(d["optimizer"] == name, f"this state was saved by {d['optimizer']}, not by {name}")
        _check(
            len(d["state"]) == len(self.params),
            f"this state is for {len(d['state'])} parameters, the optimiser has {len(self.params)}",
        )
        states = []
        for i, (p, saved) in enumerate(zip(self.params, d["state"], strict=True)):
            state = {}
            for k, v in saved.items():
                if isinstance(v, torch.Tensor):
                    _check(
                        v.shape == p.shape,
                        f"state {k!r} of parameter {i} has shape {tuple(v.shape)}, not {tuple(p.shape)}",
                    )
                    v = v.to(device=p.device, dtype=p.dtype, copy=True)
                state[k] = v
            states.append(state)
        self.state = states
        self.lr = float(d["lr"])
        self.step_count = int(d["step_count"])


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and weight decay.

    With mu = momentum and lambda = weight_decay, for each parameter p with gradient g:

        g   <- g + lambda * p                   (L2 weight decay)
        b_1  = g;   b_t = mu * b_{t-1} + g      (momentum buffer; only when mu != 0)
        p   <- p - lr * b_t                     (p <- p - lr * g without momentum)

    With no momentum and no weight decay this is just p <- p - lr * g. Same rule as torch.optim.SGD
    with its defaults dampening = 0 and nesterov = False.

    `fused=True` (the default) takes a fast path for that plain rule: one `torch._foreach_add_` call
    updates every parameter in place (torch.optim.SGD's own foreach kernel), instead of a loop that
    makes the temporary lr * g for each parameter and then subtracts it (about 2x faster on a 5,000-row
    embedding here). Same maths; it rounds p + (-lr) g once where the loop rounds lr * g first, so the
    two agree to round-off (tests/test_optim.py checks both against each other and torch.optim).
    Momentum or weight decay always take the loop below.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | torch.Tensor,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        fused: bool = True,
    ):
        super().__init__(params, lr)
        _check(0.0 <= momentum, f"invalid momentum: {momentum}; it must be >= 0")
        _check(0.0 <= weight_decay, f"invalid weight decay: {weight_decay}; it must be >= 0")
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.fused = fused

    @torch.no_grad()
    def step(self) -> None:
        mu = self.momentum
        if self.fused and mu == 0 and self.weight_decay == 0:
            # the fast path: p <- p - lr * g for every parameter with a gradient, in one call
            with_grads = [(p, g) for p, g, _ in self._with_grads()]
            if with_grads:
                params, grads = zip(*with_grads, strict=True)
                torch._foreach_add_(list(params), list(grads), alpha=-self.lr)
            self.step_count += 1
            return
        for p, g, state in self._with_grads():
            # g <- g + lambda * p
            if self.weight_decay != 0:
                g = g + self.weight_decay * p
            if mu != 0:
                if "b" not in state:
                    # b_1 = g
                    state["b"] = g.clone()
                else:
                    # b_t = mu * b_{t-1} + g
                    state["b"].mul_(mu).add_(g)
                g = state["b"]
            # p <- p - lr * g
            p -= self.lr * g
        self.step_count += 1


class Adagrad(Optimizer):
    """Adagrad: each coordinate's step shrinks with the sum of its squared gradients so far.

    With lambda = weight_decay and G_0 = 0, at step t of p:

        g    <- g + lambda * p                  (L2 weight decay)
        G_t   = G_{t-1} + g * g                 (elementwise)
        p    <- p - lr * g / (sqrt(G_t) + eps)

    Same rule as torch.optim.Adagrad with its defaults lr_decay = 0 and initial_accumulator_value = 0;
    with lambda = 0 it is min-char-rnn's
    `mem += dparam * dparam; param += -learning_rate * dparam / np.sqrt(mem + 1e-8)` (eps inside the root
    there, outside here).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | torch.Tensor,
        lr: float = 0.01,
        weight_decay: float = 0.0,
        eps: float = 1e-10,
    ):
        super().__init__(params, lr)
        _check(0.0 <= weight_decay, f"invalid weight decay: {weight_decay}; it must be >= 0")
        _check(0.0 < eps, f"invalid eps: {eps}; it must be > 0")
        self.weight_decay = weight_decay
        self.eps = eps

    @torch.no_grad()
    def step(self) -> None:
        for p, g, state in self._with_grads():
            if not state:
                state["G"] = torch.zeros_like(p)  # G_0
            G = state["G"]
            # g <- g + lambda * p
            if self.weight_decay != 0:
                g = g + self.weight_decay * p
            # G_t = G_{t-1} + g * g
            G.addcmul_(g, g)
            # p <- p - lr * g / (sqrt(G_t) + eps)
            p -= self.lr * g / (G.sqrt() + self.eps)
        self.step_count += 1


class Adam(Optimizer):
    """Adam: steps scaled by bias-corrected running means of the gradient and of its square.

    With (beta1, beta2) = betas and lambda = weight_decay, m_0 = v_0 = 0, at step t of p:

        g    <- g + lambda * p                       (L2 weight decay, added to the gradient)
        m_t   = beta1 * m_{t-1} + (1 - beta1) * g     (first moment)
        v_t   = beta2 * v_{t-1} + (1 - beta2) * g^2   (second moment, elementwise)
        m^_t  = m_t / (1 - beta1^t)                   (bias corrections: m_0 = v_0 = 0 pulls early
        v^_t  = v_t / (1 - beta2^t)                    averages towards zero)
        p    <- p - lr * m^_t / (sqrt(v^_t) + eps)

    Same rule as torch.optim.Adam with amsgrad=False.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | torch.Tensor,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr)
        beta1, beta2 = betas
        _check(0.0 <= beta1 < 1.0, f"invalid beta1: {beta1}; it must be in [0, 1)")
        _check(0.0 <= beta2 < 1.0, f"invalid beta2: {beta2}; it must be in [0, 1)")
        _check(0.0 < eps, f"invalid eps: {eps}; it must be > 0")
        _check(0.0 <= weight_decay, f"invalid weight decay: {weight_decay}; it must be >= 0")
        self.betas = (beta1, beta2)
        self.eps = eps
        self.weight_decay = weight_decay

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for p, g, state in self._with_grads():
            if not state:
                state["t"] = 0
                state["m"] = torch.zeros_like(p)  # m_0
                state["v"] = torch.zeros_like(p)  # v_0
            state["t"] += 1
            t, m, v = state["t"], state["m"], state["v"]
            # g <- g + lambda * p
            if self.weight_decay != 0:
                g = g + self.weight_decay * p
            # m_t = beta1 * m_{t-1} + (1 - beta1) * g
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            # v_t = beta2 * v_{t-1} + (1 - beta2) * g^2
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            # m^_t = m_t / (1 - beta1^t),  v^_t = v_t / (1 - beta2^t)
            m_hat = m / (1 - beta1**t)
            v_hat = v / (1 - beta2**t)
            # p <- p - lr * m^_t / (sqrt(v^_t) + eps)
            p -= self.lr * m_hat / (v_hat.sqrt() + self.eps)
        self.step_count += 1


def grad_norm(params: Iterable[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """The global L2 norm of the gradients, sqrt(sum over parameters p of sum(p.grad^2)), a 0-dim tensor;
    parameters whose `.grad` is None are ignored (0 when none has one)."""
    grads = [p.grad for p in _as_list(params) if p.grad is not None]
    return torch.sqrt(sum((g * g).sum() for g in grads)) if grads else torch.tensor(0.0)


def clip_grad_norm(params: Iterable[torch.Tensor] | torch.Tensor, max_norm: float) -> torch.Tensor:
    """Rescale all gradients together so that their global L2 norm is at most about `max_norm`.

        norm = sqrt(sum over parameters p of sum(p.grad^2))    (one norm over every gradient)
        c    = max_norm / (norm + 1e-6)
        if c < 1:  p.grad <- c * p.grad  for every p           (the direction is kept)

    The rule and the 1e-6 (which keeps c finite when norm = 0) are those of
    torch.nn.utils.clip_grad_norm_, which clamps c to 1. Returns the norm measured before clipping, a
    0-dim tensor. Parameters whose `.grad` is None are ignored. If the norm is inf or nan the gradients are
    left untouched and the norm is returned: the training loop decides whether to skip the step.
    """
    _check(0.0 <= max_norm, f"invalid max_norm: {max_norm}; it must be >= 0")
    params = _as_list(params)
    norm = grad_norm(params)  # norm = sqrt(sum_p ||g_p||^2)
    if not torch.isfinite(norm):
        return norm
    # c = max_norm / (norm + 1e-6), applied only when it shrinks the gradients
    c = max_norm / (norm + 1e-6)
    if c < 1:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(c)
    return norm


class LRSchedule:
    """A learning rate that is a function of the number of `step()` calls; sets `optimizer.lr` each step.

    `base_lr` is the optimiser's lr when the schedule is made. Call `step()` once per optimiser step (or
    once per epoch, whichever unit `step_size` / `T_max` are counted in), after `optimizer.step()`.
    """

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.step_count = 0

    def lr_at(self, t: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        self.step_count += 1
        self.optimizer.lr = self.lr_at(self.step_count)

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "step_count": self.step_count}

    def load_state_dict(self, d: dict) -> None:
        """Restore the count and set `optimizer.lr` to the schedule's value there."""
        self.base_lr = float(d["base_lr"])
        self.step_count = int(d["step_count"])
        self.optimizer.lr = self.lr_at(self.step_count)


class StepLR(LRSchedule):
    """lr_t = base_lr * gamma^floor(t / step_size): multiply by gamma every `step_size` steps.

    Same sequence as torch.optim.lr_scheduler.StepLR.
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        _check(step_size >= 1, f"invalid step_size: {step_size}; it must be >= 1")
        _check(gamma > 0, f"invalid gamma: {gamma}; it must be > 0")
        super().__init__(optimizer)
        self.step_size = step_size
        self.gamma = gamma

    def lr_at(self, t: int) -> float:
        return self.base_lr * self.gamma ** (t // self.step_size)


class CosineLR(LRSchedule):
    """Cosine annealing from base_lr down to eta_min over T_max steps:

        lr_t = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2

    Past T_max the cosine climbs back up (period 2 * T_max), exactly as
    torch.optim.lr_scheduler.CosineAnnealingLR does; set T_max to the length of the run.
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        _check(T_max >= 1, f"invalid T_max: {T_max}; it must be >= 1")
        _check(0.0 <= eta_min, f"invalid eta_min: {eta_min}; it must be >= 0")
        super().__init__(optimizer)
        self.T_max = T_max
        self.eta_min = eta_min

    def lr_at(self, t: int) -> float:
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class WarmupLR(LRSchedule):
    """Linear warm-up over the first `warmup` steps, then `after` (or the constant base_lr when None):

        lr_t = base_lr * (t + 1) / warmup             for t < warmup   (t = 0 is the first step)
        lr_t = after.lr_at(t - warmup)                 afterwards
    """

    def __init__(self, optimizer: Optimizer, warmup: int, after: LRSchedule | None = None):
        _check(warmup >= 0, f"invalid warmup: {warmup}; it must be >= 0")
        super().__init__(optimizer)
        self.warmup, self.after = warmup, after

    def lr_at(self, t: int) -> float:
        if t < self.warmup:
            return self.base_lr * (t + 1) / self.warmup
        return self.base_lr if self.after is None else self.after.lr_at(t - self.warmup)


SCHEDULES = choices.SCHEDULES  # the names make_schedule accepts
STEP_GAMMA = 0.3  # "step": lr times 0.3 after each third of the steps past the warm-up (3 levels: 1, 0.3, 0.09)


def make_schedule(name: str, optimizer: Optimizer, total_steps: int, warmup: int = 0) -> LRSchedule | None:
    """The schedule `--schedule name --warmup N` over a run of `total_steps` optimiser steps; None for a
    constant rate with no warm-up (the optimiser's lr is then never touched). The training loop sets
    `optimizer.lr = schedule.lr_at(optimizer.step_count)` before each step, so the rate follows from the
    step count alone and a resumed run gets the same rates."""
    _check(name in SCHEDULES, f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    rest = max(1, total_steps - warmup)  # steps after the warm-up
    after = {"constant": None, "cosine": lambda: CosineLR(optimizer, rest),
             "step": lambda: StepLR(optimizer, max(1, math.ceil(rest / 3)), STEP_GAMMA)}[name]
    after = after() if after is not None else None
    if warmup == 0:
        return after
    return WarmupLR(optimizer, warmup, after)


def make_optimizer(
    name: str,
    params: Iterable[torch.Tensor] | torch.Tensor,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> Optimizer:
    """The optimiser called `name` (one of OPTIMIZERS) with the other hyper-parameters at their defaults.

    `momentum` belongs to SGD; asking for it with another optimiser is an error rather than being ignored.
    """
    _check(name in OPTIMIZERS, f"unknown optimiser {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if name == "sgd":
        return SGD(params, lr, momentum=momentum, weight_decay=weight_decay)
    _check(momentum == 0, f"momentum applies to sgd only, not to {name}")
    if name == "adagrad":
        return Adagrad(params, lr, weight_decay=weight_decay)
    return Adam(params, lr, weight_decay=weight_decay)
