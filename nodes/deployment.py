"""Create a deployment: its config file, secret, operator key and data folders."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ledger.errors import InputError
from nodes.config import CONFIG_NAME, Config, load_config

TEMPLATE = """\
# vmsnap deployment configuration; see docs/operations.md.
# Environment variables VMSNAP_<SECTION>_<KEY> override any value here.

[deployment]
name = "{name}"
data_dir = "data"
secret_file = "secret"             # 32 random bytes, hex; every node connection proves it
operator_key_file = "operator.key"  # the account that deploys the contract and appends events
data_key_file = "data.key"         # chunk keys derive from it: losing it loses the data

[network]
host = "127.0.0.1"
base_port = {base_port}                      # 0: each node takes a free port, recorded in data/run/

[chain]
backend = "eth-tester"             # or "rpc" with rpc_url = "http://127.0.0.1:8545"
rpc_url = ""
contract_address = ""              # attach to an existing contract instead of deploying one
genesis_timestamp = {genesis}       # fixed so every ledger replica has the same genesis block
replicas = false                   # true: a ledger replica on every business and backup node

[projection]
url = ""                           # empty: SQLite in data/nodes/controller/; or postgresql+psycopg://...

[wire]
max_frame = 16777216
timeout = 30.0

[topology]
business = 1                       # nodes serving VM disks over NBD
transfer = 1                       # nodes processing snapshots between the clusters
backup = 3                         # nodes keeping chunks and manifests
replicas = 2                       # copies of every chunk on the backup cluster

[storage]
chunk_size = 65536                 # bytes; dirty tracking, dedup and transfer unit of new volumes
compression_level = 3              # zstd level
encryption = false                 # encrypt chunks at rest with keys derived from data.key
background_nice = 10               # CPU niceness of transfer and backup nodes: VM I/O comes first
quota_bytes = 0                    # a backup node's store may hold at most this (0: no limit)

[vm_driver]
kind = "none"                      # how rollbacks stop and restart VMs: none, command or qemu
stop_command = ""                  # command: e.g. "virsh destroy {{vm}}"
start_command = ""                 # command: e.g. "virsh start {{vm}}"
qmp_socket = ""                    # qemu: e.g. "/run/qemu/{{vm}}.qmp"
timeout = 30.0
"""


@dataclass(frozen=True)
class Deployment:
    """What init created."""

    config: Config
    operator: str


def init_deployment(folder: Path, name: str = "vmsnap", base_port: int = 0) -> Deployment:
    """Write a working deployment into `folder`; refuse if one is already there."""
    if not 0 <= base_port <= 65535:
        raise InputError(f"invalid base port {base_port}: use 0 to 65535")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise InputError(f"invalid deployment name {name!r}: letters, digits, '-' and '_'")
    config_path = folder / CONFIG_NAME
    if config_path.exists():
        raise InputError(f"a deployment already exists in {folder}")
    from eth_account import Account

    folder.mkdir(parents=True, exist_ok=True)
    account = Account.create()
    _write_private(folder / "secret", secrets.token_hex(32) + "\n")
    _write_private(folder / "operator.key", account.key.hex() + "\n")
    _write_private(folder / "data.key", secrets.token_hex(32) + "\n")
    text = TEMPLATE.format(name=name, base_port=base_port, genesis=int(time.time()))
    config_path.write_text(text)
    config = load_config(config_path.resolve(), {})
    for path in (config.data_dir, config.run_dir, config.log_dir):
        path.mkdir(parents=True, exist_ok=True)
    return Deployment(config=config, operator=account.address)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
