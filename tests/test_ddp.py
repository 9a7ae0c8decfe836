"""torchrun + DDP on CPU (gloo): two processes match one process with the same global batch; rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ila_core.adapters import ILAConfig, adapter_state_dict
from ila_core.config import BackboneConfig
from ila_core.store import LabelStore
from ila_core.training.config import TrainConfig
from ila_core.training.dataset import snapshot
from ila_core.training.fit import fit, prepare_model
from ila_core.training.toydata import write_toy_store

REPO = Path(__file__).resolve().parents[1]
TINY = BackboneConfig(name="test_vit", image_size=96, weights="none")
# LayerNorm instead of BatchNorm inside ILA: BN statistics are per rank, so BN runs cannot match exactly.
# Dropout off everywhere; the cached path makes the input views a function of (seed, epoch) only.
METHOD = ILAConfig(ds_locations=(1, 3), norm="ln", dropout=0.0)
PER_RANK_BATCH, WORLD = 4, 2


def _config(batch_size: int) -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=batch_size, lr=0.05, warmup_steps=2, drop_rate=0.0,
                       use_feature_cache=True, freeze_cls_token=True, seed=7)  # fmt: skip


_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from pathlib import Path
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from ila_core.adapters import adapter_state_dict
    from ila_core.store import LabelStore
    from ila_core.training.dataset import snapshot
    from ila_core.jobs.distributed import cleanup, init_from_env, run_job_distributed
    from ila_core.training.fit import fit, prepare_model
    from tests.test_ddp import METHOD, PER_RANK_BATCH, TINY, _config

    out = Path(sys.argv[1])
    dist = init_from_env()
    with LabelStore.open(out / "ila.db", quick_check=False) as store:
        data = snapshot(store, out)
    cfg = _config(PER_RANK_BATCH)
    built = prepare_model(TINY, METHOD, len(data.class_names), cfg)
    result = fit(built, data, cfg, dist=dist)
    if dist.rank == 0:
        save_file(adapter_state_dict(built.model), str(out / "ddp.safetensors"))
        (out / "ddp.json").write_text(json.dumps(result.metrics.to_dict()))
    outcome = run_job_distributed(out, dist, variant="ila", backbone=TINY,
                                  method_overrides={"ds_locations": [1, 3], "norm": "ln"}, epochs=1, batch_size=4)
    (out / f"job-rank{dist.rank}.json").write_text(json.dumps({"status": outcome.status, "version": outcome.version_id}))
    cleanup()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    write_toy_store(out, num_classes=3, train_per_class=8, holdout_per_class=2)
    script = out / "ddp_script.py"
    script.write_text(_SCRIPT)
    # CPU only (gloo): the equality below is a CPU-determinism check, also on a machine with a GPU
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(WORLD),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_two_processes_match_one_with_the_same_global_batch(ddp_run):
    """Adapter weights and holdout metrics after DDP on 2 ranks x batch 4 equal 1 process x batch 8."""
    torch.set_num_threads(1)
    with LabelStore.open(ddp_run / "ila.db", quick_check=False) as store:
        data = snapshot(store, ddp_run)
    cfg = _config(PER_RANK_BATCH * WORLD)
    built = prepare_model(TINY, METHOD, len(data.class_names), cfg)
    single = fit(built, data, cfg)
    ddp = load_file(str(ddp_run / "ddp.safetensors"))
    ours = adapter_state_dict(built.model)
    assert set(ddp) == set(ours)
    for key in ours:
        torch.testing.assert_close(ddp[key], ours[key], atol=2e-5, rtol=1e-4, msg=key)
    moved = adapter_state_dict(prepare_model(TINY, METHOD, len(data.class_names), cfg).model)["head.weight"]
    assert not torch.allclose(moved, ours["head.weight"])  # training changed the weights at all
    assert json.loads((ddp_run / "ddp.json").read_text())["confusion"] == single.metrics.confusion


def test_only_rank_zero_writes_the_store(ddp_run):
    """A torchrun job: every rank trains, one job row and its versions (probe, then ILA) are written by rank 0."""
    ranks = [json.loads((ddp_run / f"job-rank{r}.json").read_text()) for r in range(WORLD)]
    assert ranks[0]["status"] == "succeeded" and ranks[0]["version"] is not None
    assert ranks[1]["version"] is None
    with LabelStore.open(ddp_run / "ila.db", quick_check=False) as store:
        assert [j["status"] for j in store.jobs()] == ["succeeded"]
        assert sorted(v["kind"] for v in store.model_versions()) == ["ila", "probe"]
        assert [r["epoch"] for r in store.job_metrics(1) if r["values"].get("phase") != "holdout"][0] == 1
    assert len(list((ddp_run / "adapters").glob("*.safetensors"))) == 2


@pytest.mark.parametrize(
    ("gpus", "local_world", "forced", "expected"),
    [(0, 2, None, "gloo"), (1, 1, None, "nccl"), (1, 2, None, "gloo"), (4, 4, None, "nccl"), (4, 2, "gloo", "gloo")],
)
def test_backend_is_nccl_only_with_a_gpu_per_local_rank(monkeypatch, gpus, local_world, forced, expected):
    """NCCL refuses two ranks on one GPU: more local ranks than GPUs falls back to gloo."""
    from ila_core.jobs import distributed

    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: gpus)
    if forced:
        monkeypatch.setenv("ILA_DIST_BACKEND", forced)
    else:
        monkeypatch.delenv("ILA_DIST_BACKEND", raising=False)
    assert distributed.choose_backend(local_world) == expected


def test_forced_backend_must_be_known(monkeypatch):
    from ila_core.jobs import distributed

    monkeypatch.setenv("ILA_DIST_BACKEND", "mpi")
    with pytest.raises(ValueError, match="ILA_DIST_BACKEND must be nccl or gloo"):
        distributed.choose_backend(1)
