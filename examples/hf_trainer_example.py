"""Hear a Hugging Face Trainer run: one callback. A tiny GPT-2 built from a config (no download)
learns to continue counting sequences.

    python examples/hf_trainer_example.py --steps 100 --wav hf.wav
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from gradsonic.transformers import SonifierCallback  # + line 1


class Counting(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1024

    def __getitem__(self, i: int) -> dict:
        ids = (torch.arange(32) + i) % 128
        return {"input_ids": ids, "labels": ids}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--wav", default="hf.wav")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=2,
                                       n_head=2, bos_token_id=0, eos_token_id=0))
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(output_dir=out, max_steps=args.steps, learning_rate=1e-3,
                                     per_device_train_batch_size=16, report_to=[],
                                     save_strategy="no", logging_strategy="no", use_cpu=True,
                                     disable_tqdm=True)
        Trainer(model=model, args=training, train_dataset=Counting(),
                callbacks=[SonifierCallback(wav=args.wav)]).train()  # + line 2
    print(f"wrote {args.wav}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
