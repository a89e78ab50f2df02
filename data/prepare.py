"""Stage 1: collect, clean and deduplicate the pretraining corpus.

A language model is what it reads. This stage gathers text of several kinds (encyclopedic,
books, scientific abstracts, news, speeches, technical documentation, code), then removes
what would teach it badly: other languages, low-quality and repetitive pages, toxic pages,
duplicates and boilerplate; it masks personal data. Every removal is counted and reported,
and the survivors are split, per document, into train and validation.

    1. read           each source's documents, in a fixed order (sources.py)
    2. clean          per document, in parallel: normalise, strip markup, language or code
                      rules, Gopher quality and repetition rules, toxicity, PII masking
                      (filters.py)
    3. dedup          exact (hash of normalised text), then near-duplicates (MinHash + LSH),
                      streaming, first copy kept (dedup.py)
    4. lines          boilerplate lines (>= 40 chars, in >= 5 documents of a source) removed
                      after their first occurrence
    5. decontaminate  with --decontaminate, documents sharing a 13-word sequence with an
                      item of the named benchmarks are dropped (contamination.py)
    6. mix            with --max-mb, each source gets a share of the cap by its --mix weight
    7. split          train / validation by a hash of each document's text, so a document
                      (and, since near-duplicates are gone, any near copy of it) is on one
                      side only

Reads:  registry packages (downloaded once into ~/.cache/llmpipe, see shared/DATA.md),
        CPython's own standard library and docs, and any --input files.
Writes: out/data/corpus.jsonl   one {id, text, source, kind, licence, split} per line
        out/data/report.json, report.md, report.png   what each rule removed, per source (report.py)
        out/data/meta.json      arguments, thresholds, input hashes, metrics

Run:
    python data/prepare.py                          # the default corpus (~40 MB of text), 1 minute on 2 cores
    python data/prepare.py --max-mb 2               # a small mixture for a quick run
    python data/prepare.py --sources none --input my_texts/ crawl.warc.wet.gz

References: Rae et al. 2021 (Gopher, App. A); Raffel et al. 2020 (C4); Lee et al. 2022
(deduplication); Broder 1997 (MinHash); Leskovec et al., Mining of Massive Datasets ch. 3
(LSH); Penedo et al. 2023 (RefinedWeb) for the order of the pipeline.

Not included: model-based quality or toxicity classifiers (no downloaded models), URL
filtering (our sources have no URLs), languages other than English, sentence-level dedup.
"""

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from common import (StageError, atomic_open, check_out_dir, disk_full_error, hash_inputs, ignore_interrupts,  # noqa: E402
                    is_disk_full, run_main, sha256_file, write_json, write_meta)
from data import contamination, dedup, filters, sources  # noqa: E402
from data.report import Report, plot_report, write_report_md  # noqa: E402

FORMAT, VERSION = "corpus", 1
# The order in which rules run, and so the order of the report's rows.
RULES = ["language", "code", "gopher_quality", "gopher_repetition", "toxicity",
         "exact_duplicate", "near_duplicate", "boilerplate", "contamination"]
# MinHash's standard error is sqrt(J(1-J)/k): at k = 4096 under 0.008, so more hash functions
# buy nothing but time and memory (a typo of 10^7 would never finish).
MAX_NUM_PERM = 4096


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # where
    p.add_argument("--out-dir", default="out/data", help="directory for corpus.jsonl and the reports")
    # what to collect
    p.add_argument("--sources", default=",".join(sources.SOURCES),
                   help=f"comma-separated default sources ({', '.join(sources.SOURCES)}); "
                        "'none' = only --input files")
    p.add_argument("--input", nargs="+", default=[], metavar="PATH",
                   help="user files or folders: .txt .md .html .py, .jsonl(.gz) with a 'text' "
                        "field, Common Crawl .warc.wet(.gz)")
    p.add_argument("--max-mb", type=float, default=0,
                   help="cap on the output in MB (10^6 bytes of UTF-8), shared by --mix; 0 = no cap")
    p.add_argument("--mix", default="",
                   help="source weights for the cap, e.g. 'code=1,books=2'; unlisted sources weigh 1")
    p.add_argument("--val-fraction", type=float, default=0.02,
                   help="share of documents in the validation split")
    p.add_argument("--split-seed", type=int, default=0, help="salt of the train/validation hash")
    # cleaning
    p.add_argument("--max-toxicity", type=float, default=filters.MAX_TOXICITY,
                   help="remove documents with more listed words per 1,000 words; 0 = rule off")
    p.add_argument("--toxic-words", default=None,
                   help="word list, one term per line (default: LDNOOBW English from the registry)")
    # deduplication
    p.add_argument("--shingle-words", type=int, default=5, help="words per MinHash shingle")
    p.add_argument("--num-perm", type=int, default=128, help="MinHash hash functions")
    p.add_argument("--bands", type=int, default=16, help="LSH bands (must divide --num-perm)")
    p.add_argument("--jaccard", type=float, default=0.8,
                   help="estimated Jaccard similarity at which two documents are near-duplicates")
    p.add_argument("--boilerplate-chars", type=int, default=40,
                   help="shortest line (characters) that can count as boilerplate")
    p.add_argument("--boilerplate-docs", type=int, default=5,
                   help="a line in at least this many documents of a source is boilerplate")
    # decontamination
    p.add_argument("--decontaminate", default="",
                   help="drop documents sharing a 13-word sequence with these benchmarks' items "
                        "(comma-separated evaluate.py names, or 'all'; '' = keep everything)")
    p.add_argument("--truthfulqa-csv", default="", help="TruthfulQA.csv, for --decontaminate truthfulqa_*")
    # machine
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes for the per-document rules; 1 = no pool")
    args = p.parse_args(argv)

    # `not x >= 0` rather than `x < 0`: a NaN fails every comparison and must fail here too.
    if not 1 <= args.num_perm <= MAX_NUM_PERM:
        p.error(f"--num-perm must be in [1, {MAX_NUM_PERM}]")
    if args.bands < 1:
        p.error("--bands must be >= 1")
    if args.num_perm % args.bands:
        p.error(f"--bands {args.bands} must divide --num-perm {args.num_perm}")
    if not 0 <= args.val_fraction < 1:
        p.error("--val-fraction must be in [0, 1)")
    for flag in ("max_mb", "max_toxicity"):
        if not getattr(args, flag) >= 0:
            p.error(f"--{flag.replace('_', '-')} must be a number >= 0 (0 = off)")
    for flag, least in (("workers", 1), ("shingle_words", 1), ("boilerplate_chars", 1), ("boilerplate_docs", 2)):
        if getattr(args, flag) < least:
            p.error(f"--{flag.replace('_', '-')} must be >= {least}")
    most = 4 * (os.cpu_count() or 1)
    if args.workers > most:
        p.error(f"--workers {args.workers} is more than {most} (4 per core here): each is a process, "
                f"and more than the cores is slower")
    if not 0 < args.jaccard <= 1:
        p.error("--jaccard must be in (0, 1]")
    names = [] if args.sources == "none" else [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [n for n in names if n not in sources.SOURCES]
    if unknown:
        p.error(f"unknown source(s) {', '.join(unknown)}; choose from {', '.join(sources.SOURCES)} or 'none'")
    if not names and not args.input:
        p.error("nothing to read: give --sources or --input")
    args.source_names = names
    args.decontaminate = parse_benchmarks(args.decontaminate, p)
    args.weights = parse_mix(args.mix, p)
    return args


def parse_benchmarks(text, parser):
    known = contamination.BENCHMARKS
    names = list(known) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"--decontaminate: unknown benchmark {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


def parse_mix(text, parser):
    weights = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            parser.error(f"--mix item '{item}' is not name=weight")
        if not 0 <= weights[name.strip()] < float("inf"):
            parser.error(f"--mix weight of {name} must be a finite number >= 0")
    return weights


# ----------------------------------------------------------------------------- the maths

def mix_quotas(sizes, weights, cap):
    """Share `cap` bytes among sources by weight, giving what a small source cannot use to
    the others ("water-filling"), so that the quotas sum to min(cap, total available).

    sizes: source -> bytes available; weights: source -> weight (missing = 1).
    """
    quotas = {s: 0.0 for s in sizes}
    open_ = {s for s in sizes if sizes[s] > 0 and weights.get(s, 1.0) > 0}
    left = float(cap)
    while open_ and left > 1e-9:
        total_w = sum(weights.get(s, 1.0) for s in open_)
        share = {s: left * weights.get(s, 1.0) / total_w for s in open_}
        full = {s for s in open_ if sizes[s] - quotas[s] <= share[s]}
        if not full:                      # everyone can take a full share: done
            for s in open_:
                quotas[s] += share[s]
            break
        for s in full:                    # small sources take all they have; share the rest again
            left -= sizes[s] - quotas[s]
            quotas[s] = float(sizes[s])
        open_ -= full
    return {s: int(q) for s, q in quotas.items()}


def fit_to_budget(text, kind, budget):
    """The longest head of `text` that fits `budget` UTF-8 bytes, cut at a line end (prose
    only: cutting code would break it). None if nothing sensible fits."""
    if kind == "code" or budget <= 0:
        return None
    head = text.encode()[:budget].decode("utf-8", "ignore")
    cut = head.rfind("\n")
    head = head[:cut].rstrip() if cut > 0 else ""
    return head if len(head.split()) >= 50 else None


def split_of(text, val_fraction, seed=0):
    """'val' for a pseudo-random `val_fraction` of documents, decided by the text alone, so the
    same document always lands on the same side, whatever else is in the corpus."""
    digest = hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "little") / 2**64 < val_fraction else "train"


# ----------------------------------------------------------------------------- per document

_WORKER = {}


def init_pool_worker(config):
    """A pool process: Ctrl-C is the parent's to answer (one line), then init_worker."""
    ignore_interrupts()
    init_worker(config)


def init_worker(config):
    """Set up each worker once: compiled word list, MinHash functions, thresholds."""
    _WORKER.update(config)
    if config["toxic_words"]:
        _WORKER["toxic_list"] = filters.compile_word_list(config["toxic_words"])
    _WORKER["minhasher"] = dedup.MinHasher(config["num_perm"], seed=1)


def clean_document(doc):
    """Run the per-document rules on one raw document (in a worker process).

    Returns {"doc", "bytes_in", "removed" (rule name or None), "detail", "pii", "exact",
    "signature"}; the deduplication itself happens in the main process, in order.
    """
    cfg = _WORKER
    out = {"bytes_in": len(doc["text"].encode()), "removed": None, "detail": "", "pii": {}}
    kind = doc["kind"]
    # 1. normalise, then strip markup
    text = filters.normalize_text(doc["text"], kind)
    if doc["markup"] == "wiki":
        text = filters.strip_wiki_markup(text)
    elif doc["markup"] == "html":
        text = filters.strip_html(text)
    # 2. language (prose) or code rules (code); 3. Gopher quality and repetition (prose)
    if kind == "code":
        checks = [("code", filters.check_code)]
    else:
        checks = [("language", filters.check_english),
                  ("gopher_quality", filters.check_gopher_quality),
                  ("gopher_repetition", filters.check_gopher_repetition)]
    # 4. toxicity, on everything
    if cfg["max_toxicity"] > 0:
        checks.append(("toxicity", lambda t: filters.check_toxicity(t, cfg["toxic_list"],
                                                                     cfg["max_toxicity"])))
    for rule, check in checks:
        reason = check(text)
        if reason:
            out.update(removed=rule, detail=reason, doc={**doc, "text": text})
            return out
    # 5. PII masking (prose: in code, addresses such as 127.0.0.1 are part of the program)
    if kind == "prose":
        text, out["pii"] = filters.mask_pii(text)
    # 6. the keys deduplication needs, computed here where the cores are
    norm = dedup.normalize_for_dedup(text)
    out["exact"] = dedup.exact_key(norm)
    shingles = dedup.shingle_ids(norm, cfg["shingle_words"])
    out["signature"] = cfg["minhasher"].signature(shingles) if len(shingles) else None
    out["doc"] = {k: doc[k] for k in ("id", "source", "kind", "licence")} | {"text": text}
    return out


# ----------------------------------------------------------------------------- main

def iter_documents(args, collect_limit, collected, archives, user_files):
    """All raw documents, source after source; a source stops once it has collected its limit.

    subtle: `collected` (source -> bytes kept so far) is not this generator's: the consumer,
    clean_and_deduplicate, adds to it as documents survive, and the generator reads it before
    each document. That shared dict is how a source stops early under --max-mb. Because the
    consumer pulls a batch at a time, a source may overshoot its limit by up to one batch."""
    for name in args.source_names:
        src = sources.SOURCES[name]
        path = archives[name]
        for doc in src.reader(path):
            if collected[name] >= collect_limit.get(name, float("inf")):
                break
            yield doc
    for path in user_files:
        yield from sources.read_user_file(path)


def batched(docs, max_docs=64, max_bytes=1_000_000):
    """Group documents into batches of at most `max_docs` documents or about `max_bytes`."""
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc["text"])
        if len(batch) >= max_docs or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def clean_and_deduplicate(args, archives, user_files, config, report, path):
    """Steps 1-3: read every document, clean it in the worker pool (order preserved), then
    drop exact and near duplicates, streaming the survivors to `path`.

    Returns (number written, line counts per source for the boilerplate step).
    """
    # With a cap, each source reads until it holds 1.5x its weighted share of the cap (room
    # for what deduplication removes), so a 2 MB run does not clean 40 MB first.
    cap = args.max_mb * 1e6
    total_w = sum(args.weights.get(n, 1.0) for n in args.source_names) or 1
    collect_limit = {n: 1.5 * cap * args.weights.get(n, 1.0) / total_w
                     for n in args.source_names} if cap else {}
    collected = defaultdict(int)        # source -> bytes kept; read by iter_documents (subtle, see there)
    lsh = dedup.LSHIndex(args.num_perm, args.bands, args.jaccard)
    exact_seen = set()
    line_counts = defaultdict(lambda: defaultdict(int))   # source -> line key -> documents
    written = 0
    pool = multiprocessing.Pool(args.workers, init_pool_worker, (config,)) if args.workers > 1 else None
    if pool is None:
        init_worker(config)
    try:
        with open(path, "w", encoding="utf-8") as f, \
                tqdm(desc="clean+dedup", unit="doc", dynamic_ncols=True, mininterval=1) as bar:
            docs = iter_documents(args, collect_limit, collected, archives, user_files)
            # Batches keep memory bounded and let the collect limits take effect.
            for batch in batched(docs):
                results = pool.imap(clean_document, batch, chunksize=2) if pool else map(clean_document, batch)
                for raw, r in zip(batch, results):
                    bar.update(1)
                    report.add_input(raw, r["bytes_in"], raw["replaced"])
                    doc = r["doc"]
                    if r["removed"]:
                        report.remove(r["removed"], doc, r["bytes_in"], r["detail"])
                        continue
                    if r["exact"] in exact_seen:
                        report.remove("exact_duplicate", doc, r["bytes_in"], "same normalised text")
                        continue
                    exact_seen.add(r["exact"])
                    twin = lsh.add(doc["id"], r["signature"]) if r["signature"] is not None else None
                    if twin is not None:
                        report.remove("near_duplicate", doc, r["bytes_in"], f"near copy of {twin}")
                        continue
                    for k, v in r["pii"].items():
                        report.sources[doc["source"]]["pii_masked"][k] += v
                    for line in dedup.boilerplate_candidates(doc["text"], doc["kind"], args.boilerplate_chars):
                        line_counts[doc["source"]][dedup.line_key(line)] += 1
                    f.write(json.dumps(doc | {"bytes_in": r["bytes_in"]}, ensure_ascii=False) + "\n")
                    collected[doc["source"]] += len(doc["text"].encode())
                    written += 1
                bar.set_postfix(source=batch[-1]["source"], kept_mb=f"{sum(collected.values()) / 1e6:.1f}")
    finally:
        if pool:
            pool.terminate()
    return written, line_counts


def remove_boilerplate_lines(args, report, line_counts, n_docs, src_path, dst_path):
    """Step 4: drop boilerplate lines, now that we know in how many documents each occurs.
    Returns the bytes left per source."""
    sizes = defaultdict(int)
    seen = defaultdict(set)
    with open(src_path, encoding="utf-8") as fin, open(dst_path, "w", encoding="utf-8") as fout:
        for line in tqdm(fin, desc="boilerplate", unit="doc", total=n_docs, dynamic_ncols=True,
                         mininterval=1):
            doc = json.loads(line)
            src = doc["source"]
            text, n = dedup.remove_boilerplate(doc["text"], doc["kind"], line_counts[src], seen[src],
                                               args.boilerplate_chars, args.boilerplate_docs)
            report.sources[src]["boilerplate_lines"] += n
            if n and (not text.strip() or (doc["kind"] == "prose" and len(text.split()) < 50)):
                report.remove("boilerplate", doc, doc["bytes_in"], f"{n} boilerplate lines, little left")
                continue
            sizes[src] += len(text.encode())
            fout.write(json.dumps(doc | {"text": text}, ensure_ascii=False) + "\n")
    return sizes


def mix_split_and_write(args, report, quotas, src_path, corpus_path, bench_ngrams):
    """Steps 5-7: drop documents that contain benchmark text (with --decontaminate), keep each
    source within its quota, split train/validation and write the corpus atomically,
    streaming: one document in memory at a time. Returns the totals.

    Contamination is GPT-3's test (Brown et al. 2020, App. C): a document sharing any 13-word
    sequence with a benchmark item would let the model recite the answer instead of earning
    it. evaluate.py reports the same overlap per benchmark."""
    taken = defaultdict(int)
    totals = defaultdict(int)
    with open(src_path, encoding="utf-8") as fin, atomic_open(corpus_path) as fout:
        for line in fin:
            doc = json.loads(line)
            src, text = doc["source"], doc["text"]
            if bench_ngrams:
                hits = {bench_ngrams[h] for h in map(hash, contamination.word_ngrams(text)) if h in bench_ngrams}
                if hits:
                    report.remove("contamination", doc, len(text.encode()),
                                  "shares 13 words with " + ", ".join(sorted(hits)))
                    continue
            if quotas is not None and taken[src] + len(text.encode()) > quotas[src]:
                text = fit_to_budget(text, doc["kind"], quotas[src] - taken[src])
                report.sources[src]["cut_by_cap"] += 1
                if text is None:
                    continue
            nbytes = len(text.encode())
            taken[src] += nbytes
            split = split_of(text, args.val_fraction, args.split_seed)
            record = {"id": doc["id"], "text": text, "source": src, "kind": doc["kind"],
                      "licence": doc["licence"], "split": split}
            fout.write(json.dumps(record, ensure_ascii=False) + "\n")
            report.sources[src]["docs_out"] += 1
            report.sources[src]["bytes_out"] += nbytes
            for key, value in (("docs", 1), ("bytes", nbytes), (f"{split}_docs", 1),
                               (f"{split}_bytes", nbytes)):
                totals[key] += value
        if not totals["docs"]:
            raise StageError("no document survived cleaning; check the inputs and the rules' thresholds")
    if args.val_fraction > 0 and not totals["val_docs"]:
        print("warning: the validation split is empty; raise --val-fraction or add documents",
              file=sys.stderr)
    return totals


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    out_dir = check_out_dir(args.out_dir, sweep=False)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StageError(f"cannot create --out-dir {out_dir} ({e.strerror}); give another directory") from None
    user_files = sources.list_user_files(args.input)      # listed once; fails early on a bad path

    # Fetch what the run needs before any work, so a network problem fails in seconds.
    archives, inputs = {}, {}
    for name in args.source_names:
        archives[name] = sources.SOURCES[name].fetch()
        if archives[name] is not None:
            inputs[Path(archives[name]).name] = archives[name]
    toxic_words = sources.load_toxic_words(args.toxic_words) if args.max_toxicity > 0 else []
    inputs.update({f"input:{p}": p for p in user_files})
    bench_ngrams = {}
    if args.decontaminate:
        bench_ngrams, skipped = contamination.benchmark_ngrams(args.decontaminate, args.truthfulqa_csv)
        for what in skipped:
            print(f"warning: not decontaminated against {what}", file=sys.stderr)
    config = {"toxic_words": toxic_words, "max_toxicity": args.max_toxicity,
              "num_perm": args.num_perm, "shingle_words": args.shingle_words}

    report = Report(RULES)
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out_dir))
    try:
        n_docs, line_counts = clean_and_deduplicate(args, archives, user_files, config, report,
                                                       work / "cleaned.jsonl")
        sizes = remove_boilerplate_lines(args, report, line_counts, n_docs, work / "cleaned.jsonl",
                                         work / "deboiled.jsonl")
        quotas = mix_quotas(sizes, args.weights, args.max_mb * 1e6) if args.max_mb else None
        totals = mix_split_and_write(args, report, quotas, work / "deboiled.jsonl", out_dir / "corpus.jsonl",
                                     bench_ngrams)
    except OSError as e:                 # the work files are plain writes; corpus.jsonl says itself
        if is_disk_full(e):
            shutil.rmtree(work, ignore_errors=True)       # first, so the line tells what is free
            raise disk_full_error(out_dir) from None
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # The report and meta.json, written last: their presence says the corpus is complete.
    totals = dict(totals, seconds=time.time() - t0)
    rep = report.to_dict() | {"totals": totals, "quotas": quotas}
    write_json(out_dir / "report.json", rep)
    write_report_md(out_dir / "report.md", rep, totals)
    plot_report(out_dir / "report.png", rep)
    thresholds = {"min_english_score": filters.MIN_ENGLISH_SCORE,
                  "top_ngram_max": filters.TOP_NGRAM_MAX, "dup_ngram_max": filters.DUP_NGRAM_MAX,
                  "max_toxicity": args.max_toxicity,
                  "lsh_threshold_curve": dedup.lsh_threshold(args.bands, args.num_perm // args.bands)}
    write_meta(out_dir, FORMAT, VERSION, "data/prepare.py", vars(args), metrics=totals,
               inputs=hash_inputs(inputs), config=thresholds,
               corpus_sha256=sha256_file(out_dir / "corpus.jsonl"),     # bpe.py checks the pair
               sources={n: {"what": sources.SOURCES[n].what, "carrier": sources.SOURCES[n].carrier}
                        for n in args.source_names})
    print(f"corpus: {totals['docs']:,} documents, {totals['bytes'] / 1e6:.1f} MB "
          f"(val {totals.get('val_docs', 0):,} docs) -> {out_dir / 'corpus.jsonl'} "
          f"in {totals['seconds']:.0f} s")


if __name__ == "__main__":
    run_main(main)
