"""Data-parallel training on several processes with torch.distributed, launched by torchrun.

    torchrun --nproc_per_node=2 -m rnnlab train --data reviews.tsv --out runs/dp

Every process (rank r of W) holds the whole model and builds the same list of global batches (their
order comes from the seed and the epoch number, exactly as in one process). For a global batch of N rows:

    rows_r = rows r, r + W, r + 2W, ... of the batch       rank r's shard, n_r rows   (sum_r n_r = N)
    g_r    = d/dtheta (1/n_r) sum_{i in rows_r} loss_i      forward and backward on the shard only
    g      = (1/N) sum_r n_r g_r                            ONE all-reduce (SUM) of one flat buffer
           = d/dtheta (1/N) sum_{i in batch} loss_i         the gradient one process gets from the batch
    theta <- clip, then our optimiser's step with g         the same numbers on every rank

so W processes take the same steps as one process with the same --batch-size, up to the rounding of the
sums (a test checks the weights to 1e-6). Weighting by n_r keeps this exact when N does not split evenly.
Rows are strided, not cut in blocks, because batches are bucketed by length: a block would hand one rank
all the long sentences. The step's loss sum, correct count and row count ride at the end of the same
buffer, so the logged training loss and accuracy are those of the whole batch.

- Start: rank 0 resumes (or checks the run folder), then every rank takes rank 0's weights (one flat
  broadcast), optimiser state and progress, so all start identical. A UserError on rank 0 there is
  raised on every rank.
- Validation: every rank evaluates the whole validation split. The weights are identical, so the
  validation loss and the early-stopping decision are too, with no collective and no rank waiting on
  another; the price is the validation forward on every rank (a few percent of an epoch's work).
- Files: only rank 0 logs, draws the progress bar and writes config.json, checkpoints, history, plots
  and test metrics; the other ranks are silent.
- A lost process: every collective has a timeout (--dist-timeout). A peer that dies closes its sockets
  and the collective fails at once; one that hangs makes it fail after the timeout. Either way the rank
  raises a one-line UserError ("rank lost ...") and exits 2. Checkpoints are written atomically by rank
  0 between steps, so last.pt holds the end of the last finished epoch. (torchrun itself also stops the
  remaining workers as soon as one fails.)
- Dropout: each rank draws its masks from (seed, epoch, step, rank), so with dropout > 0 the masks
  differ from one process's and equality with it is promised for dropout 0 only. The same holds for
  --weight-drop: each rank drops its own entries of W for its shard of the batch (as data-parallel
  replicas of AWD-LSTM's WeightDrop do), so equality needs --weight-drop 0 too.
- The batches do not depend on W, so a run stopped and --resumed with another number of processes goes
  on along the same trajectory.

The language model (`--task lm`) shards its B parallel streams the same way, strided: rank r reads
streams r, r + W, ... of every chunk, starting from their carried states; its gradient is weighted by
its number of tokens in the same one all-reduce, and the final states of all streams are gathered
after every step (one more small all-reduce), so that rank 0's last.pt resumes every stream.

A single process (no torchrun, or --nproc_per_node=1) gets `Alone`, which never touches
torch.distributed: the training loop then computes exactly what it always did.
Left out: overlapping communication with the backward (DistributedDataParallel's gradient buckets),
sharded validation, elastic resizing of a running job, model parallelism.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from rnnlab.checkpoint import LAST
from rnnlab.errors import UserError

BACKENDS = ("gloo", "nccl")  # gloo: CPU tensors (and the default on CPU); nccl: CUDA tensors, one GPU per process
DEFAULT_TIMEOUT_S = 300.0  # how long a rank waits for the others in one collective before giving up


class Alone:
    """One process: each call does what the single-process training loop always did, nothing more."""

    rank, world_size, is_main = 0, 1, True

    def start(self, out: Path, model, optimizer, open_run: Callable[[], dict]) -> dict:
        """Open the run (resume or start fresh) and return its progress."""
        return open_run()

    def shard(self, batch, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(x, lengths, y, rows) of this process's part of the batch: all of it."""
        x, lengths, y = (t.to(device) for t in batch)
        return x, lengths, y, len(y)

    def sum_step(self, params, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, rows: int):
        """(loss summed over the batch's rows, correct predictions, rows); the gradients stay as they are."""
        return loss.item() * rows, int((logits.argmax(1) == y).sum()), rows

    def streams(self, n: int) -> torch.Tensor:
        """The language model's streams this process reads, of n: all of them."""
        return torch.arange(n)

    def gather_streams(self, mine: torch.Tensor, n: int) -> torch.Tensor:
        """(n, ...) from this process's rows of it (`streams(n)`): here they are all of it."""
        return mine

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


class DataParallel(Alone):
    """Rank `rank` of `world_size` processes joined in torch.distributed's default process group."""

    def __init__(self, rank: int, world_size: int, backend: str, timeout_s: float):
        self.rank, self.world_size, self.backend, self.timeout_s = rank, world_size, backend, timeout_s
        self.is_main = rank == 0
        self.out = Path()  # the run folder (set by `start`), named when a peer is lost

    # -- start: everyone from rank 0's state ----------------------------------------------------------
    def start(self, out: Path, model, optimizer, open_run: Callable[[], dict]) -> dict:
        """Rank 0 opens the run; then every rank holds rank 0's weights, optimiser state and progress."""
        self.out = Path(out)
        error, progress = None, None
        if self.is_main:
            try:
                progress = open_run()
            except UserError as e:
                error = e
        box = [(str(error) if error else None, progress, optimizer.state_dict() if error is None else None)]
        self._run(dist.broadcast_object_list, box, src=0)
        message, progress, optimizer_state = box[0]
        if message is not None:  # rank 0 refused (say, a folder that already holds a run): so does everyone
            raise error if error is not None else UserError(message)
        params = model.parameters()
        flat = _flatten([p.detach() for p in params])  # one broadcast for all the weights
        self._run(dist.broadcast, flat, src=0)
        _unflatten_into(flat, params, grads=False)
        optimizer.load_state_dict(optimizer_state)
        return progress

    # -- a step: shard, then one all-reduce ---------------------------------------------------------------
    def shard(self, batch, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Rows rank, rank + W, rank + 2W, ... of the global batch, with padding cut to their longest.

        A short last batch can leave a rank without rows; it then runs row 0 as a stand-in and reports
        rows = 0, so that `sum_step` counts it as nothing, and every rank still joins every all-reduce.
        """
        x, lengths, y = batch
        index = torch.arange(self.rank, len(y), self.world_size)
        rows = len(index)
        if rows == 0:
            index = torch.tensor([0])
        T = int(lengths[index].max())
        return x[index, :T].to(device), lengths[index].to(device), y[index].to(device), rows

    def sum_step(self, params, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, rows: int):
        """Average the gradients over the global batch and sum the step's counts, in one all-reduce.

            buffer_r = [ n_r g_r (every parameter, flattened) | n_r loss_r | correct_r | n_r ]
            buffer   = sum_r buffer_r                               (all-reduce, SUM)
            g        = buffer[grads] / N,   N = sum_r n_r            (written back into each p.grad)

        Returns (loss summed over the global batch, its correct predictions, N), the same on every rank.
        """
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        counts = [loss.item() * rows, int((logits.argmax(1) == y).sum()), rows] if rows else [0.0, 0, 0]
        flat = _flatten(grads, extra=counts)
        if rows:
            flat[:-3] *= rows
        else:  # a stand-in row: contribute nothing (zero, even where its gradient is not finite)
            flat[:-3] = 0
        self._run(dist.all_reduce, flat, op=dist.ReduceOp.SUM)
        loss_sum, correct, seen = flat[-3:].tolist()
        flat[:-3] /= seen
        _unflatten_into(flat, params, grads=True)
        return loss_sum, round(correct), round(seen)

    # -- the language model: streams instead of rows ------------------------------------------------------------
    def streams(self, n: int) -> torch.Tensor:
        """Streams rank, rank + W, ... of the n parallel streams of a language model's text (n >= W)."""
        return torch.arange(self.rank, n, self.world_size)

    def gather_streams(self, mine: torch.Tensor, n: int) -> torch.Tensor:
        """The (n, ...) tensor whose rows `streams(n)` are this rank's `mine`, the rest the other ranks': each
        rank writes its rows into zeros and one all-reduce (SUM) adds them up. The carried states are
        gathered so after every step, so every rank (and rank 0's checkpoint) holds all of them."""
        full = mine.new_zeros(n, *mine.shape[1:])
        full[self.streams(n).to(mine.device)] = mine
        self._run(dist.all_reduce, full, op=dist.ReduceOp.SUM)
        return full

    # -- failures: a lost peer becomes one line ---------------------------------------------------------------
    def _run(self, collective, *args, **kwargs) -> None:
        try:
            collective(*args, **kwargs)
        except RuntimeError as e:  # DistBackendError, DistNetworkError: a peer died, or hung past the timeout
            if (self.out / LAST).exists():  # rank 0 writes it atomically, between steps
                where = f"the last checkpoint in {self.out} is intact; continue with --resume"
            elif self.is_main:
                where = f"no checkpoint was written to {self.out} yet"
            else:  # on another machine than rank 0
                where = f"rank 0's last checkpoint in {self.out}, if any, is intact"
            raise UserError(f"rank lost: process {self.rank} of {self.world_size} stopped: another process died or did "
                            f"not answer for {self.timeout_s:g} s in {collective.__name__} ({_reason(e)}); {where}"
                            ) from None

    def __exit__(self, *exc_info):
        dist.destroy_process_group()  # also after an error: left to the interpreter's exit, gloo aborts the process
        return False


def launch(config, backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Alone:
    """The process's place in the job torchrun started: `Alone()` without torchrun (or with one process),
    else `DataParallel`, after joining the process group.

    torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the group is joined through
    them (init_method env://). backend None picks nccl for a CUDA device and gloo otherwise. With CUDA,
    process LOCAL_RANK uses GPU LOCAL_RANK of its machine.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Alone()
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise UserError(f"WORLD_SIZE is {world_size} but RANK or MASTER_ADDR is not set; start several processes "
                        "with torchrun (torchrun --nproc_per_node=2 -m rnnlab train ...)")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if config.batch_size < world_size:  # every rank needs at least one row of a full batch
        raise UserError(f"--batch-size {config.batch_size} is smaller than the {world_size} processes; each process "
                        f"takes a share of every batch: use --batch-size {world_size} or more, or fewer processes")
    if not timeout_s > 0:
        raise UserError(f"--dist-timeout {timeout_s:g}: give a positive number of seconds, e.g. --dist-timeout 300")
    cuda = str(config.device).startswith("cuda")
    backend = backend or ("nccl" if cuda else "gloo")
    if backend not in BACKENDS:
        raise UserError(f"--dist-backend {backend}: choose {' or '.join(BACKENDS)}")
    if backend == "nccl" and not cuda:
        raise UserError("--dist-backend nccl needs --device cuda; use gloo on the CPU")
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {local_rank} on this machine has no GPU of its own ({torch.cuda.device_count()} "
                            "GPUs); start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local_rank)  # "cuda" now means this process's GPU
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    except RuntimeError as e:  # DistNetworkError, DistStoreError: no rendezvous
        raise UserError(f"process {rank} could not join the other {world_size - 1} ({_reason(e)}); check that "
                        "every machine runs the same torchrun command and can reach --rdzv_endpoint") from None
    return DataParallel(rank, world_size, backend, timeout_s)


# -- helpers --------------------------------------------------------------------------------------------
def _flatten(tensors: list[torch.Tensor], extra: list[float] = ()) -> torch.Tensor:
    """One contiguous 1-D buffer: the tensors one after another, then the numbers in `extra`."""
    parts = [t.reshape(-1) for t in tensors]
    if extra:
        parts.append(torch.tensor(extra, dtype=tensors[0].dtype, device=tensors[0].device))
    return torch.cat(parts)


@torch.no_grad()
def _unflatten_into(flat: torch.Tensor, params: list[torch.Tensor], grads: bool) -> None:
    """Copy consecutive slices of `flat` back into each parameter (grads=False) or its gradient."""
    offset = 0
    for p in params:
        piece = flat[offset : offset + p.numel()].view_as(p)
        if not grads:
            p.copy_(piece)
        elif p.grad is None:
            p.grad = piece.clone()
        else:
            p.grad.copy_(piece)
        offset += p.numel()


def _reason(e: BaseException) -> str:
    """The first sentence of a torch.distributed error, without gloo's [source/file.cc:123] prefix."""
    lines = str(e).strip().splitlines() or [type(e).__name__]
    line = re.sub(r"^\[[^\]]*\.\w+:\d+\]\s*", "", lines[0]).split(". ")[0].rstrip(".")
    return line if len(line) <= 160 else line[:157] + "..."
