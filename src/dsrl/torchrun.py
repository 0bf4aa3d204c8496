"""`python -m dsrl.torchrun [torchrun args]`: torchrun without its failure traceback.

A rank that fails has already printed its one line (`dsrl.failures`); torchrun's own traceback and
`ChildFailedError` table would repeat every rank's exit code around it. This keeps torchrun's behaviour (it stops
the other ranks, exit code 1) and speaks only for a rank that could not: one ended by a signal (a native abort, the
OOM killer's SIGKILL).
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def main(argv: list[str]) -> int:
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode < 0:
            print(f"dsrl: rank {rank} was killed by {failure.signal_name()}; the job stopped", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
