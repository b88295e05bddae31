"""Ray driver scripts the harness runs inside the cluster's namespace (`MultiNodeCluster.python_json`).

Each prints its result as one JSON line last (read back with `procfs.last_json`).
"""

WAIT_NODES = """
import json, sys, time, ray
want, timeout, names = int(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
ray.init(logging_level="ERROR")
deadline = time.time() + timeout
while True:
    nodes = [{"node_id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"],
              "name": next((k for k in names if k in n["Resources"]),
                           "head" if "node:__internal_head__" in n["Resources"] else None)} for n in ray.nodes()]
    if want < 0 or sum(n["alive"] for n in nodes) == want:
        break
    if time.time() > deadline:
        sys.exit(f"{sum(n['alive'] for n in nodes)} nodes alive, want {want}: {nodes}")
    time.sleep(0.5)
print(json.dumps(nodes))
"""

WAIT_JOB = """
import json, sys, time
from ray.job_submission import JobSubmissionClient
address, sid, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
client = JobSubmissionClient(address)
deadline = time.time() + timeout
while not client.get_job_status(sid).is_terminal() and time.time() < deadline:
    time.sleep(1)
print(json.dumps({"status": str(client.get_job_status(sid).value), "logs": client.get_job_logs(sid)}))
"""
