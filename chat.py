"""Chat with any checkpoint directory in the terminal (sft, and later ppo, distil, ...).

Each line read from standard input is a user turn. The conversation so far (an optional
--system message, then user and assistant turns) is rendered with tok.render_prompt, the one
chat template, and the answer is printed token by token as model.stream produces it, until
<|end|> or <|endoftext|> (neither is printed) or --max-new-tokens. The answer joins the
history, so the next turn sees the whole exchange.

- A token may end in the middle of a UTF-8 character; the bytes are decoded incrementally and
  only completed characters are printed (stream_text), never a U+FFFD for a split one.
- When prompt + --max-new-tokens would pass the model's block_size, the oldest user/assistant
  exchanges are dropped (the system message stays) until it fits (fit_prompt); a user turn
  too long to fit on its own is skipped with one line.
- Commands: /reset forgets the conversation (not the system message); /quit or end of input
  ends the chat.

Reads:  <ckpt>/model.pt, tokenizer.json, meta.json (model.load_checkpoint); user turns on stdin
Writes: nothing; prints the answers ("assistant> ...") on stdout.

Run:
    python chat.py out/sft                                   # type, Enter; /quit or Ctrl-D ends
    printf 'What is 2 + 3?\\nAnd 3 + 4?\\n' | python chat.py out/sft --temperature 0

Not included: editing or saving a conversation, several answers to choose from, batching.
"""

import argparse
import codecs
import io
import math
import sys

import torch

from common import StageError, run_main
from model import load_checkpoint
from training import check_device

COMMANDS = "commands: /reset (forget the conversation), /quit (or end of input)"
RESET_NOTE = "(conversation cleared)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt", help="checkpoint directory, e.g. out/sft")
    p.add_argument("--system", default="", help="system message that opens the conversation ('' = none)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="tokens per answer at most (the tiny model's block is 256: more leaves little room for the conversation)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling; 1 = off")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        p.error("--max-new-tokens must be >= 1")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        p.error("--temperature must be a number >= 0 (0 = greedy)")
    if args.top_k < 0:
        p.error("--top-k must be >= 0 (0 = off)")
    if not 0 < args.top_p <= 1:
        p.error("--top-p must lie in (0, 1] (1 = off)")
    return args


def fit_prompt(tok, messages, block_size, max_new_tokens):
    """(prompt ids, messages kept, exchanges dropped) for `messages`: an optional system
    message, then user/assistant turns ending with a user turn. The prompt renders the whole
    history if prompt + max_new_tokens <= block_size; otherwise the oldest user/assistant
    pairs go, one at a time, until it fits. The prompt is None if even the system message and
    the last user turn alone do not fit."""
    head = messages[:1] if messages[0]["role"] == "system" else []
    turns, dropped = messages[len(head):], 0
    while True:
        prompt = tok.render_prompt(head + turns)
        if len(prompt) + max_new_tokens <= block_size:
            return prompt, head + turns, dropped
        if len(turns) == 1:
            return None, head + turns, dropped
        turns, dropped = turns[2:], dropped + 1


def stream_text(pieces):
    """Yield the text of a stream of byte strings as soon as it is complete UTF-8: an
    incremental decoder holds back an incomplete trailing sequence (at most 3 bytes) until the
    bytes that complete it arrive. Invalid bytes, and a sequence still cut at the end, become
    U+FFFD, as in tok.decode, so the pieces join to tok.decode of all the bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for piece in pieces:
        if text := decoder.decode(piece):
            yield text
    if text := decoder.decode(b"", final=True):
        yield text


def answer_bytes(model, tok, prompt, generator, **sampling):
    """The bytes of each token the model answers `prompt` with (a batch of one), up to its
    first <|end|> or <|endoftext|>, which is not yielded."""
    stops = {tok.special("<|end|>"), tok.special("<|endoftext|>")}
    for (token,) in model.stream([prompt], stop_tokens=stops, generator=generator, **sampling):
        if token in stops:
            return
        yield tok.decode_bytes([token])


def main(argv=None):
    args = parse_args(argv)
    model, tok, meta = load_checkpoint(args.ckpt, device=check_device(args.device))
    model.eval()
    block_size = model.config.block_size
    if meta["kind"] == "base":
        print(f"(note: {args.ckpt} holds a base model, not trained to chat (run sft.py): its answers will ramble)")
    system = [{"role": "system", "content": args.system}] if args.system else []
    if fit_prompt(tok, system + [{"role": "user", "content": ""}], block_size, args.max_new_tokens)[0] is None:
        raise StageError(f"--max-new-tokens {args.max_new_tokens}{' with the --system message' if system else ''} "
                         f"leaves no room for a question in the model's context of {block_size} tokens; lower it")
    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="replace")         # a stray non-UTF-8 byte is no reason to crash
    interactive = sys.stdin.isatty()
    history = list(system)
    while True:
        # 1. read a turn; commands and empty lines never reach the model
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:                                    # end of input
            return
        line = line.strip()
        if line == "/quit":
            return
        if line == "/reset":
            history = list(system)
            print(RESET_NOTE)
        elif line.startswith("/"):
            print(COMMANDS)
        if not line or line.startswith("/"):
            continue
        # 2. the prompt: the history and this turn, the oldest exchanges dropped if it must be
        prompt, kept, dropped = fit_prompt(tok, history + [{"role": "user", "content": line}],
                                           block_size, args.max_new_tokens)
        if prompt is None:
            print(f"(that message is too long for the model's context of {block_size} tokens "
                  f"with --max-new-tokens {args.max_new_tokens}; skipped)")
            continue
        if dropped:
            print(f"(dropped the oldest {dropped} exchange{'s' * (dropped > 1)} to fit the model's "
                  f"context of {block_size} tokens)")
        # 3. stream the answer, then keep it as the assistant's turn
        print("assistant> ", end="", flush=True)
        parts = []
        for text in stream_text(answer_bytes(model, tok, prompt, generator, **sampling)):
            print(text, end="", flush=True)
            parts.append(text)
        print()
        history = kept + [{"role": "assistant", "content": "".join(parts)}]


if __name__ == "__main__":
    run_main(main)
