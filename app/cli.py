"""The `distillery` command: run the service or worker, build and serve the tiny teacher, talk to the API."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from sqlalchemy.engine import make_url

from app.api_client import ApiCallError, DistilleryClient
from app.progress import follow_job
from app.settings import get_settings

app = typer.Typer(help="Distillery: teacher top-k logprobs as knowledge-distillation datasets.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
teacher_app = typer.Typer(help="The local tiny teacher (development, tests, demo).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (on the database the settings name).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(teacher_app, name="teacher")
console = Console(stderr=True)

UrlOpt = Annotated[str, typer.Option("--url", envvar="DISTILLERY_URL", help="The service's base URL.")]
KeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="DISTILLERY_API_KEY", help="An API key.")]
DEFAULT_URL = "http://127.0.0.1:8000"


def _logging() -> None:
    from app.observability.logs import configure_logging

    configure_logging(get_settings().log_format)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings: 8000).")] = None,
    worker: Annotated[bool, typer.Option(help="Run the embedded worker in the same process.")] = True,
) -> None:
    """Run the HTTP API, with an embedded worker by default (the single-machine setup)."""
    import uvicorn

    from app.main import create_app

    _logging()
    settings = get_settings().model_copy(update={"embedded_worker": worker})
    uvicorn.run(
        create_app(settings), host=host or settings.host, port=port or settings.port, log_config=None, log_level="info"
    )


@app.command("worker")
def run_worker(
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve this worker's Prometheus metrics on this port (all interfaces).")
    ] = None,
) -> None:
    """Run a standalone worker: claims queued items and dispatches them to the teachers."""
    from prometheus_client import start_http_server

    from app.database import Database
    from app.worker.service import Worker

    _logging()
    settings = get_settings()
    if metrics_port is not None:
        start_http_server(metrics_port)

    async def main() -> None:
        database = Database(settings.resolved_database_url, application_name=settings.database_application_name)
        await database.prepare_schema(migrate=settings.migrate_on_start)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await Worker(database, settings).run(stop)
        finally:
            await database.dispose()

    asyncio.run(main())


def _on_database(work: Any) -> Any:
    """Run one unit of work against the settings' database, schema brought to head first."""
    from app.database import Database

    async def main() -> Any:
        database = Database(get_settings().resolved_database_url)
        try:
            await database.upgrade_schema()
            return await database.run(work)
        finally:
            await database.dispose()

    return asyncio.run(main())


@keys_app.command("create")
def keys_create(project: Annotated[str, typer.Option(help="The project the key acts for (created if new).")]) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from app.auth.service import create_key

    created = _on_database(lambda s: create_key(s, project))
    console.print(f"key {created.key_id} for project {created.project!r}; it is shown only once:")
    typer.echo(created.key)


@keys_app.command("list")
def keys_list() -> None:
    """List keys by id and project (the keys themselves are not stored)."""
    from app.auth.service import list_keys

    for key in _on_database(list_keys):
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        typer.echo(f"{key.key_id}  {key.project:<24} created {key.created_at:%Y-%m-%d %H:%M}  {state}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (the part after dk_).")]) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    from app.auth.service import revoke_key

    if not _on_database(lambda s: revoke_key(s, key_id)):
        console.print(f"[red]no active key {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema to head."""

    async def nothing(_session: Any) -> None:
        return None

    _on_database(nothing)
    url = make_url(get_settings().resolved_database_url).render_as_string(hide_password=True)
    console.print(f"schema at head on {url}")


@teacher_app.command("build-tiny")
def teacher_build_tiny(
    out: Annotated[Path | None, typer.Option(help="Model folder (default: the cache folder for the seed).")] = None,
    seed: int = 0,
    steps: Annotated[int | None, typer.Option(help="Training steps (default: the builder's).")] = None,
) -> None:
    """Build the tiny Llama teacher from nothing: tokenizer, config, a short training run, safetensors."""
    from distillery_tools.tiny_teacher import default_cache_dir
    from distillery_tools.tiny_teacher.build import build_tiny_teacher, ensure_tiny_teacher

    _logging()
    if out is None and steps is None:
        path = ensure_tiny_teacher(default_cache_dir(), seed=seed)
    else:
        kwargs: dict[str, Any] = {"seed": seed}
        if steps is not None:
            kwargs["train_steps"] = steps
        path = build_tiny_teacher(out or default_cache_dir() / f"tiny-custom-seed{seed}", **kwargs)
    typer.echo(str(path))


@teacher_app.command("serve")
def teacher_serve(
    model: Annotated[Path | None, typer.Option(help="Model folder (default: build or reuse the tiny teacher).")] = None,
    port: int = 8100,
    name: Annotated[str, typer.Option(help="Served model name.")] = "tiny",
    max_logprobs: int = 20,
    dtype: str = "float32",
) -> None:
    """Run vLLM's OpenAI-compatible server on the tiny teacher, on 127.0.0.1, until interrupted."""
    import os
    import subprocess

    from distillery_tools.tiny_teacher import default_cache_dir
    from distillery_tools.tiny_teacher.build import ensure_tiny_teacher
    from distillery_tools.tiny_teacher.serve import vllm_server_command, vllm_server_env

    model_dir = model or ensure_tiny_teacher(default_cache_dir())
    cmd = vllm_server_command(model_dir, port=port, served_model_name=name, max_logprobs=max_logprobs, dtype=dtype)
    raise typer.Exit(subprocess.call(cmd, env=vllm_server_env(os.environ)))


def _fail(exc: ApiCallError) -> typer.Exit:
    console.print(f"[red]HTTP {exc.status}[/red]: {json.dumps(exc.detail, indent=2)}")
    return typer.Exit(1)


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL prompt records.")],
    teacher: str = "tiny",
    max_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_logprobs: Annotated[int, typer.Option("--top-logprobs", "-k")] = 20,
    n: int = 1,
    seed: int | None = None,
    wait: Annotated[bool, typer.Option(help="Show a progress bar until the job ends.")] = True,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Upload a JSONL prompt set as a job; prints the job id and, with --wait, follows it to the end."""
    form = {
        "teacher": teacher,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_logprobs": top_logprobs,
        "n": n,
        "seed": seed,
    }
    try:
        with DistilleryClient(url, api_key) as client:
            job = client.upload(file, form)
            typer.echo(job["id"])
            if not wait:
                return
            job = follow_job(client, console, job["id"])
    except ApiCallError as exc:
        raise _fail(exc) from None
    counts = job["counts"]
    console.print(
        f"job {job['id']} {job['status']}: {counts['done']} done, {counts['failed']} failed, "
        f"{job['tokens_generated']} tokens"
    )
    if job["status"] != "completed":
        raise typer.Exit(1)


@app.command()
def status(
    job_id: Annotated[str | None, typer.Argument()] = None, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None
) -> None:
    """Show one job, or list recent jobs."""
    try:
        with DistilleryClient(url, api_key) as client:
            if job_id:
                typer.echo(json.dumps(client.job(job_id), indent=2))
                return
            for job in client.jobs():
                counts = job["counts"]
                typer.echo(
                    f"{job['id']}  {job['status']:<9}  {counts['done']}/{counts['total']} done  "
                    f"{counts['failed']} failed  {job['tokens_generated']} tokens  {job['created_at']}"
                )
    except ApiCallError as exc:
        raise _fail(exc) from None


@app.command()
def export(
    job_id: str,
    out: Annotated[Path | None, typer.Option(help="Output file (default: job-<id>.<format>).")] = None,
    format: Annotated[str, typer.Option(help="parquet or jsonl")] = "parquet",
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Download a job's dataset as a streamed file."""
    path = out or Path(f"job-{job_id}.{format}")
    try:
        with DistilleryClient(url, api_key) as client:
            client.export(job_id, path, format)
    except ApiCallError as exc:
        raise _fail(exc) from None
    typer.echo(str(path))


@app.command()
def demo(
    prompts: Annotated[Path, typer.Option(help="JSONL prompt set.")] = Path("examples/prompts.jsonl"),
    data_dir: Annotated[Path, typer.Option(help="Where the SQLite database and the export go.")] = Path("data/demo"),
    max_tokens: int = 64,
    top_logprobs: int = 20,
    serve: Annotated[
        bool, typer.Option(help="Then keep the service up and print the web console's URL for the job (Ctrl-C ends).")
    ] = False,
) -> None:
    """End to end on this machine: tiny teacher, vLLM, the service on SQLite, a job, its Parquet export."""
    from distillery_tools.demo import run_demo

    code = run_demo(prompts=prompts, data_dir=data_dir, max_tokens=max_tokens, top_logprobs=top_logprobs, serve=serve)
    sys.exit(code)


def main() -> None:
    app()
