"""One job across several processes (GPUs): torch.distributed, launched by torchrun's elastic launcher.

``train.distributed: {nproc_per_node: N, nnodes: M}`` runs one job as N x M ranks. ``run_job`` is what the
executors call for every job: a one-process job trains in this process (``bioscale.train.run_job``); a larger
one is launched with ``torch.distributed.run`` as a subprocess (``launch``), whose ranks run
``python -m bioscale.worker``. Rank 0 claims the job, writes the store and the checkpoints; every rank
resumes from the same checkpoint.

Why not ``DistributedDataParallel``. DDP synchronises gradients through autograd hooks of the parameters
used in the wrapped module's ``forward``, once per backward pass. That fits backprop-like rules, but:
target rules (DTP, SDTP, AO-SDTP) call the layers one by one and train the inverses on their own losses
outside ``forward``, DTP runs two backward passes per step, DFA seeds every hidden layer in one
``autograd.backward``, and Kolen-Pollack changes B around the optimiser step. So bioscale keeps the rules as
they are and synchronises *gradients at the optimiser*: ``GradientSync`` all-reduces the gradients of every
parameter an optimiser holds (forward weights, inverses, anything a plugin's rule trains) right before it
steps. Each rank's loss is a mean over its rows of the global batch; weighting each rank's gradient by its
share of the batch (``BatchShard.weight``) makes the sum the gradient of the mean over the whole batch, so a
step equals a single process's step on the concatenated batch, for every rule and every optimiser (Batch
Manhattan takes the sign of the summed gradient). The price is no overlap of communication with the backward
pass (one bucketed all-reduce per optimiser step).

What keeps N ranks exactly one process (``tests/test_distributed.py`` checks every parameter and feedback
matrix against a single process to 1e-5):

- Same seed, same RNG stream on every rank: fixed random matrices (FA's and DFA's B, brSF's redraws,
  AO-SDTP's random features) are drawn identically and compared across ranks at the start and every epoch
  (``check_replicas``). Per-example noise (the target rules' inverse training) is the rank's rows of the
  noise the single process would draw for the whole batch (``Rule.noise_like``): every rank draws the global
  batch's noise, so the streams never drift apart.
- Kolen-Pollack's B receives exactly W's update (``bioscale.rules.feedback``); W's update is synchronised,
  so B stays in sync without a gradient of its own. The replica check would catch it otherwise.
- Data: each rank trains on its rows of the single process's batch (``bioscale.data.loaders``).
- Batch norm is per rank by default, as Xiao et al.'s DataParallel code computes it (each GPU normalises its
  own part of the batch; running statistics are rank 0's, broadcast before every evaluation as DDP's
  ``broadcast_buffers`` does). ``sync_bn: true`` normalises over the global batch (``GlobalBatchNorm``), which
  makes nets with batch norm exact too. BN nets are exact only with ``sync_bn``.
- Metrics are sums all-reduced over the ranks, so rank 0 records what one process would.

The CUDA path uses NCCL with rank r on ``cuda:LOCAL_RANK``; the CPU path gloo (what the tests run).
Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bioscale.claims import DEFAULT_TIMEOUT_S
from bioscale.errors import BioscaleError
from bioscale.lazy import lazy

if TYPE_CHECKING:
    import torch as torch_t
    from torch import Tensor
    from torch.optim import Optimizer

    from bioscale.events import EventHandler
    from bioscale.job import Job
    from bioscale.rules.base import Rule
    from bioscale.spec import JobResult, JobSpec
    from bioscale.store import Store

torch = lazy("torch")
dist = lazy("torch.distributed")
nn = lazy("torch.nn")

BUCKET_BYTES = 32 * 2**20
"""Gradients are all-reduced in flat buckets of at most this size (one collective per bucket)."""
TIMEOUT = datetime.timedelta(minutes=30)
"""How long a collective waits for the other ranks (an ImageNet evaluation on one rank can take minutes)."""
LOG_NAME = "torchrun.log"
"""torchrun's and every rank's output, in the job's directory (appended per launch)."""


def world_size(spec: JobSpec) -> int:
    """The number of processes ``spec`` asks for: nproc_per_node * nnodes."""
    d = spec.train.distributed
    return d.nproc_per_node * d.nnodes


# ---- the process group -----------------------------------------------------------------------------------


class PeerLost(Exception):
    """A collective failed: another rank of this job stopped (killed, interrupted, or failed). The job is
    resumable; the launcher, which sees every rank's fate, records the root cause."""


class ReplicaMismatch(Exception):
    """The ranks hold different parameters, buffers or optimiser state where they must be identical."""


@dataclass(frozen=True)
class Group:
    """The ranks of one job, as this rank sees them. Every collective of the trainer goes through here."""

    rank: int
    world: int
    local_rank: int
    device: torch_t.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: it claims the job and writes the store and the checkpoints."""
        return self.rank == 0

    @contextlib.contextmanager
    def _comm(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RuntimeError, OSError) as exc:  # gloo: connection closed; NCCL: DistBackendError (a RuntimeError)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise PeerLost(f"{what} failed on rank {self.rank} of {self.world}: {type(exc).__name__}: {first}. "
                           "Another rank of this job stopped; its own error is in torchrun.log.") from exc

    def all_reduce_(self, tensor: Tensor, what: str = "an all-reduce") -> Tensor:
        """Sum ``tensor`` over the ranks, in place."""
        with self._comm(what):
            dist.all_reduce(tensor)
        return tensor

    def sum(self, values: list[float], what: str = "summing metrics") -> list[float]:
        """Element-wise sums over the ranks (in float64, so counts up to 2**53 stay exact)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.all_reduce_(t, what).tolist()

    def broadcast(self, obj: Any, what: str = "a broadcast") -> Any:
        """Rank 0's ``obj`` on every rank (picklable data)."""
        box = [obj]
        with self._comm(what):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any, what: str = "a gather") -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        with self._comm(what):
            dist.all_gather_object(out, obj)
        return out

    def barrier(self, what: str = "a barrier") -> None:
        with self._comm(what):
            dist.barrier()

    def broadcast_(self, tensors: list[Tensor], what: str = "a broadcast") -> None:
        with self._comm(what):
            for t in tensors:
                dist.broadcast(t, 0)


_GROUP: Group | None = None
_JOB_DIR: dict[str, Path] = {}


def current() -> Group | None:
    """This process's group when it is a rank of a distributed job (``init_from_env`` ran), else None."""
    return _GROUP


def set_job_dir(path: Path) -> None:
    """The job's directory, which every rank of every node sees (``bioscale.worker`` sets it)."""
    _JOB_DIR["path"] = Path(path)


def job_dir() -> Path | None:
    """The running distributed job's directory (None outside a rank): where rank 0 leaves what the other
    ranks read instead of computing it again (e.g. the ImageFolder file list, ``bioscale.data.imagenet``)."""
    return _JOB_DIR.get("path") if _GROUP is not None else None


def init_from_env(device: str = "auto") -> Group:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    ``device`` is the job's ``train.device``: CUDA (``auto`` with a GPU, ``cuda``, ``cuda:N``) puts rank r on
    ``cuda:LOCAL_RANK`` and uses NCCL (the index in ``cuda:N`` is ignored: torchrun assigns the GPUs; restrict
    them with CUDA_VISIBLE_DEVICES); ``cpu`` (or ``auto`` without a GPU) uses gloo.
    """
    global _GROUP
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as exc:
        raise BioscaleError(f"not started by torchrun: {exc} is not set. A distributed job is launched by "
                            "`bioscale run` (train.distributed / --nproc-per-node) or `python -m "
                            "torch.distributed.run ... -m bioscale.worker JOB_JSON RESULTS`.") from None
    kind = device.split(":")[0]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise BioscaleError(f"train.device={device!r} but no CUDA device is available on rank {rank}.")
        if local_rank >= torch.cuda.device_count():
            raise BioscaleError(f"rank {rank} is local rank {local_rank} but only {torch.cuda.device_count()} GPUs "
                                "are visible: nproc_per_node must not exceed the GPUs per node.")
        where, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(where)
    elif kind == "cpu":
        where, backend = torch.device("cpu"), "gloo"
    else:
        raise BioscaleError(f"train.device={device!r}: a distributed job runs on CUDA (NCCL) or the CPU (gloo).")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=TIMEOUT)
    _GROUP = Group(rank, world, local_rank, where, backend)
    return _GROUP


def shutdown() -> None:
    """Leave the process group (best effort: a peer may be gone already)."""
    global _GROUP
    _GROUP = None
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


# ---- exactness: gradients, replicas, batch norm ----------------------------------------------------------


class GradientSync:
    """Averages an optimiser's gradients over the ranks right before it steps.

    Each rank's gradient is multiplied by its share of the global batch (``rule.shard.weight``; ``1/world``
    without a shard) and the products are summed: the gradient of the mean loss over the whole batch. Runs
    once per step and optimiser: from ``Rule.sync_gradients`` (which rules call before anything reads the
    gradients) or else from the optimiser's step pre-hook. Parameters are packed into flat buckets per device
    and dtype with one flag each saying whether the rank has a gradient for it, so a rank without one
    contributes zeros and a parameter no rank has a gradient for stays without one.
    """

    def __init__(self, group: Group, rule: Rule) -> None:
        self.group, self.rule = group, rule
        self._synced: set[int] = set()

    def attach(self) -> GradientSync:
        for opt in self.rule.optimizers.values():
            opt.register_step_pre_hook(self._pre_step)
            opt.register_step_post_hook(self._post_step)
        self.rule.gradient_sync = self
        return self

    def _pre_step(self, opt: Optimizer, args: Any, kwargs: Any) -> None:
        self(opt)

    def _post_step(self, opt: Optimizer, args: Any, kwargs: Any) -> None:
        self._synced.discard(id(opt))

    def __call__(self, opt: Optimizer) -> None:
        if id(opt) in self._synced:
            return
        self._synced.add(id(opt))
        shard = self.rule.shard
        weight = shard.weight if shard is not None else 1.0 / self.group.world
        seen: set[int] = set()
        params: list[Tensor] = []
        for g in opt.param_groups:
            for p in g["params"]:
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        for bucket in _buckets(params):
            self._reduce(bucket, weight)

    def _reduce(self, bucket: list[Tensor], weight: float) -> None:
        ref = bucket[0]
        grads = [p.grad.reshape(-1) if p.grad is not None else ref.new_zeros(p.numel()) for p in bucket]
        numel = sum(g.numel() for g in grads)
        flags = torch.tensor([p.grad is not None for p in bucket], dtype=ref.dtype, device=ref.device)
        flat = torch.cat([*grads, flags])
        flat[:numel].mul_(weight)
        self.group.all_reduce_(flat, "averaging gradients")
        present = flat[numel:].tolist()  # one host sync per bucket
        offset = 0
        for p, has in zip(bucket, present, strict=True):
            n = p.numel()
            if has > 0:
                chunk = flat[offset:offset + n].view_as(p)
                if p.grad is None:
                    p.grad = chunk.clone()
                else:
                    p.grad.copy_(chunk)
            offset += n


def _buckets(params: list[Tensor]) -> Iterator[list[Tensor]]:
    """``params`` grouped by (device, dtype), in order, in chunks of at most ``BUCKET_BYTES``."""
    groups: dict[tuple[Any, Any], list[Tensor]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    for group in groups.values():
        bucket: list[Tensor] = []
        size = 0
        for p in group:
            nbytes = p.numel() * p.element_size()
            if bucket and size + nbytes > BUCKET_BYTES:
                yield bucket
                bucket, size = [], 0
            bucket.append(p)
            size += nbytes
        if bucket:
            yield bucket


def _digest(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous().reshape(-1)
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        head = f"{t.dtype}{tuple(value.shape)}".encode()
        return hashlib.blake2b(head + data, digest_size=16).hexdigest()
    return repr(value)


def _flatten(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def fingerprints(model: torch_t.nn.Module, rule: Rule) -> dict[str, str]:
    """A digest of every tensor and setting that must be identical on every rank: the model's state (forward
    weights, feedback matrices, inverses, random features, batch-norm statistics) and the rule's (optimiser
    state)."""
    out = {f"model.{k}": _digest(v) for k, v in model.state_dict().items()}
    out.update((k, _digest(v)) for k, v in _flatten(rule.state_dict(), "rule"))
    return out


def check_replicas(group: Group, model: torch_t.nn.Module, rule: Rule, when: str) -> None:
    """Raise ``ReplicaMismatch`` on every rank when any rank's state differs from rank 0's: the guarantee that
    feedback matrices (seeded) and everything else are the same everywhere, checked rather than assumed."""
    mine = fingerprints(model, rule)
    everyone = group.gather(mine, "comparing the ranks' states")
    differ = sorted({k for other in everyone[1:] for k in set(other) | set(everyone[0])
                     if other.get(k) != everyone[0].get(k)})
    if differ:
        shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise ReplicaMismatch(f"the ranks of this job hold different {shown} {when}; they must be identical "
                              "for the job to compute what one process computes (seeded draws, synchronised "
                              "updates). A rule or plugin that changes state from its own rank's data alone "
                              "breaks this.")


def norm_buffers(model: torch_t.nn.Module) -> list[Tensor]:
    """Running statistics of the batch-norm layers."""
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
            for b in m.buffers(recurse=False)]


def broadcast_norm_buffers(group: Group, model: torch_t.nn.Module) -> None:
    """Rank 0's batch-norm running statistics on every rank (what DDP's ``broadcast_buffers`` and Xiao et al.'s
    DataParallel evaluate with); per-rank BN leaves each rank with statistics of its own shards."""
    group.broadcast_(norm_buffers(model), "sharing batch-norm statistics")


_STEP_SHARD: dict[str, Any] = {}
"""The shard of the step running now, for ``GlobalBatchNorm``'s weighted backward (set by the trainer)."""


def step_shard() -> Any:
    """The ``BatchShard`` of the training step running now on this rank (None outside a step)."""
    return _STEP_SHARD.get("shard")


def set_step_shard(rule: Rule, shard: Any) -> None:
    """Tell the rule (and global batch norm) which rows of the global batch this rank holds for this step."""
    rule.shard = shard
    _STEP_SHARD["shard"] = shard


def convert_sync_batchnorm(module: torch_t.nn.Module) -> torch_t.nn.Module:
    """Every BatchNorm1d/2d/3d in ``module`` replaced by ``bioscale.layers.global_batchnorm.GlobalBatchNorm``."""
    from bioscale.layers.global_batchnorm import convert

    return convert(module)


# ---- data -------------------------------------------------------------------------------------------------


def shard_bundle(data: Any, group: Group) -> Any:
    """The bundle as this rank sees it: every loader sharded (``bioscale.data.loaders.shard_loader``)."""
    from bioscale.data.loaders import shard_loader

    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    changes = {k: shard_loader(v, group.rank, group.world) for k, v in fields.items()
               if k in ("train", "train_eval", "test", "validation") and v is not None}
    return dataclasses.replace(data, **changes)


# ---- launching -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """This launcher's place in a job over several nodes: one torchrun per node, all meeting at a c10d
    rendezvous (``bioscale.slurm_task.node_of`` computes it from the Slurm allocation)."""

    rank: int
    """This node's index, 0 .. nnodes - 1 (the rendezvous assigns the ranks; node 0 hosts it)."""
    nnodes: int
    endpoint: str
    """host:port of the rendezvous (a TCPStore on the allocation's first node)."""
    rdzv_id: str
    """The same on every node of one run, and new for each run (a requeued job meets afresh)."""

    @property
    def log_name(self) -> str:
        """Each node's own torchrun log in the job's directory (node 0: ``torchrun.log``)."""
        return LOG_NAME if self.rank == 0 else LOG_NAME.replace(".log", f".node{self.rank}.log")


def run_job(job: Job, store: Store, on_progress: EventHandler | None = None,
            lease_timeout: float = DEFAULT_TIMEOUT_S, node: Node | None = None) -> JobResult:
    """What the executors call for each job: ``bioscale.train.run_job`` in this process, or, when the job asks
    for more than one process (and this process is not already one of its ranks), ``launch`` (on ``node`` of a
    multi-node job)."""
    if world_size(job.spec) > 1 and current() is None:
        return launch(job, store, on_progress, lease_timeout, node)
    from bioscale.train import run_job as run_here

    return run_here(job, store, on_progress, lease_timeout)


def job_payload(job: Job) -> dict[str, Any]:
    """What ``bioscale.worker`` reads: the grid, the label and the resolved spec (a job's ``spec.json`` holds
    the same keys, so it can be given to the worker directly)."""
    return {"grid": job.grid, "label": job.label, "job_id": job.job_id, "spec": job.spec.model_dump(mode="json"),
            "logging": list(job.logging), "stop_after": job.stop_after}


def torchrun_command(job_file: str | Path, results: str | Path, *, nproc_per_node: int, nnodes: int = 1,
                     rdzv_endpoint: str | None = None, rdzv_id: str | None = None, node_rank: int | None = None,
                     is_host: bool | None = None, result_out: str | Path | None = None,
                     events: str | Path | None = None,
                     plugins: list[str] | tuple[str, ...] = (), launcher_pid: int | None = None,
                     lease_timeout: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """The ``torch.distributed.run`` command line for one node of a job. One node: ``--standalone`` (a free
    local port). Several nodes (inside a Slurm allocation: one launcher per node): a c10d rendezvous at
    ``rdzv_endpoint`` (host:port of the first node) under ``rdzv_id`` (e.g. the Slurm job id); ``is_host`` says
    whether this node serves the rendezvous store (default: torchrun guesses from the host name)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}",
           "--max-restarts=0"]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise BioscaleError("a job over several nodes needs a rendezvous endpoint (host:port of its first node).")
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id or 'bioscale'}"]
        if node_rank is not None:
            cmd.append(f"--node-rank={node_rank}")
        if is_host is not None:
            cmd.append(f"--rdzv-conf=is_host={str(is_host).lower()}")
    cmd += ["-m", "bioscale.worker", str(job_file), str(results), f"--lease-timeout={lease_timeout}"]
    if result_out is not None:
        cmd += ["--result-out", str(result_out)]
    if events is not None:
        cmd += ["--events", str(events)]
    if launcher_pid is not None:
        cmd += ["--launcher-pid", str(launcher_pid)]
    for plugin in plugins:
        cmd += ["--plugin", plugin]
    return cmd


STOP_WAIT_S = 40.0
"""After a stop signal, how long the launcher waits for the ranks to record the job as resumable (torchrun
gives its workers 30 s after SIGTERM) before it kills what is left."""


def launch(job: Job, store: Store, on_progress: EventHandler | None = None,
           lease_timeout: float = DEFAULT_TIMEOUT_S, node: Node | None = None) -> JobResult:
    """Run ``job`` on this node as ``nproc_per_node`` ranks under torchrun, wait, and return its result.

    A job over several nodes (``nnodes`` > 1) needs ``node``: every node's launcher starts torchrun with the
    same c10d rendezvous, and the ranks of all nodes form one process group. Global rank 0 may land on any
    node; it writes the store (a file system every node sees, as for the checkpoints every rank resumes
    from), and the launcher of every other node returns the result rank 0 recorded there.

    The ranks claim, train and record the job themselves (rank 0 writes); this process forwards rank 0's
    progress to ``on_progress``, and on ``Interrupted`` (Ctrl-C, SIGTERM) stops them (they record the job as
    resumable) and raises it again. torchrun runs in its own session, and every rank stops by itself when
    this process dies (``bioscale.worker`` watches it), so nothing keeps training orphaned. When a rank fails,
    torchrun stops the others and this function records the job as failed with the end of torchrun's log,
    which names the failing rank and its traceback (``torchrun.log`` in the job's directory).
    """
    from bioscale.catalog import plugins
    from bioscale.interrupts import Interrupted

    d = job.spec.train.distributed
    jdir = store.job_dir(job.grid, job.job_id)
    if d.nnodes > 1 and (node is None or node.nnodes != d.nnodes):
        return _record_failure(job, store, (
            f"train.distributed.nnodes={d.nnodes}: a job over several nodes needs one torchrun per node, which "
            "the slurm executor starts inside its allocation; the inline and local executors run one node "
            "(nnodes: 1). Use --executor slurm (or `executor: {name: slurm, params: {cluster: local}}` to try "
            "it on this machine), or start `bioscale.distributed.torchrun_command(...)` on each node yourself."
            + (f" (This launcher was told of {node.nnodes} nodes.)" if node is not None else "")))
    jdir.path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bioscale-dist-") as tmp:
        job_file, result_out, events = Path(tmp, "job.json"), Path(tmp, "result.json"), Path(tmp, "events.jsonl")
        job_file.write_text(json.dumps(job_payload(job)), encoding="utf-8")
        rdzv: dict[str, Any] = {}
        if node is not None and d.nnodes > 1:
            rdzv = {"nnodes": d.nnodes, "rdzv_endpoint": node.endpoint, "rdzv_id": node.rdzv_id,
                    "node_rank": node.rank, "is_host": node.rank == 0}
        cmd = torchrun_command(job_file, store.root.resolve(), nproc_per_node=d.nproc_per_node,
                               result_out=result_out, events=events, plugins=plugins(), launcher_pid=os.getpid(),
                               lease_timeout=lease_timeout, **rdzv)
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // d.nproc_per_node)))
        log_path = jdir.path / (node.log_name if rdzv and node is not None else LOG_NAME)
        with open(log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        pump = _EventPump(events, on_progress)
        try:
            while proc.poll() is None:
                pump()
                time.sleep(0.2)
        except BaseException as exc:  # Interrupted above all: stop the ranks, let them record, go on stopping
            _stop(proc, signal.SIGTERM if isinstance(exc, Interrupted) else signal.SIGKILL)
            pump()
            raise
        pump()
        return _settle(job, store, proc.returncode, result_out, log_path, elsewhere=bool(rdzv))


class _EventPump:
    """Reads the JSON lines of ``JobProgress`` that rank 0 appends and hands them on, from this thread."""

    def __init__(self, path: Path, on_progress: EventHandler | None) -> None:
        self.path, self.on_progress, self.offset = path, on_progress, 0

    def __call__(self) -> None:
        if self.on_progress is None:
            return
        from bioscale.events import JobProgress

        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # complete lines only
        self.offset += end
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError, TypeError):
                self.on_progress(JobProgress(**json.loads(line)))


def _stop(proc: subprocess.Popen, sig: int) -> None:
    """Signal torchrun's whole session (the agent and every rank); kill what is left after ``STOP_WAIT_S``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _settle(job: Job, store: Store, returncode: int, result_out: Path, log_path: Path,
            elsewhere: bool = False) -> JobResult:
    """The job's result once torchrun has exited: rank 0's, unless a rank failed before rank 0 could record a
    final outcome; then ``failed``, with torchrun's account of the first failure (the root cause).
    ``elsewhere``: rank 0 may run on another node (multi-node), and its result is then read from the store."""
    from bioscale.spec import JobResult

    result = None
    with contextlib.suppress(OSError, ValueError):
        result = JobResult.model_validate_json(result_out.read_bytes())
    if result is None and elsewhere and returncode == 0:  # this node's ranks finished with rank 0's outcome
        recorded = store.job_dir(job.grid, job.job_id).read_result()
        if recorded is not None:
            return recorded
    if result is not None and (returncode == 0 or result.status in ("done", "diverged", "running", "failed")):
        return result
    where = f"a rank of this distributed job stopped (torchrun exit code {returncode})"
    own = f"; rank 0 recorded: {result.error.splitlines()[0]}" if result is not None and result.error else ""
    return _record_failure(job, store, f"{where}{own}. From {log_path}:\n{root_cause(log_path)}")


def root_cause(log_path: Path, limit: int = 4000) -> str:
    """torchrun's "Root Cause (first observed failure)" section of the log (the failing rank, its exit code
    and traceback), else the log's last lines; at most ``limit`` characters, keeping the end."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 50 * limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    start = text.rfind("Root Cause")
    section = text[start:] if start >= 0 else text
    section = section.strip().rstrip("=").strip()
    return section if len(section) <= limit else "..." + section[-limit:]


def _record_failure(job: Job, store: Store, error: str) -> JobResult:
    """Record ``job`` as failed (its finished epochs stay; a re-run resumes), unless a live process holds it or
    rank 0 has recorded a final outcome (``JobDir.record_failure``)."""
    from bioscale.claims import live_lease
    from bioscale.spec import JobResult

    jdir = store.job_dir(job.grid, job.job_id)
    if live_lease(jdir.path) is None:
        with contextlib.suppress(OSError):
            return jdir.record_failure(job.grid, error)
    previous = jdir.read_result() if jdir.path.exists() else None
    return JobResult(job_id=job.job_id, grid=job.grid, status="failed",
                     epochs=previous.epochs if previous is not None else 0, error=error)


def describe(spec: JobSpec) -> str:
    """One line for messages: "2 processes (1 node x 2), per-rank batch norm"."""
    d = spec.train.distributed
    return (f"{world_size(spec)} processes ({d.nnodes} node{'s' if d.nnodes > 1 else ''} x {d.nproc_per_node}), "
            f"{'global' if d.sync_bn else 'per-rank'} batch norm")


__all__ = ["GradientSync", "Group", "Node", "PeerLost", "ReplicaMismatch", "broadcast_norm_buffers", "check_replicas",
           "convert_sync_batchnorm", "current", "init_from_env", "launch", "run_job", "set_step_shard",
           "shard_bundle", "shutdown", "torchrun_command", "world_size"]
