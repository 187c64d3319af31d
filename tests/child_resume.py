"""A deterministic training script for the files tests: gradients depend only on the step.

    python child_resume.py RUN_DIR TOTAL [MODE]

Trains a fixed model (lr 0, so it never changes) on batches seeded by the step number, with
``GradientSonifier(run_dir=RUN_DIR, resume=True)``, from the step the sonifier resumes at up to
TOTAL; prints ``step N`` after each. MODE ``slow`` sleeps 3 ms per step; ``default`` uses the
default per-run folder instead of RUN_DIR (and no resume).
"""

import sys
import time

import torch

from gradsonic import GradientSonifier

run_dir, total = sys.argv[1], int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "fast"
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
if mode == "default":
    sonifier = GradientSonifier(model)
else:
    sonifier = GradientSonifier(model, run_dir=run_dir, resume=True, quiet=True)
optimizer = sonifier.wrap(optimizer)
for step in range(sonifier.steps, total):
    g = torch.Generator().manual_seed(step)
    optimizer.zero_grad()
    model(torch.randn(4, 8, generator=g)).pow(2).mean().backward()
    optimizer.step()
    print(f"step {step}", flush=True)
    if mode == "slow":
        time.sleep(0.003)
sonifier.close()
