"""Per-slice throughput of read + correct + align + segment + append, and alignment vs peers.

Prints slices/s and ms per stage for 1024 x 1024 8-bit and 2048 x 2048 16-bit slices, the time
of pystackreg (TRANSLATION) and scikit-image ``phase_cross_correlation`` (full resolution,
upsampling 20) on the same slices with their ratio to revwatch's alignment, and the drift RMS
error of each method against the synthetic truth. The same figures back ``revwatch bench``.

Run::

    python tests/benchmarks/bench_slices.py             # full sizes, 20 slices each
    python tests/benchmarks/bench_slices.py --quick     # 512^2 8-bit and 1024^2 16-bit
    python tests/benchmarks/bench_slices.py --slices 60
"""

from __future__ import annotations

import argparse

from agent.bench import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--slices", type=int, default=None)
    args = parser.parse_args()
    main(quick=args.quick, slices=args.slices)
