"""Checkpoint discovery: only complete, published steps are ever resumed from."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from dsrl import checkpoint  # noqa: E402

pytestmark = pytest.mark.train


def test_latest_ignores_partial_and_unmarked_steps(tmp_path):
    (tmp_path / "global_step_2").mkdir()
    (tmp_path / "global_step_2" / checkpoint.MARKER).write_text("2\n")
    (tmp_path / "global_step_4").mkdir()  # killed before the marker was written
    (tmp_path / ".global_step_6.partial").mkdir()  # killed mid-save
    (tmp_path / "global_step_x").mkdir()
    assert checkpoint.complete_steps(tmp_path) == [2]
    assert checkpoint.latest(tmp_path) == tmp_path / "global_step_2"


def test_latest_of_a_missing_directory_is_none(tmp_path):
    assert checkpoint.latest(tmp_path / "nothing") is None


def test_load_refuses_an_incomplete_checkpoint(tmp_path):
    (tmp_path / "global_step_4").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete dsrl checkpoint"):
        checkpoint.load(tmp_path / "global_step_4", {}, rank=0)
