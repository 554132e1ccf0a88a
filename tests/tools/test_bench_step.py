"""The step benchmark runs end to end on a tiny graph, and says so when DGL's environment is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gnn_ooc.tools.bench.step import main, power_law_graph


def test_power_law_graph_is_symmetric_csc() -> None:
    indptr, indices = power_law_graph(1000, 6.0, seed=0)
    assert indptr[-1] == indices.size == 6000 and indices.max() < 1000
    dst = [v for v in range(1000) for _ in range(indptr[v], indptr[v + 1])]
    assert sorted(zip(indices.tolist(), dst)) == sorted(zip(dst, indices.tolist()))


def test_step_benchmark_reports_each_model_and_width(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "20000", "--batches", "1", "--rounds", "1", "--repeats", "1", "--batch-size", "128",
                 "--models", "gcn", "--hidden", "16,32", "--in-dim", "16", "--dgl-python", str(tmp_path / "none"),
                 "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert set(result["rows"]) == {"gcn/16", "gcn/32"}
    assert all(row["ours"] > 0 for row in result["rows"].values())
    assert "setup_dgl.sh" in result["dgl"]["error"] and "| gcn/32 |" in out.err
