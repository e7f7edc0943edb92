"""Worker-process probes for tests/test_store_s3.py, run as a process pool's initializer (a
monkeypatch reaches only its own process): a worker that dies once, as a lost machine would."""
import os
import signal


def die_once_when_training(seed: int, marker: str) -> None:
    """Make this worker kill itself (SIGKILL, nothing flushed or cleaned up) when it starts to
    train the network of ``seed``, once across all workers: the first to create ``marker`` dies."""
    from flatlib import train

    real = train.train

    def dying(config, progress=False):
        if config.seed == seed:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(config, progress)

    train.train = dying

