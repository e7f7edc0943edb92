"""A worker-process probe for tests/test_executors.py: every call of ``flatlib.train.train`` in
a process that ran ``log_training_to(path)`` appends the network's seed to ``path``, so a test
can count training across worker processes (a monkeypatch reaches only its own process)."""
import os


def log_training_to(path: str) -> None:
    from flatlib import train

    real = train.train

    def logged(config, progress=False):
        with open(path, "a") as log:  # one short append per call: lines from many processes never interleave
            log.write(f"{config.seed}\n")
            log.flush()
            os.fsync(log.fileno())
        return real(config, progress)

    train.train = logged


def seeds_trained(path) -> list[int]:
    try:
        with open(path) as log:
            return sorted(int(line) for line in log)
    except FileNotFoundError:
        return []
