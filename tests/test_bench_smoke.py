"""`make bench` keeps working: its in-process part on a handful of corpus messages (no timings asserted)."""

from __future__ import annotations

from pathlib import Path

from bench.run import bench_in_process, sample_messages
from service.settings import Settings


def test_the_benchmark_scores_a_corpus_sample(corpus_dir: Path, tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'b.db'}", state_dir=tmp_path, data_dir=corpus_dir)
    messages = sample_messages(settings, 20)
    rows = bench_in_process(settings, messages)
    assert [r.unit for r in rows] == ["single", "batch of 100"]
    assert all(r.messages_per_s > 0 for r in rows)
