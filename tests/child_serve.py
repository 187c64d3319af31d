"""A real training job for the serve tests, run as a child process.

    python child_serve.py RUN_DIR STEPS [GROW_AT]

Trains a small MLP with ``GradientSonifier(run_dir=RUN_DIR)``, about 100 steps per second, and
prints ``step N`` after each step. At step GROW_AT a frozen layer starts training, so the run
gains a voice (and its recording a second part) while a page follows it.
"""

import sys
import time

import torch

from gradsonic import GradientSonifier

run_dir, steps = sys.argv[1], int(sys.argv[2])
grow_at = int(sys.argv[3]) if len(sys.argv) > 3 else -1
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                            torch.nn.ReLU(), torch.nn.Linear(16, 3))
if grow_at >= 0:
    model[0].weight.requires_grad_(False)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
with GradientSonifier(model, run_dir=run_dir, quiet=True) as son:
    optimizer = son.wrap(optimizer)
    for i in range(steps):
        if i == grow_at:
            model[0].weight.requires_grad_(True)
        optimizer.zero_grad()
        model(torch.randn(16, 8)).pow(2).mean().backward()
        optimizer.step()
        print(f"step {i}", flush=True)
        time.sleep(0.01)
