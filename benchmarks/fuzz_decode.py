"""Long mutation-fuzzing run of vqcodec.decode (the harness is tests/fuzzing.py).

    python benchmarks/fuzz_decode.py [-n 100000] [--seed 0] [--timeout 10] [--memory-gb 3]

Prints the counts of each outcome; every input must end in a decoded image or a VqzError
within --timeout seconds, under an address-space limit of --memory-gb. Inputs that do
anything else are saved to fuzz-findings/ for a regression test.
"""
from __future__ import annotations

import argparse
import collections
import resource
import signal
import sys
import time
import random
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzzing import decode_outcome, mutate, seed_files  # noqa: E402


class Timeout(Exception):
    pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--memory-gb", type=float, default=3.0)
    args = parser.parse_args()
    seeds = seed_files()
    limit = int(args.memory_gb * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(Timeout()))
    rng = random.Random(args.seed)
    counts, slowest, findings = collections.Counter(), 0.0, Path("fuzz-findings")
    started = time.perf_counter()
    for i in range(args.n):
        data = mutate(seeds, rng)
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
        try:
            outcome = decode_outcome(data)
        except Timeout:
            outcome = "timeout"
        except BaseException as error:  # a finding: anything but VqzError
            outcome = f"{type(error).__name__}: {str(error)[:80]}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        slowest = max(slowest, time.perf_counter() - t0)
        counts[outcome] += 1
        if outcome not in ("VqzError", "decoded"):
            findings.mkdir(exist_ok=True)
            (findings / f"{i}.vqz").write_bytes(data)
        if (i + 1) % 10_000 == 0:
            print(f"{i + 1} inputs, {time.perf_counter() - started:.0f} s: {dict(counts)}", file=sys.stderr)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"inputs: {args.n} from {len(seeds)} seed files, seed {args.seed}")
    for outcome, count in counts.most_common():
        print(f"  {outcome}: {count}")
    print(f"slowest input: {slowest:.3f} s; total {time.perf_counter() - started:.0f} s; peak RSS {peak_mb:.0f} MB")
    return 0 if set(counts) <= {"VqzError", "decoded"} else 1


if __name__ == "__main__":
    raise SystemExit(main())
