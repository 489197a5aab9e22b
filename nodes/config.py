"""Typed configuration: one TOML file, ``VMSNAP_*`` overrides, read once and passed down."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

from ledger.chain import ChainSettings
from ledger.errors import ConfigError, InputError

if TYPE_CHECKING:
    import ssl

    from ledger.service import LedgerSettings

CONFIG_NAME = "vmsnap.toml"
MAX_FRAME = 16 * 1024 * 1024
MIN_FRAME = 2 * 1024 * 1024
"""The smallest wire.max_frame: the largest batches of chunks must fit in a frame.

Sixteen incompressible 64 KiB chunks (a ``volume.read_chunks`` answer), or a
``chunk.put_many`` batch of 1 MiB and one chunk more, are a little over 1 MiB framed.
"""
NBD_PORT_OFFSET = 100
"""With a fixed ``network.base_port``, business-N's NBD port is the base + 100 + N."""
VIEW_PORT_OFFSET = 40
"""… and its view server's port the base + 40 + N."""
MAX_FIXED_NODES = 9
"""With a fixed ``network.base_port``, each role has ten ports: at most nine nodes of a role."""
MAX_BASE_PORT = 65535 - NBD_PORT_OFFSET - MAX_FIXED_NODES
"""The highest fixed base port: business-9's NBD port, the highest, is then 65535.

Every node's port (base plus the offset of its role and its index) must stay a port.
"""
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


@dataclass(frozen=True)
class DeploymentConfig:
    """Where the deployment keeps its files (paths relative to the config file).

    An empty `admin_key_file` or `deleter_key_file` means the operator key plays
    that part too (deployments made with one key for every role).
    """

    name: str = "vmsnap"
    data_dir: str = "data"
    secret_file: str = "secret"
    operator_key_file: str = "operator.key"
    admin_key_file: str = ""
    deleter_key_file: str = ""
    data_key_file: str = "data.key"


@dataclass(frozen=True)
class NetworkConfig:
    """Where node processes listen; port 0 picks a free port and records it in the run file."""

    host: str = "127.0.0.1"
    base_port: int = 0
    start_timeout: float = 60.0


@dataclass(frozen=True)
class NbdConfig:
    """Where business nodes serve NBD, and its TLS (see nodes/nbd_tls.py)."""

    host: str = "127.0.0.1"
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    allow_plaintext: bool = False


@dataclass(frozen=True)
class ChainConfig:
    """The chain backend: embedded eth-tester, or a JSON-RPC node by URL."""

    backend: str = "eth-tester"
    rpc_url: str = ""
    contract_address: str = ""
    genesis_timestamp: int = 1_767_225_600
    replicas: bool = False
    funded: str = ""


@dataclass(frozen=True)
class ProjectionConfig:
    """The projection database URL; empty means a SQLite file in the controller's folder."""

    url: str = ""


@dataclass(frozen=True)
class WireConfig:
    """Limits of the wire protocol between processes."""

    max_frame: int = MAX_FRAME
    timeout: float = 30.0


@dataclass(frozen=True)
class TopologyConfig:
    """How many nodes of each role the local network runs, and the replication factor."""

    business: int = 1
    transfer: int = 1
    backup: int = 3
    replicas: int = 2


@dataclass(frozen=True)
class StorageConfig:
    """Data-plane settings: chunk size of new volumes, compression, encryption, a quota.

    Encryption is off when a config file does not mention it (deployments made before it
    was on by default); `vmsnap init` writes it on unless told otherwise. `quota_bytes`
    bounds a backup node's pack files (0: no limit).
    """

    chunk_size: int = 64 * 1024
    compression_level: int = 1
    encryption: bool = False
    background_nice: int = 10
    quota_bytes: int = 0


@dataclass(frozen=True)
class VmDriverConfig:
    """How vmsnap stops and restarts VMs around a rollback (see nodes/vm_driver.py)."""

    kind: str = "none"
    stop_command: str = ""
    start_command: str = ""
    qmp_socket: str = ""
    timeout: float = 30.0


@dataclass(frozen=True)
class SchedulerConfig:
    """The controller's scheduler: its default time zone ("" = the machine's) and parallelism."""

    timezone: str = ""
    parallel: int = 4


@dataclass(frozen=True)
class Config:
    """A deployment's whole configuration."""

    path: Path
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    nbd: NbdConfig = field(default_factory=NbdConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    wire: WireConfig = field(default_factory=WireConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    vm_driver: VmDriverConfig = field(default_factory=VmDriverConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    @property
    def root(self) -> Path:
        """The folder holding the config file; relative paths start here."""
        return self.path.parent

    @property
    def data_dir(self) -> Path:
        """The deployment's data folder."""
        return self.root / self.deployment.data_dir

    @property
    def run_dir(self) -> Path:
        """Where running nodes leave their run files."""
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        """Where node processes write their logs."""
        return self.data_dir / "logs"

    def node_dir(self, name: str) -> Path:
        """A node's own data folder."""
        return self.data_dir / "nodes" / name

    @property
    def data_key_path(self) -> Path:
        """The data key file."""
        return self.root / self.deployment.data_key_file

    def private_files(self) -> list[Path]:
        """Every secret and key file of the deployment (each ``*_file`` of [deployment])."""
        return [
            self.root / getattr(self.deployment, f.name)
            for f in dataclasses.fields(self.deployment)
            if f.name.endswith("_file") and getattr(self.deployment, f.name)
        ]

    def nbd_tls(self) -> ssl.SSLContext | None:
        """The NBD server's TLS context, or None when ``[nbd]`` names no certificate."""
        if not self.nbd.tls_cert:
            return None
        from nodes.nbd_tls import server_context

        ca = self.root / self.nbd.tls_ca if self.nbd.tls_ca else None
        return server_context(self.root / self.nbd.tls_cert, self.root / self.nbd.tls_key, ca)

    def data_key(self) -> bytes | None:
        """The key chunk ids and encryption keys derive from; None when encryption is off."""
        if not self.storage.encryption:
            return None
        from nodes.data_key import parse_key  # the chunk codec's imports, only when a key is read

        return parse_key(_read_secret(self.data_key_path, "data key"))

    def secret(self) -> bytes:
        """The deployment secret every connection authenticates with."""
        text = _read_secret(self.root / self.deployment.secret_file, "secret")
        try:
            return bytes.fromhex(text)
        except ValueError as err:
            raise ConfigError("secret", "the secret file does not hold hex") from err

    def operator_key(self) -> str:
        """The operator's private key (hex)."""
        return _read_secret(self.root / self.deployment.operator_key_file, "operator key")

    def admin_key(self) -> str | None:
        """The admin's private key: None if the operator is the admin, "" if not held here."""
        return _optional_key(self.root, self.deployment.admin_key_file)

    def deleter_key(self) -> str | None:
        """The deleter's private key: None if the operator deletes, "" if not held here."""
        return _optional_key(self.root, self.deployment.deleter_key_file)

    def funded(self, operator: str) -> tuple[str, ...]:
        """The accounts the embedded chain's genesis funds (``chain.funded``, or the operator)."""
        from eth_utils.address import is_hex_address

        listed = tuple(a.strip() for a in self.chain.funded.split(",") if a.strip())
        for address in listed:
            if not is_hex_address(address):
                raise ConfigError("chain.funded", f"{address!r} is not an account address")
        return listed or (operator,)

    def ledger_settings(self, node: str = "controller") -> LedgerSettings:
        """The ledger settings of the node that hosts the ledger."""
        from eth_account import Account

        from ledger.service import LedgerSettings

        key = self.operator_key()
        try:
            operator = Account.from_key(bytes.fromhex(key.removeprefix("0x"))).address
        except ValueError as err:
            raise ConfigError("operator key", "not a valid private key") from err
        folder = self.node_dir(node)
        return LedgerSettings(
            deployment=self.deployment.name,
            chain=ChainSettings(
                backend=self.chain.backend,
                rpc_url=self.chain.rpc_url,
                data_dir=folder / "chain",
                genesis_timestamp=self.chain.genesis_timestamp,
                funded=self.funded(operator),
                timeout=self.wire.timeout,
            ),
            projection_url=self.projection.url or f"sqlite:///{folder / 'projection.sqlite'}",
            state_file=folder / "ledger.json",
            operator_key=key,
            contract_address=self.chain.contract_address,
            contract_cache=self.data_dir / "cache",
            admin_key=self.admin_key(),
            deleter_key=self.deleter_key(),
        )


SECTIONS = {
    "deployment": DeploymentConfig,
    "network": NetworkConfig,
    "nbd": NbdConfig,
    "chain": ChainConfig,
    "projection": ProjectionConfig,
    "wire": WireConfig,
    "topology": TopologyConfig,
    "storage": StorageConfig,
    "vm_driver": VmDriverConfig,
    "scheduler": SchedulerConfig,
}


def find_config(explicit: Path | None, env: Mapping[str, str], cwd: Path) -> Path:
    """Locate the config: --config, then $VMSNAP_CONFIG, then ./vmsnap.toml."""
    if explicit is not None:
        path = explicit
    elif env.get("VMSNAP_CONFIG"):
        path = Path(env["VMSNAP_CONFIG"])
    else:
        path = cwd / CONFIG_NAME
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        raise InputError(f"no configuration at {path}: run vmsnap init, or pass --config")
    return path.resolve()


def load_config(path: Path, env: Mapping[str, str]) -> Config:
    """Read `path`, apply ``VMSNAP_SECTION_KEY`` overrides from `env`, and check the types."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(str(path), str(err)) from err
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise ConfigError(str(path), f"unknown section [{sorted(unknown)[0]}]")
    sections = {name: _section(name, cls, raw.get(name, {}), env) for name, cls in SECTIONS.items()}
    config = Config(path=path, **sections)
    _check(config)
    return config


def _check(config: Config) -> None:
    topology, storage = config.topology, config.storage
    if topology.business < 1 or topology.transfer < 1 or topology.backup < 1:
        raise ConfigError("[topology]", "every role needs at least one node")
    if not 1 <= topology.replicas <= topology.backup:
        raise ConfigError("topology.replicas", f"must be between 1 and backup ({topology.backup})")
    size = storage.chunk_size
    if size < 4096 or size > 64 * 1024 or size & (size - 1):
        raise ConfigError("storage.chunk_size", "must be a power of two from 4096 to 65536")
    if not 0 <= storage.background_nice <= 19:
        raise ConfigError("storage.background_nice", "must be 0 to 19")
    if storage.quota_bytes < 0:
        raise ConfigError("storage.quota_bytes", "must be 0 (no limit) or more")
    if not 1 <= storage.compression_level <= 22:
        raise ConfigError("storage.compression_level", "must be 1 to 22")
    if not 1 <= config.scheduler.parallel <= 64:
        raise ConfigError("scheduler.parallel", "must be 1 to 64")
    nbd = config.nbd
    if bool(nbd.tls_cert) != bool(nbd.tls_key):
        raise ConfigError("[nbd]", "tls_cert and tls_key go together")
    if nbd.tls_ca and not nbd.tls_cert:
        raise ConfigError("nbd.tls_ca", "requires tls_cert and tls_key")
    _check_limits(config)


def _check_limits(config: Config) -> None:
    """Ports, frame sizes, times: values a node would only trip over once running."""
    if not 0 <= config.network.base_port <= MAX_BASE_PORT:
        raise ConfigError("network.base_port", f"must be 0 (any free port) to {MAX_BASE_PORT}")
    if config.network.base_port:
        topology = config.topology
        for role, count in (
            ("business", topology.business),
            ("transfer", topology.transfer),
            ("backup", topology.backup),
        ):
            if count > MAX_FIXED_NODES:
                raise ConfigError(
                    f"topology.{role}",
                    f"at most {MAX_FIXED_NODES} nodes while network.base_port fixes the ports",
                )
    if not MIN_FRAME <= config.wire.max_frame <= 2**32 - 1:
        raise ConfigError("wire.max_frame", f"must be {MIN_FRAME} to {2**32 - 1} bytes")
    if config.chain.genesis_timestamp < 0:
        raise ConfigError("chain.genesis_timestamp", "must not be negative")
    timeouts = {
        "network.start_timeout": config.network.start_timeout,
        "wire.timeout": config.wire.timeout,
        "vm_driver.timeout": config.vm_driver.timeout,
    }
    for where, seconds in timeouts.items():
        if not 0 < seconds < math.inf:
            raise ConfigError(where, "must be a number of seconds above zero")


def _section(name: str, cls: type[Any], values: Any, env: Mapping[str, str]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}]", "must be a table")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"[{name}]", f"unknown key {sorted(unknown)[0]!r}")
    merged: dict[str, Any] = dict(values)
    for key in known:
        override = env.get(f"VMSNAP_{name}_{key}".upper())
        if override is not None:
            merged[key] = _parse_env(f"VMSNAP_{name}_{key}".upper(), hints[key], override)
    for key, value in merged.items():
        merged[key] = _typed(f"{name}.{key}", hints[key], value)
    return cls(**merged)


def _parse_env(where: str, hint: Any, text: str) -> Any:
    """An override's text as the type of its setting (booleans: true/false, yes/no, on/off, 1/0)."""
    if hint is bool:
        word = text.strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise ConfigError(where, f"{text!r} is not a boolean: use true or false")
        return word in TRUE_WORDS
    try:
        return hint(text) if hint in (int, float) else text
    except ValueError as err:
        raise ConfigError(where, f"{text!r} is not a valid {hint.__name__}") from err


def _typed(where: str, hint: Any, value: Any) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or isinstance(value, bool) != (hint is bool):
        raise ConfigError(where, f"expected {hint.__name__}, got {value!r}")
    return value


def _optional_key(root: Path, name: str) -> str | None:
    """A key file the operator key stands in for when `name` is empty; "" when it is absent."""
    if not name:
        return None
    path = root / name
    if not path.exists():
        return ""
    return _read_secret(path, name)


def _read_secret(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as err:
        raise ConfigError(what, f"cannot read {path}: {err.strerror}") from err
