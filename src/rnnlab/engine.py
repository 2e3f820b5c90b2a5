"""Which engine runs the time loop of backward="manual": Python (recurrent.py) or compiled C++ (csrc/loop.cpp).

Both compute the same equations (the cells' forward_t, local_derivatives and backward_t); the
compiled loop does each time step as one matrix product (its own register-blocked micro-GEMM, which
also makes the products over all steps) and one fused, vectorised point-wise pass, without Python's
per-op dispatch. The Python loop stays the readable reference and the fallback.

    engine="python"     always the Python loop
    engine="compiled"   the C++ loop; an error if it cannot be built here (no compiler, ...)
    engine="auto"       the C++ loop on the CPU where it builds, else Python, with a one-line notice why

The default comes from the environment variable RNNLAB_ENGINE (else "auto"). CUDA tensors always take
the Python loop (it is device-agnostic); the compiled loop covers float32 and float64 on the CPU.

Build: the first use compiles csrc/loop.cpp once with torch.utils.cpp_extension (g++, -O3, OpenMP,
one translation unit, no CUDA; vectorised for the CPU capability torch itself uses here, e.g. AVX2 or
AVX512) into ~/.cache/rnnlab/loop-<key> (RNNLAB_CACHE overrides ~/.cache/rnnlab), keyed by the
source's hash, the torch and Python versions and the compiler flags; later processes load it in
milliseconds. `python -m rnnlab.engine` builds it ahead of time (`make` does).

Left out: a CUDA kernel (the Python loop's ops already run on the GPU), threads over the batch in the
point-wise pass (a per-step hand-off did not pay at these sizes; large products do use torch's
threads), and on_step hooks (`rnnlab gradflow` reads the Python loop).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import torch

from rnnlab.choices import ENGINES  # "auto", "python", "compiled"

SOURCE = Path(__file__).resolve().parent / "csrc" / "loop.cpp"
_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"], "AVX2": ["-mavx2", "-mfma"]}

_state: dict = {}  # "ops": the loaded ops, or "error": why they are not available; "noticed": notice printed


def default_engine() -> str:
    return os.environ.get("RNNLAB_ENGINE", "auto")


def check(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return engine


def _capability() -> str:
    cap = torch.backends.cpu.get_cpu_capability()
    return cap if cap in _FLAGS else "DEFAULT"


def _cflags() -> list[str]:
    """-O3, the CPU capability's vector flags, and OpenMP: ATen's at::parallel_for, which the micro-GEMM uses
    for large products, is OpenMP pragmas in its header and runs serially without -fopenmp. The library
    links the libgomp.so.1 that torch has already loaded (same soname), so there is one OpenMP runtime."""
    cap = _capability()
    return ["-O3", f"-DCPU_CAPABILITY={cap}", f"-DCPU_CAPABILITY_{cap}", *_FLAGS.get(cap, []), "-fopenmp"]


def cache_dir() -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + f"{torch.__version__} {sys.version_info[:2]} {_cflags()}".encode()).hexdigest()
    root = Path(os.environ.get("RNNLAB_CACHE", Path.home() / ".cache" / "rnnlab"))
    return root / f"loop-{key[:16]}"


STALE_LOCK_S = 600  # a build lock older than this was left by a killed build (a build takes well under a minute)


def load():
    """The compiled ops (torch.ops.rnnlab_loop), built on first use; raises RuntimeError why not."""
    if "ops" in _state:
        return _state["ops"]
    if "error" in _state:
        raise RuntimeError(_state["error"])
    try:
        _state["ops"] = _build()
    except Exception as e:  # no compiler, no ninja, a failed build: the reason, on one line
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        _state["error"] = reason
        raise RuntimeError(reason) from e
    return _state["ops"]


def _build():
    if hasattr(torch.ops, "rnnlab_loop") and hasattr(torch.ops.rnnlab_loop, "lstm_forward"):
        return torch.ops.rnnlab_loop
    folder = cache_dir()
    library, lock = folder / "rnnlab_loop.so", folder / "lock"  # torch's builder holds `lock` while it compiles
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        lock.unlink(missing_ok=True)  # left by a build that was killed: nobody is building now
    if lock.exists():  # torch would wait for it without end; this process runs the Python loop instead
        raise RuntimeError(f"another process is compiling the time loop now ({lock}; remove it if none is)")
    if library.exists():  # built, and no other process is building it now
        torch.ops.load_library(str(library))
        return torch.ops.rnnlab_loop
    import logging

    from torch.utils import cpp_extension

    folder.mkdir(parents=True, exist_ok=True)
    print("rnnlab: compiling the time loop (once, under a minute) into " + str(folder), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    flags = _cflags()
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    cpp_extension.load(name="rnnlab_loop", sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                       build_directory=str(folder),
                       is_python_module=False, verbose=False)
    print(f"rnnlab: compiled the time loop in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return torch.ops.rnnlab_loop


def _notice(reason: str) -> None:
    if not _state.get("noticed"):
        _state["noticed"] = True
        print(f"rnnlab: engine 'auto' runs the Python time loop: the compiled loop is not available ({reason}); "
              "set RNNLAB_ENGINE=python to silence this", file=sys.stderr, flush=True)


def resolve(engine: str | None, tensor: torch.Tensor) -> str:
    """'python' or 'compiled': what runs the manual loop for this tensor's device and dtype."""
    engine = check(engine or default_engine())
    if engine == "python":
        return "python"
    supported = tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64)
    if engine == "compiled":
        if not supported:
            if tensor.device.type != "cpu":
                return "python"  # CUDA tensors always take the Python loop
            raise ValueError(f"engine='compiled' runs float32 and float64 on the CPU, got {tensor.dtype}")
        try:
            load()
        except RuntimeError as e:
            raise RuntimeError(f"engine='compiled': the time loop did not build here: {e}") from e
        return "compiled"
    if not supported:
        return "python"
    try:
        load()
    except RuntimeError as e:
        _notice(str(e))
        return "python"
    return "compiled"


def available() -> bool:
    try:
        load()
        return True
    except RuntimeError:
        return False


def main() -> int:
    """`python -m rnnlab.engine`: build the compiled loop now (make does this), say where it is."""
    try:
        load()
    except RuntimeError as e:
        print(f"rnnlab: the compiled time loop did not build ({e}); the Python loop will be used", file=sys.stderr)
        return 0  # not an error: the package works without it
    print(f"rnnlab: compiled time loop ready in {cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
