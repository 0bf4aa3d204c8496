"""Read back what each `trainer.logger` backend wrote for a run: {step: {metric: value}}."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def tensorboard_scalars(log_dir: Path) -> dict[int, dict[str, float]]:
    """Through TensorBoard's own reader, which applies purge_step as the UI does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            out.setdefault(event.step, {})[tag] = event.value
    return out


def _wandb_records(path: Path):
    """A `.wandb` file is a LevelDB-style log (32 KiB blocks, 7-byte record headers) after a 7-byte file header."""
    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST piece of a record
            yield buf
            buf = b""


def wandb_history(run_dir: Path) -> dict[str, dict[int, dict[str, float]]]:
    """Offline wandb runs under `<run_dir>/wandb`, by run id: each one's logged history rows."""
    from wandb.proto import wandb_internal_pb2 as pb

    runs: dict[str, dict[int, dict[str, float]]] = {}
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        rows = runs.setdefault(path.stem.removeprefix("run-"), {})
        for raw in _wandb_records(path):
            rec = pb.Record()
            rec.ParseFromString(raw)
            if rec.WhichOneof("record_type") == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                rows[int(row["_step"])] = row
    return runs


def mlflow_run(run_dir: Path, run_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
    return client, client.get_run(run_id)
