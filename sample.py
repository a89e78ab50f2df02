"""Sample text from any checkpoint directory (pretrain, and later sft, ppo, ...).

Reads:  <ckpt>/model.pt, tokenizer.json (model.load_checkpoint)
Writes: nothing; prints the samples.

Run:
    python sample.py out/pretrain --prompt "The king" --num-samples 3
    python sample.py out/sft --chat --prompt "What is 2 + 3?"     # rendered as a user turn
"""

import argparse
import math

import torch

from common import StageError, run_main
from model import load_checkpoint
from training import check_device


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt", help="checkpoint directory, e.g. out/pretrain")
    p.add_argument("--prompt", default="", help="text to continue ('' = start of a document)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message and let the assistant answer")
    p.add_argument("--num-samples", type=int, default=2, help="samples, generated as one batch")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens per sample at most")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1 = off")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    if args.num_samples < 1 or args.max_new_tokens < 1:
        p.error("--num-samples and --max-new-tokens must be >= 1")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        p.error("--temperature must be a number >= 0 (0 = greedy)")
    if args.top_k < 0:
        p.error("--top-k must be >= 0 (0 = off)")
    if not 0 < args.top_p <= 1:
        p.error("--top-p must lie in (0, 1] (1 = off)")
    return args


def main(argv=None):
    args = parse_args(argv)
    model, tok, _ = load_checkpoint(args.ckpt, device=check_device(args.device))
    model.eval()
    eot, end = tok.special("<|endoftext|>"), tok.special("<|end|>")
    if args.chat:
        prompt = tok.render_prompt([{"role": "user", "content": args.prompt}])
    else:
        prompt = tok.encode_document(args.prompt)
    room = model.config.block_size - len(prompt)
    if room < 1:
        raise StageError(f"the prompt has {len(prompt)} tokens; the model's context is {model.config.block_size}")
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    outs = model.generate([prompt] * args.num_samples, min(args.max_new_tokens, room), args.temperature,
                          args.top_k, args.top_p, stop_tokens={eot, end}, generator=gen)
    for i, out in enumerate(outs):
        text = tok.decode([t for t in out if t not in (eot, end)])
        print(f"--- sample {i + 1}\n{args.prompt if not args.chat else ''}{text}")


if __name__ == "__main__":
    run_main(main)
