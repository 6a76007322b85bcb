"""User errors on the command line end in one ``error:`` line and exit code 2, never a traceback."""

from __future__ import annotations

import json

import pytest

from ssrl_trl.cli import main
from ssrl_trl.retrieval.bm25 import BM25Index


def _run(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture
def index(tmp_path):
    out = tmp_path / "bm25"
    BM25Index.build([("1", '"A"\nalpha passage'), ("2", '"B"\nbeta passage')], out, show_progress=False)
    return out


def test_serve_retriever_rejects_a_port_out_of_range(index, capsys):
    code, err = _run(["serve-retriever", "--index", str(index), "--port", "99999"], capsys)
    assert code == 2 and "error: argument --port: port 99999 is outside 0-65535" in err


@pytest.mark.parametrize("what", ["missing", "not an index"])
def test_serve_retriever_with_a_bad_index_path(tmp_path, capsys, what):
    path = tmp_path / "nope" if what == "missing" else tmp_path
    code, err = _run(["serve-retriever", "--index", str(path)], capsys)
    assert code == 2 and err.startswith(
        f"ssrl-trl serve-retriever: error: --index {path}: cannot load the index"
    )


def test_serve_retriever_with_bad_limits(index, capsys):
    code, err = _run(["serve-retriever", "--index", str(index), "--max-topk", "0"], capsys)
    assert code == 2 and "error: serve-retriever: ServerLimits needs values >= 1" in err


def test_index_from_an_empty_corpus(tmp_path, capsys):
    corpus, out = tmp_path / "empty.jsonl", tmp_path / "idx"
    corpus.write_text("")
    code, err = _run(
        ["index", "--corpus", str(corpus), "--kind", "bm25", "--out", str(out), "--quiet"], capsys
    )
    assert code == 2 and "error: --corpus" in err and "empty corpus" in err
    assert not out.exists()  # no half-built index left behind
    code, err = _run(
        ["index", "--corpus", str(tmp_path / "none.jsonl"), "--kind", "bm25", "--out", str(out)], capsys
    )
    assert code == 2 and "corpus file not found" in err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchkind:somewhere", "unknown retriever kind 'nosuchkind'"),
        ("justaword", "expected KIND:TARGET"),
        ("bm25:/no/such/index", "BM25 index /no/such/index is missing"),
    ],
)
def test_eval_with_a_bad_retriever(shared_data, capsys, spec, message):
    argv = ["eval", "--mode", "retrieval", "--retriever", spec, "--limit", "1"]
    argv += ["--datasets", str(shared_data / "qa" / "mini_eval.jsonl")]
    code, err = _run(argv, capsys)
    assert code == 2 and f"ssrl-trl eval: error: --retriever {spec}: " in err and message in err


def test_prepare_data_with_a_malformed_source(tmp_path, capsys):
    source = tmp_path / "qa.jsonl"
    source.write_text(json.dumps({"id": "1", "question": "Who?"}) + "\n")  # no answers
    code, err = _run(["prepare-data", "--source", str(source), "--out", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and f"error: --source {source}:" in err and "golden_answers" in err


def test_plot_run_skips_a_half_written_checkpoint_and_says_what_is_missing(tmp_path, capsys):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3, "log_hist')
    code, err = _run(["plot-run", str(tmp_path)], capsys)
    assert code == 2 and "error:" in err and "no trainer_state.json" in err


def test_train_with_a_missing_recipe(tmp_path, capsys):
    code, err = _run(["train", "--config", str(tmp_path / "none.yaml")], capsys)
    assert code == 2 and "error:" in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(argv):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr("ssrl_trl.viewer.main", broken)
    with pytest.raises(KeyError):
        main(["view", "x.jsonl"])
