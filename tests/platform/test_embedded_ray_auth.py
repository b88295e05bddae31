"""The embedded Ray starts with token authentication and without Ray's warning about choosing it (issue #23,
item 9: the main job's terminal holds mdm's lines). One Ray start, in a fresh process with RAY_AUTH_MODE
unset (a new user's shell) and HOME in a temporary directory, where Ray writes the token it makes.

Run: pytest tests/platform/test_embedded_ray_auth.py
"""

import os
import subprocess
import sys

CODE = """
import os, types
import ray
from mdm.platform.runtime.ray_runtime import ensure_ray
ensure_ray(types.SimpleNamespace(address=None, num_cpus=1))
try:
    print("driver", os.environ.get("RAY_AUTH_MODE"))
    print("worker", ray.get(ray.remote(lambda: os.environ.get("RAY_AUTH_MODE")).remote()))
finally:
    ray.shutdown()
"""


def test_embedded_ray_uses_token_auth_without_the_warning(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(HOME=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["driver", "token", "worker", "token"]
    assert (tmp_path / ".ray" / "auth_token").is_file()  # Ray made the token the cluster checks
    assert "mdm: embedded Ray on 127.0.0.1" in proc.stderr
    assert "Token authentication" not in proc.stderr, proc.stderr
