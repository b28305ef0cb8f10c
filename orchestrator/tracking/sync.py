"""Keeping MLflow up to date off the caller's loop: a thread, or a process of its own.

Both drive a *sink*: an object with ``sync()`` (write what is new; raise when MLflow
fails, losing nothing) and ``uri``. While MLflow cannot be reached the caller goes on:
what waits is the sink's to keep (a sweep's event log on disk), written when the
server is back. ``SyncProcess`` also needs the sink's ``process_argv()``: the module and
arguments of a process that builds the same sink and calls ``serve`` with it.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from orchestrator.tracking.store import redacted


class SyncThread:
    """Runs ``sink.sync()`` every ``every`` seconds off the caller's loop, retrying on
    failure."""

    def __init__(self, sink, every: float = 5.0, stream=None):
        self.sink = sink
        self.every = every
        self.stream = stream
        self.error: Exception | None = None
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="caviar-mlflow", daemon=True)

    def start(self) -> SyncThread:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._once()

    def _once(self) -> bool:
        try:
            self.sink.sync()
        except Exception as e:  # noqa: BLE001 - the server is down: keep the log, retry
            if self.error is None and self.stream is not None:
                print(f"caviar: MLflow at {redacted(self.sink.uri)} is not answering "
                      f"({type(e).__name__}: {str(e)[:200]}); the sweep goes on, records "
                      "wait on disk",
                      file=self.stream, flush=True)
            self.error = e
            return False
        if self.error is not None and self.stream is not None:
            print("caviar: MLflow answers again; the records that waited are written",
                  file=self.stream, flush=True)
        self.error = None
        return True

    def stop_soon(self) -> None:
        """Asks the thread to stop after its current sync."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def stop(self, deadline_s: float = 30.0) -> bool:
        """Stops the thread and writes what is left, retrying until ``deadline_s``.

        Returns False when MLflow still did not answer: the records wait on disk."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._done:
            return True
        end = time.monotonic() + deadline_s
        while not self._once():
            if time.monotonic() > end:
                return False
            time.sleep(1.0)
        self._done = True
        return True


class SyncProcess:
    """``SyncThread`` in a process of its own: the MLflow writes of a large sweep (~20 ms
    of CPU a trial on sqlite) run beside the driver's Tune loop instead of taking turns
    with it for one interpreter. The process builds its own sink from
    ``sink.process_argv()``; it owns the sink's state file until it ends, and the
    driver's sink then reads it back (``sink.reload()``).

    It stops when told (``stop_soon``/``stop``), after writing what is left; when the
    driver is gone (its stdin closes untold) it stops at once, leaving the rest to the
    resumed driver or ``caviar sync`` (two writers would race). Ctrl-C reaches the
    driver, not it.
    """

    def __init__(self, sink, every: float = 5.0, stream=None):
        self.sink, self.every, self.stream = sink, every, stream
        self._proc = None

    def start(self) -> SyncProcess:
        import subprocess

        module, *args = self.sink.process_argv()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", module, str(self.every), *args],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=_fd(self.stream),
            cwd=Path(__file__).resolve().parents[2])
        return self

    def stop_soon(self, deadline_s: float = 30.0) -> None:
        """Asks the process to write what is left (retrying until ``deadline_s``) and end."""
        if self._proc is not None and self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.write(f"{deadline_s}\n".encode())
                self._proc.stdin.close()
            except OSError:
                pass

    def stop(self, deadline_s: float = 30.0) -> bool:
        """Waits for the process to write what is left (retrying until ``deadline_s``);
        False when MLflow still did not answer (the records wait on disk)."""
        self.stop_soon(deadline_s)
        try:
            code = self._proc.wait(timeout=deadline_s + 60)
        except Exception:  # noqa: BLE001 - hung: the records are on disk for caviar sync
            self._proc.kill()
            code = -1
        self.sink.reload()  # its runs, cursor, parent run
        return code == 0


def _fd(stream):
    """``stream`` for a child process when it is a real file, else this one's stderr."""
    try:
        stream.fileno()
        return stream
    except (AttributeError, OSError, ValueError):
        return None


def serve(sink, every: float) -> int:
    """The body of the process ``SyncProcess`` starts: syncs every ``every`` seconds until
    its stdin closes; returns its exit code."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when it ends
    thread = SyncThread(sink, every=every, stream=sys.stderr).start()
    told = sys.stdin.read().strip()  # until the driver closes it (with a deadline), or is gone
    if not told:  # the driver died: its resume (or caviar sync) writes the rest, not two of us
        thread.stop_soon()
        thread.join(60.0)
        return 1
    return 0 if thread.stop(float(told)) else 1
