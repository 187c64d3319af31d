"""Run the whole benchmark suite: python benchmarks/run_all.py [--smoke]"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["synthesis.py", "overhead_cpu.py", "before_after.py", "alternatives.py", "many_layers.py",
           "memory.py", "serve.py", "loggers.py", "read_floor.py"]


def main() -> int:
    extra = sys.argv[1:]
    for script in SCRIPTS:
        print(f"\n## {script} {' '.join(extra)}\n", flush=True)
        code = subprocess.call([sys.executable, str(HERE / script), *extra], cwd=HERE)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
