"""`maestro serve`: the HTTP trigger endpoint, health, metrics and status page, in a process of its own."""

from __future__ import annotations

import click

from maestro_py.cli.common import EX_USAGE, CliError, Context, pass_ctx
from maestro_py.errors import ConfigError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; off loopback only with MAESTRO_SERVE_TOKEN set.")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True,
              help="TCP port (0: any free one, printed at start).")
@pass_ctx
def serve(c: Context, host: str, port: int) -> None:
    """Serve HTTP triggers (POST /v1/cadences/NAME/ticks), /healthz, /metrics and a status page."""
    from maestro_py.serve import server  # here: only this command pays for Starlette and uvicorn

    settings = c.settings()
    c.registry()  # an invalid registry is reported before listening
    try:
        server.run(c.layout, settings, c.env, host, port)
    except ConfigError as exc:  # a bad setting, a registry gone bad, a non-loopback address without a token
        raise CliError(str(exc), EX_USAGE) from None
