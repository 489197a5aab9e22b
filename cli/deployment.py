"""vmsnap init, up, down, status: a deployment and its local network."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.render import emit_json, out, table, warn_exposed
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
    encryption: Annotated[
        bool,
        typer.Option(
            "--encryption/--no-encryption",
            help="Encrypt chunks and manifests at rest with keys derived from data.key.",
        ),
    ] = True,
) -> None:
    """Create a deployment: vmsnap.toml, the secret, the ledger keys, a data key and folders."""
    created = init_deployment(
        folder.resolve(), name=name, base_port=base_port, encryption=encryption
    )
    out.print(f"initialised deployment {name!r} in {created.config.root}")
    out.print(f"admin account {created.admin} (admin.key: keep it offline once the network is up)")
    out.print(f"operator account {created.operator}")
    out.print(f"deleter account {created.deleter}")
    if encryption:
        out.print(
            f"data at rest is encrypted with data.key (fingerprint {created.data_key_fingerprint})"
            ": losing it loses every snapshot; keep a copy with vmsnap key export FILE"
        )
    else:
        out.print("data at rest is not encrypted (--no-encryption)")
    out.print("next: vmsnap up")


def up(
    ctx: typer.Context,
    nodes: Annotated[
        list[str] | None, typer.Argument(help="Start only these nodes (default: all).")
    ] = None,
    json: JsonOption = False,
) -> None:
    """Start the local network (as background processes) and wait until it answers."""
    shared = state(ctx)
    config = shared.config()
    warn_exposed(config)
    started = network.up(config, shared.env, nodes or ())
    if json:
        emit_json([run.__dict__ for run in started])
        return
    for run in started:
        out.print(f"started {run.role} {run.name} on {run.host}:{run.port} (pid {run.pid})")
    if not started:
        out.print("already running" if nodes else "the network is already running")


def down(ctx: typer.Context) -> None:
    """Stop every node of the local network."""
    stopped = network.down(state(ctx).config())
    out.print(f"stopped {', '.join(stopped)}" if stopped else "no node was running")


def status(ctx: typer.Context, json: JsonOption = False) -> None:
    """Show every node: role, address, up or down, and what it holds."""
    config = state(ctx).config()
    warn_exposed(config)
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
            f"NBD port {detail['nbd_port']}, view server port {detail.get('view_port') or '-'}"
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


app = typer.Typer(help="A deployment and its local network (top-level commands).")
for command in (init, up, down, status):
    app.command()(command)
