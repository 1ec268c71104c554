"""A log sink that writes on its own thread, so the event loop never waits on stderr.

loguru's ``enqueue=True`` does the same for several processes: it pickles every
record and sends it through a pipe, a syscall and a thread wake-up per line
(16 % of the event loop's time under Create/Delete load). The driver is one
process, so :class:`BackgroundWriter` appends each formatted line to an
in-process queue instead, and its thread writes whatever has accumulated in
one call. Lines are written at once (tests and operators read the log right
after a call returns); the writer is woken only when it is idle, so a burst
of lines costs one wake-up.
"""

from __future__ import annotations

import collections
import threading
from typing import TextIO

#: How long ``stop`` waits for the queued lines to be written.
STOP_TIMEOUT_SECONDS = 5.0


class BackgroundWriter:
    """A file-like loguru sink: ``write`` queues a formatted line; a daemon thread writes them out in batches."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: collections.deque[str] = collections.deque()
        self._pending = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def write(self, message: str) -> None:
        self._lines.append(message)
        if not self._pending.is_set():  # only the first line of a batch wakes the writer
            self._pending.set()

    def isatty(self) -> bool:
        """loguru colours the text format only on a terminal."""
        return self._stream.isatty()

    def stop(self) -> None:
        """Write what is queued and end the thread (loguru calls this when the sink is removed, and at exit)."""
        self._stopping = True
        self._pending.set()
        self._thread.join(STOP_TIMEOUT_SECONDS)

    def _run(self) -> None:
        while True:
            self._pending.wait()
            self._pending.clear()  # before draining: a line queued from now on sets it again
            self._drain()
            if self._stopping:
                self._drain()
                return

    def _drain(self) -> None:
        batch = []
        while self._lines:
            batch.append(self._lines.popleft())
        if batch:
            self._write("".join(batch))

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: there is nowhere left to report it
            pass
