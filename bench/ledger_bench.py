"""Ledger benchmark: appends per second on eth-tester, and controller restart time.

Prints, in one run:
- appends/s through vmsnap's ledger (single events, and batches of 32), with the
  projection updated and every block fsynced to the transaction log;
- the reference: the stock path an eth-tester user gets (web3.py's
  EthereumTesterProvider, `transact` + receipt) appending the same single events
  to the same contract, in memory, with no durability;
- controller restart time with 1,000 events on the ledger: `vmsnap down` then
  `vmsnap up` until the controller answers, and the worst case where the EVM
  state checkpoint is lost and the whole transaction log is re-applied.

Each figure is the median of several rounds; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eth_account import Account

import contracts
from ledger import events
from ledger.chain import ChainSettings
from ledger.contract import MAX_BATCH, Entry
from ledger.service import Ledger, LedgerSettings
from nodes.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def vm_event(i: int) -> events.VmRegistered:
    """A realistic event: a VM with two disks."""
    return events.VmRegistered(
        at_ms=1_767_225_600_000 + i,
        vm=f"vm-{i:06d}",
        vm_type="kvm",
        ip=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
        disks=(events.Disk("system", "root", 20 << 30), events.Disk("data", "db", 100 << 30)),
    )


def open_ledger(folder: Path, key: str, address: str, cache: Path) -> Ledger:
    return Ledger.open(
        LedgerSettings(
            deployment="bench",
            chain=ChainSettings(data_dir=folder / "chain", funded=(address,)),
            projection_url=f"sqlite:///{folder / 'projection.sqlite'}",
            state_file=folder / "ledger.json",
            operator_key=key,
            contract_cache=cache,
        )
    )


def vmsnap_rate(n: int, batch: int, cache: Path) -> float:
    """Events per second appended through vmsnap's Ledger."""
    account = Account.create()
    with tempfile.TemporaryDirectory() as tmp:
        ledger = open_ledger(Path(tmp), account.key.hex(), account.address, cache)
        try:
            started = time.perf_counter()
            for start in range(0, n, batch):
                ledger.append([Entry(vm_event(i), 0) for i in range(start, min(n, start + batch))])
            elapsed = time.perf_counter() - started
        finally:
            ledger.close()
    return n / elapsed


def stock_rate(n: int, cache: Path) -> float:
    """Events per second through web3.py's EthereumTesterProvider (transact + receipt)."""
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider, Web3

    compiled = contracts.load(cache_dir=cache)
    w3 = Web3(EthereumTesterProvider(EthereumTester(PyEVMBackend())))
    sender = w3.eth.accounts[0]
    deploy = (
        w3.eth.contract(abi=compiled.abi, bytecode=compiled.bytecode)
        .constructor()
        .transact({"from": sender})
    )
    address = w3.eth.wait_for_transaction_receipt(deploy)["contractAddress"]
    contract = w3.eth.contract(address=address, abi=compiled.abi)
    rows = [
        (
            events.stream_id(vm_event(i).stream),
            0,
            bytes(32),
            bytes(32),
            0,
            events.encode(vm_event(i)),
        )
        for i in range(n)
    ]
    started = time.perf_counter()
    for row in rows:
        tx = contract.functions.append([row]).transact({"from": sender, "gas": 500_000})
        w3.eth.wait_for_transaction_receipt(tx)
    return n / (time.perf_counter() - started)


def vmsnap_cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml"), *args],
        check=True,
        capture_output=True,
        text=True,
    )


def restart_times(events_on_ledger: int, rounds: int, cache: Path) -> dict[str, float]:
    """Seconds from `vmsnap up` to an answering controller with `events_on_ledger` events."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "deployment"
        vmsnap_cli(Path(tmp), "init", "--dir", str(folder))
        config = load_config(folder / "vmsnap.toml", {})
        node = config.node_dir("controller")
        ledger = Ledger.open(config.ledger_settings())
        try:
            for i in range(events_on_ledger - 1):
                ledger.append([Entry(vm_event(i), 0)])
            count = ledger.contract.count()
        finally:
            ledger.close()
        warm, cold = [], []
        for _ in range(rounds):
            warm.append(_timed_up(folder))
            vmsnap_cli(folder, "down")
        for _ in range(rounds):
            (node / "chain" / "evm-state.sqlite").unlink()
            for suffix in ("-wal", "-shm"):
                (node / "chain" / f"evm-state.sqlite{suffix}").unlink(missing_ok=True)
            cold.append(_timed_up(folder))
            vmsnap_cli(folder, "down")
        return {
            "events": count,
            "restart_s": statistics.median(warm),
            "rebuild_state_s": statistics.median(cold),
        }


def _timed_up(folder: Path) -> float:
    started = time.perf_counter()
    vmsnap_cli(folder, "up")
    head = json.loads(vmsnap_cli(folder, "ledger", "head", "--json").stdout)
    assert head["count"] >= 1
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300, help="events per append round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (median)")
    parser.add_argument("--restart-events", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = Path(cache_dir)
        contracts.load(cache_dir=cache)
        single = statistics.median(vmsnap_rate(args.events, 1, cache) for _ in range(args.rounds))
        batched = statistics.median(
            vmsnap_rate(args.events * 4, MAX_BATCH, cache) for _ in range(args.rounds)
        )
        stock = statistics.median(stock_rate(args.events, cache) for _ in range(args.rounds))
        restart = restart_times(args.restart_events, args.rounds, cache)
    rows = [
        ("vmsnap ledger appends, single (events/s, durable)", single),
        ("vmsnap ledger appends, batches of 32 (events/s, durable)", batched),
        ("reference: web3 EthereumTesterProvider transact (events/s)", stock),
        ("  ratio single / reference", single / stock),
        ("  ratio batched / reference", batched / stock),
        (f"controller restart, {restart['events']} events (s, goal < 5)", restart["restart_s"]),
        ("  same, EVM state checkpoint lost: log re-applied (s)", restart["rebuild_state_s"]),
    ]
    print(f"machine: {os.cpu_count()} cores; median of {args.rounds} rounds")
    for label, value in rows:
        print(f"{label:60} {value:10.2f}")


if __name__ == "__main__":
    main()
