"""mdm: train, sweep and evaluate masked diffusion language models of the LLaDA family on Ray.

Importing mdm keeps an embedded Ray on loopback. Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is
first imported; on Linux it defaults to on, and then `ray.init(_node_ip_address="127.0.0.1")` is rewritten to
the machine's network address with GCS, raylet, agents and workers listening on every interface. So before
anything in mdm can import Ray, the variable is set to 0 -- unless the user set it (1 opts out) or RAY_ADDRESS
says this process joins a cluster (`ray job submit` sets it). `mdm.platform.runtime.ray_runtime.ensure_ray`
re-applies the setting when Ray was imported before mdm, and checks the node's address after it starts.
"""

import os as _os

if "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in _os.environ and not _os.environ.get("RAY_ADDRESS"):
    _os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
