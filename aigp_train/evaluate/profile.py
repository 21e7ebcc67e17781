"""Generation throughput of the configured backend, projected to the nightly window (App. B.3).

Measured here, on the machine that runs ``aigp profile``, through the same request building
as ``aigp infer`` (full reasoning mode, the prompts of one day):

* prompt tokens/s: the prompts run with ``max_new_tokens=1`` (prefill only);
* generated tokens/s and SKUs/s: the prompts run with the recipe's sampling;
* at every batch size in the recipe, after one warm-up call.

Generated tokens are counted by re-encoding each completion with the model's tokenizer (the
backend interface returns text): close to, not exactly, the sampled token count.

Projections to ``num_skus`` (paper: ~200,000 a day) against ``window_hours`` (paper: 7 h):

1. *measured*: this machine taken as one replica of the cluster in the recipe, replicas =
   num_gpus / gpus_per_replica. Only meaningful when this machine is a replica of that
   cluster; on a CPU box with the tiny model it is not, and the output says so.
2. *App. B.3*: the paper's own arithmetic, num_skus x seconds_per_sku / (batch x num_gpus),
   with about 60 s per SKU at batch 32 on 16 GPUs: 200,000 x 60 / 512 s = 6.5 h.
3. *what-if* over GPUs, batch size and output length, anchored at App. B.3 and scaled by two
   exponents *measured here*: the batch-time exponent alpha (time of one batch ∝ batch^alpha;
   0 = memory-bound decoding, where a bigger batch is free, 1 = compute-bound) and the prefill
   share p of a batch's time (the part that does not scale with output length):
   t_batch(b, L) = seconds_per_sku · [p + (1 − p) · L / L_ref] · (b / b_ref)^alpha;
   wall = num_skus / (replicas · b / t_batch). GPUs scale linearly (replicas are independent).
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from aigp_train.config import help_field


@dataclass
class ProjectionConfig:
    num_skus: int = help_field("SKUs priced per night")
    window_hours: float = help_field("nightly window the batch must fit in")
    seconds_per_sku: float = help_field("end-to-end time per SKU (with CoT) within one batch on one replica")
    batch_size: int = help_field("concurrent SKUs per replica in the paper's setting")
    num_gpus: int = help_field("GPUs of the paper's cluster, for the App. B.3 row")
    reference_output_tokens: int = help_field("output length the 60 s per SKU refers to")
    gpus_per_replica: int = help_field("GPUs one inference replica spans (tensor parallel size)")
    what_if_gpus: list[int] = help_field("GPU counts of the what-if table")
    what_if_batch_sizes: list[int] = help_field("batch sizes of the what-if table")
    what_if_output_tokens: list[int] = help_field("output lengths of the what-if table")


@dataclass
class Measurement:
    batch_size: int
    num_requests: int
    prompt_tokens: int
    generated_tokens: int
    prefill_seconds: float
    total_seconds: float

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds

    @property
    def generated_tokens_per_s(self) -> float:
        return self.generated_tokens / max(self.total_seconds - self.prefill_seconds, 1e-9)

    @property
    def skus_per_s(self) -> float:
        return self.num_requests / self.total_seconds

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(prompt_tokens_per_s=self.prompt_tokens_per_s, generated_tokens_per_s=self.generated_tokens_per_s,
                 skus_per_s=self.skus_per_s, seconds_per_batch=self.total_seconds * self.batch_size / self.num_requests)
        return d


@contextmanager
def _no_forced_decisions(backend):
    """The backend with ``force_decision`` off for the duration (prefill-only runs)."""
    cfg = getattr(backend, "cfg", None)
    if cfg is None or getattr(cfg, "force_decision", "none") == "none":
        yield backend
        return
    backend.cfg = dataclasses.replace(cfg, force_decision="none")
    try:
        yield backend
    finally:
        backend.cfg = cfg


def measure(make_backend_at, requests: list, sampling, count_prompt_tokens, count_tokens,
            batch_sizes: list[int]) -> list[Measurement]:
    """Time prefill-only and full generation of ``requests`` at each batch size.

    ``make_backend_at(b)`` returns the configured backend set to batch ``b``;
    ``count_prompt_tokens(request)`` and ``count_tokens(text)`` use the model's tokenizer.
    """
    prefill_sampling = dataclasses.replace(sampling, n=1, max_new_tokens=1)
    full_sampling = dataclasses.replace(sampling, n=1)
    prompt_tokens = sum(count_prompt_tokens(r) for r in requests)
    rows = []
    for b in batch_sizes:
        if b < 1:
            raise ValueError(f"batch sizes must be >= 1, got {b}.")
        backend = make_backend_at(b)
        with _no_forced_decisions(backend):  # a 1-token answer holds no reasoning to force a decision after
            backend.generate(requests[:b], prefill_sampling)  # warm-up: allocations, kernels, caches
            t0 = time.perf_counter()
            backend.generate(requests, prefill_sampling)
            t1 = time.perf_counter()
        outs = backend.generate(requests, full_sampling)
        t2 = time.perf_counter()
        generated = sum(count_tokens(o[0]) for o in outs)
        rows.append(Measurement(b, len(requests), prompt_tokens, generated, t1 - t0, t2 - t1))
    return rows


def fit_exponents(rows: list[Measurement]) -> dict:
    """alpha (log-log slope of seconds per batch on batch size) and the prefill share p."""
    p = float(np.mean([r.prefill_seconds / r.total_seconds for r in rows]))
    p = min(max(p, 0.0), 1.0)
    if len(rows) >= 2 and len({r.batch_size for r in rows}) >= 2:
        b = np.log([r.batch_size for r in rows])
        t = np.log([r.total_seconds * r.batch_size / r.num_requests for r in rows])
        alpha = float(np.polyfit(b, t, 1)[0])
        alpha_source = f"measured over batch sizes {[r.batch_size for r in rows]}"
    else:
        alpha, alpha_source = 1.0, "one batch size measured: alpha = 1 assumed (compute-bound, pessimistic)"
    return {"alpha": alpha, "alpha_source": alpha_source, "prefill_share": p}


def hours(seconds: float) -> float:
    return seconds / 3600.0


def app_b3_row(cfg: ProjectionConfig) -> dict:
    wall = cfg.num_skus * cfg.seconds_per_sku / (cfg.batch_size * cfg.num_gpus)
    return {"num_gpus": cfg.num_gpus, "batch_size": cfg.batch_size, "output_tokens": cfg.reference_output_tokens,
            "hours": hours(wall), "fits_window": hours(wall) <= cfg.window_hours}


def measured_row(cfg: ProjectionConfig, best: Measurement, cluster_gpus: int) -> dict:
    replicas = cluster_gpus // cfg.gpus_per_replica
    if replicas < 1:
        raise ValueError(f"the cluster has {cluster_gpus} GPUs but one replica needs {cfg.gpus_per_replica}; "
                         f"lower projection.gpus_per_replica or pick a bigger cluster.")
    wall = cfg.num_skus / (best.skus_per_s * replicas)
    return {"num_gpus": cluster_gpus, "replicas": replicas, "batch_size": best.batch_size,
            "skus_per_s_per_replica": best.skus_per_s, "hours": hours(wall),
            "fits_window": hours(wall) <= cfg.window_hours}


def what_if(cfg: ProjectionConfig, alpha: float, prefill_share: float) -> list[dict]:
    rows = []
    for gpus in cfg.what_if_gpus:
        replicas = gpus // cfg.gpus_per_replica
        for b in cfg.what_if_batch_sizes:
            for length in cfg.what_if_output_tokens:
                t_batch = (cfg.seconds_per_sku
                           * (prefill_share + (1 - prefill_share) * length / cfg.reference_output_tokens)
                           * (b / cfg.batch_size) ** alpha)
                wall = math.inf if replicas < 1 else cfg.num_skus * t_batch / (replicas * b)
                rows.append({"num_gpus": gpus, "batch_size": b, "output_tokens": length, "seconds_per_batch": t_batch,
                             "hours": hours(wall), "fits_window": hours(wall) <= cfg.window_hours})
    return rows


def format_report(device: str, model_name: str, backend: str, is_paper_scale: bool, rows: list[Measurement],
                  fit: dict, measured: dict, b3: dict, table: list[dict], cfg: ProjectionConfig) -> str:
    lines = [f"# aigp profile: {backend} backend, model {model_name}, on {device}", ""]
    if not is_paper_scale:
        lines += [f"NOTE: this run measured the model {model_name} on {device}, not the deployed model on the "
                  f"cluster GPUs. The 'measured' projection below is the arithmetic applied to this machine's "
                  f"rate; it does not predict the cluster. The App. B.3 row and the what-if table are anchored "
                  f"at the paper's numbers; only their scaling exponents come from this machine.", ""]
    lines += ["## Measured here", "",
              "| batch | SKUs | prompt tok | prompt tok/s | generated tok | generated tok/s | SKUs/s | s per batch |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = r.as_dict()
        lines.append(f"| {r.batch_size} | {r.num_requests} | {r.prompt_tokens} | {d['prompt_tokens_per_s']:.1f} | "
                     f"{r.generated_tokens} | {d['generated_tokens_per_s']:.1f} | {d['skus_per_s']:.3f} | "
                     f"{d['seconds_per_batch']:.2f} |")
    lines += ["", f"Scaling measured here: alpha = {fit['alpha']:.2f} ({fit['alpha_source']}); prefill share "
                  f"p = {fit['prefill_share']:.2f}.", "",
              f"## Projection to {cfg.num_skus:,} SKUs (window {cfg.window_hours:g} h)", "",
              "| basis | GPUs | batch | output tokens | hours | fits window |", "|---|---:|---:|---:|---:|---|",
              f"| measured here x {measured['replicas']} replicas | {measured['num_gpus']} | "
              f"{measured['batch_size']} | "
              f"recipe | {measured['hours']:.2f} | {'yes' if measured['fits_window'] else 'NO'} |",
              f"| App. B.3 ({cfg.seconds_per_sku:g} s/SKU) | {b3['num_gpus']} | {b3['batch_size']} | "
              f"{b3['output_tokens']} | {b3['hours']:.2f} | {'yes' if b3['fits_window'] else 'NO'} |", "",
              "App. B.3 assumptions: about "
              f"{cfg.seconds_per_sku:g} s per SKU end to end with CoT, batch {cfg.batch_size}, {cfg.num_gpus} GPUs, "
              f"one replica per {cfg.gpus_per_replica} GPU(s); the reference output length "
              f"{cfg.reference_output_tokens} tokens is not in the paper.", "",
              "## What-if (anchored at App. B.3, scaled by the exponents measured here)", "",
              "| GPUs | batch | output tokens | s per batch | hours | fits window |", "|---:|---:|---:|---:|---:|---|"]
    for r in table:
        lines.append(f"| {r['num_gpus']} | {r['batch_size']} | {r['output_tokens']} | {r['seconds_per_batch']:.1f} | "
                     f"{r['hours']:.2f} | {'yes' if r['fits_window'] else 'NO'} |")
    return "\n".join(lines) + "\n"
