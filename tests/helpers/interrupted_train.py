"""`sft.train` that signals itself right after optimizer step N: a deterministic stand-in for a
crash (SFT_TEST_SIGNAL=KILL) or a cluster preemption (TERM) at that point of training. Under
`accelerate launch`, SFT_TEST_SIGNAL_RANK=1 signals that rank only.

    SFT_TEST_SIGNAL=KILL SFT_TEST_SIGNAL_AT_STEP=11 python tests/helpers/interrupted_train.py ...
"""

import os
import runpy
import signal

import torch

at_step = int(os.environ["SFT_TEST_SIGNAL_AT_STEP"])
signum = getattr(signal, "SIG" + os.environ["SFT_TEST_SIGNAL"])
rank = os.environ.get("SFT_TEST_SIGNAL_RANK")
if rank is not None and rank != os.environ.get("LOCAL_RANK"):
    at_step = -1  # another rank gets the signal
adamw_step = torch.optim.AdamW.step
steps = 0


def step(self, *args, **kwargs):
    global steps
    result = adamw_step(self, *args, **kwargs)
    steps += 1
    if steps == at_step:
        os.kill(os.getpid(), signum)
    return result


torch.optim.AdamW.step = step
runpy.run_module("sft.train", run_name="__main__", alter_sys=True)
