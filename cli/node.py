"""vmsnap node: run one node process in the foreground (what vmsnap up starts)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.state import state
from nodes import crashpoints
from nodes.runtime import run_node

app = typer.Typer(no_args_is_help=True, help="Run node processes.")


@app.command()
def run(
    ctx: typer.Context,
    role: Annotated[str, typer.Option(help="The node's role: controller.")],
    name: Annotated[str, typer.Option(help="The node's name, unique in the deployment.")],
) -> None:
    """Run a node in the foreground until SIGTERM."""
    shared = state(ctx)
    config = shared.config()
    crashpoints.arm(shared.env.get(crashpoints.CRASH_ENV, ""), config.run_dir)
    delay = crashpoints.reply_delay(shared.env.get(crashpoints.DELAY_ENV, ""))
    run_node(config, role, name, reply_delay=delay)
