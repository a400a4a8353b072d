"""Fidelity per codec on a real tiny-teacher job: the job's own report (GET /v1/jobs/{id}/fidelity) after
64 prompts x 64 tokens at k=20 from the tiny model served by vLLM on the CPU in float32 (as the tests serve
it; a bf16 teacher's logprob gaps are mostly multiples of 1/1024 nat, which v3 then stores exactly).

    .venv/bin/python -m bench.fidelity --runs 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench.common import fresh_postgres, ready_service, service_client, summary, write_prompts, write_result
from distillery_tools.service_process import ServiceProcess
from distillery_tools.tiny_teacher import default_cache_dir
from distillery_tools.tiny_teacher.build import ensure_tiny_teacher
from distillery_tools.tiny_teacher.serve import VllmServer

TARGET_V3_MEAN_KL = 1e-6
TARGET_V3_MAX_ABS_ABOVE_MINUS_20 = 1e-3
FIGURES = ("mean_kl", "max_kl", "max_abs_error", "max_abs_error_above_minus_20", "mean_abs_error", "bytes_per_token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--name", default="fidelity")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    reports: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = ensure_tiny_teacher(default_cache_dir())
        with VllmServer(model_dir, log_path=workdir / "vllm.log", served_model_name="tiny", dtype=args.dtype) as vllm:
            vllm.wait_ready(timeout=300)
            teachers = [{"name": "tiny", "base_url": vllm.base_url, "model": "tiny", "batch_size": 64}]
            for run in range(args.runs):
                prompts = write_prompts(workdir / "prompts.jsonl", args.prompts)
                with fresh_postgres() as db_url:
                    service = ServiceProcess(data_dir=workdir / f"svc{run}", teachers=teachers, database_url=db_url)
                    with service:
                        key = ready_service(service)
                        with service_client(service.url, key) as client:
                            form = {"teacher": "tiny", "max_tokens": args.max_tokens, "top_logprobs": args.k}
                            job = client.wait(client.upload(prompts, form)["id"], poll_s=0.2)
                            assert job["status"] == "completed", job
                            reports.append(client.http.get(f"/v1/jobs/{job['id']}/fidelity").json())
                print(f"run {run}: {reports[-1]['sample_positions']} positions", flush=True)
    per_codec: dict[str, Any] = {}
    for index, codec in enumerate(reports[0]["codecs"]):
        rows = [r["codecs"][index] for r in reports]
        per_codec[f"v{codec['version']}"] = {
            f: summary([row[f] for row in rows]) for f in FIGURES if rows[0][f] is not None
        }
    figures = {
        "params": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()},
        "targets": {"v3_mean_kl": TARGET_V3_MEAN_KL, "v3_max_abs_above_minus_20": TARGET_V3_MAX_ABS_ABOVE_MINUS_20},
        "sample_positions": summary([r["sample_positions"] for r in reports]),
        "teacher_tail_mass_mean": summary([r["teacher_tail_mass_mean"] for r in reports]),
        **per_codec,
        "reports": reports,
    }
    path = write_result(args.name, figures, out=args.out)
    for name, codec in per_codec.items():
        kl, err = codec["mean_kl"], codec["max_abs_error_above_minus_20"]
        spread = f"({kl['min']:.2e}-{kl['max']:.2e})"
        print(f"{name}: mean KL {kl['median']:.2e} {spread}; max |d| above -20 {err['median']:.2e}")
    print(f"fidelity: {path}")


if __name__ == "__main__":
    main()
