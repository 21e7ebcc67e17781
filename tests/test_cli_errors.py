"""Input errors through the real CLI: one or two lines naming the file, key or column and the fix,
exit code 2, no traceback (``--debug`` shows it), and no output folder left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A 60-SKU market, 12 prompts of it, and market copies with a bad logs part."""
    from aigp_train.cli import run_stage

    root = tmp_path_factory.mktemp("cli_errors")
    market, prompts = root / "market", root / "prompts"
    run_stage("simulate", str(TINY / "market.yaml"), [f"output_dir={market}", "num_skus=60"])
    run_stage("prompts", str(TINY / "prompts.yaml"), [f"market_dir={market}", f"output_dir={prompts}",
                                                      "selection.max_prompts=12", "shard_size=6"])
    out = {"root": root, "market": market, "prompts": prompts}
    def set_first(t: pa.Table, column: str, value) -> pa.Table:
        values = t.column(column).to_pylist()
        return t.set_column(t.schema.get_field_index(column), t.schema.field(column),
                            pa.array([value] + values[1:], t.schema.field(column).type))

    for name, change in (("no_units", lambda t: t.drop_columns(["units"])),
                         ("buyer_id", lambda t: t.append_column("buyer_id", pa.array(["b1"] * t.num_rows))),
                         ("nan_discount", lambda t: set_first(t, "discount", float("nan"))),
                         ("negative_units", lambda t: set_first(t, "units", -3)),
                         ("duplicate_sku_day", lambda t: pa.concat_tables([t, t.slice(5, 1)]))):
        copy = root / f"market_{name}"
        shutil.copytree(market, copy)
        for part in sorted((copy / "logs").glob("part-*.parquet")):
            pq.write_table(change(pq.read_table(part)), part)
        out[name] = copy
    for name, damage in (("truncated_part", lambda b: b[: len(b) // 2]), ("not_parquet", lambda b: b"sku_id,day\n")):
        copy = root / f"market_{name}"
        shutil.copytree(market, copy)
        part = copy / "logs" / "part-00000.parquet"
        part.write_bytes(damage(part.read_bytes()))
        out[name] = copy
    duplicate_key = root / "duplicate_key.yaml"
    duplicate_key.write_text(f"include: [{TINY / 'market.yaml'}]\nnum_skus: 60\nnum_skus: 70\n")
    out["duplicate_key"] = duplicate_key
    binary = root / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    out["binary"] = binary
    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("output_dir: [unclosed\n")
    out["bad_yaml"] = bad_yaml
    not_adapter = root / "not_an_adapter"
    not_adapter.mkdir()
    out["not_adapter"] = not_adapter
    return out


# (id, stage, recipe, overrides, text the message must hold); {key} is filled from the fixture,
# {out} is the output folder that must not appear.
CASES = [
    ("recipe_missing", "simulate", "recipes/tiny/nope.yaml", [], "nope.yaml"),
    ("recipe_bad_yaml", "simulate", "{bad_yaml}", [], "not valid YAML"),
    ("unknown_key", "simulate", "recipes/tiny/market.yaml", ["num_skuz=5"], "num_skuz"),
    ("bad_type", "simulate", "recipes/tiny/market.yaml", ["num_skus=many"], "num_skus"),
    ("override_form", "simulate", "recipes/tiny/market.yaml", ["num_skus"], "key=value"),
    ("num_skus_negative", "simulate", "recipes/tiny/market.yaml", ["num_skus=-5"], "num_skus"),
    ("max_step_inf", "simulate", "recipes/tiny/market.yaml", ["pricing.max_step=inf"], "pricing.max_step"),
    ("grid_step_nan", "simulate", "recipes/tiny/market.yaml", ["pricing.grid_step=nan"], "pricing.grid_step"),
    ("ltve_lr_inf", "ltve", "recipes/tiny/ltve.yaml", ["train.lr=inf"], "train.lr"),  # any key, not only pricing
    ("sft_lr_nan", "sft", "recipes/tiny/sft.yaml", ["optim.lr=nan"], "optim.lr"),
    ("d_min_above_d_max", "simulate", "recipes/tiny/market.yaml", ["pricing.d_min=2.0"], "d_min"),
    ("prompts_market_missing", "prompts", "recipes/tiny/prompts.yaml", ["market_dir={root}/nowhere"], "nowhere"),
    ("prompts_missing_column", "prompts", "recipes/tiny/prompts.yaml", ["market_dir={no_units}"], "units"),
    ("prompts_buyer_id", "prompts", "recipes/tiny/prompts.yaml", ["market_dir={buyer_id}"], "buyer_id"),
    ("teacher_prompts_missing", "teacher", "recipes/tiny/teacher.yaml", ["prompts_dir={root}/nowhere"], "nowhere"),
    ("teacher_rates_over_1", "teacher", "recipes/tiny/teacher.yaml",
     ["prompts_dir={prompts}", "backend.scripted.wrong_number_rate=0.9"], "sum to <= 1"),
    ("teacher_unknown_setting", "teacher", "recipes/tiny/teacher.yaml",
     ["prompts_dir={prompts}", "backend.scripted.tempreature=1"], "tempreature"),
    ("teacher_shard_size_0", "teacher", "recipes/tiny/teacher.yaml", ["prompts_dir={prompts}", "shard_size=0"],
     "shard_size"),
    ("judge_teacher_missing", "judge", "recipes/tiny/judge.yaml",
     ["prompts_dir={prompts}", "teacher_dir={root}/nowhere"], "nowhere"),
    ("judge_n_2", "judge", "recipes/tiny/judge.yaml", ["prompts_dir={prompts}", "sampling.n=2"], "sampling.n"),
    ("infer_market_missing", "infer", "recipes/tiny/infer.yaml", ["market_dir={root}/nowhere"], "nowhere"),
    ("infer_missing_column", "infer", "recipes/tiny/infer.yaml", ["market_dir={no_units}"], "units"),
    ("infer_prompt_recipe_missing", "infer", "recipes/tiny/infer.yaml",
     ["market_dir={market}", "prompt_recipe={root}/nope.yaml"], "nope.yaml"),
    ("infer_n_2", "infer", "recipes/tiny/infer.yaml", ["market_dir={market}", "sampling.n=2"], "sampling.n"),
    ("candidates_ltve_missing", "candidates", "recipes/tiny/candidates.yaml",
     ["prompts_dir={prompts}", "market_dir={market}", "ltve_path={root}/nowhere"], "nowhere"),
    ("ltve_logs_missing", "ltve", "recipes/tiny/ltve.yaml", ["data.logs_dir={root}/nowhere"], "nowhere"),
    ("ltve_buyer_id", "ltve", "recipes/tiny/ltve.yaml", ["data.logs_dir={buyer_id}"], "buyer_id"),
    # issue 31: values a type check passes, negative sizes, and files that name nothing
    ("num_skus_1e11", "simulate", "recipes/tiny/market.yaml", ["num_skus=100000000000"], "Lower num_skus"),
    ("horizon_days_0", "simulate", "recipes/tiny/market.yaml", ["horizon_days=0"], "horizon_days=0"),
    ("launch_window_negative", "simulate", "recipes/tiny/market.yaml", ["launch_window_days=-1"],
     "launch_window_days"),
    ("num_workers_negative", "simulate", "recipes/tiny/market.yaml", ["logging.num_workers=-2"], "num_workers"),
    ("output_dir_tilde", "simulate", "recipes/tiny/market.yaml", ["output_dir=~/aigp_tilde_test"], "'~'"),
    ("recipe_duplicate_key", "simulate", "{duplicate_key}", [], "duplicate key 'num_skus'"),
    ("recipe_binary", "simulate", "{binary}", [], "binary.yaml"),
    ("max_prompts_negative", "prompts", "recipes/tiny/prompts.yaml",
     ["market_dir={market}", "selection.max_prompts=-5"], "selection.max_prompts"),
    ("review_max_chars_negative", "prompts", "recipes/tiny/prompts.yaml",
     ["market_dir={market}", "prompt.review_max_chars=-1"], "prompt.review_max_chars"),
    ("teacher_noise_nan", "teacher", "recipes/tiny/teacher.yaml",
     ["prompts_dir={prompts}", "backend.scripted.action_noise_std=nan"], "action_noise_std"),
    ("prompts_nan_discount", "prompts", "recipes/tiny/prompts.yaml", ["market_dir={nan_discount}"],
     "column 'discount' holds 1 non-finite"),
    ("prompts_negative_units", "prompts", "recipes/tiny/prompts.yaml", ["market_dir={negative_units}"],
     "column 'units' holds 1 negative"),
    ("prompts_duplicate_sku_day", "prompts", "recipes/tiny/prompts.yaml", ["market_dir={duplicate_sku_day}"],
     "repeat a (sku_id, day) key"),
    ("prompts_truncated_part", "prompts", "recipes/tiny/prompts.yaml", ["market_dir={truncated_part}"],
     "part-00000.parquet is not a readable Parquet file"),
    ("prompts_not_parquet", "prompts", "recipes/tiny/prompts.yaml", ["market_dir={not_parquet}"],
     "part-00000.parquet is not a readable Parquet file"),
    ("ltve_negative_units", "ltve", "recipes/tiny/ltve.yaml", ["data.logs_dir={negative_units}"], "'units'"),
    ("infer_duplicate_sku_day", "infer", "recipes/tiny/infer.yaml", ["market_dir={duplicate_sku_day}"],
     "(sku_id, day)"),
]


def _aigp(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aigp_train.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "disabled", **(env or {})}, timeout=300)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_input_error_is_two_lines_exit_2_and_leaves_nothing(case, inputs):
    name, stage, recipe, overrides, needle = case
    out = inputs["root"] / f"out_{name}"
    fill = {k: str(v) for k, v in inputs.items()}
    args = [stage, recipe.format(**fill), f"output_dir={out}", *(o.format(**fill) for o in overrides)]
    proc = _aigp(*args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    message = [line for line in proc.stderr.splitlines() if line.startswith(f"aigp {stage}:")]
    assert message, proc.stderr[-3000:]
    tail = proc.stderr[proc.stderr.index(message[0]):].strip().splitlines()
    assert len(tail) <= 2, tail  # the error ends the output in one or two lines
    assert needle.lower() in proc.stderr.lower(), proc.stderr[-3000:]
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


@pytest.mark.parametrize("kind", ["file", "dangling_symlink"])
def test_output_dir_that_is_no_folder_is_refused_and_kept(kind, inputs):
    out = inputs["root"] / f"out_is_{kind}"
    if kind == "file":
        out.write_text("mine\n")
    else:
        out.symlink_to(inputs["root"] / "nowhere_at_all")
    proc = _aigp("simulate", "recipes/tiny/market.yaml", f"output_dir={out}", "num_skus=60")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert str(out) in proc.stderr.strip().splitlines()[-1]
    assert out.is_symlink() if kind != "file" else out.read_text() == "mine\n"
    assert not (inputs["root"] / "nowhere_at_all").exists()


def test_debug_shows_the_traceback(inputs):
    proc = _aigp("simulate", "recipes/tiny/market.yaml", f"output_dir={inputs['root']}/dbg", "num_skus=-5", "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "num_skus" in proc.stderr
