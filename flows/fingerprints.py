"""Content hashes of every finished stage's outputs: save them after one run, compare another run against them.

    searchr1 fingerprints --save /tmp/run-a.json                   # after the first run
    make clean && make run && searchr1 fingerprints --compare /tmp/run-a.json   # the same run again

The hashes are the fault-injection check's (`stage_fingerprints`: every data file of each published stage;
manifests, logs and timings excluded, paths into the artifacts folder dropped from JSON). Two runs of one
config on one machine agree file for file when every draw is seeded and every kernel deterministic; the
comparison names each file that differs, so a difference is found, not averaged away.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flows.fault_injection import stage_fingerprints


def differences(saved: dict[str, dict[str, str]], now: dict[str, dict[str, str]]) -> list[str]:
    """One line per stage or file that is missing on one side or hashes differently."""
    out = []
    for stage in sorted(set(saved) | set(now)):
        if stage not in now or stage not in saved:
            out.append(f"{stage}: only in {'the saved run' if stage in saved else 'this run'}")
            continue
        a, b = saved[stage], now[stage]
        for f in sorted(set(a) | set(b)):
            if a.get(f) != b.get(f):
                why = "differs" if f in a and f in b else f"missing in {'this run' if f in a else 'the saved run'}"
                out.append(f"{stage}/{f}: {why}")
    return out


def main(argv: list[str] | None = None, prog: str = "python -m flows.fingerprints") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="the run's artifacts folder")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--save", type=Path, help="write this run's hashes to this JSON file")
    what.add_argument("--compare", type=Path, help="compare this run with hashes saved by --save")
    args = ap.parse_args(argv)
    now = stage_fingerprints(args.artifacts)
    if not now:
        ap.error(f"no finished stage under {args.artifacts / 'cache'}: run the pipeline first")
    if args.save:
        args.save.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"{sum(map(len, now.values()))} files of {len(now)} stages -> {args.save}")
        return 0
    try:
        saved = json.loads(args.compare.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        ap.error(f"--compare {args.compare}: expected a JSON file written by --save ({e})")
    diff = differences(saved, now)
    for stage in sorted(now):
        bad = sum(line.startswith(f"{stage}/") or line.startswith(f"{stage}:") for line in diff)
        print(f"{stage:>12}: {len(now[stage]):4d} files, {'identical' if not bad else f'{bad} differ'}")
    print("\n".join(diff) if diff else "every file of every stage is identical")
    return 1 if diff else 0


if __name__ == "__main__":
    raise SystemExit(main())
