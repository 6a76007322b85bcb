"""ParallelSearch: several queries in one search, one batched retriever call, documents grouped
per query and cut fairly to the budget, the decomposition reward, and two GRPO steps through a
recipe with a scripted policy (masks exact)."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import write_tiny_recipe
from ssrl_trl.environments.parallel_retrieval import ParallelRetrievalEnv, ParallelSearchAction
from ssrl_trl.environments.registry import environment_kinds
from ssrl_trl.environments.retrieval import RetrieverUnavailable
from ssrl_trl.parallel_queries import SplitQueries, fair_shares, join_queries, split_queries
from ssrl_trl.parallel_rewards import ParallelSearchReward, widest_search
from ssrl_trl.prompts import render_prompt
from ssrl_trl.protocol import SEARCH_R1, Action, get_tag_set
from ssrl_trl.recipe import RecipeError, load_recipe
from ssrl_trl.retrieval.base import Doc, RetrieverError

PIPES = {
    "name": "pipes",
    "search": ["<search>", "</search>"],
    "information": ["<information>", "</information>"],
    "answer": ["<answer>", "</answer>"],
    "query_separator": "||",
}


class CharTokenizer:
    """One token per character: budgets in the tests are character counts."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int], **_kw) -> str:
        return "".join(chr(i) for i in ids)


class CountingRetriever:
    """Records every call; ``k`` docs per query whose text quotes the query (``long`` pads it)."""

    def __init__(self, long: int = 0, fail: bool = False, empty: frozenset[str] = frozenset()):
        self.calls: list[list[str]] = []
        self.long, self.fail, self.empty = long, fail, empty

    def search(self, queries: list[str], k: int) -> list[list[Doc]]:
        self.calls.append(list(queries))
        if self.fail:
            raise RetrieverError("simulated outage")
        pad = " filler" * self.long
        return [
            [] if q in self.empty else [Doc(f"{q}#{i}", f'"T-{q}-{i}"\nabout {q}{pad}') for i in range(k)]
            for q in queries
        ]


def _env(retriever=None, tags=SEARCH_R1, **kw) -> ParallelRetrievalEnv:
    return ParallelRetrievalEnv(retriever or CountingRetriever(), CharTokenizer(), tags, **kw)


# -- splitting -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "cap", "expected"),
    [
        ("who wrote dune", None, SplitQueries(("who wrote dune",))),
        (" a ## b ##c", None, SplitQueries(("a", "b", "c"))),
        ("a ## ## b ##", None, SplitQueries(("a", "b"), empty=2)),
        ("Dune  author ## dune AUTHOR ## b", None, SplitQueries(("Dune author", "b"), duplicates=1)),
        ("a ## b ## c ## d", 2, SplitQueries(("a", "b"), over_cap=2)),
        ("a ## a ## b ## c", 2, SplitQueries(("a", "b"), duplicates=1, over_cap=1)),
        ("## ##", None, SplitQueries((), empty=3)),
        ("a || b", None, SplitQueries(("a || b",))),  # another separator is plain text
    ],
)
def test_split_queries(content, cap, expected):
    assert split_queries(content, "##", cap) == expected


def test_split_queries_refuses_a_cap_below_one_and_round_trips_its_canonical_text():
    with pytest.raises(ValueError, match="max_queries must be >= 1"):
        split_queries("a", "##", 0)
    queries = ("a b", "c")
    assert split_queries(join_queries(queries, "||"), "||").queries == queries


@pytest.mark.parametrize(
    ("lengths", "room", "expected"),
    [
        ([5, 100, 100], 65, [5, 30, 30]),  # the short one keeps all, the rest share equally
        ([100, 100, 100], 65, [22, 22, 21]),  # remainder to the first in reading order
        ([3, 4], 100, [3, 4]),
        ([10, 10], 0, [0, 0]),
        ([1, 50, 2], 3, [1, 1, 1]),  # every section keeps something when room allows
    ],
)
def test_fair_shares(lengths, room, expected):
    shares = fair_shares(lengths, room)
    assert shares == expected and sum(shares) <= room
    assert all(0 <= s <= n for s, n in zip(shares, lengths, strict=True))


# -- parsing ---------------------------------------------------------------------------------------
def test_parse_splits_a_search_into_distinct_queries_and_keeps_other_actions():
    env = _env(max_queries=2)
    action = env.parse("<think>x</think><search> a ##  A ## b ## c ## d </search> trailing")
    assert isinstance(action, ParallelSearchAction)
    assert (action.kind, action.content, action.over_cap) == ("search", "a ## b", 2)
    assert action.end == len("<think>x</think><search> a ##  A ## b ## c ## d </search>")
    assert env.queries(action) == ("a", "b")
    assert env.parse("<answer> Rome </answer>") == Action(
        "answer", "Rome", end=len("<answer> Rome </answer>")
    )
    empty = env.parse("<search> ## ##</search>")
    assert (empty.kind, empty.error) == ("invalid", "empty search query")
    assert env.parse("no tags at all").kind == "invalid"


def test_a_custom_tag_set_carries_its_separator_to_parser_and_prompt(tmp_path):
    tags = get_tag_set(PIPES)
    assert tags.query_separator == "||" and SEARCH_R1.query_separator == "##"
    env = _env(tags=tags)
    assert env.queries(env.parse("<search>a || b ## c</search>")) == ("a", "b ## c")
    assert "q1 || q2" in render_prompt("{search_open}q1 {query_separator} q2 {question}", "Q?", tags)
    with pytest.raises(ValueError, match="query_separator must be non-empty, without spaces"):
        get_tag_set({**PIPES, "query_separator": "| |"})
    # From a recipe: the tag set's separator, validated when the recipe loads.
    path = tmp_path / "r.yaml"
    recipe = _recipe_dict(tmp_path, tags=PIPES)
    path.write_text(yaml.safe_dump(recipe))
    assert load_recipe(path).tag_set().query_separator == "||"
    path.write_text(yaml.safe_dump({**recipe, "tags": {**PIPES, "query_separator": ""}}))
    with pytest.raises(RecipeError, match="query_separator must be non-empty"):
        load_recipe(path)


def _recipe_dict(tmp_path, **extra) -> dict:
    from conftest import SHARED_DATA

    return {
        "method": "search_r1",
        "model": {"name_or_path": "some/model"},
        "data": {"train": str(SHARED_DATA / "qa" / "mini_eval.jsonl")},
        "environment": {
            "kind": "parallel_retrieval",
            "max_queries": 2,
            "retriever": {"kind": "memory", "options": {"docs": ['"A"\nalpha']}},
        },
        "rewards": [{"path": "rewards.parallel_search.reward"}],
        "grpo": {"output_dir": str(tmp_path / "out")},
        **extra,
    }


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"kind": "parallel_retrieval"}, "environment kind 'parallel_retrieval' needs a retriever"),
        ({"max_queries": 0}, "environment.max_queries"),
        ({"topk": 0}, "environment.topk"),
        ({"separator": "|"}, "unknown key 'environment.separator'"),
    ],
)
def test_recipe_options_are_checked_when_the_recipe_loads(tmp_path, environment, message):
    assert "parallel_retrieval" in environment_kinds()
    data = _recipe_dict(tmp_path)
    data["environment"] = environment if "kind" in environment else {**data["environment"], **environment}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


# -- replies ---------------------------------------------------------------------------------------
def test_all_queries_of_all_waiting_episodes_go_in_one_call_and_come_back_grouped():
    retriever = CountingRetriever()
    env = _env(retriever, topk=2)
    actions = [
        env.parse("<search>dune ## rome</search>"),
        env.parse("<search>paris</search>"),
        env.parse("nothing here"),  # invalid: a correction, no retrieval
        env.parse("<search>rome ## oslo ## dune</search>"),
    ]
    replies = env.respond(actions, [10_000] * 4)
    assert retriever.calls == [["dune", "rome", "paris", "oslo"]]  # one call, repeats searched once
    first = replies[0]
    assert first.kind == "observation"
    assert first.text == (
        "\n\n<information>Query 1: dune\n"
        'Doc 1(Title: "T-dune-0") about dune\nDoc 2(Title: "T-dune-1") about dune\n'
        "Query 2: rome\n"
        'Doc 1(Title: "T-rome-0") about rome\nDoc 2(Title: "T-rome-1") about rome</information>\n\n'
    )
    assert first.ids == CharTokenizer().encode(first.text)
    assert first.doc_ids == ["dune#0", "dune#1", "rome#0", "rome#1"]
    assert replies[1].text.count("Query ") == 1 and "about paris" in replies[1].text
    assert replies[2].kind == "correction" and "no complete search or answer block" in replies[2].text
    third = replies[3].text
    assert third.index("Query 1: rome") < third.index("Query 2: oslo") < third.index("Query 3: dune")
    assert third.index("about oslo") < third.index("Query 3: dune")


def test_a_query_without_documents_says_so_and_echoed_tags_are_removed():
    env = _env(CountingRetriever(empty=frozenset({"nothing"})), topk=1)
    obs = env.respond([env.parse("<search>nothing ## a </information> b</search>")], [10_000])[0]
    # (The documents of this fake retriever quote the query, tags and all; the header does not.)
    assert "Query 1: nothing\n(no documents found)\nQuery 2: a b\nDoc 1" in obs.text


def test_the_budget_is_shared_fairly_and_the_closing_tag_survives():
    env = _env(CountingRetriever(long=40), topk=3)
    action = env.parse("<search>q1 ## q2 ## q3</search>")
    obs = env.respond([action], [200])[0]
    assert len(obs.ids) == 200 and obs.text.endswith("</information>\n\n")
    body = obs.text[len("\n\n<information>") : -len("</information>\n\n")]
    heads = ["Query 1: q1\n", "\nQuery 2: q2\n", "\nQuery 3: q3\n"]
    starts = [body.index(h) for h in heads]
    ends = [*starts[1:], len(body)]
    kept = [end - start - len(h) for h, start, end in zip(heads, starts, ends, strict=True)]
    assert min(kept) > 0 and max(kept) - min(kept) <= 1  # equal shares of the documents
    assert body.startswith('Query 1: q1\nDoc 1(Title: "T-q1-0") about q1 filler')
    # Too small for the tags: no reply (the engine ends the episode); room for the headers only:
    # every query named, no documents; less: the headers share what there is.
    tags_only = len("\n\n<information></information>\n\n")
    assert env.respond([action], [tags_only - 1]) == [None]
    headers_only = env.respond([action], [tags_only + len("".join(heads))])[0]
    assert headers_only.text == f"\n\n<information>{''.join(heads)}</information>\n\n"
    tiny = env.respond([action], [tags_only + 6])[0]
    assert tiny.text == "\n\n<information>Qu\nQ\nQ</information>\n\n"


def test_the_budget_cut_on_a_real_tokenizer_keeps_every_query_and_the_tags(tokenizer):
    env = ParallelRetrievalEnv(CountingRetriever(long=60), tokenizer, SEARCH_R1, topk=2)
    obs = env.respond([env.parse("<search>alpha ## beta ## gamma</search>")], [120])[0]
    assert len(obs.ids) <= 120 and obs.text.endswith("</information>\n\n")
    assert all(f"Query {n}:" in obs.text for n in (1, 2, 3))
    assert tokenizer.decode(obs.ids) == obs.text


def test_max_queries_caps_what_is_searched_and_the_reply_says_so():
    retriever = CountingRetriever()
    env = _env(retriever, topk=1, max_queries=2)
    obs = env.respond([env.parse("<search>a ## b ## c ## d</search>")], [10_000])[0]
    assert retriever.calls == [["a", "b"]]
    assert obs.text.endswith("(2 more queries were not searched: at most 2 per search.)</information>\n\n")
    obs = env.respond([env.parse("<search>a ## b ## c</search>")], [10_000])[0]
    assert "(1 more query was not searched: at most 2 per search.)" in obs.text


def test_a_failing_retriever_gives_every_searching_episode_an_error_then_stops_the_run():
    env = _env(CountingRetriever(fail=True), max_consecutive_failures=2)
    actions = [env.parse("<search>a ## b</search>"), env.parse("<search>c</search>")]
    replies = env.respond(actions, [10_000, 10_000])
    assert [r.kind for r in replies] == ["error", "error"] and "simulated outage" in replies[0].text
    with pytest.raises(RetrieverUnavailable, match="failed 2 times in a row"):
        env.respond(actions, [10_000, 10_000])


def test_a_short_result_list_is_a_retriever_error():
    class Short(CountingRetriever):
        def search(self, queries, k):
            return super().search(queries, k)[:-1]

    obs = _env(Short()).respond([_env().parse("<search>a ## b</search>")], [10_000])[0]
    assert obs.kind == "error" and "1 result lists for 2 queries" in obs.text


# -- reward ----------------------------------------------------------------------------------------
def test_reward_values():
    reward = ParallelSearchReward()
    completions = [
        "<search>a ## b</search><answer>Rome</answer>",  # correct, decomposed
        "<search>a</search><search>b</search><answer>Rome</answer>",  # correct, sequential
        "<search>a ## b ## c</search><answer>Paris</answer>",  # wrong, decomposed
        "<search>a ## A</search><answer>Rome</answer>",  # a repeat is not a decomposition
        "<answer>Rome</answer>",  # correct without search
        "no answer",
    ]
    golden = [["Rome"]] * len(completions)
    assert reward(completions=completions, golden_answers=golden) == pytest.approx(
        [1.2, 1.0, 0.0, 1.0, 1.0, 0.0]
    )
    strict = ParallelSearchReward(bonus=0.5, min_queries=3)
    assert strict(completions=completions[:3], golden_answers=golden[:3]) == [1.0, 1.0, 0.0]


def test_reward_reads_the_rollout_queries_and_answer_and_the_recipe_separator():
    reward = ParallelSearchReward().with_tags(get_tag_set(PIPES))
    logged: dict[str, float] = {}
    values = reward(
        completions=["ignored", "ignored"],
        golden_answers=[["Rome"], ["Rome"]],
        final_answer=["Rome", "Rome"],
        queries=[["x || y"], ["x ## y"]],  # "##" is plain text under this tag set
        log_metric=logged.__setitem__,
    )
    assert values == pytest.approx([1.2, 1.0])
    assert logged == {
        "parallel_search/em": 1.0,
        "parallel_search/decomposed": 0.5,
        "parallel_search/width": 1.5,
    }
    assert widest_search([], "##") == 0


def test_reward_refuses_settings_that_would_reward_something_else():
    with pytest.raises(ValueError, match="min_queries must be >= 2"):
        ParallelSearchReward(min_queries=1)
    with pytest.raises(ValueError, match="bonus must be >= 0"):
        ParallelSearchReward(bonus=-0.1)


# -- end to end ------------------------------------------------------------------------------------
DOCS = ['"Rome"\nRome is the capital of Italy.', '"Paris"\nParis is the capital of France.']
QUESTIONS = [("Italy", "Rome"), ("France", "Paris"), ("Italy", "Rome"), ("France", "Paris")]
OTHER = {"Italy": "France", "France": "Italy"}
PROMPT = (
    "Search with {search_open} q1 {query_separator} q2 {search_close}, read {info_open} {info_close}, "
    "answer in {answer_open} {answer_close}.\nQuestion: {question}"
)


def _turns(tokenizer, ids: list[int], call: int) -> str:
    """Even calls ask both capitals at once, odd ones only the question's; then the policy answers
    with the document listed under Query 1, so a reply not grouped per query gives a wrong answer."""
    context = tokenizer.decode(ids).split("<|im_start|>assistant")[-1]
    if "</information>" not in context:
        country = "Italy" if "capital of Italy?" in tokenizer.decode(ids) else "France"
        queries = (
            f"capital of {country} || capital of {OTHER[country]}"
            if call % 2 == 0
            else f"capital of {country}"
        )
        return f"<think>look up</think><search>{queries}</search>"
    first = context.split("Query 1:")[1].split("Query 2:")[0]
    city = "Rome" if 'Doc 1(Title: "Rome")' in first else "Paris" if 'Doc 1(Title: "Paris")' in first else "?"
    return f"<think>found</think><answer>{city}</answer>"


def _training_recipe(tmp_path, tiny_model_dir, shared_data):
    qa = tmp_path / "qa.jsonl"
    rows = [
        {"id": str(i), "question": f"What is the capital of {c}?", "golden_answers": [a]}
        for i, (c, a) in enumerate(QUESTIONS)
    ]
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = tmp_path / "prompt.txt"
    template.write_text(PROMPT)
    path = write_tiny_recipe(tmp_path, tiny_model_dir, shared_data, method="search_r1", tags=PIPES)
    data = yaml.safe_load(path.read_text())
    data["data"].update(train=[{"path": str(qa)}], prompt_template=str(template))
    data["environment"] = {
        "kind": "parallel_retrieval",
        "topk": 1,
        "max_queries": 3,
        "retriever": {"kind": "memory", "options": {"docs": DOCS}},
    }
    data["budgets"] = {"max_turns": 3, "max_tokens_per_turn": 40, "max_obs_tokens": 96}
    data["rewards"] = [{"path": "rewards.parallel_search.reward"}, {"path": "rewards.search_r1.format"}]
    data["grpo"].update(max_completion_length=200, save_strategy="no")
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_two_grpo_steps_through_a_recipe_with_exact_masks(tmp_path, tiny_model_dir, shared_data, tokenizer):
    from ssrl_trl.rollout import ScriptedBackend
    from ssrl_trl.train import build_trainer, run_training

    recipe = load_recipe(_training_recipe(tmp_path, tiny_model_dir, shared_data))
    run = build_trainer(recipe)
    run.rollout.backend = ScriptedBackend(tokenizer, lambda ids, call: _turns(tokenizer, ids, call))
    calls: list[list[str]] = []
    build = run.rollout.env_factory

    def counting_factory(tok):
        env = build(tok)
        search = env.retriever.search

        def counted(queries, k):
            calls.append(list(queries))
            return search(queries, k)

        env.retriever.search = counted
        return env

    run.rollout.env_factory = counting_factory
    assert run_training(run, recipe) == 0

    assert len(calls) == 2  # one retriever call per search turn: all 4 episodes' queries together
    assert all(sorted(c) == ["capital of France", "capital of Italy"] for c in calls)
    records = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 8  # 2 steps x 4 samples
    assert {len(r["queries"][0].split(" || ")) for r in records} == {1, 2}
    for rec in records:
        assert "q1 || q2" in rec["prompt"]  # the template renders the recipe's separator
        decomposed = " || " in rec["queries"][0]
        assert rec["rewards"] == {"parallel_search": 1.2 if decomposed else 1.0, "format": 1.0}
        assert rec["num_searches"] == 1 and rec["stop_reason"] == "answer"
        assert len(rec["doc_ids"][0]) == (2 if decomposed else 1)
        kinds = [s["kind"] for s in rec["segments"]]
        assert kinds == ["model", "observation", "model", "eos"]
        observation = rec["segments"][1]["text"]
        assert observation.startswith("\n\n<information>Query 1: capital of ")
        assert observation.count("Query ") == (2 if decomposed else 1)
        assert observation.endswith("</information>\n\n")
        _assert_exact_mask(rec, tokenizer)


def _assert_exact_mask(rec: dict, tokenizer) -> None:
    """Model tokens 1, inserted tokens 0, token for token; the model turns are exactly the
    scripted text's tokens (nothing re-tokenised across the observation boundary)."""
    expected: list[int] = []
    for seg in rec["segments"]:
        expected += [int(seg["kind"] == "model")] * (seg["end"] - seg["start"])
        if seg["kind"] == "model":
            ids = rec["completion_ids"][seg["start"] : seg["end"]]
            assert ids == tokenizer.encode(seg["text"], add_special_tokens=False)
    assert rec["env_mask"] == expected and len(expected) == len(rec["completion_ids"])
    observation = rec["segments"][1]
    assert observation["masked_tokens"] == observation["end"] - observation["start"] > 0


@pytest.mark.slow
def test_eval_recipe_runs_the_parallel_environment(
    tmp_path, tiny_model_dir, shared_data, tokenizer, monkeypatch
):
    """``ssrl-trl eval --recipe`` builds the same environment through the same assembly: the
    scripted policy's parallel search is answered grouped, and the answers are scored."""
    import ssrl_trl.evaluation.cli as eval_cli
    from ssrl_trl.rollout import ScriptedBackend

    path = _training_recipe(tmp_path, tiny_model_dir, shared_data)
    data = yaml.safe_load(path.read_text())
    data["data"]["eval"] = [{"path": data["data"]["train"][0]["path"], "name": "capitals"}]
    data["data"]["overlap"] = "drop_from_train"
    data["data"]["train"] = [{"path": str(shared_data / "qa" / "mini_eval.jsonl"), "limit": 4}]
    path.write_text(yaml.safe_dump(data))
    backend = ScriptedBackend(tokenizer, lambda ids, _call: _turns(tokenizer, ids, 0))
    monkeypatch.setattr(eval_cli, "_load", lambda a: (None, tokenizer, backend))
    out = tmp_path / "eval"
    argv = ["--recipe", str(path), "--limit", "2", "--batch-size", "4", "--no-progress", "--out", str(out)]
    assert eval_cli.main(argv) == 0
    records = [json.loads(line) for line in (out / "predictions_real.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for rec in records:
        assert rec["em"] == 1.0 and len(rec["queries"]) == 1 and " || " in rec["queries"][0]
        assert rec["completion"].count("Query ") == 2
    settings = json.loads((out / "real.settings.json").read_text())
    assert "parallel_retrieval" in json.dumps(settings)
