"""``napari-unet train --nproc N``: the same command on N processes of this machine,
started by torchrun (``python -m torch.distributed.run --standalone``).

torchrun's agent starts the ranks in their own sessions and, on Ctrl-C, sends each one
SIGINT, which stops training after the current step (the ranks agree on that step);
it waits :data:`GRACEFUL_STOP_S` for rank 0's last validation and saving before it
kills. The agent runs in its own session too, so that Ctrl-C reaches it once, through us.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

#: seconds torchrun waits for the ranks to end after Ctrl-C, before it kills them
GRACEFUL_STOP_S = 600


def without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def torchrun_command(nproc: int, train_argv: list[str]) -> list[str]:
    """The command line that runs ``napari-unet train <train_argv>`` on ``nproc`` ranks."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(nproc), "--shutdown-timeout", str(GRACEFUL_STOP_S),
        "-m", "napari_unet", "train", *train_argv,
    ]  # fmt: skip


def launch(nproc: int, train_argv: list[str]) -> int:
    """Run ``napari-unet train`` on ``nproc`` local ranks; returns torchrun's exit status
    (0 when every rank succeeded), or 130 after Ctrl-C (passed on to torchrun's agent:
    the ranks stop after the current step and rank 0 saves)."""
    # the CPU threads per rank; also keeps torchrun from printing its OMP_NUM_THREADS banner
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    env = {"OMP_NUM_THREADS": threads, **os.environ}
    command = torchrun_command(nproc, train_argv)
    agent = subprocess.Popen(command, env=env, start_new_session=True)

    interrupted = []

    def forward(signum, frame) -> None:
        interrupted.append(signum)
        agent.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = agent.wait()
        return 130 if interrupted and status != 0 else status
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if agent.poll() is None:  # we were interrupted in a way we did not forward
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait()
