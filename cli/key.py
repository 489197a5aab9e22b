"""vmsnap key: show, export and import the deployment's data key."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.render import emit_json, err, out, warn_exposed
from cli.state import AppState, state
from ledger.errors import InputError
from nodes import keyring

app = typer.Typer(no_args_is_help=True, help="The data key that encrypts chunks and manifests.")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
PassphraseFile = Annotated[
    Path | None,
    typer.Option(help="Read the passphrase from this file's first line (else $VMSNAP_PASSPHRASE)."),
]
PASSPHRASE_ENV = "VMSNAP_PASSPHRASE"


@app.command()
def show(ctx: typer.Context, json: JsonOption = False) -> None:
    """The data key's fingerprint, the cipher and whether encryption is on (never the key)."""
    config = state(ctx).config()
    warn_exposed(config)
    shown = keyring.show(config)
    if json:
        emit_json(shown)
        return
    out.print(f"key file      {shown['key_file']}")
    out.print(f"fingerprint   {shown['fingerprint'] or 'none (no data key file)'}")
    out.print(f"cipher        {shown['cipher']}, chunk ids keyed BLAKE3")
    out.print(f"encryption    {'on' if shown['encryption'] else 'off'}")
    for node, written in shown["written_with"].items():
        out.print(f"{node:<13} {'no data yet' if written is None else 'written with ' + written}")


@app.command("export")
def export_command(
    ctx: typer.Context,
    target: Annotated[Path, typer.Argument(help="The new file to write (mode 0600).")],
    passphrase_file: PassphraseFile = None,
    plain: Annotated[
        bool, typer.Option("--plain", help="Write the key unprotected, without a passphrase.")
    ] = False,
) -> None:
    """Export the data key, wrapped with a passphrase (scrypt and AES-256-GCM)."""
    shared = state(ctx)
    config = shared.config()
    if plain and passphrase_file is not None:
        raise InputError("--plain takes no passphrase")
    secret = None if plain else _passphrase(shared, passphrase_file, confirm=True)
    key_fingerprint = keyring.export(config, target, secret)
    how = "unprotected (--plain)" if plain else "protected by the passphrase"
    out.print(f"exported data key {key_fingerprint} to {target}, {how}")
    out.print("without this file or data.key, encrypted snapshots cannot be read")


@app.command("import")
def import_command(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="A file written by vmsnap key export.")],
    passphrase_file: PassphraseFile = None,
) -> None:
    """Restore data.key from an exported key; refused if data was written with another key."""
    shared = state(ctx)
    config = shared.config()
    exported = keyring.read_export(source)
    secret = _passphrase(shared, passphrase_file, confirm=False) if exported.protected else None
    done = keyring.import_key(config, exported, secret)
    if not done.changed:
        out.print(f"data.key already holds data key {done.fingerprint}")
        return
    replaced = f" (replacing unused key {done.replaced})" if done.replaced else ""
    out.print(f"imported data key {done.fingerprint} into {config.data_key_path}{replaced}")
    if not config.storage.encryption:
        out.print("note: storage.encryption is off in vmsnap.toml")


def _passphrase(shared: AppState, path: Path | None, confirm: bool) -> bytes:
    """The passphrase: from --passphrase-file, else $VMSNAP_PASSPHRASE, else asked for."""
    if path is not None:
        try:
            text = path.read_text().split("\n", 1)[0].removesuffix("\r")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read the passphrase file {path}") from error
        if not text:
            raise InputError(f"the passphrase file {path} starts with an empty line")
    elif shared.env.get(PASSPHRASE_ENV):
        text = shared.env[PASSPHRASE_ENV]
    else:
        text = _prompt(confirm)
    if not text:
        raise InputError(f"no passphrase: give --passphrase-file, set {PASSPHRASE_ENV}, or type it")
    return text.encode()


def _prompt(confirm: bool) -> str:
    """Ask on a terminal (twice when `confirm`); otherwise read stdin's first line."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    try:
        answer: str = typer.prompt(
            "passphrase", hide_input=True, confirmation_prompt=confirm, err=True
        )
    except typer.Abort as error:
        err.print("")
        raise InputError(
            f"no passphrase: give --passphrase-file, set {PASSPHRASE_ENV}, or type it"
        ) from error
    return answer
