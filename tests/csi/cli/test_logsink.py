"""The background log writer: every line arrives, in order, and nothing is lost when the sink is removed."""

from __future__ import annotations

import io
import threading

from loguru import logger

from csi.cli.logsink import BackgroundWriter


class SlowStream(io.StringIO):
    """A stderr that blocks until released, as a full pipe would."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        assert self.release.wait(10)
        return super().write(text)


def test_lines_arrive_in_order_and_removal_drains_the_queue() -> None:
    stream = SlowStream()
    sink_id = logger.add(BackgroundWriter(stream), format="{message}", level="INFO")
    try:
        for i in range(500):
            logger.info("line {}", i)  # returns at once although the stream is blocked
        assert stream.getvalue() == ""
        stream.release.set()
    finally:
        logger.remove(sink_id)  # stops the writer: everything queued is written first
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(500)]


def test_a_closed_stream_does_not_kill_the_writer() -> None:
    stream = io.StringIO()
    writer = BackgroundWriter(stream)
    stream.close()
    writer.write("lost\n")
    writer.stop()
    assert not writer._thread.is_alive()


def test_a_line_is_written_promptly_without_stopping_the_sink() -> None:
    stream = io.StringIO()
    sink_id = logger.add(BackgroundWriter(stream), format="{message}", level="INFO")
    try:
        logger.info("CreateVolume OK")
        deadline = threading.Event()
        for _ in range(100):  # an operator tailing the log sees the line right after the call returns
            if stream.getvalue():
                break
            deadline.wait(0.01)
        assert stream.getvalue() == "CreateVolume OK\n"
    finally:
        logger.remove(sink_id)
