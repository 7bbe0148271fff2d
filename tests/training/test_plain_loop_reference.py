"""The trainer against a plain PyTorch loop written here without any of training/: the same model init,
data order, AdamW (decay on >= 2-D weights), warmup + cosine LR and global-norm clipping, with the loss
from full logits and F.cross_entropy (the trainer uses the chunked LM-head loss). One process, fp32;
tests/training/test_distributed_training.py ties ZeRO-1, DDP and the other stages to this run."""

import math

import torch
import torch.nn.functional as F

from train_helpers import TINY_RUN, failure, run_training, train_losses

ITERS = 8
SEED, SEQ, MICRO, LR, MIN_LR, WARMUP, WD, CLIP = 1337, 64, 4, 3e-3, 3e-4, 2, 0.1, 1.0  # TINY_RUN + recipe defaults


def plain_loop_losses(data_dir, iters: int) -> dict[int, float]:
    from data_prep import PackedTokenDataset, load_manifest
    from modeling import DecoderConfig, DecoderForCausalLM

    tokens = int(load_manifest(data_dir)["tokenizer"]["vocab_size"])
    vocab = math.ceil(tokens / 128) * 128
    torch.manual_seed(SEED)
    model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama", vocab_size=vocab, attn_implementation="sdpa"))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95), eps=1e-8)
    samples = iter(PackedTokenDataset(data_dir, SEQ, "train", shuffle=True, seed=SEED))
    losses = {}
    model.train()
    for step in range(iters):
        if step < WARMUP:
            lr = LR * (step + 1) / WARMUP
        else:
            lr = MIN_LR + 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (iters - WARMUP))) * (LR - MIN_LR)
        for group in opt.param_groups:
            group["lr"] = lr
        pairs = [next(samples) for _ in range(MICRO)]
        x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses[step + 1] = loss.item()
    return losses


def test_trainer_equals_a_plain_pytorch_loop(demo_data, tmp_path):
    code, log = run_training(None, *TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={tmp_path}",
                             f"--max_iters={ITERS}")
    assert code == 0, failure(log)
    trainer = train_losses(tmp_path)
    plain = plain_loop_losses(demo_data, ITERS)
    assert list(trainer) == list(plain)
    worst = max(abs(trainer[i] - plain[i]) for i in plain)
    print(f"max |trainer - plain loop| over {ITERS} iterations: {worst:.2e}")
    assert worst < 5e-6, (trainer, plain)
    assert plain[ITERS] < plain[1] - 0.3  # it trains (7.65 -> 7.15): a no-op on both sides would agree too
