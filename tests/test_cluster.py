"""Multi-node: a Ray head and a second worker node on this machine (``ray.cluster_utils.Cluster``, one CPU each),
an index job run through the CLI with ``--address``, and Ray's own state API showing where the work ran; a Ray
worker process killed mid-run (found through the state API, killed by pid) loses and duplicates nothing.

The cluster lives in a subprocess with its own ``RAY_TMPDIR``: the test session already holds an in-process
local Ray, and the cluster's address file must not redirect anybody's ``ray.init()`` on this machine.

This process queries the cluster only through its dashboard's HTTP address, never its GCS address: given a GCS
address, Ray's state API looks the dashboard up with a new GCS client and installs that client as the process's
internal-KV client (``ray.experimental.internal_kv._initialize_internal_kv``). The test session's driver then sent
its own internal-KV calls (exporting remote functions, Ray Data's state) to the second cluster and, 60 s after that
cluster stopped, terminated the whole test process (exit 1, no report: "Failed to connect to GCS within 60
seconds"). ``conftest.py`` checks after every test that the session's internal-KV client still is its own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.store import schema as S
from pipeline.store.db import Store
from tests.helpers import TINY_DIM as DIM
from tests.helpers import assert_same_tables

ROOT = Path(__file__).resolve().parent.parent

CLUSTER = r"""
import json, sys
from ray.cluster_utils import Cluster

cluster = Cluster(
    initialize_head=True,
    head_node_args={"num_cpus": 1, "resources": {"head_node": 1}, "include_dashboard": True, "dashboard_port": 0},
)
cluster.add_node(num_cpus=1, resources={"worker_node": 1})
cluster.wait_for_nodes()
print(json.dumps({"address": cluster.address, "dashboard": "http://" + cluster.webui_url}), flush=True)
sys.stdin.read()  # until the test closes our stdin
cluster.shutdown()
"""

# One CPU per node; the detector and the encoder actors each ask for more than half of one, so their pools cannot
# share a node (0.6 + 0.45 > 1) and the job has to use both. The encoder's 0.45 tells its actor apart.
PLACEMENT = [
    "ray.detect.num_cpus=0.6",
    "ray.embed.num_cpus=0.45",
    "ray.decode.num_cpus=0.2",
    "ray.decode.concurrency=1",
    "ray.preprocess.num_cpus=0.2",
    # The caption actor small enough that, wherever the pools land, a node keeps 0.2 CPU for a decode task (at
    # 0.25 the nodes kept 0.1 and 0.15: the decode task waited for a slot forever).
    "ray.captions.num_cpus=0.05",
    "ray.speech.num_cpus=0.05",  # the speech actor likewise (tiny.en; the sample clips have little audio)
    "ray.assemble.concurrency=2",  # assemblers are spread over the nodes: both write fragments
]


@pytest.fixture(scope="module")
def cluster(ray_session):
    """(address, dashboard, env) of a running two-node cluster: the GCS address for the CLI (a subprocess, with env),
    the dashboard's HTTP address for this process's state-API queries."""
    if importlib.util.find_spec("aiohttp") is None:
        pytest.skip("Ray's state API needs the dashboard: install ray[default]")
    tmp = tempfile.mkdtemp(prefix="vsr", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": tmp}  # same auth mode as the session's Ray, set by its ray.init
    proc = subprocess.Popen(
        [sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the two-node cluster did not start (exit code {proc.wait()})")
        info = json.loads(line)
        yield info["address"], info["dashboard"], env
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def index_cmd(db: Path, folder: Path, address: str, summary: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "index", str(folder), "--config", "tiny"]
    cmd += ["--db", str(db), "--address", address, "--no-progress", "--summary-json", str(summary)]
    for item in [*PLACEMENT, *extra]:
        cmd += ["--set", item]
    return cmd


def stage_actors(dashboard: str, **filters: str) -> list:
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard, filters=[(k, "=", v) for k, v in filters.items()], detail=True, limit=1000)
    return [a for a in actors if a.class_name.startswith("MapWorker") and "MapBatches(route)" not in a.class_name]


def test_index_job_runs_on_both_nodes_and_indexes_every_video_once(
    cluster, tmp_path, sample_folder, indexed_db
) -> None:
    from ray.util.state import list_nodes, list_tasks

    address, dashboard, env = cluster
    ref_cfg, _ = indexed_db
    summary_path = tmp_path / "summary.json"
    run = subprocess.run(
        index_cmd(tmp_path / "db", sample_folder, address, summary_path),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a graph that cannot schedule a stage waits forever: fail instead
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert (summary["indexed"], summary["failed"], summary["ray_nodes"]) == (3, 0, 2)

    nodes = {n.node_id: n for n in list_nodes(address=dashboard) if n.state == "ALIVE"}
    assert len(nodes) == 2 and sum(n.is_head_node for n in nodes.values()) == 1
    job = summary["ray_job_id"]
    actors = stage_actors(dashboard, job_id=job)
    models = [a for a in actors if a.required_resources.get("CPU") in (0.6, 0.45)]  # detector, encoder
    assert len(actors) == 4 and len(models) == 2  # and the captioner and the speech actor
    assert {a.node_id for a in models} == set(nodes)  # one model pool on each node
    tasks = list_tasks(address=dashboard, filters=[("job_id", "=", job)], detail=True, limit=10_000)
    work = [t for t in tasks if t.state == "FINISHED" and t.node_id and t.name.startswith(("MapBatches", "MapWorker"))]
    by_node = {node: sum(t.node_id == node for t in work) for node in nodes}
    assert all(by_node.values()), by_node  # stage tasks finished on both nodes
    head = next(n for n, info in nodes.items() if info.is_head_node)
    # Rows were written where they were assembled: fragments from the worker node, not only the head.
    written = summary["fragments_by_node"]
    assert set(written) <= set(nodes) and any(n != head for n in written), written
    print(  # shown with -rP: where the job's work ran
        f"job {job}: stage tasks per node {by_node}; actors {[(a.node_id[:8], a.required_resources) for a in actors]};"
        f" head {head[:8]}; fragments written per node { {n[:8]: k for n, k in written.items()} }"
    )

    # Every video exactly once, and the same rows as the single-node run of the same folder.
    assert_same_tables(Store(str(tmp_path / "db"), DIM), Store(ref_cfg.db.path, DIM))


def test_worker_killed_mid_run_loses_and_duplicates_nothing(cluster, tmp_path, sample_folder, indexed_db) -> None:
    from ray.util.state import list_actors

    address, dashboard, env = cluster
    ref_cfg, _ = indexed_db
    db, summary_path = tmp_path / "db", tmp_path / "summary.json"
    # Frames passed on one by one: the run lasts long enough for the poll below to find the encoder at work
    # (with whole batches the three short clips could finish between two polls); rows do not change.
    one_by_one = ("ray.detect.batch_size=1", "ray.preprocess.batch_size=1", "ray.embed.batch_size=1")
    cmd = index_cmd(db, sample_folder, address, summary_path, "db.commit_every_videos=1", *one_by_one)
    log = open(tmp_path / "index.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    store = Store(str(db), DIM)
    victim, complete_at_kill = None, -1
    try:
        # Kill the encoder's worker as soon as it is up: every frame has to pass through the encoder, so the run can
        # only finish through the actor Ray restarts (and the batches Ray Data retries on it).
        while proc.poll() is None and victim is None:
            actors = [a for a in stage_actors(dashboard) if a.state == "ALIVE"]
            encoder = [a for a in actors if a.required_resources.get("CPU") == 0.45 and a.pid]
            if encoder:
                victim = encoder[0]
                complete_at_kill = len(store.complete_ids()) if store.exists(S.VIDEOS) else 0
                os.kill(victim.pid, signal.SIGKILL)
            time.sleep(0.1)
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert victim is not None, "the run ended before the encoder was up"
    assert proc.returncode == 0, (tmp_path / "index.log").read_text()[-3000:]
    assert complete_at_kill < 3  # killed while videos were still in flight
    restarted = list_actors(address=dashboard, filters=[("actor_id", "=", victim.actor_id)], detail=True)
    assert restarted[0].num_restarts >= 1  # Ray restarted the actor; its lost batches were retried
    print(f"killed encoder pid {victim.pid} ({victim.actor_id[:8]}), {complete_at_kill} videos complete at the kill;"
          f" restarts {restarted[0].num_restarts}")  # fmt: skip
    summary = json.loads(summary_path.read_text())
    assert (summary["indexed"], summary["failed"], summary["skipped"]) == (3, 0, 0)
    assert_same_tables(Store(str(db), DIM), Store(ref_cfg.db.path, DIM))


def test_cluster_gpu_config_puts_decode_on_cpus_and_models_on_fractional_gpus() -> None:
    cfg = load_config("cluster-gpu")
    assert cfg.ray.decode.num_gpus == 0 and cfg.ray.preprocess.num_gpus == 0
    assert 0 < cfg.ray.detect.num_gpus < 1 and 0 < cfg.ray.embed.num_gpus < 1
    assert cfg.encoder.device == "cuda" and cfg.detect.device == "cuda"
    # Same rows as default.yaml but for the shot detector (TransNetV2 on the GPU, the content detector on CPU),
    # captions (on with a GPU, off on CPU by cost), the speech model (large-v3-turbo on the GPU, tiny.en on CPU)
    # and the sentence embedder that goes with a multilingual Whisper (multilingual-e5-small, MiniLM on CPU).
    gpu_choices = ["segments.shots=transnetv2", "captions.model=blip", "speech.model=large-v3-turbo"]
    gpu_choices += [
        "speech.compute_type=float16",
        "speech.beam_size=5",
        "text_embed.model=intfloat/multilingual-e5-small",
    ]
    assert cfg.pipeline_version() == load_config("default", gpu_choices).pipeline_version()
    partial = load_config("tiny", ["ray.embed.batch_size=2"])  # a stage given in part keeps its other defaults
    assert (partial.ray.embed.num_cpus, partial.ray.embed.batch_size) == (load_config("tiny").ray.embed.num_cpus, 2)


def test_deploy_examples_run_real_commands() -> None:
    """The crontab line, the CronJob and the RayJob call `index` with flags the CLI accepts and configs it has."""
    import re
    import shlex

    import yaml

    from pipeline.cli import parser

    deploy = ROOT / "deploy"
    cron = [line for line in (deploy / "crontab").read_text().splitlines() if line and not line.startswith("#")]
    cronjob = yaml.safe_load((deploy / "k8s-cronjob.yaml").read_text())
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    rayjob = yaml.safe_load((deploy / "rayjob.yaml").read_text())
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid" and "ray job submit" in container["args"][0]
    commands = [*cron, container["args"][0], rayjob["spec"]["entrypoint"]]
    assert len(commands) == 3
    for text in commands:
        shell = re.search(r"run_pipeline\.py ([^;'>]*)", text).group(1)  # up to the shell's ; ' or >
        args = shlex.split(re.sub(r"\$\([^)]*\)", "X", shell))  # $(date ...) in a file name
        ns = parser().parse_args(args)
        assert ns.command == "index" and ns.incremental and ns.summary_json, text
        load_config(Path(ns.config).stem)  # the config it names exists and validates
