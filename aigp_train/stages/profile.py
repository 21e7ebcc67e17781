"""Generation throughput of the deployed backend and model, projected to the nightly window (App. B.3).

Runs the prompts of one night (built exactly as ``aigp infer`` builds them, from ``infer_recipe``)
through the configured backend at each batch size, measures prompt tokens/s, generated tokens/s
and SKUs/s on this machine, and projects the wall time for ``projection.num_skus`` SKUs on the
cluster of ``cluster`` against ``projection.window_hours``: from this machine's rate, from the
paper's App. B.3 arithmetic (about 60 s per SKU, batch 32, 16 GPUs), and as a what-if table
over GPUs, batch size and output length (``aigp_train.evaluate.profile`` states the model).
On a CPU box it runs the tiny model and says so in the output.

Writes ``profile.md`` (also printed) and ``profile.json``.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
from dataclasses import dataclass

from aigp_train.config import help_field, load_recipe
from aigp_train.distributed.cluster import load_cluster
from aigp_train.evaluate.infer import build_requests
from aigp_train.evaluate.night import night_prompts
from aigp_train.evaluate.profile import (
    ProjectionConfig,
    app_b3_row,
    fit_exponents,
    format_report,
    measure,
    measured_row,
    what_if,
)
from aigp_train.llm.backends import make_backend
from aigp_train.llm.config import InferRecipe
from aigp_train.llm.prompts import count_prompt_tokens
from aigp_train.llm.tokenizer import load_tokenizer
from aigp_train.outputs import StageOutput, atomic_write_json, atomic_write_text


@dataclass
class Recipe:
    output_dir: str = help_field("folder of this stage's output")
    infer_recipe: str = help_field("aigp infer recipe: the backend, model, adapter, sampling and prompts profiled")
    infer_overrides: list[str] = help_field("key=value overrides of the infer recipe "
                                            "(e.g. sampling.max_new_tokens=256)")
    market_dir: str = help_field("market folder whose last night's SKUs are the prompts")
    num_prompts: int = help_field("prompts per measurement (the night's first SKUs)")
    batch_sizes: list[int] = help_field("batch sizes measured (two or more give the batch-scaling exponent)")
    cluster: str = help_field("cluster file of the projection (cluster/*.yaml)")
    projection: ProjectionConfig = help_field("the nightly job and the App. B.3 assumptions")


def _device() -> str:
    import torch  # noqa: PLC0415 - torch (heavy): `aigp profile --help` stays light

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run(recipe: Recipe, out: StageOutput) -> dict:
    import torch  # noqa: PLC0415 - torch (heavy)

    inf = load_recipe(recipe.infer_recipe, InferRecipe, [f"market_dir={recipe.market_dir}",
                                                          f"max_skus={recipe.num_prompts}", *recipe.infer_overrides])
    cluster = load_cluster(recipe.cluster)
    tokenizer = load_tokenizer(inf.model)
    prompts = night_prompts(inf, tokenizer=tokenizer)
    requests = build_requests(prompts, inf.adapter)

    def backend_at(batch: int):
        cfg = inf.backend
        if cfg.kind == "hf":
            cfg = dataclasses.replace(cfg, hf=dataclasses.replace(cfg.hf, batch_size=batch))
        return make_backend(cfg, inf.model, inf.pricing)

    rows = measure(backend_at, requests, inf.sampling, lambda r: count_prompt_tokens(tokenizer, r.messages),
                   lambda text: len(tokenizer(text or "", add_special_tokens=False)["input_ids"]), recipe.batch_sizes)
    fit = fit_exponents(rows)
    best = max(rows, key=lambda r: r.skus_per_s)
    cfg = recipe.projection
    measured = measured_row(cfg, best, cluster.world_size)
    b3 = app_b3_row(cfg)
    table = what_if(cfg, fit["alpha"], fit["prefill_share"])
    on_cluster = torch.cuda.is_available() and cluster.device.kind == "cuda" and not inf.model.name.startswith("tiny")
    device = _device()
    report = format_report(device, inf.model.name, inf.backend.kind, on_cluster, rows, fit, measured, b3, table, cfg)
    atomic_write_text(out.path / "profile.md", report)
    atomic_write_json(out.path / "profile.json", {
        "device": device, "model": inf.model.name, "backend": inf.backend.kind, "adapter": inf.adapter,
        "measured_on_cluster_hardware": on_cluster, "cluster": cluster.name, "cluster_gpus": cluster.world_size,
        "measurements": [r.as_dict() for r in rows], "fit": fit, "projection_measured": measured,
        "projection_app_b3": b3, "what_if": table, "assumptions": dataclasses.asdict(cfg)})
    print(report, file=sys.stderr, flush=True)
    return {"inputs": {"market": recipe.market_dir},
            "rows": {"prompts": len(requests), "measurements": len(rows)},
            "summary": {"device": device, "model": inf.model.name, "backend": inf.backend.kind,
                        "measured_on_cluster_hardware": on_cluster,
                        "skus_per_s": best.skus_per_s, "generated_tokens_per_s": best.generated_tokens_per_s,
                        "prompt_tokens_per_s": best.prompt_tokens_per_s,
                        "hours_for_num_skus_measured": measured["hours"], "hours_app_b3": b3["hours"],
                        "window_hours": cfg.window_hours, "report": str(out.path / "profile.md")}}
