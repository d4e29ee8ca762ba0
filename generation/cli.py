"""The ``splatgen`` command: services, a client, and the operator's PLY tools."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="splatgen: prompt -> 3D Gaussian splat service for 404-GEN miners.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _setup_logging(json_logs: bool = False) -> None:
    fmt = (
        '{"time": "%(asctime)s", "level": "%(levelname)s", "logger": "%(name)s", "message": "%(message)s"}'
        if json_logs
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr, force=True)


def _overrides(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@app.command()
def worker(
    host: Annotated[
        str | None, typer.Option(help="Bind address (env SPLATGEN_HOST, default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (env SPLATGEN_PORT, default 8095).")] = None,
    backend: Annotated[
        str | None, typer.Option(help="procedural (CPU stand-in) or trellis (CUDA) (env SPLATGEN_BACKEND).")
    ] = None,
    json_logs: Annotated[bool, typer.Option("--json-logs", help="Log lines as JSON.")] = False,
) -> None:
    """Run the GPU worker (trellis-microservice): POST /generate, /health, /memory, /cleanup, /metrics."""
    import uvicorn
    from pydantic import ValidationError

    from generation.serve_trellis import create_app
    from generation.settings import WorkerSettings

    _setup_logging(json_logs)
    try:
        settings = WorkerSettings(**_overrides(host=host, port=port, backend=backend))
    except ValidationError as exc:
        _fail_settings(exc)
    app_ = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app_, host=settings.host, port=settings.port, log_level="info", access_log=False)
    )
    app_.state.worker.server = server
    server.run()
    error = app_.state.worker.load_error
    if error:
        typer.echo(f"splatgen worker: backend {settings.backend!r} cannot start: {error}", err=True)
        raise typer.Exit(1)


@app.command()
def front(
    host: Annotated[
        str | None, typer.Option(help="Bind address (env SPLATGEN_HOST, default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (env SPLATGEN_PORT, default 8093).")] = None,
    worker_url: Annotated[
        list[str] | None,
        typer.Option("--worker", help="Worker URL, repeatable (env SPLATGEN_WORKERS, comma-separated)."),
    ] = None,
    json_logs: Annotated[bool, typer.Option("--json-logs", help="Log lines as JSON.")] = False,
) -> None:
    """Run the competitive front end (gen-worker-1) that the 404 miner talks to."""
    import uvicorn
    from pydantic import ValidationError

    from generation.serve_competitive import create_app
    from generation.settings import FrontSettings

    _setup_logging(json_logs)
    try:
        settings = FrontSettings(**_overrides(host=host, port=port, workers=worker_url or None))
    except ValidationError as exc:
        _fail_settings(exc)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level="info", access_log=False
    )


def _fail_settings(exc: Exception) -> None:
    typer.echo(f"splatgen: invalid settings: {exc}", err=True)
    raise typer.Exit(2)


def _mount_ply() -> None:
    try:
        from diagnostics.cli import ply_app
    except ImportError:  # diagnostics CLI not present in a trimmed install
        return
    app.add_typer(ply_app, name="ply", help="Inspect, fix, check and render PLY splats.")


_mount_ply()


def main() -> None:
    app()


if __name__ == "__main__":
    main()


__all__ = ["Path", "app", "main"]
