"""What one deployed message costs before fedrec's code runs: a fresh ``flwr-clientapp`` process.

Flower 1.42's SuperNode starts a new ``flwr-clientapp`` process for every
message; this script times, in fresh interpreters, the three parts of that
start-up: Flower's ClientApp runtime imports, fedrec's ClientApp import, and
the run configuration plus data. ``python -m simulations.bench_clientapp_start``
"""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, time
t0 = time.perf_counter()
import flwr.supernode.cli.flwr_clientapp
t1 = time.perf_counter()
import client.app, client.secagg
t2 = time.perf_counter()
from fedrec.data.spec import load_run_dataset
from fedrec.runconfig import RunConfig
cfg = RunConfig.from_flat({"synthetic.n-users": 5, "synthetic.n-items": 20, "model.dim": 4,
                           "secagg.enabled": True, "dp.unit": "user", "dp.noise-multiplier": 1.0, "dp.delta": 0.01})
load_run_dataset(cfg.data)
t3 = time.perf_counter()
print(json.dumps({"flower_imports_s": t1 - t0, "fedrec_clientapp_s": t2 - t1, "config_data_s": t3 - t2}))
"""


def main(repeats: int = 3) -> None:
    for _ in range(repeats):
        start = subprocess.run([sys.executable, "-c", "import resource, subprocess, sys, time; t=time.perf_counter();"
                                f"out = subprocess.run([sys.executable, '-c', {_PROBE!r}], capture_output=True, "
                                "text=True, check=True).stdout; u = resource.getrusage(resource.RUSAGE_CHILDREN);"
                                "print(out.strip()[:-1] + ', \"wall_s\": %f, \"cpu_s\": %f}' % "
                                "(time.perf_counter() - t, u.ru_utime + u.ru_stime))"],
                               capture_output=True, text=True, check=True)
        row = json.loads(start.stdout)
        print("  ".join(f"{k} {v:.2f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
