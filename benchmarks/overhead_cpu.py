"""Training-step overhead on CPU: the seed CNN bare, the original's way, and with gradsonic.

    python benchmarks/overhead_cpu.py [--batch 10 64] [--rounds 40] [--block 40] [--smoke]

Variants, each on its own copy of the model with the same batches, timed in rotating order:
  bare       plain training steps
  original   the 2019 way: per-layer weight.grad.norm() read to the host one by one, each step
  gradsonic  GradientSonifier(wav=...) wrapped around the optimizer (tones rendered and streamed)
  +live      the same plus live=LiveSink(policy="drop") on a device clocked at 44.1 kHz (a
             thread pulling 256 frames every 5.8 ms, as PortAudio would); reports the measured
             step-to-sound latency
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.fixtures.audio
from _harness import (environment, interleave, seed_cnn_args, seed_cnn_copies,  # noqa: E402
                      table, training_block)

from gradsonic import GradientSonifier  # noqa: E402
from gradsonic.sinks import LiveSink  # noqa: E402
from tests.fixtures.audio import ClockedStream, factory  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = seed_cnn_args(__doc__, argv)
    print(environment())
    tmp = Path(tempfile.mkdtemp())
    for batch in args.batch:
        names = ("bare", "original", "gradsonic", "+live")
        batches, models, opts = seed_cnn_copies(names, batch, args.block)
        son = GradientSonifier(models["gradsonic"], wav=tmp / f"bench{batch}.wav", mapping="seed")
        son.wrap(opts["gradsonic"])
        live = LiveSink(policy="drop", stream_factory=factory(ClockedStream))
        son_live = GradientSonifier(models["+live"], wav=tmp / f"live{batch}.wav", mapping="seed",
                                    live=live)
        son_live.wrap(opts["+live"])
        layers = models["original"].ordered_layers()

        def original() -> None:
            [layer.weight.grad.norm().item() for layer in layers]

        variants = {n: training_block(models[n], opts[n], batches,
                                      original if n == "original" else None) for n in names}
        for run in variants.values():  # warm-up
            run()
        results = interleave(variants, args.rounds, "bare")
        son.close()
        son_live.close()
        print(f"\nseed CNN, batch {batch}, {args.rounds} rounds x {args.block} steps, "
              "overhead = per-round time / bare time - 1")
        print(table(results, "bare", per=args.block))
        lat = sorted(live.stats.latencies)
        if lat:
            print(f"live (drop): {live.stats.played_steps} steps played, "
                  f"{live.stats.dropped_steps} dropped, {live.stats.truncated_steps} cut; "
                  f"step-to-sound latency median {statistics.median(lat) * 1e3:.1f} ms, "
                  f"p95 {lat[int(0.95 * (len(lat) - 1))] * 1e3:.1f} ms, max {lat[-1] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
