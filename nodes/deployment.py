"""Create a deployment: its config, secret, admin, operator, deleter and data keys, folders."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ledger.errors import InputError
from nodes import data_key
from nodes.config import CONFIG_NAME, Config, load_config
from nodes.private_files import write_private

TEMPLATE = """\
# vmsnap deployment configuration; see docs/operations.md.
# Environment variables VMSNAP_<SECTION>_<KEY> override any value here.

[deployment]
name = "{name}"
data_dir = "data"
secret_file = "secret"             # 32 random bytes, hex; every node connection proves it
admin_key_file = "admin.key"        # deploys the contract, enrols and removes accounts
operator_key_file = "operator.key"  # appends every event except deletions
deleter_key_file = "deleter.key"    # signs deletions (by hand and by retention)
data_key_file = "data.key"         # chunk keys derive from it: losing it loses the data

[network]
host = "127.0.0.1"
base_port = {base_port}                      # 0: each node takes a free port, recorded in data/run/

[nbd]
host = "127.0.0.1"                 # where business nodes serve NBD; elsewhere needs TLS
tls_cert = ""                      # server certificate (PEM); set with tls_key, TLS is required
tls_key = ""                       # its private key (PEM)
tls_ca = ""                        # CA (PEM) whose certificate every NBD client must show
allow_plaintext = false            # true: plaintext NBD off loopback (a trusted network only)

[chain]
backend = "eth-tester"             # or "rpc" with rpc_url = "http://127.0.0.1:8545"
rpc_url = ""
contract_address = ""              # attach to an existing contract instead of deploying one
genesis_timestamp = {genesis}       # fixed so every ledger replica has the same genesis block
replicas = false                   # true: a ledger replica on every business and backup node
funded = "{funded}"  # accounts the embedded chain's genesis gives ether

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
compression_level = 1              # zstd level
encryption = {encryption}# encrypt chunks at rest with keys derived from data.key
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
    data_key_fingerprint: str
    admin: str = ""
    deleter: str = ""


def init_deployment(
    folder: Path, name: str = "vmsnap", base_port: int = 0, encryption: bool = True
) -> Deployment:
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
    admin, account, deleter = Account.create(), Account.create(), Account.create()
    _write_private(folder / "secret", secrets.token_hex(32) + "\n")
    _write_private(folder / "admin.key", admin.key.hex() + "\n")
    _write_private(folder / "operator.key", account.key.hex() + "\n")
    _write_private(folder / "deleter.key", deleter.key.hex() + "\n")
    key = data_key.generate()
    data_key.write_key(folder / "data.key", key)
    funded = ",".join(a.address for a in (admin, account, deleter))
    text = TEMPLATE.format(
        name=name,
        base_port=base_port,
        genesis=int(time.time()),
        encryption=f"{str(encryption).lower():22}",
        funded=funded,
    )
    config_path.write_text(text)
    config = load_config(config_path.resolve(), {})
    for path in (config.data_dir, config.run_dir, config.log_dir):
        path.mkdir(parents=True, exist_ok=True)
    return Deployment(
        config=config,
        operator=account.address,
        data_key_fingerprint=data_key.fingerprint(key),
        admin=admin.address,
        deleter=deleter.address,
    )


def _write_private(path: Path, text: str) -> None:
    write_private(path, text.encode())
