"""Run a `logicad` command as a Ray cluster job: the file that `ray submit` uploads.

`ray submit cluster.yaml scripts/ray_submit.py train --method dfsc --data s3://B/loco ...`
copies this file to the head node and runs `python ray_submit.py train ...` there. It joins
the running cluster (RAY_ADDRESS, else "auto": the head this runs on) and calls the
`logicad` command line with the same arguments, so every `logicad` command and flag works
unchanged. A leading `--` (some shells and `ray submit` versions pass it on) is dropped.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    os.environ.setdefault("RAY_ADDRESS", "auto")  # join the cluster; never start a second one
    from logicad.pipelines.cli import main as logicad

    return logicad(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
