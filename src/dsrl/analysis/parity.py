"""First-step parity: does each case train the same model as the suite's baseline? (``parity.tsv``)

The cheapest strong evidence that two ZeRO/offload cases are the same training: with the same seed, step 1 starts
from the same weights and data, so its rollout (a checksum of the response tokens), the old log-probs, and the
policy loss and gradient norm of the first mini batch must agree, exactly on CPU and within bf16 noise on GPU.
All of it comes from the ``parity/*`` metrics in ``metrics.jsonl``: no extra training. Runs made before those
metrics existed (and imported verl runs) lack them: their cells say ``not logged``, and ``parity_pass`` rests on
what both runs logged (``not logged`` if nothing).

A quantity agrees when ``|candidate - baseline| <= atol + rtol * |baseline|`` for each of its statistics (numpy's
``isclose``); ``<quantity>_abs_diff`` is the largest ``|candidate - baseline|`` among them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dsrl.analysis.summary import RunRecord

PARITY_STEP = 1
RESPONSES = "parity/response_crc32"
QUANTITIES: dict[str, tuple[str, ...]] = {
    # over every response token of the batch (the trainer's metrics.parity_metrics)
    "old_log_prob": ("parity/old_log_prob/mean", "parity/old_log_prob/min", "parity/old_log_prob/max"),
    # the actor's first mini batch, before any optimizer step (later ones drift with the learning rate)
    "pg_loss": ("parity/actor/pg_loss",),
    "grad_norm": ("parity/actor/grad_norm",),
}
NOT_LOGGED = "not logged"


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


TOLERANCES = {
    # Deterministic CPU kernels: only reduction order differs (ZeRO-3's partitioned gradients).
    "cpu": Tolerance(rtol=1e-3, atol=1e-5),
    # bf16 keeps 8 significant bits (relative step 2**-8 = 0.4 %): a few of those across kernels and reductions.
    "cuda": Tolerance(rtol=2e-2, atol=1e-3),
}


def _step(record: RunRecord) -> Mapping[str, float]:
    table = record.metrics
    return table.loc[PARITY_STEP].dropna().to_dict() if PARITY_STEP in table.index else {}


def compare_step(candidate: Mapping[str, float], baseline: Mapping[str, float], tol: Tolerance) -> dict[str, Any]:
    """One parity row's checks: ``responses_match``, ``<quantity>_abs_diff``, ``parity_pass`` and what failed."""
    row: dict[str, Any] = {}
    failed: list[str] = []
    checked = False
    if RESPONSES in candidate and RESPONSES in baseline:
        row["responses_match"] = bool(candidate[RESPONSES] == baseline[RESPONSES])
        checked = True
        if not row["responses_match"]:
            failed.append("responses")
    else:
        row["responses_match"] = NOT_LOGGED
    for name, keys in QUANTITIES.items():
        if not all(k in candidate and k in baseline for k in keys):
            row[f"{name}_abs_diff"] = NOT_LOGGED
            continue
        cand = np.array([candidate[k] for k in keys])
        base = np.array([baseline[k] for k in keys])
        row[f"{name}_abs_diff"] = float(np.max(np.abs(cand - base)))
        checked = True
        if not np.isclose(cand, base, rtol=tol.rtol, atol=tol.atol).all():
            failed.append(name)
    row |= {"rtol": tol.rtol, "atol": tol.atol}
    row["parity_pass"] = not failed if checked else NOT_LOGGED
    row["failed"] = ",".join(failed)
    return row


def parity_table(records: Iterable[RunRecord], baseline: str, tol: Tolerance) -> pd.DataFrame:
    """One row per run of another case vs the baseline run with the same algorithm and seed."""
    records = list(records)
    base = {(r.algo, r.seed): r for r in records if r.case == baseline}
    if not base:
        raise ValueError(f"parity_table: no run of the baseline case {baseline!r}")
    rows = [
        {
            "algo": r.algo,
            "seed": r.seed,
            "case": r.case,
            "baseline": baseline,
            "step": PARITY_STEP,
            **compare_step(_step(r), _step(base[r.algo, r.seed]), tol),
        }
        for r in records
        if r.case != baseline and (r.algo, r.seed) in base
    ]
    columns = ["algo", "seed", "case", "baseline", "step", "responses_match"]
    columns += [f"{name}_abs_diff" for name in QUANTITIES] + ["rtol", "atol", "parity_pass", "failed"]
    return pd.DataFrame(rows, columns=columns).sort_values(["algo", "seed"], kind="stable").reset_index(drop=True)
