"""The cluster definitions in cluster/ are accepted by Ray's own validators and carry what KubeRay needs.

    pytest tests/cluster -q

Launcher configs go through `prepare_config` (merge with the provider's defaults.yaml, as `ray up` does)
and `validate_config` (Ray's JSON schema + cross-field checks). The runtime env goes through Ray's
`RuntimeEnv` parser and Ray's own packager, so the excludes are checked by the code that uploads.

Security fields: every node starts Ray with RAY_AUTH_MODE=token and the token copied to it; the VM heads bind
the dashboard / job server to 127.0.0.1 and run MLflow with basic auth, whose config the head's own command
writes -- run here in bash, then served by a real `mdm tracking-server --auth` (MLflow's basic-auth app) on 127.0.0.1, which
must refuse a request without the password and accept one with it. KubeRay: token auth in every container
(from one Secret, or the operator's authOptions), a NetworkPolicy admitting only the cluster's own pods.
"""

from __future__ import annotations

import copy
import os
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"


def _load(name: str) -> dict:
    return yaml.safe_load_all((CLUSTER / name).read_text()).__next__()


def _docs(name: str) -> dict[str, dict]:
    """A multi-document manifest by kind."""
    return {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / name).read_text())}


def _gpus(node_type: dict) -> int:
    return int(node_type["resources"].get("GPU", 0))


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_config_passes_ray_validation(name: str) -> None:
    cfg = prepare_config(_load(name))
    validate_config(cfg)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert _gpus(head) == 0, "the head is a CPU node"
    train = [t for t in types.values() if _gpus(t) >= 8]
    assert train and all(t["max_workers"] > t["min_workers"] == 0 for t in train), "autoscaling GPU trainers"
    evals = [t for t in types.values() if _gpus(t) == 1]
    assert evals, "a single-GPU eval node type"
    for t in evals:
        nc = t["node_config"]
        spot = (nc.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
                or nc.get("scheduling", {}).get("provisioningModel") == "SPOT")
        assert spot, f"eval nodes in {name} must be spot/preemptible"
    # The project is copied from the checkout and installed on every node.
    remote = next(r for r, local in cfg["file_mounts"].items() if local == ".")
    assert any(f"pip install -e {remote}" in c for c in cfg["head_setup_commands"])
    assert any(f"pip install -e {remote}" in c for c in cfg["worker_setup_commands"])
    assert ".git" in " ".join(cfg["rsync_exclude"])


def test_ray_validation_rejects_a_broken_config() -> None:
    # The validator is real: a node type without its required `resources` is refused.
    cfg = prepare_config(_load("aws.yaml"))
    broken = copy.deepcopy(cfg)
    del broken["available_node_types"]["gpu_train"]["resources"]
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)
    broken = copy.deepcopy(cfg)
    broken["head_node_type"] = "nope"
    with pytest.raises(ValueError):
        validate_config(broken)


def test_runtime_env_parses_and_excludes_local_state(tmp_path: Path) -> None:
    from ray._private.runtime_env.packaging import create_package
    from ray.runtime_env import RuntimeEnv

    env = _load("runtime_env.yaml")
    RuntimeEnv(**env)  # Ray's own field validation
    assert env["working_dir"] == "."
    for module in env.get("py_modules", []):
        assert (REPO / module / "__init__.py").is_file(), f"py_modules entry {module} is not a package"
    # A checkout with local state in it, packed by Ray's uploader with our excludes (no .gitignore help).
    tree = tmp_path / "repo"
    files = ["experiments/gsm8k.py", "src/mdm/__init__.py", "cluster/aws.yaml", ".git/config",
             "data/gsm8k/train.jsonl", "mlruns.db", "mlruns/0/meta.yaml", "ray_results/run/ckpt.pt",
             "outputs/run/final/model.safetensors", "mlartifacts/1/x"]
    for f in files:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        (tree / f).write_text("x")
    pkg = tmp_path / "pkg.zip"
    create_package(str(tree), pkg, include_gitignore=False, excludes=env["excludes"])
    packed = set(zipfile.ZipFile(pkg).namelist())
    assert {"experiments/gsm8k.py", "src/mdm/__init__.py", "cluster/aws.yaml"} <= packed
    leaked = [n for n in packed if n.split("/")[0] in {".git", "data", "mlruns", "mlruns.db", "ray_results",
                                                      "outputs", "mlartifacts"}]
    assert not leaked, f"uploaded local state: {leaked}"


def _check_group(group: dict, where: str) -> None:
    containers = group["template"]["spec"]["containers"]
    assert containers, f"{where}: no containers"
    for c in containers:
        assert c.get("image"), f"{where}: container without image"
        res = c["resources"]
        assert res["requests"]["cpu"] and res["limits"]["memory"], f"{where}: resources"
    assert isinstance(group["rayStartParams"], dict), f"{where}: rayStartParams is required"


def _check_cluster_spec(spec: dict, where: str) -> None:
    _check_group(spec["headGroupSpec"], f"{where}.headGroupSpec")
    groups = spec["workerGroupSpecs"]
    names = [g["groupName"] for g in groups]
    assert len(set(names)) == len(names) >= 2, f"{where}: worker groups {names}"
    for g in groups:
        _check_group(g, f"{where}.{g['groupName']}")
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        gpus = int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        assert gpus >= 1, f"{where}.{g['groupName']}: GPU worker without nvidia.com/gpu"
    assert spec["enableInTreeAutoscaling"] is True


def test_kuberay_raycluster_manifest() -> None:
    doc = _docs("kuberay/raycluster.yaml")["RayCluster"]
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["metadata"]["name"]
    _check_cluster_spec(doc["spec"], "RayCluster.spec")


def test_kuberay_rayjob_manifest_runs_the_gsm8k_experiment() -> None:
    from ray.runtime_env import RuntimeEnv

    doc = _load("kuberay/rayjob.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    script = spec["entrypoint"].split()[1]
    assert spec["entrypoint"].startswith("python ") and script == "experiments/gsm8k.py"
    assert (REPO / script).is_file(), f"the entrypoint runs {script}, which does not exist"
    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))
    assert spec["shutdownAfterJobFinishes"] is True
    _check_cluster_spec(spec["rayClusterSpec"], "RayJob.spec.rayClusterSpec")


# ----------------------------------------------------------------------------- security fields

def _commands(cfg: dict, key: str) -> str:
    return "\n".join(cfg[key])


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_config_is_private_and_authenticated(name: str) -> None:
    cfg = prepare_config(_load(name))
    text = (CLUSTER / name).read_text()
    assert "RAY_AUTH_MODE=disabled" not in text and "dashboard-host=0.0.0.0" not in text
    # The token file travels to every node; every `ray start` runs with token auth.
    assert cfg["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts, key
        for c in starts:
            assert c.index("export RAY_AUTH_MODE=token;") < c.index("ray start"), f"{key}: {c}"
            assert 'MLFLOW_TRACKING_PASSWORD="$(cat ~/.ray/auth_token)"' in c, f"{key}: workers need MLflow's password"
    head = _commands(cfg, "head_start_ray_commands")
    assert "--dashboard-host=127.0.0.1" in head
    mlflow = next(c for c in cfg["head_start_ray_commands"] if "mlflow server" in c)
    assert "mdm tracking-server --auth" in mlflow and "MLFLOW_AUTH_CONFIG_PATH=/home/ubuntu/mlflow_auth.ini" in mlflow
    # The storage root every node reads, set for every job through the environment (no keys in the file).
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert all("export MDM_STORAGE_PATH=" in c for c in cfg[key] if "ray start" in c), key
    assert "AWS_SECRET_ACCESS_KEY" not in text and "GOOGLE_APPLICATION_CREDENTIALS" not in text
    assert any("mlflow[auth]" in c for c in cfg["head_setup_commands"])


@pytest.mark.slow
def test_head_mlflow_command_serves_with_basic_auth(tmp_path: Path) -> None:
    """The head's own MLflow command, run for real (paths moved under tmp, host 127.0.0.1)."""
    import re
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from mlflow.tracking import MlflowClient

    cfg = prepare_config(_load("aws.yaml"))
    command = next(c for c in cfg["head_start_ray_commands"] if "mlflow server" in c)
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    token = "tok-" + "7" * 40
    (home / ".ray" / "auth_token").write_text(token)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = (command.replace("/home/ubuntu", str(home)).replace("--host 0.0.0.0", "--host 127.0.0.1")
               .replace("--port 5000", f"--port {port} --workers 1")
               .replace("(pgrep -f \"mlflow server\" > /dev/null) ||", "")
               .replace("mdm tracking-server", f"{sys.executable} -m mdm tracking-server"))
    assert "0.0.0.0" not in command and command.endswith(" &")
    # In the foreground of its own session (not `&`), so the server and its workers are one process group.
    # (MLflow's background job runner, a dozen huey processes, is not what is tested here.)
    env = {**os.environ, "HOME": str(home), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(["bash", "-c", command[:-2]], env=env,
                              start_new_session=True, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except (urllib.error.URLError, OSError):
                assert server.poll() is None and time.time() < deadline, (home / "mlflow.log").read_text()[-3000:]
                time.sleep(0.5)
        ini = (home / "mlflow_auth.ini").read_text()
        assert re.search(rf"^admin_password = {token}$", ini, re.M)
        assert (home / "mlflow_auth.ini").stat().st_mode & 0o077 == 0  # private to its user
        with pytest.raises(urllib.error.HTTPError) as e:  # no password: refused
            urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert e.value.code == 401
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "mdm", token
        try:  # what the workers do with the exported credentials
            assert MlflowClient(tracking_uri=url).create_experiment("secured")
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)  # the server this test started, with its workers
        server.wait(timeout=60)


def _ray_containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_raycluster_uses_token_auth_and_a_network_policy() -> None:
    docs = _docs("kuberay/raycluster.yaml")
    cluster = docs["RayCluster"]
    secrets = set()
    for c in _ray_containers(cluster["spec"]):
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", c["name"]
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert not ref.get("optional"), "a missing token Secret must stop the pod, not start it open"
        secrets.add((ref["name"], ref["key"]))
        assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert secrets == {("mdm-ray-auth", "auth_token")}, secrets  # one token for the whole cluster
    policy = docs["NetworkPolicy"]["spec"]
    own = {"ray.io/cluster": cluster["metadata"]["name"]}
    assert policy["podSelector"]["matchLabels"] == own and policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": own}}]}]


def test_kuberay_rayjob_uses_token_auth() -> None:
    spec = _load("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"]
    assert spec["authOptions"] == {"mode": "token"}
    for c in _ray_containers(spec):
        assert all(e.get("value") != "disabled" for e in c.get("env", [])), c["name"]
