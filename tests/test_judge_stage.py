"""prompts -> teacher -> judge -> SFT set -> judge-agreement through the real stages (tiny recipes)."""

from __future__ import annotations

import json
import subprocess

import pytest

from aigp_train.cli import run_stage
from aigp_train.llm.generation import read_generations
from aigp_train.llm.judge import DIMENSIONS, parse_scores
from aigp_train.llm.prompts import read_prompts
from aigp_train.outputs import read_jsonl
from aigp_train.pricing import in_a_safe, load_pricing_config, parse_action

from tests.conftest import REPO

TINY = REPO / "recipes" / "tiny"
PRICING = load_pricing_config()


@pytest.fixture(scope="module")
def chain(tiny_prompts, tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    teacher = run_stage("teacher", str(TINY / "teacher.yaml"),
                        [f"prompts_dir={tiny_prompts}", f"output_dir={root / 'teacher'}", "shard_size=50"])
    judge = run_stage("judge", str(TINY / "judge.yaml"),
                      [f"prompts_dir={tiny_prompts}", f"teacher_dir={root / 'teacher'}",
                       f"output_dir={root / 'judge'}"])
    return {"root": root, "teacher": teacher, "judge": judge, "prompts": tiny_prompts}


def test_teacher_answers_every_prompt_and_is_labelled_a_stand_in(chain):
    summary = chain["teacher"]["summary"]
    assert summary["backend"] == "scripted-teacher-stand-in" and summary["stand_in"] is True
    rows = read_generations(chain["root"] / "teacher" / "responses")
    prompts = read_prompts(chain["prompts"], "full") + read_prompts(chain["prompts"], "act_only")
    assert [r["request_id"] for r in rows] == [p["prompt_id"] for p in prompts]  # both variants answered
    assert summary["num_act_only_prompts"] == len(prompts) // 2
    assert all(len(r["completions"]) == 2 and len(r["stand_in_defects"]) == 2 for r in rows)
    assert sum(summary["stand_in_defects"].values()) == 2 * len(prompts) == summary["parse"]["num_total"]
    assert summary["parse"]["num_failed"] == summary["stand_in_defects"].get("malformed_json", 0)


def test_judge_keeps_exactly_the_perfect_safe_responses(chain):
    scores = read_jsonl(chain["root"] / "judge" / "scores.jsonl")
    assert len(scores) == 480
    act = [r for r in scores if r["act_only"]]
    assert len(act) == 240 and all(r["scores"] is None and r["keep"] is r["checks"]["passed"] for r in act)
    scores = [r for r in scores if not r["act_only"]]
    for row in scores:
        perfect = row["scores"] is not None and all(row["scores"][d] == 5 for d in DIMENSIONS)
        assert row["keep"] is (perfect and row["checks"]["passed"])
        if row["keep"]:
            assert row["checks"]["in_a_safe"] and row["checks"]["json_ok"]
    summary = chain["judge"]["summary"]
    assert summary["num_kept"] == sum(r["keep"] for r in scores)
    assert summary["act_only"]["responses"] == 240 and summary["act_only"]["passed_checks"] == len(act)
    assert 0 < summary["num_kept"] < len(scores)  # the stand-in's defects give the judge real work
    assert summary["check_failures"]["numbers"] > 0 and summary["check_failures"]["direction"] > 0
    assert summary["stand_in"] is True


def test_sft_set_format(chain):
    judge_dir = chain["root"] / "judge"
    train, heldout = read_jsonl(judge_dir / "sft" / "train.jsonl"), read_jsonl(judge_dir / "sft" / "heldout.jsonl")
    kept = [r for r in read_jsonl(judge_dir / "scores.jsonl") if r["keep"]]
    summary = chain["judge"]["summary"]["act_only"]
    assert len(train) + len(heldout) == len(kept) - summary["dropped_by_cap"] and train and heldout
    assert not {r["sku_id"] for r in train} & {r["sku_id"] for r in heldout}  # split by SKU
    act = [ex for ex in train + heldout if ex["act_only"]]
    full = [ex for ex in train + heldout if not ex["act_only"]]
    # the recipe's share caps the decision-only examples (0.5: at most as many as the reasoned ones)
    assert 0 < len(act) <= len(full) and summary["dropped_by_cap"] == sum(r["act_only"] for r in kept) - len(act)
    for ex in act:
        assert ex["messages"][1]["content"].endswith("[ACT_ONLY]") and ex["scores"] is None
        assert ex["messages"][2]["content"].startswith('{"discount_change"')  # the decision alone
    prompts = {p["prompt_id"]: p for v in ("full", "act_only") for p in read_prompts(chain["prompts"], v)}
    for ex in full:
        assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant"]
        assert ex["messages"][:2] == prompts[ex["prompt_id"]]["messages"]
        parsed = parse_action(ex["messages"][2]["content"], ex["d_prev"], PRICING)
        assert parsed.failure is None and not parsed.projected and parsed.raw_action == pytest.approx(ex["action"])
        assert in_a_safe(ex["action"], ex["d_prev"], PRICING)
        assert ex["scores"] == {d: 5 for d in DIMENSIONS}
        assert ex["teacher_backend"].endswith("stand-in") and ex["judge_backend"].endswith("stand-in")


def test_judge_agreement_with_stand_in_labels_through_the_cli(chain):
    out = chain["root"] / "agreement"
    proc = subprocess.run(["aigp", "judge-agreement", str(TINY / "judge_agreement.yaml"),
                           f"judge_dir={chain['root'] / 'judge'}", f"output_dir={out}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "agreement.json").read_text())
    scores = [r for r in read_jsonl(chain["root"] / "judge" / "scores.jsonl") if not r["act_only"]]
    expected = sum(r["keep"] is (r["stand_in_defect"] is None) for r in scores) / len(scores)
    assert report["num_responses"] == 240 and report["keep_agreement"] == pytest.approx(expected)
    assert 0.85 < report["keep_agreement"] < 1.0  # the recipe simulates ~3 % judge error
    c = report["confusion"]
    assert sum(c.values()) == 240
    assert "stand-in" in (out / "agreement.md").read_text()


def test_judge_agreement_with_an_annotation_file(chain, tmp_path):
    scores = [r for r in read_jsonl(chain["root"] / "judge" / "scores.jsonl") if not r["act_only"]]
    labels = tmp_path / "labels.jsonl"
    flip = {r["response_id"] for r in scores[::10]}  # annotators disagree with the judge on every 10th
    labels.write_text("".join(json.dumps({"response_id": r["response_id"],
                                          "keep": r["keep"] ^ (r["response_id"] in flip)})
                              + "\n" for r in scores))
    summary = run_stage("judge-agreement", str(TINY / "judge_agreement.yaml"),
                        [f"judge_dir={chain['root'] / 'judge'}", f"output_dir={tmp_path / 'out'}",
                         f"labels_path={labels}", "max_responses=0"])["summary"]
    assert summary["keep_agreement"] == pytest.approx(1 - len(flip) / len(scores))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match="response_id"):
        run_stage("judge-agreement", str(TINY / "judge_agreement.yaml"),
                  [f"judge_dir={chain['root'] / 'judge'}", f"output_dir={tmp_path / 'bad'}", f"labels_path={bad}"])


def test_teacher_cli_two_ranks_and_resume(tiny_prompts, tmp_path, monkeypatch):
    """Two ranks split the shards; rank 0 summarises once all exist; a lost shard is regenerated identically."""
    out = tmp_path / "t"
    overrides = [f"prompts_dir={tiny_prompts}", f"output_dir={out}", "shard_size=30", "max_prompts=90",
                 "variants=[full]"]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_stage("teacher", str(TINY / "teacher.yaml"), overrides)["summary"] == {"rank": 1, "shards_written": 1}
    assert sorted(p.name for p in (out / "responses").glob("shard-*.jsonl")) == ["shard-00001.jsonl"]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    proc = subprocess.run(["aigp", "teacher", str(TINY / "teacher.yaml"), *overrides], capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "RANK": "0", "WORLD_SIZE": "2"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["num_prompts"] == 90
    before = (out / "responses" / "shard-00001.jsonl").read_text()
    (out / "responses" / "shard-00001.jsonl").unlink()
    (out / "manifest.json").unlink()
    summary = run_stage("teacher", str(TINY / "teacher.yaml"), overrides)["summary"]
    assert summary["shards_written"] == 1 and summary["shards_skipped"] == 2
    assert (out / "responses" / "shard-00001.jsonl").read_text() == before


def test_judge_cli_runs_and_skips_a_finished_run(chain):
    args = ["aigp", "judge", str(TINY / "judge.yaml"), f"prompts_dir={chain['prompts']}",
            f"teacher_dir={chain['root'] / 'teacher'}", f"output_dir={chain['root'] / 'judge'}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "already holds a finished run" in proc.stderr
    assert json.loads(proc.stdout)["num_kept"] == chain["judge"]["summary"]["num_kept"]


def test_judge_rejects_mismatched_teacher_and_prompts(chain, tiny_market, tmp_path):
    other = tmp_path / "other_prompts"
    run_stage("prompts", str(TINY / "prompts.yaml"), [f"market_dir={tiny_market}", f"output_dir={other}",
                                                      "selection.max_prompts=5", "selection.seed=7", "variants=[full]"])
    with pytest.raises(ValueError, match="same run"):
        run_stage("judge", str(TINY / "judge.yaml"), [f"prompts_dir={other}",
                                                      f"teacher_dir={chain['root'] / 'teacher'}",
                                                      f"output_dir={tmp_path / 'j'}"])


# ---------------------------------------------------------------------------
# The tiny model through the hf backend
# ---------------------------------------------------------------------------


def test_act_only_sampling_from_the_tiny_model_through_hf(tiny_prompts):
    """[ACT_ONLY] prompts sampled from the (random) tiny Qwen3-MoE: whatever it says, parsing never
    raises, failures are counted, and every action after Ψ is in A_safe."""
    from aigp_train.config import load_recipe
    from aigp_train.llm.backends import BackendConfig, GenerationRequest, HFBackendConfig, SamplingConfig, make_backend
    from aigp_train.pricing import ParseStats
    from aigp_train.stages.teacher import Recipe

    model = load_recipe(TINY / "teacher.yaml", Recipe).model
    backend = make_backend(BackendConfig(kind="hf", hf=HFBackendConfig(batch_size=4, device="cpu",
                                                                       constrain_act_only="none",
                                                                       force_decision="none")), model)
    prompts = read_prompts(tiny_prompts, "act_only")[:2]
    requests = [GenerationRequest(p["prompt_id"], p["messages"], p["state"], True, None) for p in prompts]
    outs = backend.generate(requests, SamplingConfig(n=2, temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=8,
                                                     seed=0))
    assert [len(o) for o in outs] == [2, 2]
    stats = ParseStats()
    for p, completions in zip(prompts, outs):
        for text in completions:
            parsed = stats.add(parse_action(text, p["d_prev"], PRICING))
            assert in_a_safe(parsed.action, p["d_prev"], PRICING)
    assert stats.num_total == 4


def test_judge_stage_with_the_tiny_model_as_judge_counts_unreadable_verdicts(chain, tmp_path):
    """The real judge prompt through the hf backend: a random tiny model cannot score, so every
    verdict is a counted parse failure and nothing is kept; nothing crashes."""
    out = tmp_path / "hf_judge"
    run_stage("teacher", str(TINY / "teacher.yaml"), [f"prompts_dir={chain['prompts']}", "max_prompts=1",
                                                      f"output_dir={tmp_path / 'teacher'}"])
    summary = run_stage("judge", str(TINY / "judge.yaml"), [
        f"prompts_dir={chain['prompts']}", f"teacher_dir={tmp_path / 'teacher'}", f"output_dir={out}",
        "backend.kind=hf", "backend.hf.batch_size=8", "backend.hf.device=cpu", "backend.hf.constrain_act_only=none",
        "backend.hf.force_decision=none",
        "sampling.max_new_tokens=6",
        "shard_size=500"])["summary"]
    judged = [r for r in read_jsonl(out / "scores.jsonl") if r["judged"]]
    assert summary["judge_backend"] == "hf" and summary["num_kept"] == 0
    assert judged and all(r["score_failure"] for r in judged)
    assert sum(summary["score_parse_failures"].values()) == len(judged)
    assert all(parse_scores(r["score_failure"]).scores is None for r in judged)


def test_kept_examples_longer_than_the_sft_cutoff_are_left_out(chain, tmp_path):
    """An example truncated at the cutoff would lose its JSON action: the judge leaves it out of sft/."""
    import shutil

    import yaml

    from aigp_train.stages.judge import example_tokens, sft_tokenizer_and_cutoff

    prompts = tmp_path / "prompts"
    shutil.copytree(chain["prompts"], prompts)
    resolved = yaml.safe_load((prompts / "recipe.yaml").read_text())
    lengths = sorted(r["context"]["num_tokens"] for r in read_prompts(prompts, "full"))
    resolved["prompt"]["full_cutoff_tokens"] = lengths[len(lengths) // 2] + 600  # about half the examples fit
    (prompts / "recipe.yaml").write_text(yaml.safe_dump(resolved))
    out = tmp_path / "judge"
    summary = run_stage("judge", str(TINY / "judge.yaml"), [f"prompts_dir={prompts}",
                                                           f"teacher_dir={chain['root'] / 'teacher'}",
                                                           f"output_dir={out}"])["summary"]
    tokenizer, cutoff, _ = sft_tokenizer_and_cutoff(str(prompts))
    assert cutoff == resolved["prompt"]["full_cutoff_tokens"]
    sft = [ex for ex in read_jsonl(out / "sft" / "train.jsonl") + read_jsonl(out / "sft" / "heldout.jsonl")
           if not ex["act_only"]]
    assert summary["sft_over_cutoff"] > 0 and len(sft) == summary["num_kept"] - summary["sft_over_cutoff"]
    assert all(example_tokens(tokenizer, ex["messages"]) <= cutoff for ex in sft)
    scores = read_jsonl(out / "scores.jsonl")
    assert sum(r["fits_cutoff"] is False for r in scores) == summary["sft_over_cutoff"]
