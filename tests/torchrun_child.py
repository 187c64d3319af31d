"""Run a script under torchrun and leave without the interpreter's teardown.

    torchrun ... tests/torchrun_child.py SCRIPT [ARGS...]

torch 2.14's gloo process groups often abort during interpreter teardown ("terminate called without
an active exception", exit -6): 7 of 16 runs of an FSDP2 script with gradsonic removed entirely,
about 1 in 20 runs of the DDP example. By then the script has closed its sonifier, written its
files and destroyed its process group, so the tests run it through this wrapper, which flushes
and ends the process with the script's exit status.
"""

import os
import runpy
import sys

script = sys.argv[1]
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
