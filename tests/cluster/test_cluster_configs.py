"""The cluster definitions in cluster/ are accepted by Ray's own validators and carry what KubeRay needs.

    pytest tests/cluster -q

Launcher configs go through `prepare_config` (merge with the provider's defaults.yaml, as `ray up` does)
and `validate_config` (Ray's JSON schema + cross-field checks). The runtime env goes through Ray's
`RuntimeEnv` parser and Ray's own packager, so the excludes are checked by the code that uploads.
"""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


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
    doc = _load("kuberay/raycluster.yaml")
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
