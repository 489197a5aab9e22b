"""Compile the Vyper contracts from source, caching the result by source hash."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCES = Path(__file__).resolve().parent
EVM_VERSION = "cancun"


class CompileFailed(Exception):
    """The Vyper compiler rejected a contract source."""


@dataclass(frozen=True)
class CompiledContract:
    """A compiled contract: its ABI, deployable bytecode and the source it came from."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes
    source_hash: str
    compiler: str
    evm_version: str


def load(name: str = "SnapshotLedger", cache_dir: Path | None = None) -> CompiledContract:
    """Return the compiled contract `name`, compiling `contracts/NAME.vy` on a cache miss."""
    source = (SOURCES / f"{name}.vy").read_text()
    import vyper

    compiler = str(vyper.__version__)
    digest = hashlib.sha256(f"{compiler}\0{EVM_VERSION}\0{source}".encode()).hexdigest()
    cache = (cache_dir or _default_cache()) / f"{name}-{digest[:32]}.json"
    if cache.exists():
        try:
            return _from_json(name, json.loads(cache.read_text()))
        except (ValueError, KeyError):
            cache.unlink(missing_ok=True)
    compiled = _compile(name, source, digest, compiler)
    _store(cache, compiled)
    return compiled


def _compile(name: str, source: str, digest: str, compiler: str) -> CompiledContract:
    import vyper
    from vyper.exceptions import VyperException

    try:
        out = vyper.compile_code(source, output_formats=["abi", "bytecode"])
    except VyperException as err:
        raise CompileFailed(f"{name}.vy does not compile: {err}") from err
    return CompiledContract(
        name=name,
        abi=out["abi"],
        bytecode=bytes.fromhex(out["bytecode"].removeprefix("0x")),
        source_hash=digest,
        compiler=compiler,
        evm_version=EVM_VERSION,
    )


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmsnap" / "contracts"


def _store(path: Path, compiled: CompiledContract) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "abi": compiled.abi,
            "bytecode": compiled.bytecode.hex(),
            "source_hash": compiled.source_hash,
            "compiler": compiled.compiler,
            "evm_version": compiled.evm_version,
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as out:
            json.dump(body, out)
        Path(tmp).replace(path)
    except OSError:
        return  # a read-only cache only costs a recompile next time


def _from_json(name: str, body: dict[str, Any]) -> CompiledContract:
    return CompiledContract(
        name=name,
        abi=body["abi"],
        bytecode=bytes.fromhex(body["bytecode"]),
        source_hash=body["source_hash"],
        compiler=body["compiler"],
        evm_version=body["evm_version"],
    )
