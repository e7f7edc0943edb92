"""The results store on disk against the store at an S3 URL, side by side in one run.

The S3 store is moto's S3 server (``python -m moto.server``), its own process on 127.0.0.1, as in
``tests/test_store_s3.py``: every request crosses the S3 protocol (HTTP, signed, parsed by a
server) but no network, so the figures bound what one client process gets from the protocol and
moto's Python server, not what AWS gives across a data centre.

1. Raw entries (``--repeats`` rounds, the two stores alternated, medians): ``--measures`` entries of
   the size ``flatlib.study`` writes for one number, and ``--networks`` network entries of the
   atlas's largest shape (a 784-256-256-10 MLP's weights at the end and at initialisation, as
   ``study.save_network`` stores them), each written, then read back, one request at a time.
2. One atlas row end to end: ``study.network_table`` of ``--rows`` tiny networks with the atlas's
   measures (every registered measure but the bounds) into each store, serially, and again on a
   one-thread worker pool in this process (the path of a cluster: the caller checks, the worker
   computes and writes, the caller reads the row back), each into an empty store, ``--repeats``
   times alternated, counting the S3 requests (GETs that find an entry, GETs that miss, PUTs).

Writes ``benchmarks/results/store.json`` with the date, the device and the versions.
Run with ``python -m benchmarks.store_bench [--measures N] [--networks N] [--repeats N] [--rows N]``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import torch

from benchmarks.chapter_bench import cpu_model
from flatlib import executors, measures, report, store, study
from flatlib import train as ftrain
from flatlib.train import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results" / "store.json"
ATLAS_MEASURES = [name for name, spec in measures.MEASURES.items() if spec.family != "bound"]
TINY = dict(dataset="mnist", n=128, widths=(16, 16), batch_size=32, epochs=1, target_train_acc=None)


@contextlib.contextmanager
def s3_server(log: Path):
    """moto's S3 server on 127.0.0.1 at a free port, a bucket on it, and this process's AWS
    settings pointing there; yields the bucket's name."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    endpoint, saved = f"http://127.0.0.1:{port}", dict(os.environ)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.05)
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=endpoint)
        import fsspec

        bucket = f"flatlib-bench-{uuid.uuid4().hex[:8]}"
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
        yield bucket
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.kill()
        server.wait()


@contextlib.contextmanager
def store_at(root: str):
    saved = os.environ.get("FLATLIB_CACHE")
    os.environ["FLATLIB_CACHE"] = root
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("FLATLIB_CACHE")
        else:
            os.environ["FLATLIB_CACHE"] = saved


def network_blob() -> dict:
    """A network entry of the atlas's largest shape, as ``study.save_network`` writes it."""
    config = TrainConfig(dataset="mnist", n=20000, widths=(256, 256))
    model = ftrain.init_model(config)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"config": config.to_dict(), "state": state, "initial_state": state,
            "history": [{"epoch": e, "train_loss": 0.1, "train_acc": 0.99} for e in range(100)],
            "status": "ok", "wall_time_s": 1.0, "provenance": {"code": "0" * 16}}


def measure_value(i: int) -> dict:
    return {"measure": "adaptive_sharpness", "options": {"subsample": 1000}, "value": 0.1 + i / 7,
            "code": "0" * 16}


def timed_round(root: str, n_measures: int, n_networks: int, blob: dict) -> dict:
    """Seconds to write, then read back, ``n_measures`` measure entries and ``n_networks``
    network entries, one request at a time, into the store at ``root``."""
    out = {}
    with store_at(root):
        store.check_writable()
        for kind, n, put, get, value in (("measure", n_measures, store.put_json, store.get_json, measure_value),
                                         ("network", n_networks, store.put_torch, store.get_torch,
                                          lambda i: blob)):
            keys = [f"{kind}s/{uuid.uuid4().hex}.{'json' if kind == 'measure' else 'pt'}" for _ in range(n)]
            start = time.perf_counter()
            for i, key in enumerate(keys):
                put(key, value(i))
            out[f"{kind}_write_s"] = time.perf_counter() - start
            start = time.perf_counter()
            for key in keys:
                if get(key) is None:
                    raise RuntimeError(f"entry {key} written to {root} did not read back")
            out[f"{kind}_read_s"] = time.perf_counter() - start
    return out


def raw_entries(bucket: str, args, scratch: Path) -> dict:
    blob = network_blob()
    rounds = {"disk": [], "s3": []}
    for r in range(args.repeats):
        for name, root in (("disk", str(scratch / f"disk-{r}")), ("s3", f"s3://{bucket}/raw-{r}")):
            rounds[name].append(timed_round(root, args.measures, args.networks, blob))
    with store_at(str(scratch / "size")):
        sizes = {"measure": store.put_json("m.json", measure_value(0)).stat().st_size,
                 "network": store.put_torch("n.pt", blob).stat().st_size}
    out = {"measures": args.measures, "networks": args.networks, "repeats": args.repeats,
           "entry_bytes": sizes}
    for name, runs in rounds.items():
        med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        out[name] = {"seconds_median": med, "rounds": runs,
                     "measure_entries_written_per_s": args.measures / med["measure_write_s"],
                     "measure_entries_read_per_s": args.measures / med["measure_read_s"],
                     "network_entries_written_per_s": args.networks / med["network_write_s"],
                     "network_entries_read_per_s": args.networks / med["network_read_s"]}
    out["s3_time_over_disk"] = {k: out["s3"]["seconds_median"][k] / out["disk"]["seconds_median"][k]
                                for k in out["disk"]["seconds_median"]}
    return out


@contextlib.contextmanager
def counted_requests():
    """Count the S3 store's requests in this process: GETs that find an entry, GETs that miss, PUTs."""
    counts = {"get_found": 0, "get_missing": 0, "put": 0}
    read, write = store._ObjectStore.read, store._ObjectStore.write

    def counting_read(self, key):
        sealed = read(self, key)
        counts["get_found" if sealed is not None else "get_missing"] += 1
        return sealed

    def counting_write(self, key, sealed):
        counts["put"] += 1
        return write(self, key, sealed)

    store._ObjectStore.read, store._ObjectStore.write = counting_read, counting_write
    try:
        yield counts
    finally:
        store._ObjectStore.read, store._ObjectStore.write = read, write


def rows(bucket: str, args, scratch: Path) -> dict:
    """``network_table`` of ``args.rows`` tiny networks with the atlas's measures, on disk and in the
    bucket, serially and on a one-thread worker pool, each into an empty store, ``args.repeats``
    times alternated; median wall seconds per network, and the S3 requests per network."""
    configs = [TrainConfig(**{**TINY, "seed": s}) for s in range(args.rows)]
    with store_at(str(scratch / "rows-warm-up")):  # first-call costs (data, imports) apart
        study.network_table(configs, ATLAS_MEASURES, progress=False)
    out = {"networks": args.rows, "repeats": args.repeats, "measures": ATLAS_MEASURES,
           "config": {k: v for k, v in configs[0].to_dict().items() if k != "seed"}}
    seconds, requests, tables = {}, {}, {}
    for r in range(args.repeats):
        for path in ("serial", "worker pool"):
            for name, root in (("disk", str(scratch / f"rows-{r}-{path}")), ("s3", f"s3://{bucket}/rows-{r}-{path}")):
                with store_at(root), counted_requests() as counts, contextlib.ExitStack() as stack:
                    executor = None if path == "serial" else stack.enter_context(
                        concurrent.futures.ThreadPoolExecutor(max_workers=1))
                    start = time.perf_counter()
                    tables[r, path, name] = study.network_table(configs, ATLAS_MEASURES, executor=executor,
                                                                progress=False)
                    seconds.setdefault((path, name), []).append((time.perf_counter() - start) / args.rows)
                if name == "s3":
                    requests[path] = {k: v / args.rows for k, v in counts.items()}
    for (path, name), per_network in seconds.items():
        out[f"{path}, {name}"] = {"seconds_per_network_median": statistics.median(per_network),
                                  "seconds_per_network": per_network,
                                  **({"requests_per_network": requests[path]} if name == "s3" else {})}
    reference = tables[0, "serial", "disk"].drop(columns="train_time_s")
    out["identical_tables"] = all(t.drop(columns="train_time_s").equals(reference) for t in tables.values())
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measures", type=int, default=300, help="measure entries per round (default 300)")
    parser.add_argument("--networks", type=int, default=20, help="network entries per round (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per store, alternated (default 3)")
    parser.add_argument("--rows", type=int, default=3, help="tiny networks per end-to-end table (default 3)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if min(args.measures, args.networks, args.repeats, args.rows) < 1:
        parser.error("every count must be at least 1")
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": report.device_description("cpu"), "cpu_model": cpu_model(), "torch": torch.__version__,
        "cores": executors.cores(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average_before": os.getloadavg(), "git_commit": report.git_commit(),
        "flatlib_source_hash": report.source_hash(),
        "packages": {name: __import__(name).__version__ for name in ("fsspec", "s3fs", "moto", "botocore")},
        "s3_server": "moto.server (its own process) on 127.0.0.1",
    }
    with tempfile.TemporaryDirectory(prefix="store-bench-") as scratch, \
            s3_server(Path(scratch) / "moto.log") as bucket:
        results["raw_entries"] = raw_entries(bucket, args, Path(scratch))
        results["rows"] = rows(bucket, args, Path(scratch))
    results["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    raw = results["raw_entries"]
    for name in ("disk", "s3"):
        print(f"{name}: measures {raw[name]['measure_entries_written_per_s']:.0f} written/s, "
              f"{raw[name]['measure_entries_read_per_s']:.0f} read/s; networks "
              f"{raw[name]['network_entries_written_per_s']:.1f} written/s, "
              f"{raw[name]['network_entries_read_per_s']:.1f} read/s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
