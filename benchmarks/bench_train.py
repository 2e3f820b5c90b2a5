"""Kept for old commands: the benchmark now lives in the package as `rnnlab.bench` (`rnnlab bench`).

    python benchmarks/bench_train.py ARGS   ==   rnnlab bench ARGS
"""

from rnnlab.bench import main

if __name__ == "__main__":
    main()
