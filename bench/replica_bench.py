"""Ledger replicas benchmark: appends committed by a majority of 5 replicas, catch-up, anvil.

Prints, in one run:
- appends per second committed by a majority of 5 ledger replicas (2 business + 3 backup
  node processes on loopback, the sequencer in this process), single events and batches of
  32, against the same appends on the sequencer's embedded chain alone (the reference);
- the seconds a replica 1,000 transactions behind takes to catch up once it is back;
- the same single and batched appends against anvil (a real JSON-RPC node), when installed.
Each event is a VM registration with two disks, as in bench/ledger_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ledger_bench import vm_event, vmsnap_rate

from ledger.chain import Chain, ChainSettings
from ledger.contract import MAX_BATCH, Entry
from ledger.service import Ledger, LedgerSettings
from ledger.tester_chain import EmbeddedChain
from nodes.config import load_config
from nodes.peers import Peers, node_names
from nodes.replicated_chain import ReplicatedChain

ROOT = Path(__file__).resolve().parent.parent
ANVIL_KEY = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def rate(ledger: Ledger, first: int, n: int, batch: int) -> float:
    started = time.perf_counter()
    for start in range(first, first + n, batch):
        ledger.append([Entry(vm_event(i), 0) for i in range(start, min(first + n, start + batch))])
    return n / (time.perf_counter() - started)


def cli(folder: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml"), *args],
        check=True,
        capture_output=True,
    )


def stop(folder: Path, node: str) -> None:
    run = folder / "data" / "run" / f"{node}.json"
    pid = int(json.loads(run.read_text())["pid"])
    os.kill(pid, signal.SIGKILL)
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    run.unlink(missing_ok=True)


def replicated(folder: Path, singles: int, batched: int, behind: int) -> dict[str, float]:
    cli(folder.parent, "init", "--dir", str(folder))
    config_file = folder / "vmsnap.toml"
    text = config_file.read_text().replace("replicas = false", "replicas = true", 1)
    config_file.write_text(text.replace("business = 1", "business = 2", 1))
    cli(folder, "up")
    stop(folder, "controller")
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    config = load_config(config_file, {})
    names = node_names(config, "business") + node_names(config, "backup")
    peers = Peers(config, "bench")
    chains: list[ReplicatedChain] = []

    def wrap(chain: Chain) -> Chain:
        assert isinstance(chain, EmbeddedChain)
        chains.append(ReplicatedChain(chain, peers, names, loop))
        return chains[-1]

    ledger = Ledger.open(config.ledger_settings("controller"), time.time, wrap)
    try:
        single = rate(ledger, 1_000_000, singles, 1)
        batch = rate(ledger, 2_000_000, batched, MAX_BATCH)
        stop(folder, "backup-3")
        rate(ledger, 3_000_000, behind, 1)
        cli(folder, "up")
        started = time.perf_counter()
        rate(ledger, 4_000_000, 1, 1)
        head = ledger.chain.head().number
        while True:
            status = {
                r["name"]: r
                for r in asyncio.run_coroutine_threadsafe(chains[0].status(), loop).result()
            }
            if status["backup-3"].get("lag") == 0:
                break
            time.sleep(0.05)
        catch_up = time.perf_counter() - started
        assert status["backup-3"]["head_number"] == head
    finally:
        ledger.close()
        asyncio.run_coroutine_threadsafe(peers.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        subprocess.run(
            [sys.executable, "-m", "cli", "--config", str(config_file), "down"],
            capture_output=True,
            check=False,
        )
    return {"single": single, "batched": batch, "catch_up": catch_up}


def anvil_rates(work: Path, singles: int, batched: int, cache: Path) -> dict[str, float] | None:
    local = ROOT / ".tools" / "node_modules" / ".bin" / "anvil"
    binary = str(local) if local.exists() else shutil.which("anvil")
    if binary is None:
        return None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        settings = LedgerSettings(
            deployment="bench",
            chain=ChainSettings(backend="rpc", rpc_url=f"http://127.0.0.1:{port}"),
            projection_url=f"sqlite:///{work / 'anvil.sqlite'}",
            state_file=work / "anvil.json",
            operator_key=ANVIL_KEY,
            contract_cache=cache,
        )
        ledger = Ledger.open(settings)
        try:
            return {
                "single": rate(ledger, 5_000_000, singles, 1),
                "batched": rate(ledger, 6_000_000, batched, MAX_BATCH),
            }
        finally:
            ledger.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--batched", type=int, default=1024)
    parser.add_argument("--behind", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmsnap-replicas-"))
    cache = work / "cache"
    try:
        ours = replicated(work / "deployment", args.singles, args.batched, args.behind)
        alone_single = vmsnap_rate(args.singles, 1, cache)
        alone_batched = vmsnap_rate(args.batched, MAX_BATCH, cache)
        anvil = anvil_rates(work, args.singles, args.batched, cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'appends (events/s)':44} {'single':>10} {'batches of 32':>14}")
    label = "committed by a majority of 5 replicas"
    print(f"{label:44} {ours['single']:10.1f} {ours['batched']:14.1f}")
    print(f"{'embedded chain alone (reference)':44} {alone_single:10.1f} {alone_batched:14.1f}")
    if anvil is not None:
        print(f"{'anvil (JSON-RPC node)':44} {anvil['single']:10.1f} {anvil['batched']:14.1f}")
    else:
        print("anvil not installed (make tools): no figure")
    print(
        f"replica {args.behind} transactions behind: caught up {ours['catch_up']:.2f} s "
        "after it came back"
    )


if __name__ == "__main__":
    main()
