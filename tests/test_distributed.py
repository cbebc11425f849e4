"""One job across N processes (issue 12, point 2): gloo on the CPU with 2 ranks.

- Every rule stays exact: after several steps (even, uneven and too-small global batches) every parameter,
  feedback matrix, inverse and optimiser state of a 2-rank run equals a single process on the concatenated
  batches (``distributed_cases.py``, float64), global batch norm included; differing replicas are caught.
- Data sharding: the ranks' batches put together are the single process's batches, augmentation included.
- End to end through ``bioscale run --nproc-per-node 2`` (inline executor, torchrun): the metrics equal a
  one-process run's; a killed launcher leaves no rank training and the re-run resumes to the same numbers; a
  failing rank is recorded with its own error.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from bioscale import distributed
from bioscale.data.augment import flip_and_crop
from bioscale.data.base import batch_shard
from bioscale.data.loaders import (
    DeviceDataLoader,
    HostTensorLoader,
    ShardedLoader,
    TensorLoader,
    first_batch,
    shard_loader,
)
from bioscale.grid import resolve
from bioscale.ids import id_payload
from bioscale.job import Job
from bioscale.slurm import Queue, read_submission
from bioscale.store import Store

REPO = Path(__file__).resolve().parent.parent
CASES_FILE = Path(__file__).with_name("distributed_cases.py")
_spec = importlib.util.spec_from_file_location("distributed_cases", CASES_FILE)
assert _spec is not None and _spec.loader is not None
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LEARNED_FEEDBACK = ("kp", "brsf", "dtp", "sdtp", "sdtp-alternating", "aosdtp", "dtp-sgd-inverse")
"""Cases whose feedback matrices or inverses change while training (so their equality is not trivial)."""


# ---- exactness: 2 ranks == 1 process ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def exactness(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("dist") / "cases.json"
    subprocess.run([sys.executable, str(CASES_FILE), str(out)], check=True, env=ENV, cwd=REPO, timeout=600)
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", [*cases.CASES, "sync_bn"])
def test_two_ranks_compute_what_one_process_computes(exactness: dict, case: str) -> None:
    result = exactness[case]
    assert result["moved"] > 1e-3, f"{case}: training did not change the parameters: {result}"
    if case in LEARNED_FEEDBACK:
        assert result["feedback_moved"] > 1e-4, f"{case}: feedback/inverses did not learn: {result}"
    assert result["max_diff"] < 1e-5, f"{case}: {result['worst']} differs from one process by {result['max_diff']}"


def test_ranks_that_disagree_are_caught_by_name(exactness: dict) -> None:
    assert "model.layers.1.op.feedback.matrix" in exactness["mismatch"]


# ---- sharding the data ------------------------------------------------------------------------------------


def _interleave(parts: list[torch.Tensor]) -> torch.Tensor:
    """Put the ranks' rows (rank r holds rows r, r + world, ...) back into the global batch's order."""
    total = sum(len(p) for p in parts)
    out = parts[0].new_empty((total, *parts[0].shape[1:]))
    for rank, part in enumerate(parts):
        out[rank::len(parts)] = part
    return out


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_batch_shards_cover_every_example_once(world: int) -> None:
    for total in range(1, 12):
        shards = [batch_shard(total, r, world) for r in range(world)]
        if total >= world:
            rows = sorted(i for s in shards for i in range(total)[s.rows])
            assert rows == list(range(total))
            assert sum(s.weight for s in shards) == pytest.approx(1.0)
            assert all(s.counts and len(range(total)[s.rows]) for s in shards)
        else:  # too small to split: every rank holds it whole, rank 0 counts it
            assert all(range(total)[s.rows] == range(total) for s in shards)
            assert [s.counts for s in shards] == [r == 0 for r in range(world)]


@pytest.mark.parametrize("host", [False, True], ids=["device", "host"])
@pytest.mark.parametrize("world", [2, 4])
def test_sharded_tensor_loader_gives_the_single_process_batches(world: int, host: bool) -> None:
    """Shuffled and augmented (random crop + flip): the ranks' rows put together are the single process's
    batch, example for example, in every epoch; 13 examples in batches of 5 end with a batch of 3. Both the
    device-resident loader (small sets) and the host-RAM one (downsampled ImageNet)."""
    x = torch.randint(0, 256, (13, 1, 6, 6), dtype=torch.uint8)
    y = torch.arange(13)
    aug = flip_and_crop("horizontal", 2)
    whole = (HostTensorLoader(x, y, 5, torch.device("cpu"), shuffle=True, seed=3, augment=aug) if host
             else TensorLoader(x.float(), y, 5, shuffle=True, seed=3, augment=aug))
    ranks = [whole.sharded(r, world) for r in range(world)]
    for epoch in (0, 1):
        for loader in (whole, *ranks):
            loader.set_epoch(epoch)
        for step, batches in enumerate(zip(whole, *ranks, strict=True)):
            (xw, yw), parts = batches[0], batches[1:]
            if len(yw) >= world:
                assert torch.equal(_interleave([p[0] for p in parts]), xw)
                assert torch.equal(_interleave([p[1] for p in parts]), yw)
            else:
                assert all(torch.equal(p[0], xw) for p in parts)
            assert ranks[0].current_shard is not None and ranks[0].current_shard.total == len(yw), step
    assert torch.equal(first_batch(ranks[1])[1], next(iter(whole))[1])


def test_sharded_dataloader_reads_each_rank_its_rows() -> None:
    """The DataLoader path (ImageFolder, COCO): a batch sampler over the seeded global order; every rank has
    the same number of steps, and the union of their batches is the single process's batch."""
    data = torch.utils.data.TensorDataset(torch.arange(11.0)[:, None], torch.arange(11))
    whole = DeviceDataLoader(data, 4, torch.device("cpu"), shuffle=True, seed=5)
    ranks = [shard_loader(whole, r, 2) for r in range(2)]
    assert all(isinstance(r, DeviceDataLoader) for r in ranks) and {len(r) for r in ranks} == {len(whole)}
    for loader in (whole, *ranks):
        loader.set_epoch(1)
    for (xw, yw), (x0, y0), (x1, y1) in zip(whole, *ranks, strict=True):
        assert torch.equal(_interleave([y0, y1]), yw) and torch.equal(_interleave([x0, x1]), xw)
    assert torch.equal(first_batch(ranks[1])[1], next(iter(whole))[1])


def test_any_other_loader_is_sharded_from_outside() -> None:
    batches = [(torch.arange(5.0), [f"t{i}" for i in range(5)]), (torch.arange(1.0), ["t"])]

    class Plain:
        def __iter__(self):
            return iter(batches)

        def __len__(self) -> int:
            return len(batches)

        def set_epoch(self, epoch: int) -> None:
            pass

    rank1 = shard_loader(Plain(), 1, 2)
    assert isinstance(rank1, ShardedLoader)
    (x, t), (x_small, t_small) = list(rank1)
    assert x.tolist() == [1.0, 3.0] and t == ["t1", "t3"]
    assert x_small.tolist() == [0.0] and t_small == ["t"] and rank1.current_shard is not None
    assert not rank1.current_shard.counts  # rank 1 holds the 1-example batch whole; rank 0 counts it


def test_a_ranks_noise_is_its_rows_of_the_single_process_noise() -> None:
    """Target rules train their inverses on per-example noise: each rank draws the global batch's noise and
    keeps its rows, so the RNG streams of all ranks stay equal and the noise is the single process's."""
    from bioscale.rules.target import SDTP, TargetParams
    from bioscale.spec import OptimSpec

    rule = SDTP(TargetParams(), OptimSpec())
    h = torch.zeros(7, 3, 2)
    torch.manual_seed(11)
    single = rule.noise_like(h)
    after_single = torch.rand(1)
    for rank in (0, 1):
        torch.manual_seed(11)
        rule.shard = batch_shard(7, rank, 2)
        mine = rule.noise_like(h[rule.shard.rows])
        assert torch.equal(mine, single[rank::2])
        assert torch.equal(torch.rand(1), after_single)  # the stream moved on exactly as the single one's


# ---- the spec, the id, the launcher -----------------------------------------------------------------------


def _raw(**train: object) -> dict:
    return {"dataset": "synthetic", "arch": "fc", "rule": "fa", "train": {"epochs": 1, **train}}


def test_one_process_keeps_the_old_job_id_and_more_processes_change_it() -> None:
    base = resolve(_raw())
    assert resolve(_raw(distributed={"nproc_per_node": 1, "nnodes": 1})).job_id() == base.job_id()
    assert "distributed" not in json.dumps(id_payload(base))
    two = resolve(_raw(distributed={"nproc_per_node": 2}))
    assert two.job_id() != base.job_id() and distributed.world_size(two) == 2
    assert resolve(_raw(distributed={"nproc_per_node": 2, "sync_bn": True})).job_id() != two.job_id()


def test_torchrun_command() -> None:
    one = distributed.torchrun_command("job.json", "res", nproc_per_node=4, plugins=["p.py"], launcher_pid=9)
    assert one[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in one and "--nproc-per-node=4" in one
    assert one[one.index("-m", 3):][:4] == ["-m", "bioscale.worker", "job.json", "res"]
    assert one[-2:] == ["--plugin", "p.py"] and "--launcher-pid" in one
    many = distributed.torchrun_command("j", "r", nproc_per_node=8, nnodes=2, rdzv_endpoint="node1:29500",
                                        rdzv_id="123", node_rank=1)
    assert "--standalone" not in many and "--rdzv-endpoint=node1:29500" in many and "--node-rank=1" in many


def test_several_nodes_need_a_launcher_per_node(tmp_path: Path) -> None:
    from bioscale.executors import InlineExecutor

    job = Job("g", resolve(_raw(distributed={"nproc_per_node": 2, "nnodes": 2})), "two nodes")
    (result,) = InlineExecutor().run([job], Store(tmp_path))
    assert result.status == "failed" and "slurm executor" in (result.error or "")
    assert Store(tmp_path).job_dir("g", job.job_id).read_result().status == "failed"  # type: ignore[union-attr]


def test_a_late_launcher_failure_does_not_undo_a_finished_job(tmp_path: Path) -> None:
    """Rank 0 (on the host node) records the job done; then the other node's torchrun exits non-zero (the
    host's rendezvous is gone): that node's launcher, and a dead worker's executor, leave the result done."""
    from bioscale.executors import InlineExecutor
    from bioscale.executors import _record_failure as executor_failure

    store = Store(tmp_path)
    job = Job("g", resolve(_raw()), "one")
    (result,) = InlineExecutor().run([job], store)
    assert result.status == "done"
    log = tmp_path / "torchrun.node1.log"
    log.write_text("torch.distributed.DistNetworkError: the rendezvous store is gone\n")
    settled = distributed._settle(job, store, 1, tmp_path / "absent.json", log, elsewhere=True)
    assert settled.status == "done"
    assert executor_failure(job, store, "worker process died").status == "done"
    assert store.job_dir("g", job.job_id).read_result().status == "done"  # type: ignore[union-attr]
    store.job_dir("g", job.job_id).write_result(result.model_copy(update={"status": "running"}))
    assert distributed._settle(job, store, 1, tmp_path / "absent.json", log, elsewhere=True).status == "failed"
    recorded = store.job_dir("g", job.job_id).read_result()
    assert recorded is not None and recorded.status == "failed" and "rendezvous store" in (recorded.error or "")


# ---- end to end: bioscale run --nproc-per-node 2 ---------------------------------------------------------

GRID = {
    "name": "dist",
    "base": {
        "dataset": {"name": "synthetic", "params": {"train_size": 512, "test_size": 200, "shape": [1, 16, 16]}},
        "arch": {"name": "fc", "params": {"hidden": [32, 32]}},
        "rule": "sdtp",
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 16, "batch_size": 24, "eval_batch_size": 150, "device": "cpu"},
    },
}
"""512 = 21 batches of 24 + one of 8; 200 test examples = 150 + 50 (the eval batches split too)."""


def _cli(results: Path, grid: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bioscale", "run", str(grid), "--results", str(results), "-q", *extra]


def _numbers(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in rows]


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "dist.yaml"
    path.write_text(yaml.safe_dump(GRID))
    return path


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory, grid_file: Path) -> Path:
    """An uninterrupted 2-rank run: the job's directory."""
    results = tmp_path_factory.mktemp("clean")
    subprocess.run(_cli(results, grid_file, "--nproc-per-node", "2"), check=True, env=ENV, cwd=REPO, timeout=300)
    (job_id,) = [p.name for p in (results / "dist").iterdir()]
    return results / "dist" / job_id


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory, grid_file: Path) -> Path:
    """The same job in one process: the job's directory."""
    results = tmp_path_factory.mktemp("single")
    subprocess.run(_cli(results, grid_file), check=True, env=ENV, cwd=REPO, timeout=300)
    (single,) = (results / "dist").iterdir()
    return single


def _same_as_one_process(single: Path, run: Path) -> None:
    """Metrics and every parameter (forward weights and inverses) of ``run`` equal the one-process run's."""
    one, two = _numbers(single / "metrics.jsonl"), _numbers(run / "metrics.jsonl")
    assert len(one) == len(two)
    for a, b in zip(one, two, strict=True):
        assert a["train_error"] == b["train_error"] and a["test_error"] == b["test_error"], (a, b)
        for key in ("train_loss", "test_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6)
        assert b["diagnostics"].keys() == a["diagnostics"].keys()
    ca, cb = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (single, run))
    assert ca["model"].keys() == cb["model"].keys()  # forward weights and inverses alike
    for key in ca["model"]:
        assert torch.allclose(ca["model"][key], cb["model"][key], rtol=0, atol=1e-5), key
    assert torch.equal(ca["torch_rng"], cb["torch_rng"])  # the noise streams never drifted apart


def test_two_ranks_through_bioscale_run_record_what_one_process_does(clean_run: Path, single_run: Path) -> None:
    result = json.loads((clean_run / "result.json").read_text())
    assert result["status"] == "done" and result["epochs"] == 16
    assert result["provenance"]["device"] == "cpu (rank 0 of 2, gloo)"
    assert json.loads((clean_run / "spec.json").read_text())["spec"]["train"]["distributed"]["nproc_per_node"] == 2
    assert single_run.name != clean_run.name  # the number of processes is part of the job id
    _same_as_one_process(single_run, clean_run)


# ---- several nodes: one torchrun per node, c10d rendezvous (the slurm executor on cluster local) ------------

TWO_NODES = ["--set", "train.distributed.nnodes=2", "--set", "train.distributed.nproc_per_node=1",
             "--cpus-per-task", "1"]
"""Two "nodes" of one process each: submitit's local executor runs the job as two tasks, each launching
torchrun for its node; they meet at a c10d rendezvous on 127.0.0.1, as the nodes of a Slurm allocation meet
on its first node."""


@pytest.fixture(scope="module")
def nodes_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "dist.yaml"
    path.write_text(yaml.safe_dump({**GRID, "executor": {"name": "slurm", "params": {"cluster": "local",
                                                                                       "poll_s": 0.5}}}))
    return path


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory: pytest.TempPathFactory, nodes_grid: Path) -> Path:
    results = tmp_path_factory.mktemp("nodes")
    out = subprocess.run(_cli(results, nodes_grid, *TWO_NODES, "--wait"), env=ENV, cwd=REPO, timeout=400,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (job_dir,) = [p for p in (results / "dist").iterdir() if not p.name.startswith(".")]
    return job_dir


def test_two_nodes_compute_what_one_process_computes(two_node_run: Path, single_run: Path,
                                                     clean_run: Path) -> None:
    """One job over two nodes (two torchrun launches, one rank each, c10d rendezvous): the result of one
    process on the concatenated batches, and exactly the numbers of the same 2 ranks on one node."""
    result = json.loads((two_node_run / "result.json").read_text())
    assert result["status"] == "done" and result["epochs"] == 16, result
    assert result["provenance"]["device"] == "cpu (rank 0 of 2, gloo)"
    spec = json.loads((two_node_run / "spec.json").read_text())["spec"]["train"]["distributed"]
    assert (spec["nnodes"], spec["nproc_per_node"]) == (2, 1)
    logs = {p.name: p.read_text() for p in two_node_run.glob("torchrun*.log")}
    assert set(logs) == {"torchrun.log", "torchrun.node1.log"}  # one torchrun per node, each its own log
    assert "--rdzv-backend=c10d" in logs["torchrun.log"] and "--rdzv-endpoint=127.0.0.1:" in logs["torchrun.log"]
    assert "--rdzv-conf=is_host=true" in logs["torchrun.log"] and "is_host=false" in logs["torchrun.node1.log"]
    _same_as_one_process(single_run, two_node_run)
    assert _numbers(two_node_run / "metrics.jsonl") == _numbers(clean_run / "metrics.jsonl")


def _rank_env(proc: psutil.Process) -> dict:
    try:
        return proc.environ()
    except psutil.Error:
        return {}


def test_a_killed_two_node_job_resumes_to_the_same_numbers(two_node_run: Path, nodes_grid: Path,
                                                           tmp_path: Path) -> None:
    """Node 1's rank is killed (SIGKILL, as when a node dies) mid-training: rank 0 stops and saves, neither
    torchrun waits for the lost node, the job is left resumable; the re-run (a new rendezvous) resumes every
    rank from the same checkpoint to exactly the numbers of an uninterrupted two-node run."""
    results = tmp_path / "killed"
    metrics = results / "dist" / two_node_run.name / "metrics.jsonl"
    log = tmp_path / "submit.log"
    with open(log, "w") as f:  # not a pipe: submitit's local tasks inherit it and would hold it open
        out = subprocess.run(_cli(results, nodes_grid, *TWO_NODES), env=ENV, cwd=REPO, timeout=300, stdout=f,
                             stderr=subprocess.STDOUT)
    assert out.returncode == 0, log.read_text()  # submitted; the tasks run on without `bioscale run`
    victims: list[psutil.Process] = []
    deadline = time.time() + 240
    while time.time() < deadline and not victims:  # node 1's rank, found while it trains
        victims = [p for p in _ranks_of(results) if _rank_env(p).get("RANK") not in (None, "0")]
        time.sleep(0.05)
    assert victims, "no rank of node 1 found"
    while time.time() < deadline and (not metrics.exists() or not metrics.read_text().splitlines()):
        time.sleep(0.01)
    for proc in victims:
        proc.kill()
    deadline = time.time() + 120
    while _ranks_of(results) and time.time() < deadline:
        time.sleep(0.2)
    assert not _ranks_of(results), "ranks kept running after a node was lost"
    before = metrics.read_text().splitlines()
    assert 1 <= len(before) < 16, "the job should have been killed mid-run"
    jdir = Store(results).job_dir("dist", two_node_run.name)
    record = read_submission(jdir.path)
    assert record is not None
    deadline = time.time() + 120  # both tasks end (no torchrun waits 300 s at its exit barrier for node 1)
    while Queue().is_live(record) and time.time() < deadline:
        time.sleep(0.2)
    assert not Queue().is_live(record), "the submitted job went on after losing a node"
    assert jdir.status() in ("pending", "failed")
    again = subprocess.run(_cli(results, nodes_grid, *TWO_NODES, "--wait"), env=ENV, cwd=REPO, timeout=400,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    after = metrics.read_text().splitlines()
    assert len(after) == 16 and after[: len(before)] == before  # finished epochs were not run again
    assert _numbers(metrics) == _numbers(two_node_run / "metrics.jsonl")
    assert json.loads((metrics.parent / "result.json").read_text())["status"] == "done"


def _ranks_of(results: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "bioscale.worker" in cmd and str(results) in cmd:
            found.append(proc)
    return found


def test_a_killed_two_rank_job_resumes_to_the_same_numbers(clean_run: Path, grid_file: Path, tmp_path: Path) -> None:
    """SIGKILL `bioscale run` (the launcher) mid-training: the ranks notice, save and stop by themselves (none
    keeps training orphaned), and the re-run resumes from rank 0's checkpoint on both ranks to exactly the
    numbers of an uninterrupted 2-rank run."""
    results = tmp_path / "killed"
    metrics = results / "dist" / clean_run.name / "metrics.jsonl"
    proc = subprocess.Popen(_cli(results, grid_file, "--nproc-per-node", "2"), env=ENV, cwd=REPO)
    deadline = time.time() + 180
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 90
    while _ranks_of(results) and time.time() < deadline:
        time.sleep(0.2)
    assert not _ranks_of(results), "ranks kept running after their launcher was killed"
    before = metrics.read_text().splitlines()
    assert 2 <= len(before) < 16, "the job should have been killed mid-run"
    jdir = Store(results).job_dir("dist", clean_run.name)
    assert jdir.status() in ("pending", "failed")  # resumable either way; never done, never held

    subprocess.run(_cli(results, grid_file, "--nproc-per-node", "2"), check=True, env=ENV, cwd=REPO, timeout=300)
    after = metrics.read_text().splitlines()
    assert len(after) == 16 and after[: len(before)] == before  # finished epochs were not run again
    assert _numbers(metrics) == _numbers(clean_run / "metrics.jsonl")
    assert json.loads((metrics.parent / "result.json").read_text())["status"] == "done"


PLUGIN = '''
import os
from bioscale.catalog import register_rule
from bioscale.rules.feedback import FA, BackwardParams


@register_rule("fa-breaks-on-rank-1", family="backward", params=BackwardParams, display="FA!", order=999,
               summary="fails on rank 1")
class Breaks(FA):
    steps = 0

    def train_step(self, x, y):
        self.steps += 1
        if self.steps == 5 and os.environ.get("RANK") == "1":
            raise RuntimeError("rank 1 broke on purpose")
        return super().train_step(x, y)
'''


def test_a_failing_rank_fails_the_job_with_its_own_error(tmp_path: Path) -> None:
    """Rank 1 raises; torchrun stops rank 0, and the job is recorded as failed with rank 1's error (the plugin
    also shows that --plugin reaches every rank)."""
    plugin = tmp_path / "breaks.py"
    plugin.write_text(PLUGIN)
    grid = dict(GRID, base={**GRID["base"], "rule": "fa-breaks-on-rank-1",
                            "train": {**GRID["base"]["train"], "epochs": 2}})
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    out = subprocess.run(_cli(tmp_path / "res", path, "--nproc-per-node", "2", "--plugin", str(plugin)),
                         env=ENV, cwd=REPO, timeout=300, capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    (job_id,) = [p.name for p in (tmp_path / "res" / "dist").iterdir()]
    result = json.loads((tmp_path / "res" / "dist" / job_id / "result.json").read_text())
    assert result["status"] == "failed" and "rank 1 broke on purpose" in result["error"], result["error"]
    assert not _ranks_of(tmp_path / "res")


def test_in_a_two_rank_imagefolder_job_rank_0_scans_and_rank_1_reads_its_list(tmp_path: Path) -> None:
    """ImageNet as an ImageFolder tree, 2 ranks: rank 0 leaves its file list in the job's folder for rank 1
    (which loads after it), and the job trains to the end."""
    from PIL import Image

    for split in ("train", "val"):
        for c in ("n01", "n02"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40 + i, 30), (80 * i, 40, 200)).save(tmp_path / "data" / split / c / f"{i}.png")
    grid = {"name": "folders", "base": {
        "dataset": {"name": "imagenet", "params": {"root": str(tmp_path / "data"), "preprocess": "bartunov"}},
        "arch": {"name": "fc", "params": {"hidden": [8]}}, "rule": "fa", "optim": {"name": "sgd", "lr": 0.01},
        "train": {"epochs": 1, "batch_size": 4, "eval_batch_size": 6, "device": "cpu", "num_workers": 0,
                  "diagnostics_every": 0}}}
    path = tmp_path / "folders.yaml"
    path.write_text(yaml.safe_dump(grid))
    out = subprocess.run(_cli(tmp_path / "res", path, "--nproc-per-node", "2"), env=ENV, cwd=REPO, timeout=300,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (jdir,) = (tmp_path / "res" / "folders").iterdir()
    assert json.loads((jdir / "result.json").read_text())["status"] == "done"
    import gzip

    from bioscale.data.imagenet import FILE_LIST

    with gzip.open(jdir / FILE_LIST, "rt") as f:
        listed = json.load(f)
    assert listed["root"] == str((tmp_path / "data").resolve()) and listed["run"]
    assert len(listed["splits"]["train"]["samples"]) == 6 and listed["splits"]["val"]["classes"] == ["n01", "n02"]
