"""Agreement of the judge with a labelled set (paper §3.2: 96.4 % agreement with experts on 2,000 held-out responses).

Reads ``scores.jsonl`` of an ``aigp judge`` run and compares, per response, the judge's keep
decision (deterministic checks + the four scores) with a label, and each dimension's "is it a
5" with the label's per-dimension verdict.

Labels come from one of:

* ``labels_path: ""``: the ground truth of the scripted STAND-IN teacher, i.e. the defect it
  injected into each response (none -> keep, all dimensions fine; ``wrong_number`` -> Data
  Accuracy below 5, ...; ``unsafe_action`` -> not kept, dimensions fine). This measures the
  judge against known, synthetic defects, NOT against human experts: with the stand-in judge
  it mostly measures the simulated judge error the recipe injects.
* ``labels_path: <file.jsonl>``: real annotations, one row per response:
  ``{"response_id": ..., "keep": true|false, "dimensions": {"data_accuracy": true, ...}}``
  (``dimensions`` optional; true = deserves a 5).

``max_responses`` takes that many responses (paper: 2,000) in a fixed hashed order of their
ids (not the first shards: those are a few SKUs' days). Writes ``agreement.json`` and
``agreement.md``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from aigp_train.config import help_field
from aigp_train.llm.backends.scripted import DEFECT_DIMENSION
from aigp_train.llm.judge import DIMENSION_NAMES, DIMENSIONS
from aigp_train.outputs import StageOutput, atomic_write_json, atomic_write_text, read_jsonl


@dataclass
class Recipe:
    output_dir: str = help_field("folder of this stage's output")
    judge_dir: str = help_field("output folder of `aigp judge` (its scores.jsonl is evaluated)")
    labels_path: str = help_field("JSONL of labels; empty: the stand-in teacher's injected defects")
    max_responses: int = help_field("evaluate at most this many responses (paper: 2,000); 0 = all")


def stand_in_labels(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for row in rows:
        if "stand_in_defect" not in row:
            raise ValueError(
                f"response {row['response_id']} has no stand-in defect label: the teacher was not the scripted "
                "stand-in. Give real annotations with labels_path=<file.jsonl> (see `aigp judge-agreement --help`).")
        defect = row["stand_in_defect"]
        dims = {d: DEFECT_DIMENSION.get(defect) != d for d in DIMENSIONS}
        out[row["response_id"]] = {"keep": defect is None, "dimensions": dims, "defect": defect}
    return out


def file_labels(path: str) -> dict[str, dict]:
    rows = read_jsonl(path)
    out = {}
    for i, row in enumerate(rows, 1):
        if "response_id" not in row or not isinstance(row.get("keep"), bool):
            raise ValueError(f"{path}:{i} needs 'response_id' and a boolean 'keep' (got keys {sorted(row)}).")
        out[str(row["response_id"])] = {"keep": row["keep"], "dimensions": row.get("dimensions") or {},
                                        "defect": row.get("defect")}
    return out


def _order(response_id: str) -> str:
    return hashlib.sha256(response_id.encode()).hexdigest()


def agreement(rows: list[dict], labels: dict[str, dict]) -> dict:
    """Keep agreement (with its confusion counts) and per-dimension agreement."""
    tp = fp = fn = tn = 0
    dim_hits = {d: [0, 0] for d in DIMENSIONS}  # agree, total
    by_defect: dict[str, list[int]] = {}
    for row in rows:
        label = labels[row["response_id"]]
        judge_keep, true_keep = bool(row["keep"]), bool(label["keep"])
        tp += judge_keep and true_keep
        fp += judge_keep and not true_keep
        fn += true_keep and not judge_keep
        tn += not judge_keep and not true_keep
        key = str(label.get("defect"))
        hit = by_defect.setdefault(key, [0, 0])
        hit[0] += judge_keep == true_keep
        hit[1] += 1
        if row.get("scores"):
            for d in DIMENSIONS:
                if d in label["dimensions"]:
                    dim_hits[d][0] += (row["scores"][d] == 5) == bool(label["dimensions"][d])
                    dim_hits[d][1] += 1
    n = tp + fp + fn + tn
    return {
        "num_responses": n,
        "keep_agreement": (tp + tn) / n if n else None,
        "confusion": {"judge_keep_label_keep": tp, "judge_keep_label_reject": fp,
                      "judge_reject_label_keep": fn, "judge_reject_label_reject": tn},
        "keep_precision": tp / (tp + fp) if tp + fp else None,
        "keep_recall": tp / (tp + fn) if tp + fn else None,
        "dimension_agreement": {d: (a / t if t else None) for d, (a, t) in dim_hits.items()},
        "dimension_counts": {d: t for d, (_, t) in dim_hits.items()},
        "agreement_by_label": {k: v[0] / v[1] for k, v in sorted(by_defect.items())},
    }


def _markdown(report: dict) -> str:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = [f"# Judge agreement ({report['labels']})", "",
             f"Keep-decision agreement: **{pct(report['keep_agreement'])} on {report['num_responses']:,} responses** "
             "(paper §3.2: 96.4% with expert annotations on 2,000).", "",
             f"Judge backend: {report['judge_backend']}; teacher backend: {report['teacher_backend']}.", "",
             "| dimension | agreement | responses |", "|---|---|---|"]
    for d in DIMENSIONS:
        lines.append(f"| {DIMENSION_NAMES[d]} | {pct(report['dimension_agreement'][d])} "
                     f"| {report['dimension_counts'][d]} |")
    lines += ["", "| label | keep agreement |", "|---|---|"]
    lines += [f"| {k} | {pct(v)} |" for k, v in report["agreement_by_label"].items()]
    c = report["confusion"]
    lines += ["", f"Confusion: kept & label keep {c['judge_keep_label_keep']}, kept & label reject "
              f"{c['judge_keep_label_reject']}, rejected & label keep {c['judge_reject_label_keep']}, rejected & "
              f"label reject {c['judge_reject_label_reject']}."]
    if report["labels"].startswith("stand-in"):
        lines += ["", "Labels are the scripted stand-in teacher's injected defects, not expert annotations; with the "
                      "stand-in judge this agreement reflects the judge error the recipe simulates."]
    return "\n".join(lines) + "\n"


def run(recipe: Recipe, out: StageOutput) -> dict:
    scores_path = Path(recipe.judge_dir) / "scores.jsonl"
    if not scores_path.is_file():
        raise FileNotFoundError(f"{scores_path} not found: run `aigp judge` first (judge_dir={recipe.judge_dir}).")
    # decision-only answers are kept by their checks alone: the judge never scored them
    rows = [r for r in read_jsonl(scores_path) if not r.get("act_only")]
    labels = file_labels(recipe.labels_path) if recipe.labels_path else stand_in_labels(rows)
    rows = [r for r in rows if r["response_id"] in labels]
    if not rows:
        raise ValueError(f"no response of {scores_path} has a label in {recipe.labels_path or 'the stand-in defects'}.")
    rows.sort(key=lambda r: _order(r["response_id"]))
    if recipe.max_responses > 0:
        rows = rows[: recipe.max_responses]
    report = agreement(rows, labels)
    report.update({
        "labels": ("stand-in teacher injected defects" if not recipe.labels_path
                   else f"annotations {recipe.labels_path}"),
        "judge_backend": rows[0].get("judge_backend"), "teacher_backend": rows[0].get("teacher_backend"),
        "paper_reference": {"keep_agreement": 0.964, "num_responses": 2000},
    })
    atomic_write_json(out.path / "agreement.json", report)
    atomic_write_text(out.path / "agreement.md", _markdown(report))
    summary = {k: report[k] for k in ("num_responses", "keep_agreement", "dimension_agreement", "labels",
                                      "judge_backend", "confusion")}
    return {"inputs": {"judge": recipe.judge_dir, **({"labels": recipe.labels_path} if recipe.labels_path else {})},
            "rows": {"responses": report["num_responses"]}, "summary": json.loads(json.dumps(summary))}
