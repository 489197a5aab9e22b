"""vmsnap disk: where a VM disk is served, and images in and out of it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.render import byte_progress, emit_json, out
from cli.state import state
from ledger.errors import InputError
from nodes import disk_io
from nodes.api import ControllerApi

app = typer.Typer(no_args_is_help=True, help="VM disks: NBD URLs, import and export.")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
VmArg = Annotated[str, typer.Argument(help="The VM's name.")]
DiskArg = Annotated[str, typer.Argument(help="The disk's resource id.")]


def _snapshot_disk(snap: dict[str, Any], vm: str, resource_id: str) -> dict[str, Any]:
    if snap["vm"] != vm:
        raise InputError(f"snapshot {snap['id'][:12]} is of VM {snap['vm']!r}, not {vm!r}")
    if snap["status"] != "committed":
        raise InputError(f"snapshot {snap['id'][:12]} is {snap['status']}, not committed")
    for disk in snap["disk_details"]:
        if disk["resource_id"] == resource_id:
            return dict(disk)
    raise InputError(f"snapshot {snap['id'][:12]} does not include disk {resource_id!r}")


@app.command()
def url(ctx: typer.Context, vm: VmArg, resource_id: DiskArg, json: JsonOption = False) -> None:
    """Print the nbd:// URL a hypervisor attaches the disk with."""
    disk = ControllerApi(state(ctx).config()).locate_disk(vm, resource_id)
    if json:
        emit_json(disk)
        return
    print(disk["url"])


@app.command("import")
def import_image(
    ctx: typer.Context,
    vm: VmArg,
    resource_id: DiskArg,
    image: Annotated[Path, typer.Argument(help="A raw image (or qcow2, with qemu-img).")],
    json: JsonOption = False,
) -> None:
    """Load an image into the disk; zero chunks become holes."""
    config = state(ctx).config()
    fmt = disk_io.image_format(image)
    size = disk_io.image_size(image, fmt)
    disk = ControllerApi(config).locate_disk(vm, resource_id)
    disk_io.check_fits(image, size, disk)
    if fmt == "raw":
        with byte_progress() as bar:
            task = bar.add_task(f"import {image.name}", total=size)
            result = disk_io.run(
                disk_io.import_raw(config, disk, image, lambda n: bar.advance(task, n))
            )
    else:
        disk_io.import_with_qemu(disk, image, fmt)
        result = {"bytes_written": size, "bytes_zero": 0}
    result.update(format=fmt, size=size)
    if json:
        emit_json(result)
        return
    out.print(
        f"imported {image} ({fmt}, {size} bytes) into {vm}/{resource_id}: "
        f"{result['bytes_written']} bytes written, {result['bytes_zero']} bytes of zeros skipped"
    )


@app.command("export")
def export_image(
    ctx: typer.Context,
    vm: VmArg,
    resource_id: DiskArg,
    target: Annotated[Path, typer.Argument(help="The raw image file to write.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    snapshot: Annotated[
        str | None,
        typer.Option("--snapshot", help="Export this snapshot instead of the live disk."),
    ] = None,
    json: JsonOption = False,
) -> None:
    """Write the live disk, or one of its snapshots, as a sparse raw image."""
    if target.exists() and not force:
        raise InputError(f"{target} exists: pass --force to overwrite it")
    if not target.parent.is_dir():
        raise InputError(f"no such folder: {target.parent}")
    config = state(ctx).config()
    api = ControllerApi(config)
    if snapshot is not None:
        snap = api.snapshot(snapshot)
        disk = _snapshot_disk(snap, vm, resource_id)
        export = disk_io.export_snapshot
    else:
        disk = api.locate_disk(vm, resource_id)
        export = disk_io.export_raw
    with byte_progress() as bar:
        task = bar.add_task(f"export {vm}/{resource_id}", total=disk["size"])
        result = disk_io.run(export(config, disk, target, lambda n: bar.advance(task, n)))
    if json:
        emit_json(result)
        return
    out.print(
        f"exported {vm}/{resource_id} to {target}: "
        f"{result['size']} bytes, {result['bytes_copied']} of data"
    )
