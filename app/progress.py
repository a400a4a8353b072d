"""Following a job from the command line: a progress bar until it ends (the CLI and the demo share it)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.api_client import DistilleryClient


def follow_job(client: DistilleryClient, console: Console, job_id: str) -> dict[str, Any]:
    """Show a progress bar until the job reaches a final status."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tps]:>8.0f} tok/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("queued", total=None, tps=0.0)

        def update(job: dict[str, Any]) -> None:
            counts = job["counts"]
            progress.update(
                task,
                total=counts["total"],
                completed=counts["done"] + counts["failed"] + counts["cancelled"],
                description=job["status"],
                tps=job["tokens_per_second"],
            )

        return client.wait(job_id, on_update=update)
