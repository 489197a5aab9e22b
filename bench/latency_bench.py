"""A VM's NBD write latency while its business node serves a full snapshot.

On `vmsnap up`'s default network, per run: a generated disk (as in bench/snapshot_bench.py)
on one VM, and a probe VM's 256 MiB disk on the same business node. One random 4 KiB NBD
write every 2 ms goes to the probe disk, idle and then while a full snapshot of the first
disk runs. The reference, in the same run: qemu-nbd serving a raw file, probed the same
way at the same moments (idle, and during the snapshot alongside the vmsnap probe), which
shows what the machine's load alone costs a plain NBD server. Prints p50/p99 per run and
the medians over the runs, with the share of CPU time the host stole from this virtual
machine while the snapshot ran (`/proc/stat`).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from snapshot_bench import latencies, machine_share, machine_ticks, make_image, nbd_port, vmsnap

MiB = 1 << 20
PROBE_SIZE = 256 * MiB
IDLE_WRITES = 2000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def qemu_nbd(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    """qemu-nbd serving a 256 MiB raw file (writeback cache, as vmsnap's volume)."""
    raw = work / "reference.raw"
    with raw.open("wb") as out:
        out.truncate(PROBE_SIZE)
    port = free_port()
    server = subprocess.Popen(
        ["qemu-nbd", "-f", "raw", "-x", "ref", "-p", str(port), "-b", "127.0.0.1", "-t", str(raw)],
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return server, port


def probe_during(
    port: int, export: str, stop: threading.Event, out: list[float]
) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: out.extend(latencies(port, export, PROBE_SIZE, 10**9, stop))
    )
    thread.start()
    return thread


def one_run(work: Path, image: Path, size: int) -> dict[str, list[float]]:
    folder = work / "deployment"
    cli = [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml")]
    subprocess.run(
        [sys.executable, "-m", "cli", "init", "--dir", str(folder)], check=True, capture_output=True
    )
    subprocess.run([*cli, "up"], check=True, capture_output=True)
    reference, ref_port = qemu_nbd(work)
    try:
        vmsnap(
            folder, "vm", "register", "bench", "--ip", "10.0.0.1", "--disk", f"system:root:{size}"
        )
        vmsnap(folder, "vm", "register", "probe", "--ip", "10.0.0.2", "--disk", "system:root:256M")
        url = vmsnap(folder, "disk", "url", "bench", "root")["url"]
        subprocess.run(
            ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image), url], check=True
        )
        port = nbd_port(url)
        found: dict[str, list[float]] = {
            "vmsnap idle": latencies(port, "probe/root", PROBE_SIZE, IDLE_WRITES, None),
            "qemu-nbd idle": latencies(ref_port, "ref", PROBE_SIZE, IDLE_WRITES, None),
            "vmsnap during": [],
            "qemu-nbd during": [],
        }
        stop = threading.Event()
        probes = [
            probe_during(port, "probe/root", stop, found["vmsnap during"]),
            probe_during(ref_port, "ref", stop, found["qemu-nbd during"]),
        ]
        started, ticks = time.perf_counter(), machine_ticks()
        vmsnap(folder, "snapshot", "create", "bench")
        found["snapshot s"] = [time.perf_counter() - started]
        found["steal"] = [machine_share(ticks)["steal"]]
        stop.set()
        for probe in probes:
            probe.join()
    finally:
        reference.terminate()
        reference.wait()
        subprocess.run([*cli, "down"], capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("qemu-nbd") is None or shutil.which("qemu-img") is None:
        raise SystemExit("qemu-nbd and qemu-img are needed (Debian package qemu-utils)")
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="vmsnap-latency-"))
    runs: list[dict[str, float]] = []
    try:
        image = work / "disk.raw"
        make_image(image, size)
        print(f"disk {args.size_mib} MiB; probe: one random 4 KiB write every 2 ms (us)")
        header = "p50/p99 idle   p50/p99 during   ratio(p99)"
        print(f"{'run':4} {'server':9} {header}  snapshot s  steal")
        for run in range(args.runs):
            found = one_run(work, image, size)
            row: dict[str, float] = {
                "snapshot s": found["snapshot s"][0],
                "steal": found["steal"][0],
            }
            for server in ("vmsnap", "qemu-nbd"):
                idle, during = found[f"{server} idle"], found[f"{server} during"]
                row |= {
                    f"{server} p50 idle": percentile(idle, 0.5),
                    f"{server} p99 idle": percentile(idle, 0.99),
                    f"{server} p50 during": percentile(during, 0.5),
                    f"{server} p99 during": percentile(during, 0.99),
                }
                row[f"{server} ratio"] = row[f"{server} p99 during"] / row[f"{server} p99 idle"]
                print(_line(str(run + 1), server, row))
            runs.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    for server in ("vmsnap", "qemu-nbd"):
        print(_line("med", server, median))
    during = median["vmsnap p99 during"]
    print(
        f"medians: vmsnap p99 during / vmsnap p99 idle {during / median['vmsnap p99 idle']:.2f} "
        f"(goal <= 1.5); / qemu-nbd p99 idle {during / median['qemu-nbd p99 idle']:.2f}; "
        f"/ qemu-nbd p99 during {during / median['qemu-nbd p99 during']:.2f}"
    )


def _line(run: str, server: str, row: dict[str, float]) -> str:
    return (
        f"{run:4} {server:9} {row[f'{server} p50 idle']:5.0f}/{row[f'{server} p99 idle']:<6.0f} "
        f"{row[f'{server} p50 during']:7.0f}/{row[f'{server} p99 during']:<8.0f} "
        f"{row[f'{server} ratio']:6.2f}      {row['snapshot s']:6.2f}  {row['steal']:5.1%}"
    )


if __name__ == "__main__":
    main()
