import subprocess
import sys
import textwrap

WORKLOAD = textwrap.dedent(
    """
    import os, resource, sys, time
    from concurrent.futures import ThreadPoolExecutor
    from nodes.runtime import keep_freed_memory

    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    blob = os.urandom(64 * 1024)

    def batch() -> int:
        chunks = [bytes(bytearray(blob)) for _ in range(64)]
        joined = b"".join(chunks)
        return len(joined)

    pool = ThreadPoolExecutor(4)
    pool.submit(batch).result()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        pool.submit(batch).result()
        time.sleep(0.001)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", WORKLOAD, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_a_node_reuses_freed_memory_instead_of_faulting_it_in_again() -> None:
    # 40 batches of 64 chunks of 64 KiB, allocated and freed on worker threads as a
    # node's data path does: by default the allocator hands the memory back and each
    # batch faults its pages in again; kept, the pages stay mapped.
    default, kept = _faults("default"), _faults("keep")
    assert default > 40 * 64 * 16 // 2
    assert kept * 10 < default
