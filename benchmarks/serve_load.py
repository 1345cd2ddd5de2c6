"""Load on `difflab serve`: many clients at once, each asking for images; and a cancelled job.

    python benchmarks/serve_load.py --run runs/demo-digits --clients 20 --n 4

Starts `difflab serve RUN` in a subprocess on a free loopback port, then ``--clients`` threads each
connect with gradio_client and ask for ``--n`` images at once. The server queues them (one
generation at a time per device) and every client must get its images. Printed: clients served,
errors, wall time, each client's latency (min / median / max), and the server's peak resident
memory (VmHWM of its process, sampled by the kernel). Then one client starts a long generation
and cancels it, and another client's request must still be served: a cancelled job frees its slot.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (Linux VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def settings(run_name: str, seed: int, n: int, steps: int, label: str = "every class in turn") -> list:
    return [run_name, "", "", label, "unipc_3", steps, "trailing", 1.0, 0.0, seed, False, n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo-digits")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--queue", type=int, default=64, help="the server's --queue")
    args = parser.parse_args()
    from gradio_client import Client

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "difflab.cli", "serve", args.run, "--port", str(port),
                               "--queue", str(args.queue), "--device", "cpu"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        name = Path(args.run).name
        latencies, errors, counts = [], [], []

        def one(seed: int) -> None:
            start = time.perf_counter()
            try:
                gallery = Client(url, verbose=False).predict(*settings(name, seed, args.n, args.steps),
                                                             api_name="/generate")[1]
                counts.append(len(gallery))
                latencies.append(time.perf_counter() - start)
            except Exception as err:  # noqa: BLE001 - counted and printed
                errors.append(repr(err))

        start = time.perf_counter()
        threads = [threading.Thread(target=one, args=(seed * args.n,)) for seed in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        print(f"{args.clients} clients x {args.n} images ({args.steps} steps, {name}, 2-core CPU): "
              f"{len(counts)} served, {sum(c == args.n for c in counts)} with all {args.n} images, "
              f"{len(errors)} errors, {wall:.1f} s wall")
        if latencies:
            print(f"latency per client: min {min(latencies):.2f} s, median {statistics.median(latencies):.2f} s, "
                  f"max {max(latencies):.2f} s")
        for err in errors[:3]:
            print("  error:", err)
        print(f"server alive: {server.poll() is None}; peak RSS {peak_rss_mb(server.pid):.0f} MB")

        # a cancelled job frees its slot
        client = Client(url, verbose=False)
        job = client.submit(*settings(name, 0, 16, 200), api_name="/generate")
        deadline = time.monotonic() + 60
        while job.status().code.name not in ("PROGRESS", "ITERATING"):  # sampling has begun
            if job.done() or time.monotonic() > deadline:
                raise SystemExit(f"the long job did not start: {job.status()}")
            time.sleep(0.05)
        stopped = client.predict(api_name="/stop")  # the page's Stop button, in the job's session
        start = time.perf_counter()
        gallery = Client(url, verbose=False).predict(*settings(name, 1, 1, args.steps), api_name="/generate")[1]
        print(f"Stop on a 16-image, 200-step job ({stopped!r}, then {job.status().code.name}): the next "
              f"request got {len(gallery)} image in {time.perf_counter() - start:.1f} s")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
