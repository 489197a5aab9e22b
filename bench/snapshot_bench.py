"""Snapshot benchmark: full and incremental snapshots, rollback and latency, against restic.

On a generated disk (1 MiB extents: 40% zero, 30% text-like, 30% random), on
`vmsnap up`'s default network, in one run:
- full snapshot seconds and stored bytes (one copy; the cluster keeps R=2);
- NBD random 4 KiB write latency p99 on another VM's disk of the same business
  node (one write every 2 ms, as a VM doing light I/O), idle and while the full
  snapshot runs;
- the same p99 again, during a full snapshot of a second disk generated alike, with the
  business host's processes (the business node, its view server and the probe, as
  the VM) on one CPU and the transfer, backup and controller nodes and the CLI on the
  other: a business host of its own, as in a deployment, on a two-CPU machine;
- 1% of the 4 KiB blocks rewritten at random, then an incremental snapshot:
  seconds and stored growth;
- one more incremental snapshot at once, nothing written since: the seconds every
  snapshot costs whatever it reads (the CLI, the ledger transactions, the freeze, the
  manifest);
- `snapshot verify` of the full snapshot (every chunk fetched and checked): seconds;
- normal rollback to the full snapshot: seconds;
- each node's CPU-seconds and minor page faults during each snapshot, their sum against
  restic's CPU-seconds, and the machine's share of CPU time busy and stolen by the host
  (`/proc/stat`) during each full backup: on a shared virtual machine, steal slows
  both tools and lengthens every latency tail;
- the reference on the same image and the same rewrite: `restic backup`,
  `restic check --read-data` (the repository holds the full backup only), `restic
  backup` again, once more with nothing changed, `restic restore` (seconds; repository
  growth).

vmsnap encrypts at rest, as restic does; `--no-encryption` measures it without.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nbd_bench import TinyClient

MiB = 1 << 20
BLOCK = 4096


def make_image(path: Path, size: int, seed: int = 4) -> None:
    """1 MiB extents: 40% zero, 30% text-like, 30% random."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 7)).hex().encode() for _ in range(2048)]
    with path.open("wb") as out:
        for _ in range(size // MiB):
            roll = rng.random()
            if roll < 0.4:
                out.seek(MiB, os.SEEK_CUR)
            elif roll < 0.7:
                out.write((b" ".join(rng.choices(words, k=MiB // 6)))[:MiB].ljust(MiB, b" "))
            else:
                out.write(rng.randbytes(MiB))
        out.truncate(size)


def rewrites(size: int, fraction: float, seed: int = 9) -> list[tuple[int, bytes]]:
    """The same random 4 KiB rewrites for vmsnap and restic."""
    rng = random.Random(seed)
    blocks = size // BLOCK
    chosen = rng.sample(range(blocks), int(blocks * fraction))
    return [(b * BLOCK, rng.randbytes(BLOCK)) for b in sorted(chosen)]


def vmsnap(folder: Path, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml"), *args, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def nbd_port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


PACE = 0.002


def latencies(
    port: int, export: str, size: int, count: int, stop: threading.Event | None
) -> list[float]:
    client = TinyClient(port, export=export)
    rng = random.Random(port)
    block = os.urandom(BLOCK)
    found: list[float] = []
    try:
        for handle in range(count):
            if stop is not None and stop.is_set():
                break
            started = time.perf_counter_ns()
            client.write(rng.randrange(size // BLOCK) * BLOCK, block, handle)
            found.append((time.perf_counter_ns() - started) / 1000)
            time.sleep(PACE)
    finally:
        client.close()
    return found


@contextlib.contextmanager
def probing(port: int, export: str) -> Iterator[list[float]]:
    """Probe write latencies on a thread while the body runs; the list fills as it goes."""
    during: list[float] = []
    stop = threading.Event()
    probe = threading.Thread(
        target=lambda: during.extend(latencies(port, export, 256 * MiB, 10**9, stop))
    )
    probe.start()
    try:
        yield during
    finally:
        stop.set()
        probe.join()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(len(ordered) * 0.99)] if ordered else float("nan")


def node_usage(folder: Path) -> dict[str, tuple[float, int]]:
    """CPU-seconds and minor page faults so far of each node of the deployment.

    A business node's view server (its child process) has a row of its own.
    """
    usage: dict[str, tuple[float, int]] = {}
    children = view_servers()
    for runfile in sorted((folder / "data" / "run").glob("*.json")):
        pid = json.loads(runfile.read_text())["pid"]
        usage[runfile.stem] = cpu_and_faults(pid)
        if pid in children:
            usage[f"{runfile.stem} views"] = cpu_and_faults(children[pid])
    return usage


def cpu_and_faults(pid: int) -> tuple[float, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[7])


def view_servers() -> dict[int, int]:
    """Running view servers by the pid of the business node that started them."""
    found: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        try:
            if b"nodes.view_server" not in (proc / "cmdline").read_bytes():
                continue
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        found[parent] = int(proc.name)
    return found


def machine_ticks() -> list[int]:
    """The machine's CPU time so far, in ticks (the first line of `/proc/stat`).

    user, nice, system, idle, iowait, irq, softirq, steal.
    """
    with Path("/proc/stat").open() as stat:
        return [int(v) for v in stat.readline().split()[1:9]]


def machine_share(before: list[int]) -> dict[str, float]:
    """Fractions of the CPU time since `before` that were busy and stolen by the host."""
    spent = [now - then for now, then in zip(machine_ticks(), before, strict=True)]
    total = sum(spent) or 1
    idle = spent[3] + spent[4]
    return {"busy": (total - idle - spent[7]) / total, "steal": spent[7] / total}


def children_cpu() -> float:
    """CPU-seconds of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def usage_since(folder: Path, before: dict[str, tuple[float, int]]) -> dict[str, Any]:
    now = node_usage(folder)
    return {n: (now[n][0] - before[n][0], now[n][1] - before[n][1]) for n in before}


def stored(snap: dict[str, Any]) -> int:
    return sum(int(d["bytes_stored"]) for d in snap["disk_details"])


def run_vmsnap(
    work: Path, image: Path, size: int, changes: list[tuple[int, bytes]], encryption: bool = True
) -> dict[str, Any]:
    folder = work / "deployment"
    init = [sys.executable, "-m", "cli", "init", "--dir", str(folder)]
    if not encryption:
        init.append("--no-encryption")
    subprocess.run(init, check=True, capture_output=True)
    subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml"), "up"],
        check=True,
        capture_output=True,
    )
    try:
        vmsnap(
            folder, "vm", "register", "bench", "--ip", "10.0.0.1", "--disk", f"system:root:{size}"
        )
        vmsnap(folder, "vm", "register", "probe", "--ip", "10.0.0.2", "--disk", "system:root:256M")
        url = vmsnap(folder, "disk", "url", "bench", "root")["url"]
        subprocess.run(
            ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image), url], check=True
        )
        port, export = nbd_port(url), "probe/root"
        idle = latencies(port, export, 256 * MiB, 2000, None)
        before, ticks = node_usage(folder), machine_ticks()
        with probing(port, export) as during:
            started = time.perf_counter()
            full = vmsnap(folder, "snapshot", "create", "bench")
            full_s = time.perf_counter() - started
            full_usage = usage_since(folder, before)
            full_machine = machine_share(ticks)
        client = TinyClient(port, export="bench/root")
        for handle, (offset, data) in enumerate(changes):
            client.write(offset, data, handle)
        client.close()
        before = node_usage(folder)
        started = time.perf_counter()
        incremental = vmsnap(folder, "snapshot", "create", "bench")
        incr_s = time.perf_counter() - started
        incr_usage = usage_since(folder, before)
        started = time.perf_counter()
        vmsnap(folder, "snapshot", "create", "bench")
        unchanged_s = time.perf_counter() - started
        started = time.perf_counter()
        verified = vmsnap(folder, "snapshot", "verify", full["id"])
        verify_s = time.perf_counter() - started
        if not verified["ok"]:
            raise SystemExit(f"the full snapshot failed verification: {verified['problems']}")
        started = time.perf_counter()
        vmsnap(folder, "rollback", "start", "bench", full["id"])
        rollback_s = time.perf_counter() - started
        apart = latency_apart(folder, image, size, port, export)
    finally:
        subprocess.run(
            [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml"), "down"],
            capture_output=True,
            check=False,
        )
    return {
        "full_s": full_s,
        "full_stored": stored(full),
        "incr_s": incr_s,
        "incr_stored": stored(incremental),
        "unchanged_s": unchanged_s,
        "rollback_s": rollback_s,
        "verify_s": verify_s,
        "p99_idle_us": p99(idle),
        "p99_during_us": p99(during),
        "probes_during": len(during),
        "apart": apart,
        "full_usage": full_usage,
        "full_machine": full_machine,
        "incr_usage": incr_usage,
    }


def latency_apart(
    folder: Path, image: Path, size: int, port: int, export: str
) -> dict[str, float] | None:
    """Probe p99 idle and during a full snapshot of a second disk (generated alike, other
    contents), the business host on a CPU of its own.

    None on a machine with fewer than two CPUs.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    host, rest = {cpus[0]}, set(cpus[1:])
    vmsnap(folder, "vm", "register", "apart", "--ip", "10.0.0.3", "--disk", f"system:root:{size}")
    url = vmsnap(folder, "disk", "url", "apart", "root")["url"]
    other = image.with_name("apart.raw")
    make_image(other, size, seed=5)
    convert = ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(other), url]
    subprocess.run(convert, check=True)
    other.unlink()
    status = vmsnap(folder, "status")
    for row in status:
        if row["pid"] is None:
            continue
        if row["role"] == "business":
            pin(row["pid"], host)
            pin(row["detail"]["view_server_pid"], host)
        else:
            pin(row["pid"], rest)
    pin(os.getpid(), host)
    idle = latencies(port, export, 256 * MiB, 2000, None)
    others = ",".join(map(str, sorted(rest)))
    cli = [sys.executable, "-m", "cli", "--config", str(folder / "vmsnap.toml")]
    snapshot = [*cli, "snapshot", "create", "apart", "--json"]
    with probing(port, export) as during:
        started = time.perf_counter()
        subprocess.run(["taskset", "-c", others, *snapshot], check=True, capture_output=True)
        full_s = time.perf_counter() - started
    pin(os.getpid(), set(cpus))
    return {"p99_idle_us": p99(idle), "p99_during_us": p99(during), "full_s": full_s}


def pin(pid: int, cpus: set[int]) -> None:
    """Run every thread of process `pid` (and the threads it starts) on `cpus` only."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(int(task.name), cpus)


def du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def run_restic(work: Path, image: Path, changes: list[tuple[int, bytes]]) -> dict[str, Any]:
    repo, env = work / "restic", {**os.environ, "RESTIC_PASSWORD": "bench"}
    cache = ["--cache-dir", str(work / "restic-cache")]

    def restic(*args: str) -> float:
        started = time.perf_counter()
        subprocess.run(
            ["restic", *cache, "--repo", str(repo), *args], env=env, check=True, capture_output=True
        )
        return time.perf_counter() - started

    restic("init")
    cpu, ticks = children_cpu(), machine_ticks()
    full_s = restic("backup", str(image))
    full_cpu, full_machine = children_cpu() - cpu, machine_share(ticks)
    full_stored = du(repo)
    check_s = restic("check", "--read-data")
    with image.open("r+b") as out:
        for offset, data in changes:
            out.seek(offset)
            out.write(data)
    incr_s = restic("backup", str(image))
    incr_stored = du(repo) - full_stored
    unchanged_s = restic("backup", str(image))
    restore_s = restic("restore", "latest", "--target", str(work / "restored"))
    return {
        "full_s": full_s,
        "full_stored": full_stored,
        "full_cpu": full_cpu,
        "full_machine": full_machine,
        "incr_s": incr_s,
        "incr_stored": incr_stored,
        "unchanged_s": unchanged_s,
        "restore_s": restore_s,
        "check_s": check_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument(
        "--no-encryption", action="store_true", help="vmsnap without encryption at rest"
    )
    args = parser.parse_args()
    if shutil.which("restic") is None or shutil.which("qemu-img") is None:
        raise SystemExit("restic and qemu-img are needed (Debian packages restic, qemu-utils)")
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="vmsnap-snapbench-"))
    try:
        image = work / "disk.raw"
        make_image(image, size)
        changes = rewrites(size, args.fraction)
        ours = run_vmsnap(work, image, size, changes, encryption=not args.no_encryption)
        ref = run_restic(work, image, changes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        ("full snapshot (s)", ours["full_s"], ref["full_s"], "<= 0.5"),
        ("full stored (MiB)", ours["full_stored"] / MiB, ref["full_stored"] / MiB, ""),
        (
            f"incremental after {args.fraction:.0%} rewritten (s)",
            ours["incr_s"],
            ref["incr_s"],
            "<= 0.05",
        ),
        (
            "incremental stored growth (MiB)",
            ours["incr_stored"] / MiB,
            ref["incr_stored"] / MiB,
            "<= 0.25",
        ),
        ("incremental, nothing written since (s)", ours["unchanged_s"], ref["unchanged_s"], ""),
        ("normal rollback / restic restore (s)", ours["rollback_s"], ref["restore_s"], ""),
        ("verify full / restic check --read-data (s)", ours["verify_s"], ref["check_s"], ""),
    ]
    at_rest = "plain" if args.no_encryption else "encrypted"
    print(
        f"disk {args.size_mib} MiB (40% zero, 30% text, 30% random); "
        f"vmsnap R=2, {at_rest}; restic 1 copy, encrypted"
    )
    print(f"{'figure':44} {'vmsnap':>10} {'restic':>10} {'ratio':>7} {'goal':>7}")
    for label, mine, theirs, goal in rows:
        print(f"{label:44} {mine:10.2f} {theirs:10.2f} {mine / theirs:7.3f} {goal:>7}")
    ratio = ours["p99_during_us"] / ours["p99_idle_us"]
    print(
        f"{'NBD 4K write p99 idle / during snapshot (us)':44} {ours['p99_idle_us']:10.0f} "
        f"{ours['p99_during_us']:10.0f} {ratio:7.2f} {'<= 1.5':>7}"
    )
    print(f"(latency probes during the snapshot: {ours['probes_during']})")
    apart = ours["apart"]
    if apart is not None:
        ratio = apart["p99_during_us"] / apart["p99_idle_us"]
        label = "the same, business host on a CPU of its own"
        print(
            f"{label:44} {apart['p99_idle_us']:10.0f} {apart['p99_during_us']:10.0f} "
            f"{ratio:7.2f} {'<= 1.5':>7}"
        )
        print(f"(that full snapshot, the other nodes on the other CPU: {apart['full_s']:.2f} s)")
    print("vmsnap nodes: CPU-seconds and minor page faults during each snapshot")
    print(f"{'node':14} {'full CPU-s':>11} {'faults':>9} {'incr CPU-s':>11} {'faults':>9}")
    for node, (full_cpu, full_faults) in ours["full_usage"].items():
        incr_cpu, incr_faults = ours["incr_usage"][node]
        print(f"{node:14} {full_cpu:11.2f} {full_faults:9d} {incr_cpu:11.2f} {incr_faults:9d}")
    total = sum(cpu for cpu, _faults in ours["full_usage"].values())
    print(f"{'all nodes':14} {total:11.2f}    restic backup: {ref['full_cpu']:.2f} CPU-s")
    print("machine during the full backup: CPU time busy / stolen by the host")
    for tool, share in (("vmsnap", ours["full_machine"]), ("restic", ref["full_machine"])):
        print(f"{tool:14} {share['busy']:6.0%} / {share['steal']:.0%}")


if __name__ == "__main__":
    main()
