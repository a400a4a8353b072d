"""The wheel carries what the service needs at run time: installed non-editable into a fresh venv, away from
the source tree, `distillery db upgrade` brings a new Postgres database to head."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_FILES = """
from fastapi.testclient import TestClient
from app.ui.render import STATIC, TEMPLATES
from app.ui import auth
from fastapi import FastAPI
for path in (TEMPLATES / "base.html", TEMPLATES / "viewer.html", STATIC / "ui.css", STATIC / "viewer.js"):
    assert str(path).startswith(__import__("sys").prefix), path
    print(path.name) if path.is_file() else None
app = FastAPI()
app.include_router(auth.router)
page = TestClient(app).get("/ui/sign-in")
print("sign-in-renders" if page.status_code == 200 and "api_key" in page.text else page.text)
"""


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def test_wheel_installed_elsewhere_migrates_a_new_database(empty_postgres: str, tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: an in-tree build would leave build/ in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("app", "distillery_tools", "distillery_student", "migrations"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    pip = (sys.executable, "-m", "pip")
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, source, cwd=tmp_path)
    wheel = next(tmp_path.glob("distillery-*.whl"))
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(
        sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path
    )
    # The dependencies come from this venv's site-packages, listed after the new venv's own (which has the
    # wheel): `app` is the installed copy, never this checkout.
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_") and k != "PYTHONPATH"}
    env.update(DISTILLERY_DATABASE_URL=empty_postgres, DISTILLERY_DATA_DIR=str(tmp_path / "data"))
    where = run(python, "-c", "import app; print(app.__file__)", cwd=tmp_path, env=env)
    assert where.startswith(str(venv)), where
    # The wheel built the top-k scanner (app/teachers/_scan.c) and the codecs' packers (app/codecs/_*.c)
    # itself: the ingest and export paths' speed depends on them.
    for module in ("app.teachers._scan", "app.codecs._bitpack", "app.codecs._rice"):
        built = run(python, "-c", f"import {module} as m; print(m.__file__)", cwd=tmp_path, env=env)
        assert built.startswith(str(venv)), built
    # The console's templates and static files ship in the wheel, and a page renders from the installed copy.
    shipped = run(python, "-c", CONSOLE_FILES, cwd=tmp_path, env=env)
    assert shipped.split() == ["base.html", "viewer.html", "ui.css", "viewer.js", "sign-in-renders"], shipped
    out = run(venv / "bin" / "distillery", "db", "upgrade", cwd=tmp_path, env=env)
    assert "schema at head" in out and "postgres@127.0.0.1" in out
    heads = sorted(p.name.split("_")[0] for p in (ROOT / "migrations" / "versions").glob("[0-9]*.py"))
    dsn = empty_postgres.replace("+asyncpg", "")

    async def version() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
        finally:
            await conn.close()

    assert asyncio.run(version()).startswith(heads[-1])


def test_processes_starting_together_migrate_one_at_a_time(empty_postgres: str, tmp_path: Path) -> None:
    """Four `db upgrade`s at once on an empty database: without the lock they race to create the same tables."""
    env = {**os.environ, "DISTILLERY_DATABASE_URL": empty_postgres, "DISTILLERY_DATA_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "app", "db", "upgrade"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs


def test_a_process_told_not_to_migrate_refuses_an_old_schema(empty_postgres: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DISTILLERY_DATABASE_URL": empty_postgres,
        "DISTILLERY_DATA_DIR": str(tmp_path),
        "DISTILLERY_MIGRATE_ON_START": "false",
    }
    done = subprocess.run([sys.executable, "-m", "app", "worker"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "run `distillery db upgrade` first" in done.stderr, done.stderr[-2000:]
