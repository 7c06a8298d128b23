"""Sharded certification (insta_rs/distributed.py, certify.py trainer=ddp_sim): the rows equal the
single-process rows, a killed run resumes from its shards (any world size), and the merge refuses
missing or contradictory rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from insta_rs import certification_file, distributed
from insta_rs.errors import ConfigError, DataError
from insta_rs.certification_file import CERTIFY_COLUMNS

from conftest import run_script

COLUMNS = CERTIFY_COLUMNS
SETTINGS = {"seed": 0, "n": 10}


def _line(idx: int, radius: float = 0.5, time: float = 0.1) -> str:
    values = {"idx": idx, "label": idx % 10, "predict": idx % 10, "radius": radius, "correct": 1, "time": time,
              "sigma": 0.25, "pA_lower": 0.9, "guarantee": "sound", "search_time": 0.0, "search_draws": 0}
    return "\t".join(str(values[c]) for c in COLUMNS)


def _write(path: Path, lines: list[str], tail: str = "", settings: dict = SETTINGS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(COLUMNS) + "\n" + "".join(line + "\n" for line in lines) + tail)
    path.with_name(path.stem + ".settings.json").write_text(json.dumps(settings))


def _body(path: Path) -> list[list[str]]:
    """The rows of a TSV without the wall-clock columns (time, search_time), which legitimately differ."""
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    keep = [i for i, c in enumerate(header) if c not in certification_file.TIME_COLUMNS]
    return [[fields[i] for i in keep] for fields in (line.split("\t") for line in lines)]


# -- the pieces, without processes ----------------------------------------------------------------------

@pytest.mark.parametrize("length,world", [(12, 2), (7, 3), (2, 4), (0, 2)])
def test_shard_sampler_covers_every_position_once_without_padding(monkeypatch, length, world):
    shards = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "_rank_and_world", lambda rank=rank: (rank, world))
        sampler = distributed.ShardSampler(length)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    flat = sorted(p for shard in shards for p in shard)
    assert flat == list(range(length))  # disjoint, complete, nothing repeated
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_merge_resumes_from_shards_of_another_world_size_and_ignores_a_torn_row(tmp_path):
    tsv = tmp_path / "certify.tsv"
    _write(tsv, [_line(0), _line(3)])
    # a 3-rank run killed mid-write: rank 1's last row is torn (no newline), rank 2 repeats idx 3
    _write(tmp_path / "shards" / "rank0.tsv", [_line(6), _line(12)])
    _write(tmp_path / "shards" / "rank1.tsv", [_line(9)], tail=_line(15)[:17])
    _write(tmp_path / "shards" / "rank2.tsv", [_line(3, time=9.0)])
    selected = [0, 3, 6, 9, 12, 15]
    assert certification_file.done_indices(tsv, SETTINGS, COLUMNS) == {0, 3, 6, 9, 12}
    assert certification_file.todo_indices(selected, {0, 3, 6, 9, 12}) == [15]
    with pytest.raises(DataError, match=r"1 of 6 selected inputs have no row.*idx=15.*rerun") as error:
        certification_file.merge_shards(tsv, SETTINGS, COLUMNS, selected)
    assert "\n" not in str(error.value)
    # the missing row arrives (as a 2-rank rerun would write it): the merge is complete, ordered, deduplicated
    _write(tmp_path / "shards" / "rank1.tsv", [_line(9), _line(15)])
    assert certification_file.merge_shards(tsv, SETTINGS, COLUMNS, selected) == 6
    lines = tsv.read_text().splitlines()
    assert lines[0].split("\t") == list(COLUMNS)
    assert [int(line.split("\t")[0]) for line in lines[1:]] == selected
    assert lines[2] == _line(3)  # the first copy of a duplicate is kept
    assert not (tmp_path / "shards").exists()


def test_merge_refuses_rows_that_disagree_or_other_settings(tmp_path):
    tsv = tmp_path / "certify.tsv"
    _write(tsv, [_line(0)])
    _write(tmp_path / "shards" / "rank0.tsv", [_line(0, radius=0.75)])
    with pytest.raises(DataError, match="idx=0 has radius=0.75"):
        certification_file.merge_shards(tsv, SETTINGS, COLUMNS, [0])
    _write(tmp_path / "shards" / "rank0.tsv", [_line(0)], settings={"seed": 1, "n": 10})
    with pytest.raises(ConfigError, match="seed"):
        certification_file.done_indices(tsv, SETTINGS, COLUMNS)


# -- the real script, two processes over gloo -------------------------------------------------------------

CERTIFY = ["certify=fast", "certify.n0=16", "certify.n=200", "certify.batch_size=500", "certify.skip=3",
           "certify.max=12", "certify.progress=false", "logger=none"]


@pytest.mark.slow
def test_ddp_sim_rows_equal_single_process_and_resume_after_a_kill(trained_digits, tmp_path):
    """A 3-rank run killed mid-way (rank 0 finished 2 rows, rank 1 died writing its 2nd, rank 2 wrote nothing),
    rerun on 2 ranks: the two ranks shard the 9 inputs left, and the merged file holds the single-process
    rows, with the rows that were done not certified again, no shard left and a summary of every row. (One
    sharded run covers both the sharded certification and the resume: it certifies most inputs itself.)"""
    ckpt = f"ckpt_path={trained_digits / 'checkpoints' / 'last.ckpt'}"
    single, resumed = tmp_path / "single", tmp_path / "resumed"
    run_script("certify.py", ckpt, f"hydra.run.dir={single}", *CERTIFY)
    reference = _body(single / "certify.tsv")
    assert len(reference) == 1 + 12

    lines = (single / "certify.tsv").read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    settings = (single / "certify.settings.json").read_text()
    (resumed / "shards").mkdir(parents=True)
    for rank, (kept, torn) in enumerate([(rows[0:2], ""), (rows[2:3], rows[3][:10]), ([], "")]):
        (resumed / "shards" / f"rank{rank}.tsv").write_text(header + "".join(kept) + torn)
        (resumed / "shards" / f"rank{rank}.settings.json").write_text(settings)
    result = run_script("certify.py", ckpt, f"hydra.run.dir={resumed}", "trainer=ddp_sim", *CERTIFY)
    assert "wrote certify.tsv" in result.stdout
    assert _body(resumed / "certify.tsv") == reference
    assert not (resumed / "shards").exists()
    assert json.loads((resumed / "summary.json").read_text())["rows"] == 12
    # the rows that were done are not certified again: their time column is the one written before
    merged = (resumed / "certify.tsv").read_text().splitlines(keepends=True)
    assert merged[1:3] == rows[0:2] and merged[3] == rows[2]
