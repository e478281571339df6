"""`sft.train` with each rank starting LOCAL_RANK * 2 seconds after the previous one, as ranks
of a slow-to-start cluster job do. Launched by tests through `accelerate launch` (the shared
two-rank reference run of tests/helpers/distributed.py)."""

import os
import runpy
import time

time.sleep(2.0 * int(os.environ.get("LOCAL_RANK", "0")))
runpy.run_module("sft.train", run_name="__main__", alter_sys=True)
