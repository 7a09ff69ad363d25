"""Reading a log since a checkpoint: whole lines only, none missed and none read twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.twin import logs
from emulator.twin.logs import end_of, read_since

pytestmark = pytest.mark.unit


def test_successive_reads_give_each_whole_line_once(tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"
    log.write_text("first\nsecond\nthi")
    text, offset = read_since(log, 0)
    assert text == "first\nsecond\n"
    with log.open("a") as sink:
        sink.write("rd\nfourth\n")
    text, offset = read_since(log, offset)
    assert text == "third\nfourth\n"
    assert read_since(log, offset) == ("", offset)


def test_a_checkpoint_is_the_end_of_the_last_whole_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "proxy.log"
    assert end_of(log) == 0
    assert end_of(None) == 0
    # Lines longer than the chunk read from the end are found all the same.
    monkeypatch.setattr(logs, "_CHUNK", 4)
    log.write_text("a long first line\nand half a secon")
    assert end_of(log) == len("a long first line\n")
    assert read_since(log, end_of(log)) == ("", end_of(log))


def test_a_log_that_is_not_there_yet_reads_empty(tmp_path: Path) -> None:
    assert read_since(tmp_path / "none.log", 0) == ("", 0)
    assert read_since(None, 12) == ("", 12)
