"""A training script run as a child process by the fault tests.

    python child_train.py MODE WAV [STEPS]

Prints ``step N`` (flushed) after each optimizer step. MODE: ``raise`` raises RuntimeError after
step 30; ``run`` just trains (the parent interrupts or kills it); ``sleep`` trains slowly;
``flush`` calls ``sonifier.flush()`` after every step.
"""

import sys
import time

import torch

from gradsonic import GradientSonifier

mode, wav = sys.argv[1], sys.argv[2]
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 100000
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
sonifier = GradientSonifier(model, wav=wav)
optimizer = sonifier.wrap(optimizer)
optimizer.register_step_post_hook(lambda *a: print(f"step {sonifier.steps}", flush=True))
for i in range(steps):
    optimizer.zero_grad()
    model(torch.randn(4, 8)).pow(2).mean().backward()
    optimizer.step()
    if mode == "raise" and i + 1 == 30:
        raise RuntimeError("boom at step 30")
    if mode == "flush":
        sonifier.flush()
    if mode == "sleep":
        time.sleep(0.002)
