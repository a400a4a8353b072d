"""Storage per codec: bytes Postgres holds per generated token (every table, TOAST and index, after VACUUM
ANALYZE) for one job of 512 completions at k=20, with each top-k codec and completion length; the job's
own fidelity report (GET /v1/jobs/{id}/fidelity) is read from the same run. Fed by the replay teacher
(recorded tiny-teacher answers); 256-token completions are recorded 128-token ones joined.

    .venv/bin/python -m bench.storage --runs 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench import ceiling
from bench.common import summary, write_result

TARGET_V3_BYTES_AT_64 = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--codecs", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--recording", type=Path, default=ceiling.DEFAULT_RECORDING)
    parser.add_argument("--name", default="storage")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for length in args.lengths:
            for codec in args.codecs:
                run_args = argparse.Namespace(
                    prompts=args.prompts,
                    max_tokens=length,
                    k=args.k,
                    batch=64,
                    inflight=8,
                    recording=args.recording,
                    profile=None,
                    chat=False,
                    codec=codec,
                    fidelity=True,
                )
                runs = [ceiling.one_run(run_args, Path(tmp), run) for run in range(args.runs)]
                key = f"{length}_tokens_v{codec}"
                results[key] = {
                    "bytes_per_token": summary([r["bytes_per_token"] for r in runs]),
                    "tokens": runs[0]["tokens"],
                    "relations": {name: v["total"] for name, v in runs[0]["relations"].items() if v["total"]},
                    "fidelity": runs[0]["fidelity"],
                }
                b = results[key]["bytes_per_token"]
                print(f"{key}: {b['median']:.1f} ({b['min']:.1f}-{b['max']:.1f}) B/token", flush=True)
    figures = {
        "params": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()},
        "targets": {"v3_bytes_per_token_at_64": TARGET_V3_BYTES_AT_64},
        **results,
    }
    print(f"storage: {write_result(args.name, figures, out=args.out)}")


if __name__ == "__main__":
    main()
