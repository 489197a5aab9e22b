"""vmsnap vm: register VMs and their disks, list and show them."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.render import emit_json, out, short, table, when
from cli.state import state
from ledger.sizes import format_size
from ledger.vm import parse_disk, registration
from nodes.api import ControllerApi

app = typer.Typer(no_args_is_help=True, help="Register VMs and their disks.")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command()
def register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The VM's identifier (its host name).")],
    vm_type: Annotated[str, typer.Option("--type", help="Hypervisor type, e.g. kvm.")] = "kvm",
    ip: Annotated[str, typer.Option("--ip", help="The VM's LAN address.")] = "",
    disk: Annotated[
        list[str] | None,
        typer.Option("--disk", help="ROLE:RESOURCE_ID:SIZE, role system or data; repeatable."),
    ] = None,
    json: JsonOption = False,
) -> None:
    """Register a VM with its disks; the registration is an event on the ledger."""
    disks = tuple(parse_disk(text) for text in disk or [])
    checked = registration(name, vm_type, ip, disks, at_ms=0)
    result = ControllerApi(state(ctx).config()).register_vm(
        checked.vm, checked.vm_type, checked.ip, checked.disks
    )
    if json:
        emit_json(result)
        return
    out.print(f"registered VM {name} (ledger event {result['seq']}, tx {short(result['tx_hash'])})")


@app.command("list")
def list_vms(ctx: typer.Context, json: JsonOption = False) -> None:
    """List registered VMs."""
    vms = ControllerApi(state(ctx).config()).vms()
    if json:
        emit_json(vms)
        return
    table(
        None,
        ["name", "type", "ip", "disks", "registered"],
        ([v["name"], v["type"], v["ip"], _disks(v), when(v["registered_at_ms"])] for v in vms),
    )


@app.command()
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The VM's name.")],
    json: JsonOption = False,
) -> None:
    """Show one VM, its disks and its ledger history."""
    shown = ControllerApi(state(ctx).config()).vm(name)
    if json:
        emit_json(shown)
        return
    vm = shown["vm"]
    out.print(f"[bold]{vm['name']}[/bold]  type {vm['type']}  ip {vm['ip']}")
    table(
        "disks",
        ["resource id", "role", "size"],
        ([d["resource_id"], d["role"], format_size(d["size"])] for d in vm["disks"]),
    )
    table(
        "history",
        ["seq", "event", "at", "tx"],
        ([e["seq"], e["type"], when(e["at_ms"]), short(e["tx_hash"])] for e in shown["events"]),
    )


def _disks(vm: dict[str, Any]) -> str:
    return ", ".join(
        f"{d['role']}:{d['resource_id']}:{format_size(d['size'])}" for d in vm["disks"]
    )
