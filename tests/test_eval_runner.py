"""The evaluation runner, Sim2Real, hybrid routing, reports and the ``ssrl-trl eval`` CLI.

Semantics are checked with scripted model output (ScriptedBackend) on the real SmolLM2
tokenizer; the CLI runs end to end on a tiny random model over mini_eval questions and a BM25
index of 300 mini-corpus passages.
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from ssrl_trl.data import QAItem
from ssrl_trl.environments import RetrievalEnv, SelfSearchEnv
from ssrl_trl.evaluation.cli import main as eval_main
from ssrl_trl.evaluation.hybrid import hybrid_sweep, oracle_point, uncertainties
from ssrl_trl.evaluation.report import passk_curves, summarize
from ssrl_trl.evaluation.runner import Arm, SettingsMismatch, plan_chunks, run_arm
from ssrl_trl.evaluation.signals import answer_disagreement
from ssrl_trl.prompts import TEMPLATES
from ssrl_trl.protocol import SSRL
from ssrl_trl.retrieval.factory import InMemoryRetriever
from ssrl_trl.rollout import Budgets, SamplingConfig, ScriptedBackend

ITEMS = [
    QAItem("q:0", "What is the capital of France?", ["Paris"], "geo"),
    QAItem("q:1", "Who wrote Hamlet?", ["William Shakespeare", "Shakespeare"], "lit"),
    QAItem("q:2", "What is the capital of Italy?", ["Rome"], "geo"),
]
ANSWERS = {"France": "Paris", "Hamlet": "Shakespeare", "Italy": "Milan"}


def _scripted(tokenizer, fn):
    """A backend whose text depends on the decoded prompt+context (question and any documents)."""
    return ScriptedBackend(tokenizer, lambda ids, call: fn(tokenizer.decode(ids), call))


def _self_answer(context: str, call: int) -> str:
    key = next(k for k in ANSWERS if k in context)
    return f"<think>recall</think><search>{key}</search><information>I think {ANSWERS[key]}.</information><answer>{ANSWERS[key]}</answer>"


def _arm(name="self", n=1, env=None, temperature=0.0, **kw):
    budgets = kw.pop("budgets", Budgets(max_turns=1, max_tokens_per_turn=96, max_completion_tokens=96))
    return Arm(
        name,
        env or SelfSearchEnv(SSRL),
        TEMPLATES["ssrl"],
        budgets,
        SamplingConfig(temperature=temperature),
        n=n,
        **kw,
    )


def test_plan_chunks_bounds_batches_and_covers_every_sample():
    items = [QAItem(f"x:{i}", "q", ["a"], "d") for i in range(5)]
    for n, bs in [(1, 2), (3, 8), (10, 4), (4, 4), (1024, 64)]:
        chunks = list(plan_chunks(items, n, bs))
        assert all(sum(c for _, _, c in ch) <= max(bs, n if n < bs else bs) for ch in chunks)
        seen = [(it.id, s + j) for ch in chunks for it, s, c in ch for j in range(c)]
        assert sorted(seen) == sorted((it.id, j) for it in items for j in range(n))
    assert [len(ch) for ch in plan_chunks(items, 3, 8)] == [2, 2, 1]  # whole questions per chunk
    with pytest.raises(ValueError):
        next(plan_chunks(items, 1, 0))


def test_run_arm_scores_writes_and_resumes(tokenizer, tmp_path):
    backend = _scripted(tokenizer, _self_answer)
    arm = _arm(signals=True)
    res = run_arm(arm, ITEMS, backend, tokenizer, tmp_path, batch_size=2, progress=False)
    recs = {r["id"]: r for r in res.records}
    assert [r["id"] for r in res.records] == [it.id for it in ITEMS] and res.new_questions == 3
    assert recs["q:0"]["prediction"] == "Paris" and recs["q:0"]["em"] == 1.0
    assert recs["q:1"]["em"] == 1.0 and recs["q:2"]["em"] == 0.0 and recs["q:2"]["f1"] == 0.0
    assert recs["q:0"]["stop_reason"] == "answer" and recs["q:0"]["answered"] == 1.0
    signals = recs["q:0"]["signals"]  # ScriptedBackend gives every sampled token log-prob -1
    assert signals["answer_nll"] == pytest.approx(1.0) and signals["info_nll"] == pytest.approx(1.0)
    lines = (tmp_path / "predictions_self.jsonl").read_text().splitlines()
    assert len(lines) == 3
    # Resume: nothing is generated again; a torn last line (killed mid-write) is redone.
    calls = backend.calls
    again = run_arm(arm, ITEMS, backend, tokenizer, tmp_path, batch_size=2, progress=False)
    assert backend.calls == calls and again.new_questions == 0 and again.records == res.records
    assert again.total["questions"] == 3 and again.total["generated_tokens"] == res.generated_tokens
    (tmp_path / "predictions_self.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    third = run_arm(arm, ITEMS, backend, tokenizer, tmp_path, batch_size=2, progress=False)
    assert third.new_questions == 1 and backend.calls == calls + 1
    assert len((tmp_path / "predictions_self.jsonl").read_text().splitlines()) == 3
    with pytest.raises(SettingsMismatch, match="n"):
        run_arm(_arm(n=2, temperature=1.0, signals=True), ITEMS, backend, tokenizer, tmp_path, progress=False)


def test_sampled_arm_counts_correct_samples_for_passk(tokenizer, tmp_path):
    # The backend's call counter runs over all samples: even calls answer right.
    def script(context, call):
        key = next(k for k in ANSWERS if k in context)
        right = ITEMS[[k for k in ANSWERS].index(key)].golden_answers[0]
        return f"<answer>{right if call % 2 == 0 else 'nope'}</answer>"

    arm = _arm(n=5, temperature=1.0)
    res = run_arm(
        arm, ITEMS[:2], _scripted(tokenizer, script), tokenizer, tmp_path, batch_size=2, progress=False
    )
    # n > batch_size: each question is split into chunks of 2, 2, 1; calls 0-4 then 5-9
    assert [r["c_em"] for r in res.records] == [3, 2] and [r["em"] for r in res.records] == [0.6, 0.4]
    for rec in res.records:
        assert rec["n"] == 5 and len(rec["answers"]) == 5 and rec["stop_reasons"] == {"answer": 5}
    curves = passk_curves(res.records, [1, 2, 4, 5])
    assert curves["all"][0] == pytest.approx(0.5) and curves["all"][-1] == 1.0
    assert curves["lit"][1] == pytest.approx(1 - 3 / 10)  # c=2 of 5: 1 - C(3,2)/C(5,2)


def test_sim2real_replaces_self_written_information_with_retrieved_documents(tokenizer, tmp_path):
    """Same policy, same prompt: self-search invents a wrong fact; with real search the loop stops
    at </search>, documents are inserted, and the policy reads the answer from them."""
    docs = ['"Italy"\nRome is the capital of Italy.', '"France"\nParis is the capital of France.']

    def policy(context, call):
        if (
            "<|im_start|>assistant" in context
            and "Doc 1(Title:" in context.split("<|im_start|>assistant")[-1]
        ):
            seen = context.split("Doc 1(Title:")[-1]
            return "<answer>Rome</answer>" if "Rome" in seen else "<answer>Paris</answer>"
        return _self_answer(context, call)

    self_arm = _arm()
    real_env = RetrievalEnv(InMemoryRetriever(docs), tokenizer, SSRL, topk=1)
    multi = Budgets(max_turns=3, max_tokens_per_turn=64, max_obs_tokens=64, max_completion_tokens=200)
    real_arm = _arm("real", env=real_env, budgets=multi)
    items = [ITEMS[0], ITEMS[2]]
    self_res = run_arm(self_arm, items, _scripted(tokenizer, policy), tokenizer, tmp_path, progress=False)
    real_res = run_arm(real_arm, items, _scripted(tokenizer, policy), tokenizer, tmp_path, progress=False)
    assert [r["em"] for r in self_res.records] == [1.0, 0.0]  # self-search recalls Milan for Italy
    assert [r["em"] for r in real_res.records] == [1.0, 1.0]
    italy = real_res.records[1]
    assert italy["searches"] == 1 and italy["queries"] == ["Italy"] and italy["doc_ids"] == [["0"]]
    assert "I think Milan" not in italy["completion"] and "Rome is the capital" in italy["completion"]
    assert summarize(real_res.records)["average"]["em"] == 1.0


def _rec(i, em, unc, ds="d"):
    return {
        "id": str(i),
        "dataset": ds,
        "prediction": "x",
        "em": em,
        "cover_em": em,
        "f1": em,
        "signals": {"answer_nll": unc},
    }


def test_hybrid_sweep_routes_uncertain_questions():
    self_recs = [_rec(0, 1.0, 0.1), _rec(1, 0.0, 0.9), _rec(2, 1.0, 0.5), _rec(3, 0.0, None)]
    real_recs = [_rec(0, 0.0, 0), _rec(1, 1.0, 0), _rec(2, 1.0, 0), _rec(3, 1.0, 0)]
    unc = uncertainties(self_recs, "answer_nll")
    assert unc["3"] == math.inf
    pts = hybrid_sweep(self_recs, real_recs, unc)
    assert [p["frac_real"] for p in pts] == [0.25, 0.5, 0.75, 1.0]  # inf always routed
    assert [p["em"] for p in pts] == [0.75, 1.0, 1.0, 0.75]
    assert pts[-1]["threshold"] == -math.inf and pts[0]["threshold"] == 0.9
    fixed = hybrid_sweep(self_recs, real_recs, unc, [0.5])
    assert fixed[0]["frac_real"] == 0.5 and fixed[0]["em"] == 1.0
    oracle = oracle_point(self_recs, real_recs)
    assert oracle["em"] == 1.0 and oracle["frac_real"] == 0.5
    with pytest.raises(ValueError, match="available"):
        uncertainties(self_recs, "answer_entropy")
    samples = {
        "0": {"answers": ["a", "a", "b"]},
        "1": {"answers": ["a", "b", None]},
        "2": {"answers": ["a"] * 3},
        "3": {"answers": [None] * 3},
    }
    dis = uncertainties(self_recs, "disagreement", samples)
    assert dis["0"] == pytest.approx(1 / 3) and dis["1"] == pytest.approx(2 / 3) and dis["2"] == 0.0
    assert answer_disagreement([]) is None


def _corpus_and_questions(shared_data, tmp_path, n_q=10):
    corpus = tmp_path / "corpus.jsonl"
    lines = (shared_data / "corpus" / "mini_wiki.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return corpus, shared_data / "qa" / "mini_eval.jsonl"


@pytest.mark.slow
def test_cli_self_passk_on_tiny_model(tiny_model_dir, shared_data, tmp_path):
    out = tmp_path / "passk"
    argv = ["--model", str(tiny_model_dir), "--datasets", str(shared_data / "qa" / "mini_eval.jsonl"),
            "--limit", "1", "--mode", "self", "--n", "4", "--k-max", "4", "--max-new-tokens", "8",
            "--batch-size", "16", "--out", str(out), "--no-progress"]  # fmt: skip
    assert eval_main(argv) == 0
    for name in ("summary.md", "summary.csv", "summary.json", "passk_self.csv", "passk_self.md",
                 "passk_self.png", "passk_self_nq.png", "predictions_self.jsonl", "curves.json"):  # fmt: skip
        assert (out / name).is_file(), name
    recs = [json.loads(line) for line in (out / "predictions_self.jsonl").read_text().splitlines()]
    assert len(recs) == 5 and all(r["n"] == 4 and len(r["answers"]) == 4 for r in recs)
    assert {r["dataset"] for r in recs} == {"nq", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle"}
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["dataset"] for r in rows} >= {"nq", "average", "all"}
    assert "| average |" in (out / "summary.md").read_text()
    curves = json.loads((out / "curves.json").read_text())["passk"]["self"]
    assert curves["k"] == [1, 2, 4]
    mtime = (out / "predictions_self.jsonl").stat().st_mtime_ns
    assert eval_main(argv) == 0  # resumed: every question is already done
    assert (out / "predictions_self.jsonl").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_cli_sim2real_and_hybrid_on_mini_corpus(tiny_model_dir, shared_data, tmp_path):
    corpus, questions = _corpus_and_questions(shared_data, tmp_path)
    out = tmp_path / "hybrid"
    argv = ["--model", str(tiny_model_dir), "--datasets", f"mini={questions}", "--limit", "1",
            "--retriever", f"bm25:{tmp_path / 'bm25'}", "--corpus", str(corpus), "--max-new-tokens", "16",
            "--max-tokens-per-turn", "8", "--max-obs-tokens", "48", "--topk", "2", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert eval_main([*argv, "--mode", "sim2real"]) == 0
    md = (out / "summary.md").read_text()
    assert "self EM" in md and "real EM" in md
    # hybrid reuses both Sim2Real arms (resume) and adds the sampled arm for disagreement
    assert eval_main([*argv, "--mode", "hybrid", "--hybrid-samples", "3", "--thresholds", "0.5,1,2"]) == 0
    for name in ("hybrid.png", "hybrid.md", "hybrid.csv", "hybrid.json", "predictions_self_samples.jsonl"):
        assert (out / name).is_file(), name
    hybrid = json.loads((out / "hybrid.json").read_text())
    assert set(hybrid["reference"]) == {"self only", "real only", "oracle"}
    assert {"answer_entropy", "info_nll", "disagreement"} <= set(hybrid["sweeps"])
    assert [p["threshold"] for p in hybrid["sweeps"]["answer_entropy"]] == [2.0, 1.0, 0.5]
    assert hybrid["reference"]["real only"]["frac_real"] == 1.0


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        eval_main(["--n", "4", "--k-max", "8"])
    assert "pass@k needs n >= k" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_main(["--mode", "sim2real"])
    assert "needs --retriever" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("mode", "arms", "tags", "template"),
    [
        ("self", ["self"], "ssrl", "ssrl"),
        ("retrieval", ["real"], "search_r1", "search_r1"),
        ("sim2real", ["self", "real"], "ssrl", "ssrl"),
        ("hybrid", ["self", "real", "self_samples"], "ssrl", "ssrl"),
    ],
)
def test_modes_build_the_training_environments(tokenizer, mode, arms, tags, template):
    from ssrl_trl.evaluation.cli import _check_args, build_arms, build_parser

    parser = build_parser()
    a = parser.parse_args(
        ["--mode", mode, "--retriever", "bm25:x", "--signal", "disagreement", "--response-prefix", "<think>"]
    )
    _check_args(parser, a)
    built = build_arms(a, tokenizer, InMemoryRetriever(["x"]))
    assert [arm.name for arm in built] == arms
    assert {arm.env.tags.name for arm in built} == {tags}
    assert {arm.template for arm in built} == {TEMPLATES[template]}  # Sim2Real: one prompt for both arms
    kinds = {arm.name: type(arm.env).__name__ for arm in built}
    assert (
        kinds.get("real", "RetrievalEnv") == "RetrievalEnv"
        and kinds.get("self", "SelfSearchEnv") == "SelfSearchEnv"
    )
    if mode == "hybrid":
        assert built[0].signals and built[2].n == 5 and built[2].sampling.temperature == 1.0
    assert all(arm.sampling.temperature == 0.0 for arm in built if arm.name != "self_samples")
    assert {arm.response_prefix for arm in built} == {"<think>"}


def test_seeded_sampling_is_reproducible(tokenizer, tiny_model_factory, tmp_path):
    from ssrl_trl.rollout import HFBackend

    model = tiny_model_factory(0).eval()
    backend = HFBackend(model, tokenizer, batch_size=4)
    arm = _arm(
        n=2, temperature=1.0, budgets=Budgets(max_turns=1, max_tokens_per_turn=6, max_completion_tokens=6)
    )
    runs = [
        run_arm(
            arm, ITEMS[:1], backend, tokenizer, tmp_path / f"r{i}", seed=seed, batch_size=4, progress=False
        )
        for i, seed in enumerate([7, 7, 8])
    ]
    first, same, other = ([r["completion"] for r in res.records] for res in runs)
    assert first == same and first != other


def test_response_prefix_is_forced_and_left_out_of_the_signals(tokenizer, tmp_path):
    backend = _scripted(tokenizer, lambda ctx, call: "recall</think><answer>Paris</answer>")
    arm = _arm(signals=True, response_prefix="<think>")
    rec = run_arm(arm, ITEMS[:1], backend, tokenizer, tmp_path, progress=False).records[0]
    assert rec["completion"].startswith("<think>recall</think>") and rec["em"] == 1.0
    assert rec["signals"]["completion_nll"] == pytest.approx(1.0)  # inserted prefix has log-prob 0


@pytest.mark.slow
def test_cli_compares_a_model_with_its_baseline(
    tiny_model_dir, tiny_model_factory, tokenizer, shared_data, tmp_path
):
    """--baseline-model evaluates both models with identical settings and pairs them by question."""
    other = tmp_path / "other_model"
    tiny_model_factory(1).save_pretrained(other)
    tokenizer.save_pretrained(other)
    out = tmp_path / "cmp"
    argv = ["--model", str(other), "--baseline-model", str(tiny_model_dir), "--backend", "hf",
            "--datasets", str(shared_data / "qa" / "mini_eval.jsonl"), "--limit", "2", "--mode", "self",
            "--max-new-tokens", "8", "--out", str(out), "--no-progress"]  # fmt: skip
    assert eval_main(argv) == 0
    result = json.loads((out / "before_after.json").read_text())
    assert result["n"] == 9 and result["arm"] == "self"  # 2 per dataset; bamboogle has 1 here
    assert result["before_model"] == str(tiny_model_dir) and result["after_model"] == str(other)
    assert result["machine"]["logical_cpus"] >= 1  # the host is recorded with the figures
    for name in ("baseline", "model"):
        assert len((out / name / "predictions_self.jsonl").read_text().splitlines()) == 9
    settings = [json.loads((out / n / "self.settings.json").read_text()) for n in ("baseline", "model")]
    assert settings[0] == settings[1]  # the same arm settings for both models
    assert "format_valid" in result["diff"] and (out / "before_after.png").is_file()
