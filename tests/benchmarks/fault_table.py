"""Run every fault-injection case of tests/test_faults.py and print one table.

    python tests/benchmarks/fault_table.py [--burst 500] [--only burst,gap]

Columns: case, outcome ("ok", or what went wrong), slices lost, slices doubled, and whether every
bad input was reported with its file (or index) and reason both as an ``error`` document and in
the volume's ``skipped`` attributes ("n/a" when the case has no bad input). Each case runs the
real agent on real files in a temporary folder (see tests/test_faults.py for what each does).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import test_faults as tf  # noqa: E402

CASES = {
    "pieces": lambda w, a: tf.case_written_in_pieces(w),
    "zero-byte": lambda w, a: tf.case_unreadable(w, "zero-byte"),
    "truncated": lambda w, a: tf.case_unreadable(w, "truncated"),
    "junk": lambda w, a: tf.case_junk(w),
    "size": lambda w, a: tf.case_odd_slice(w, "size"),
    "dtype": lambda w, a: tf.case_odd_slice(w, "dtype"),
    "duplicate": lambda w, a: tf.case_same_index_twice(w),
    "gap": lambda w, a: tf.case_gap(w),
    "burst": lambda w, a: tf.case_burst(w, n=a.burst),
    "polling": lambda w, a: tf.case_polling(w),
    "sigkill": lambda w, a: tf.case_sigkill(w),
    "disk-full": lambda w, a: tf.case_disk_full(w),
    "metrics-raise": lambda w, a: tf.case_metrics_raise(w),
    "dead-subscriber": lambda w, a: tf.case_dead_subscriber(w),
    "port-in-use": lambda w, a: tf.case_port_in_use(w),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=500, help="slices in the out-of-order burst (default 500)")
    parser.add_argument("--only", help="comma-separated case keys: " + ",".join(CASES))
    args = parser.parse_args(argv)
    keys = args.only.split(",") if args.only else list(CASES)
    rows = []
    for key in keys:
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"fault-{key}-") as tmp:
            try:
                outcome = CASES[key](Path(tmp), args)
                problems = [] if outcome.outcome == "ok" else [outcome.outcome]
                if outcome.lost or outcome.doubled:
                    problems.append("slices lost or doubled")
                reported = "n/a" if not outcome.bad else "yes" if outcome.all_reported else "no"
                if reported == "no":
                    problems.append("not reported")
                rows.append((outcome.case, "; ".join(problems) or "ok", str(outcome.lost), str(outcome.doubled),
                             reported, outcome.note))
            except Exception as exc:  # noqa: BLE001 - a crashing case is a row of the table, not the end of it
                last = traceback.format_exception_only(exc)[-1].strip()
                rows.append((key, f"CRASHED: {last}"[:200], "?", "?", "?", ""))
        print(f"{key}: {rows[-1][1]} ({time.monotonic() - start:.1f} s)", file=sys.stderr, flush=True)
    header = ("case", "outcome", "lost", "doubled", "reported", "note")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for row in [header, tuple("-" * w for w in widths) + ("-" * 4,), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths)) + "  " + row[5][:120])
    return 0 if all(r[1] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
