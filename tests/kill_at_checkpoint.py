"""Runs ``lesionjax.main`` with its arguments and kills the process (SIGKILL: nothing runs
after it) at a chosen checkpoint commit, so a kill-and-resume test kills at the same moment on
a fast machine and a slow one (polling the checkpoint folder from outside races the run).

``LESIONJAX_TEST_KILL`` says when, matching on the checkpoint's final path (Orbax writes a
step to a temporary folder and commits it by renaming it to ``<checkpoints>/<step>``):

- ``before:N``: while committing the N-th checkpoint, after every file of it is written and
  before the rename that makes it a checkpoint;
- ``after:SUFFIX``: right after the checkpoint whose path ends with SUFFIX (e.g.
  ``stage2_fullres/fold_0/checkpoints/3``) is committed.

Prints ``killed while committing step S`` or ``killed after committing P`` first.
"""

import os
import signal
import sys

if __name__ == "__main__":  # (not in the shard builder's spawned workers)
    # Python put this folder first on the path; its tests/lesionjax would shadow the package.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    from orbax.checkpoint._src.path import async_path

    when, _, what = os.environ["LESIONJAX_TEST_KILL"].partition(":")
    assert when in ("before", "after"), when
    real_rename = async_path.rename
    committed = []

    async def rename(src, dst):
        if not dst.name.isdigit():
            return await real_rename(src, dst)
        committed.append(dst.name)
        if when == "before" and len(committed) == int(what):
            print(f"killed while committing step {dst.name}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        result = await real_rename(src, dst)
        if when == "after" and str(dst).endswith(what):
            print(f"killed after committing {dst}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    async_path.rename = rename
    sys.argv = ["lesionjax.main", *sys.argv[1:]]
    from lesionjax.main import cli

    cli()
