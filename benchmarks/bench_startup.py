"""How long `rnnlab lab` takes, end to end, against a bare `python -c "import torch"` in the same run.

Issue 15 asks that the compiled time loop costs the lab nothing: the lab (n = 2, the Python path) must
stay within 1.6x of importing torch. Each repeat runs the three commands (see `commands`) as fresh
processes, one after the other (interleaved, so a change of load hits all), and the median wall time of
each is compared.

Usage: python benchmarks/bench_startup.py --json benchmarks/results/bench_startup.json
       python benchmarks/bench_startup.py --readme benchmarks/results/bench_startup.json  (the README's sentence)
Run it on a quiet machine: with other jobs on the two cores the lab's matplotlib preload thread has no
core of its own, and the ratio grows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def commands(out: Path) -> dict[str, list[str]]:
    """The commands timed; the lab writes its plots into `out`.

    The `rnnlab` script ends with gc.freeze() (see `rnnlab.cli.run`), which spares the interpreter's shutdown
    its collections over every live object. A bare `import torch` gains from the same line, so it is timed
    both ways: `ratio` is the issue's figure (against the bare import), `ratio_same_exit` the one against an
    import that exits as quickly as the lab does.
    """
    return {"import torch": [sys.executable, "-c", "import torch"],
            "import torch; gc.freeze()": [sys.executable, "-c", "import gc, torch; gc.freeze()"],
            "rnnlab lab": [sys.executable, "-m", "rnnlab", "lab", "--force", "--out", str(out)]}


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        timed = commands(Path(tmp) / "lab")
        times: dict[str, list[float]] = {name: [] for name in timed}
        for _ in range(repeats):
            for name, cmd in timed.items():
                times[name].append(wall(cmd))
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"repeats": repeats, "seconds": times, "median": median,
            "ratio": median["rnnlab lab"] / median["import torch"],
            "ratio_same_exit": median["rnnlab lab"] / median["import torch; gc.freeze()"],
            "load_after": os.getloadavg()[0]}


def readme_sentence(r: dict) -> str:
    """The README's sentence, every figure from the stored results."""
    m = r["median"]
    return (f"`rnnlab lab`, start to exit with its two plots, takes {r['ratio']:.2f}x a bare\n"
            f"`python -c \"import torch\"` ({m['rnnlab lab']:.2f} s against {m['import torch']:.2f} s, medians of "
            f"{r['repeats']} interleaved runs,\n`python benchmarks/bench_startup.py --json "
            f"benchmarks/results/bench_startup.json`), and {r['ratio_same_exit']:.2f}x an import of torch that\n"
            f"ends with the `gc.freeze()` the lab ends with ({m['import torch; gc.freeze()']:.2f} s).\n")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="interleaved runs of each command (default 7)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--readme", metavar="JSON", help="print the README's sentence from stored results, and stop")
    args = p.parse_args(argv)
    if args.readme:
        print(readme_sentence(json.loads(Path(args.readme).read_text())), end="")
        return {}
    r = measure(args.repeats)
    m = r["median"]
    print(f"import torch {m['import torch']:.2f} s   "
          f"import torch; gc.freeze() {m['import torch; gc.freeze()']:.2f} s   "
          f"rnnlab lab {m['rnnlab lab']:.2f} s   ratio {r['ratio']:.2f} (same exit {r['ratio_same_exit']:.2f})  "
          f"(median of {args.repeats}, load average after {r['load_after']:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    return r


if __name__ == "__main__":
    main()
