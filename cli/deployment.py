"""vmsnap init, up, down, status: a deployment and its local network."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.render import emit_json, out, table
from cli.state import state
from ledger.sizes import format_size
from nodes import disk_io, maintenance, network
from nodes.deployment import init_deployment

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def init(
    folder: Annotated[Path, typer.Option("--dir", help="Folder of the new deployment.")] = Path(),
    name: Annotated[str, typer.Option(help="Deployment name, recorded on the ledger.")] = "vmsnap",
    base_port: Annotated[
        int, typer.Option(help="First port of the nodes; 0 picks free ports.")
    ] = 0,
) -> None:
    """Create a deployment: vmsnap.toml, the secret, the three ledger keys and data folders."""
    created = init_deployment(folder.resolve(), name=name, base_port=base_port)
    out.print(f"initialised deployment {name!r} in {created.config.root}")
    out.print(f"admin account {created.admin} (admin.key: keep it offline once the network is up)")
    out.print(f"operator account {created.operator}")
    out.print(f"deleter account {created.deleter}")
    out.print("next: vmsnap up")


def up(ctx: typer.Context, json: JsonOption = False) -> None:
    """Start the local network (as background processes) and wait until it answers."""
    shared = state(ctx)
    started = network.up(shared.config(), shared.env)
    if json:
        emit_json([run.__dict__ for run in started])
        return
    for run in started:
        out.print(f"started {run.role} {run.name} on {run.host}:{run.port} (pid {run.pid})")
    if not started:
        out.print("the network is already running")


def down(ctx: typer.Context) -> None:
    """Stop every node of the local network."""
    stopped = network.down(state(ctx).config())
    out.print(f"stopped {', '.join(stopped)}" if stopped else "no node was running")


def status(ctx: typer.Context, json: JsonOption = False) -> None:
    """Show every node: role, address, up or down, and what it holds."""
    config = state(ctx).config()
    rows = network.status(config)
    backups = [r for r in rows if r["role"] == "backup" and r["state"] == "up"]
    if backups:
        health = disk_io.run(maintenance.health(config))
        for row in backups:
            row["detail"]["replica_health"] = health
    if json:
        emit_json(rows)
        return
    table(
        None,
        ["node", "role", "address", "state", "pid", "detail"],
        (
            [
                r["name"],
                r["role"],
                f"{r['host']}:{r['port']}" if r["host"] else "-",
                r["state"],
                r["pid"] or "-",
                _detail(r),
            ]
            for r in rows
        ),
    )


def _detail(row: dict[str, Any]) -> str:
    detail = row["detail"]
    if "error" in detail:
        return str(detail["error"])
    if row["role"] == "controller" and "ledger" in detail:
        return f"ledger: {detail['ledger']['count']} events, block {detail['ledger']['block']}"
    if row["role"] == "business" and "volumes" in detail:
        return (
            f"{detail['volumes']} volumes, {format_size(detail['bytes_allocated'])} allocated, "
            f"NBD port {detail['nbd_port']}"
        )
    if row["role"] == "backup" and "chunks" in detail:
        text = f"{detail['chunks']} chunks, {format_size(detail['stored_bytes'])} stored"
        health = detail.get("replica_health")
        if health:
            text += f"; cluster: {health['below_replicas']} of {health['chunks']} chunks below R"
        return text
    if row["role"] == "transfer" and "processed" in detail:
        return f"{detail['processed']} views processed"
    return ""


def register(app: typer.Typer) -> None:
    """Add these commands at the top level of `app`."""
    for command in (init, up, down, status):
        app.command()(command)
