"""verl's loggers and the trained actor as a Hugging Face folder, on real 2-rank CPU runs (one per ZeRO stage).

The runs train in fp32 with a large learning rate and an entropy bonus (a gradient even when every score is 0), so
exported weights must match the trainer's to fp32 precision and visibly differ from the initial model. The ZeRO-3
run has every logger on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

import torch  # noqa: E402
from logger_files import mlflow_run, tensorboard_scalars, wandb_history  # noqa: E402
from trainer_runs import SMALL, run_dsrl  # noqa: E402

from dsrl import cli  # noqa: E402
from dsrl import workers as W  # noqa: E402
from dsrl.rollout.batch import assemble_batch  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.slow]

STAGES = (1, 2, 3)
ALL_LOGGERS = "trainer.logger=[console,file,tensorboard,wandb,mlflow]"
VAL_KEY = "val-core/dsrl/synthetic_gsm8k/reward/mean@1"


def _args(stage: int) -> list[str]:
    args = [
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.rollout.n=2",
        "trainer.total_training_steps=1",
        "trainer.save_freq=1",
        "actor_rollout_ref.actor.optim.lr=1e-2",
        "actor_rollout_ref.actor.entropy_coeff=0.01",
        f"actor_rollout_ref.actor.deepspeed.zero_stage={stage}",
        "actor_rollout_ref.actor.deepspeed.mixed_precision=fp32",
        "trainer.project_name=dsrl_tests",
        f"trainer.experiment_name=zero{stage}",
    ]
    if stage == 2:  # verl's spelling of the same request
        args.append("actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]")
    else:
        args.append("trainer.save_hf_model=True")
    if stage == 3:
        args += [ALL_LOGGERS, "trainer.test_freq=1"]
    return args


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    runs = {stage: run_dsrl(root / f"zero{stage}", *_args(stage), env=env) for stage in STAGES}
    for run in runs.values():
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return runs


def test_every_logger_writes_the_runs_metrics(stage_runs):
    run = stage_runs[3]
    (row,) = run.metrics
    step, metrics = row.pop("step"), row
    assert step == 1 and VAL_KEY in metrics
    numbers = {k: v for k, v in metrics.items() if v is not None}

    assert any(line.startswith("step:1 - ") for line in run.stdout.splitlines())

    file_rows = [json.loads(line) for line in (run.run_dir / "dsrl_tests" / "zero3.jsonl").read_text().splitlines()]
    assert file_rows == [{"step": 1, "data": metrics}]

    scalars = tensorboard_scalars(run.run_dir / "tensorboard")[1]
    assert set(scalars) == set(numbers)
    for key, value in numbers.items():
        assert scalars[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key

    ids = json.loads((run.run_dir / "loggers.json").read_text())
    history = wandb_history(run.run_dir)
    assert list(history) == [ids["wandb"]]
    logged = history[ids["wandb"]][1]
    for key, value in numbers.items():
        assert logged[key] == pytest.approx(value), key

    client, mlrun = mlflow_run(run.run_dir, ids["mlflow"])
    assert mlrun.info.run_name == "zero3"
    assert client.get_experiment(mlrun.info.experiment_id).name == "dsrl_tests"
    assert mlrun.data.params["trainer/experiment_name"] == "zero3"
    expected = {k.replace("@", "_at_"): v for k, v in numbers.items()}
    assert set(mlrun.data.metrics) == set(expected)
    for key, value in expected.items():
        assert mlrun.data.metrics[key] == pytest.approx(value), key


def test_missing_logger_package_fails_before_any_process_starts(tmp_path, monkeypatch, capsys):
    from dsrl import loggers

    monkeypatch.setitem(loggers.PACKAGES, "wandb", ("dsrl_no_such_module", "wandb"))
    code = cli.main(["train", "--nproc-per-node", "1", f"trainer.run_dir={tmp_path / 'run'}", *SMALL, ALL_LOGGERS])
    assert code == 2
    assert "trainer.logger=wandb needs the 'wandb' package" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _fixed_batch(pad_id: int) -> dict[str, torch.Tensor]:
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]
    responses = [[13, 14, 15, 16], [17, 18, 19, 20, 21, 22]]
    return assemble_batch(prompts, responses, 1, pad_id, 8, torch.device("cpu"))


def _log_probs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return W.log_probs_of(model.eval(), batch, 1.0, False)[0]


def _load(path, dtype=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, **({"dtype": dtype} if dtype else {}))
    return model, AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("stage", STAGES)
def test_export_round_trips_the_trained_actor(stage_runs, stage, tmp_path):
    run = stage_runs[stage]
    step_dir = run.run_dir / "checkpoints" / "global_step_1"
    assert cli.main(["export", str(step_dir), str(tmp_path / "hf")]) == 0
    exported, tokenizer = _load(tmp_path / "hf")
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json"}
    batch = _fixed_batch(int(tokenizer.pad_token_id))
    got = _log_probs(exported, batch)

    # the trainer's own weights: gathered from the live engine at the end of training ...
    live, _ = _load(run.run_dir / "actor_hf")
    torch.testing.assert_close(got, _log_probs(live, batch), rtol=1e-5, atol=1e-5)
    if stage < 3:
        # ... and, below ZeRO-3, the module DeepSpeed itself saved (whole weights) in the checkpoint
        module = torch.load(
            step_dir / "actor" / "ckpt" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
        )["module"]
        reference, _ = _load(Path(run.info["model_path"]))
        reference.load_state_dict(module)
        torch.testing.assert_close(got, _log_probs(reference, batch), rtol=1e-5, atol=1e-5)
    initial = _load(Path(run.info["model_path"]))[0].state_dict()
    moved = max((w - initial[k]).abs().max().item() for k, w in exported.state_dict().items())
    assert moved > 1e-3  # an Adam step at lr 1e-2 moved the weights far beyond the tolerance above
