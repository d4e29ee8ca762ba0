"""The ``splatgen`` command: services, a client, and the operator's PLY tools."""

from __future__ import annotations

import logging
import os
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
    if json_logs:
        fmt = '{"time": "%(asctime)s", "level": "%(levelname)s", "logger": "%(name)s", "message": "%(message)s"}'
    elif "pm_id" in os.environ:
        fmt = "%(levelname)s %(name)s: %(message)s"  # PM2 stamps every log line itself
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    # Information on stdout, warnings and errors on stderr: under PM2 they land in *-out.log and *-error.log.
    info = logging.StreamHandler(sys.stdout)
    info.setLevel(logging.DEBUG)
    info.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = logging.StreamHandler(sys.stderr)
    problems.setLevel(logging.WARNING)
    formatter = logging.Formatter(fmt)
    for handler in (info, problems):
        handler.setFormatter(formatter)
    logging.basicConfig(level=logging.INFO, handlers=[info, problems], force=True)
    # One line per generation is ours to write; httpx would add one per loopback call.
    logging.getLogger("httpx").setLevel(logging.WARNING)


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
        uvicorn.Config(
            app_,
            host=settings.host,
            port=settings.port,
            log_level="info",
            access_log=False,
            log_config=None,  # uvicorn's lines go through the handlers above
        )
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
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        log_config=None,
    )


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Argument(help="Text prompt (omit when --image is given).")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the PLY.")] = Path(
        "splat.ply"
    ),
    image: Annotated[Path | None, typer.Option("--image", help="Image prompt (PNG, JPEG or WebP).")] = None,
    seed: Annotated[int, typer.Option(help="Seed; the same request gives the same splat.")] = 0,
    url: Annotated[str, typer.Option(help="Front end URL (env SPLATGEN_URL).", envvar="SPLATGEN_URL")] = (
        "http://127.0.0.1:8093"
    ),
    token: Annotated[
        str | None, typer.Option(help="Bearer token (env SPLATGEN_API_TOKEN).", envvar="SPLATGEN_API_TOKEN")
    ] = None,
    num_gaussians: Annotated[int | None, typer.Option(help="Procedural backend: gaussian count.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the splat.")] = 300.0,
) -> None:
    """Ask a running front end for a splat: splatgen generate "a red chair" -o chair.ply."""
    from rich.console import Console

    from generation.client import ClientError, generate_to_file

    if (prompt is None) == (image is None):
        typer.echo("splatgen generate: give a text prompt or --image, not both and not neither", err=True)
        raise typer.Exit(2)
    console = Console(stderr=True)
    params = {"num_gaussians": num_gaussians} if num_gaussians else {}
    try:
        with console.status(f"generating via {url} ..."):
            result = generate_to_file(
                url,
                output,
                prompt=prompt,
                image=image,
                seed=seed,
                params=params,
                token=token,
                timeout_s=timeout,
            )
    except ClientError as exc:
        typer.echo(f"splatgen generate: {exc}", err=True)
        raise typer.Exit(1) from None
    fixed = "opacity fixed" if result.fixed else "opacity untouched"
    typer.echo(f"{result.path}: {result.gaussians:,} gaussians in {result.seconds:.2f} s, {fixed}")


def _fail_settings(exc: Exception) -> None:
    typer.echo(f"splatgen: invalid settings: {exc}", err=True)
    raise typer.Exit(2)


def _mount_ply() -> None:
    from diagnostics.cli import ply_app

    app.add_typer(ply_app, name="ply", help="Inspect, fix, check and render PLY splats.")


_mount_ply()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
