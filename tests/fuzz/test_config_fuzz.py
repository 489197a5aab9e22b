"""Fuzzing configuration loading: random TOML values and ``VMSNAP_*`` overrides.

Loading either gives a configuration every node can run with, or raises ConfigError with
a one-line message.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from ledger.errors import ConfigError
from nodes.config import NBD_PORT_OFFSET, SECTIONS, Config, load_config
from nodes.runtime import PORT_OFFSETS
from tests.fuzz.tally import fuzz, ran

KEYS = [(name, f.name) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 4096, 65535, 65536, 2**31]),
    st.floats(),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["", "eth-tester", "rpc", "none", "qemu", "UTC", "America"]),
)
TOML_VALUES = st.one_of(SCALARS, st.lists(st.integers(), max_size=2), st.just({"a": 1}))
ENV_TEXT = st.one_of(
    st.sampled_from(["true", "false", "1", "0", "yes", "no", "-5", "1e3", "nan", "inf", "0x10"]),
    st.sampled_from(["65536", "-inf", "1_000", " 7 ", "", "UTC", "America"]),
    st.text(
        alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8
    ),
)


def toml_value(value: Any) -> str:
    """`value` written as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = "".join(
            c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in value
        )
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"


def write_config(folder: Path, values: dict[tuple[str, str], Any], garbage: bytes) -> Path:
    """A config file with `values` by (section, key), then `garbage` appended."""
    lines: list[str] = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(v)}" for (s, key), v in values.items() if s == section)
    path = folder / "vmsnap.toml"
    path.write_bytes("\n".join(lines).encode() + b"\n" + garbage)
    return path


def check_usable(config: Config) -> None:
    """Every value a node relies on is in its range."""
    nodes = max(config.topology.business, config.topology.transfer, config.topology.backup)
    highest = config.network.base_port + max(*PORT_OFFSETS.values(), NBD_PORT_OFFSET) + nodes
    assert config.network.base_port == 0 or highest <= 65535
    assert math.isfinite(config.wire.timeout) and config.wire.timeout > 0
    assert math.isfinite(config.network.start_timeout) and config.network.start_timeout > 0
    assert math.isfinite(config.vm_driver.timeout) and config.vm_driver.timeout > 0
    assert 64 * 1024 <= config.wire.max_frame < 2**32
    assert config.chain.genesis_timestamp >= 0


def loads_or_refuses(path: Path, env: dict[str, str]) -> Config | None:
    """The config at `path`, or None when it was refused with a one-line ConfigError."""
    try:
        config = load_config(path, env)
    except ConfigError as err:
        assert "\n" not in err.message and "\r" not in err.message, repr(err.message)
        return None
    check_usable(config)
    return config


@fuzz(150)
@given(
    st.dictionaries(st.sampled_from(KEYS), TOML_VALUES, max_size=4),
    st.one_of(st.just(b""), st.binary(max_size=12), st.sampled_from([b"\xff\xfe", b"[x", b"a="])),
)
@example({}, b"\xff\xfe")  # bytes that are not UTF-8
@example({("wire", "timeout"): float("nan")}, b"")
@example({("network", "base_port"): 70000}, b"")
@example({("wire", "max_frame"): 0}, b"")
def test_a_config_file_loads_into_usable_values_or_is_refused_in_one_line(
    tmp_path_factory: Any, values: dict[tuple[str, str], Any], garbage: bytes
) -> None:
    ran("config: TOML files")
    path = write_config(tmp_path_factory.mktemp("config"), values, garbage)
    loads_or_refuses(path, {})


@fuzz(150)
@given(st.dictionaries(st.sampled_from(KEYS), ENV_TEXT, max_size=3))
@example({("chain", "replicas"): "true"})  # a boolean override
@example({("storage", "encryption"): "yes"})
@example({("wire", "timeout"): "inf"})
def test_environment_overrides_load_into_usable_values_or_are_refused_in_one_line(
    tmp_path_factory: Any, overrides: dict[tuple[str, str], str]
) -> None:
    ran("config: VMSNAP_* overrides")
    path = write_config(tmp_path_factory.mktemp("config"), {}, b"")
    env = {f"VMSNAP_{section}_{key}".upper(): text for (section, key), text in overrides.items()}
    config = loads_or_refuses(path, env)
    if config is not None:
        for (section, key), text in overrides.items():
            value = getattr(getattr(config, section), key)
            if isinstance(value, bool):
                assert value == (text.strip().lower() in ("true", "1", "yes", "on"))


def test_a_boolean_override_switches_the_setting(tmp_path: Path) -> None:
    path = write_config(tmp_path, {("chain", "replicas"): False}, b"")
    assert load_config(path, {"VMSNAP_CHAIN_REPLICAS": "true"}).chain.replicas is True
    assert load_config(path, {"VMSNAP_CHAIN_REPLICAS": "0"}).chain.replicas is False
