"""Storage per codec: bytes Postgres holds per generated token (every table, TOAST and index, after VACUUM
ANALYZE), for each top-k codec and completion length at k=20, fed by the replay teacher (recorded
tiny-teacher answers, bf16; 256-token completions are recorded 128-token ones joined).

Two figures per run, both over all tables:
- `bytes_per_token`: one job of --prompts completions in a fresh database (the issue's measure; the empty
  tables, their free-space maps and the job's dead item versions weigh more the smaller the job);
- `added_bytes_per_token`: what a second, identical job then adds to that database (steady state: the space
  the first job's dead versions left is reused, the empty tables are already counted).
The first job's own fidelity report (GET /v1/jobs/{id}/fidelity) is kept too.

    .venv/bin/python -m bench.storage --runs 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    fresh_postgres,
    ready_service,
    relation_sizes,
    service_client,
    summary,
    write_prompts,
    write_result,
)
from bench.replay_teacher import DEFAULT_RECORDING, ReplayTeacher
from distillery_tools.service_process import ServiceProcess

TARGET_V3_BYTES_AT_64 = 100


def _total(sizes: dict[str, dict[str, int]]) -> int:
    return sum(s["total"] for s in sizes.values())


def one_run(args: argparse.Namespace, workdir: Path, *, max_tokens: int, codec: int, run: int) -> dict[str, Any]:
    """Two identical jobs into a fresh database; sizes after each."""
    prompts = write_prompts(workdir / "prompts.jsonl", args.prompts)
    with fresh_postgres() as db_url, ReplayTeacher(args.recording) as replay:
        teachers = [{"name": "tiny", "base_url": replay.base_url, "model": "tiny", "batch_size": 64}]
        service = ServiceProcess(
            data_dir=workdir / f"svc{max_tokens}-{codec}-{run}", teachers=teachers, database_url=db_url
        )
        with service:
            api_key = ready_service(service)
            form = {"teacher": "tiny", "max_tokens": max_tokens, "top_logprobs": args.k, "codec": codec}
            with service_client(service.url, api_key) as client:
                first = client.wait(client.upload(prompts, form)["id"], poll_s=0.1)
                fidelity = client.http.get(f"/v1/jobs/{first['id']}/fidelity").json()
                after_first = relation_sizes(db_url)
                second = client.wait(client.upload(prompts, form)["id"], poll_s=0.1)
                after_second = relation_sizes(db_url)
    assert first["status"] == second["status"] == "completed", (first, second)
    tokens, tokens_second = int(first["tokens_generated"]), int(second["tokens_generated"])
    return {
        "tokens": tokens,
        "bytes_per_token": _total(after_first) / tokens,
        "added_bytes_per_token": (_total(after_second) - _total(after_first)) / tokens_second,
        "relations": {name: v["total"] for name, v in after_first.items() if v["total"]},
        "added_relations": {
            name: v["total"] - after_first.get(name, {"total": 0})["total"]
            for name, v in after_second.items()
            if v["total"] != after_first.get(name, {"total": 0})["total"]
        },
        "fidelity": fidelity,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--codecs", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--recording", type=Path, default=DEFAULT_RECORDING)
    parser.add_argument("--name", default="storage")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for length in args.lengths:
            for codec in args.codecs:
                runs = [one_run(args, Path(tmp), max_tokens=length, codec=codec, run=r) for r in range(args.runs)]
                key = f"{length}_tokens_v{codec}"
                results[key] = {
                    "bytes_per_token": summary([r["bytes_per_token"] for r in runs]),
                    "added_bytes_per_token": summary([r["added_bytes_per_token"] for r in runs]),
                    "tokens": runs[0]["tokens"],
                    "relations": runs[0]["relations"],
                    "added_relations": runs[0]["added_relations"],
                    "fidelity": runs[0]["fidelity"],
                }
                b, a = results[key]["bytes_per_token"], results[key]["added_bytes_per_token"]
                print(
                    f"{key}: {b['median']:.1f} ({b['min']:.1f}-{b['max']:.1f}) B/token; a second job adds "
                    f"{a['median']:.1f} ({a['min']:.1f}-{a['max']:.1f})",
                    flush=True,
                )
    figures = {
        "params": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()},
        "targets": {"v3_bytes_per_token_at_64": TARGET_V3_BYTES_AT_64},
        **results,
    }
    print(f"storage: {write_result(args.name, figures, out=args.out)}")


if __name__ == "__main__":
    main()
