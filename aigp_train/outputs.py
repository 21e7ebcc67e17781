"""Stage output folders: resolved recipe, manifest, atomic writes, skip-if-done.

Every stage writes one folder. On start the resolved recipe and its hash are
written there (``recipe.yaml``, ``recipe.sha256``); on success a
``manifest.json`` records the recipe hash, input hashes, code version, row
counts and wall time. A rerun with the same recipe finds the manifest and skips
the stage; a crashed run has no manifest and continues from what its
atomically written pieces left (each stage decides what a "piece" is: a JSONL
shard, a checkpoint, a Parquet part).

A resume is only a resume when nothing its pieces depend on changed. ``provenance.json`` records
what they are made from: the resolved recipe and a fingerprint of every input (each existing path
the recipe names: prompts, logs, model weights, adapter, tokenizer; plus any the stage adds, e.g.
the resolved prompt block of ``aigp infer``). ``begin`` compares a rerun against it and refuses a
folder whose recipe or inputs changed, naming what changed and the fix (``--force`` starts over
in the folder, or a new ``output_dir``), except for the keys a stage declares safe to change on
resume (``RESUMABLE_CHANGES``, e.g. a trainer's step budget). Nothing is written before ``begin``,
and a run whose inputs then fail their checks leaves no folder behind: the CLI removes a folder the
run created that holds nothing but what ``begin`` wrote (``discard_if_unstarted``).

Fault injection: ``AIGP_FAULT_AFTER_WRITE=<path suffix>`` (e.g. ``shard-00002.jsonl``) makes the
process SIGKILL itself right after an atomic write puts that file in place, so a kill test kills at
a chosen point (only the rank that writes the file dies) instead of after a sleep that a quiet box
outruns. With ``AIGP_FAULT_ACTION=hold`` the process instead waits there (up to 10 minutes) until
SIGUSR1 or SIGTERM arrives, then hands the signal to the handler the run had installed: a preemption
test (``scancel --batch --signal=USR1`` through SLURM) lands its signal at exactly that point.

Ownership: ``--force`` clears only what the stage itself wrote. Every top-level entry a stage writes
is claimed before it is written, in ``written.jsonl`` (one ``{"stage", "entry"}`` line per entry:
``atomic_write_*`` claims by itself, other writers call ``claim``); on success ``finish`` claims what
else the run left at top level. A folder holding anything else (a foreign entry: a ``.git``, a
user's ``data.csv``, another stage's pieces), a folder that is one of the recipe's inputs, or a
folder above one, is refused with or without ``--force``, naming what is in the way. An empty
folder and a nested folder of another stage's run (its own bookkeeping) are no foreign entries,
and neither is ever removed.

One run per folder: rank 0 holds an exclusive ``flock`` on ``.aigp.lock`` in the folder from
``begin`` to the end of the process; a second run into the folder is refused (exit 2) naming the
holder's pid and host. The kernel drops a lock with its process, so a lock left by a killed run
is never in the way; its pid is named in a note.

Files are written with the permissions the umask gives (``0644`` under the usual ``022``), not
the ``0600`` of a bare ``mkstemp``: other users of a cluster read these outputs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from aigp_train.config import UserError, recipe_hash, recipe_to_dict
from aigp_train.llm.models import resolve_path  # same lookup the stages use (cwd, then the repo)

MANIFEST = "manifest.json"
PROVENANCE = "provenance.json"
FAULT_AFTER_WRITE = "AIGP_FAULT_AFTER_WRITE"  # env: SIGKILL this process once a file ending so is written
FAULT_ACTION = "AIGP_FAULT_ACTION"  # env: kill (the default) or hold (wait there for SIGUSR1/SIGTERM)
FAULT_HOLD_S = 600.0  # a held process goes on by itself after this long (a test that never signals fails, not hangs)
WRITTEN = "written.jsonl"  # the entries this stage wrote, claimed before each is written
LOCK = ".aigp.lock"
BOOKKEEPING = ("recipe.yaml", "recipe.sha256", PROVENANCE, WRITTEN, LOCK)  # what ``begin`` writes; no piece of work
# mkstemp_beside's temp name ``.<name>.<8 random>.tmp``: a killed write's leftover of ``<name>``
TMP_NAME = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")
_ACTIVE: list["StageOutput"] = []  # folders begun by this process: ``claim`` records writes into them
# Files above this size (model weights) are fingerprinted by size and mtime: hashing 60 GB of
# weights at every start would cost minutes.
CONTENT_HASH_MAX_BYTES = 64 << 20


class ResumeMismatch(UserError):
    """An output folder holds pieces made from another recipe or other inputs than this run's."""


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def fault_point(path: str | Path) -> None:
    """The fault-injection hook (``AIGP_FAULT_AFTER_WRITE``): a real SIGKILL, no cleanup, no flush; or
    (``AIGP_FAULT_ACTION=hold``) a wait for the preemption signal at this point."""
    target = os.environ.get(FAULT_AFTER_WRITE)
    if not (target and Path(path).as_posix().endswith(target)):
        return
    action = os.environ.get(FAULT_ACTION, "kill")
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "hold":
        _hold_for_signal(path)
    else:
        raise UserError(f"{FAULT_ACTION}={action}: expected kill or hold.")


def _hold_for_signal(path: str | Path) -> None:
    """Wait until SIGUSR1 or SIGTERM arrives, then run the handler the process had for it (the default
    action if none): the signal lands where the file was just written, whatever the box's speed."""
    sigs = (signal.SIGUSR1, signal.SIGTERM)
    arrived: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: arrived.append(signum)) for sig in sigs}
    print(f"[aigp] fault hook: holding after writing {path} until SIGUSR1 or SIGTERM", file=sys.stderr, flush=True)
    deadline = time.monotonic() + FAULT_HOLD_S
    try:
        while not arrived and time.monotonic() < deadline:
            time.sleep(0.05)  # a Python handler runs in the main thread between these sleeps
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if arrived:
        handler = previous[arrived[0]]
        if callable(handler):
            handler(arrived[0], None)
        elif handler == signal.SIG_DFL:
            os.kill(os.getpid(), arrived[0])  # the default action (terminate), now that it is restored


def mkstemp_beside(path: Path) -> tuple[int, str]:
    """A temp file next to ``path`` (same filesystem, so the final rename is atomic), with the
    permissions the umask gives: mkstemp makes 0600, and outputs are for the cluster's users."""
    claim(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, tmp


def claim(path: str | Path) -> None:
    """Record, before writing it, that ``path`` is written by the stage whose folder holds it (its
    top-level entry goes to that folder's ``written.jsonl``): ``--force`` clears only such entries."""
    if not _ACTIVE:
        return
    path = Path(os.path.abspath(path))
    for out in _ACTIVE:
        root = Path(os.path.abspath(out.path))
        if root in path.parents:
            out.claim_entry(path.relative_to(root).parts[0])


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fault_point(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))


def iter_jsonl(path: str | Path, fix: str = "delete the shard to regenerate it") -> Iterator[tuple[int, Any]]:
    """(line number, decoded row) of every non-blank line; a bad line's error names it and ``fix``."""
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno} is not valid JSON ({err}); {fix}.") from err


def read_jsonl(path: str | Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def file_hash(path: str | Path) -> str:
    """Fingerprint of an input. A folder: its files' names and fingerprints (its own bookkeeping and
    temp files left out); in a finished stage output (it has a manifest) each file by size and mtime
    plus the manifest's content, so an in-place edit of a shard after the stage finished shows, at the
    cost of one stat per file. A file: its content, or above ``CONTENT_HASH_MAX_BYTES`` (model
    weights) its size and mtime."""
    path = Path(path)
    if path.is_dir():
        finished = (path / MANIFEST).is_file()
        digest = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if not p.is_file() or p.name in (LOCK, WRITTEN) or TMP_NAME.match(p.name):
                continue
            st = p.stat()
            fingerprint = (f"size={st.st_size} mtime_ns={st.st_mtime_ns}" if finished and p.name != MANIFEST
                           else file_hash(p))
            digest.update(f"{p.relative_to(path)}\0{fingerprint}\n".encode())
        return digest.hexdigest()
    st = path.stat()
    if st.st_size > CONTENT_HASH_MAX_BYTES:
        return hashlib.sha256(f"size={st.st_size} mtime_ns={st.st_mtime_ns}".encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def code_version() -> str:
    """git commit of the code that ran (with '+dirty' if the tree had changes), or the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                               text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        # only a run without git reads the package version; at the top it costs every aigp command
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - ~7 ms (email, csv)

        try:
            return version("aigp-train")
        except PackageNotFoundError:
            return "unknown"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _looks_like_path(value: Any) -> bool:
    """A string with a folder or a suffix: a bare word ("cpu", "bf16") that happens to name a file
    in the working directory is no input."""
    return isinstance(value, str) and bool(value) and ("/" in value or bool(Path(value).suffix))


def recipe_paths(recipe: Any) -> dict[str, Path]:
    """Every existing path the resolved recipe names (but its output_dir), resolved, by dotted key."""

    found = {}
    for key, value in _flatten(recipe_to_dict(recipe)).items():
        if key.rsplit(".", 1)[-1] == "output_dir" or not _looks_like_path(value):
            continue
        try:
            path = resolve_path(value).resolve()
        except (OSError, ValueError):  # a value that is no path (a name, a template) is not an input
            continue
        if path.exists():
            found[key] = path
    return found


def recipe_inputs(recipe: Any) -> dict[str, str]:
    """Fingerprint of every existing path the resolved recipe names, by dotted key: the inputs a
    stage's pieces are made from. The output folder, paths inside it and folders holding it are not
    inputs (the stage writes them)."""
    out_dir = Path(recipe.output_dir).resolve()
    return {key: file_hash(path) for key, path in recipe_paths(recipe).items()
            if not _is_within(path, out_dir) and not _is_within(out_dir, path)}


def _launch_token() -> str | None:
    """Id of this multi-process launch (torchrun's run id, or SLURM's job.step), shared by its ranks."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return os.environ["TORCHELASTIC_RUN_ID"]
    if "SLURM_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '')}"
    return None


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


@dataclass
class StageOutput:
    """One stage's output folder. ``begin`` it (after the inputs are checked), write into ``path``,
    then ``finish``.

    ``resumable_changes``: dotted recipe keys (or prefixes) whose change keeps a resume valid (a
    trainer's step budget); ``extra_inputs``: fingerprints the recipe's paths do not show."""

    path: Path
    stage: str
    recipe: Any
    resumable_changes: tuple[str, ...] = ()
    extra_inputs: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    written: set[str] = field(default_factory=set)  # this stage's claimed top-level entries
    _lock_fd: int | None = None

    @classmethod
    def open(cls, output_dir: str | Path, stage: str, recipe: Any, force: bool = False, **kwargs: Any) -> "StageOutput":
        """``StageOutput(...)`` then ``begin(force)``: for callers with nothing to check first."""
        out = cls(Path(output_dir), stage, recipe, **kwargs)
        out.begin(force)
        return out

    @property
    def recipe_hash(self) -> str:
        return recipe_hash(self.recipe)

    def provenance(self) -> dict:
        """What this run's pieces are made from: the resolved recipe and its inputs' fingerprints."""
        return {"stage": self.stage, "recipe_sha256": self.recipe_hash, "recipe": _flatten(recipe_to_dict(self.recipe)),
                "inputs": {**recipe_inputs(self.recipe), **self.extra_inputs}, "launch": _launch_token()}

    def _resumable(self, key: str) -> bool:
        return any(key == k or key.startswith(k + ".") or k == "" for k in self.resumable_changes)

    def _recorded(self) -> dict | None:
        """The provenance recorded in the folder; for a folder written before provenance was
        recorded, its ``recipe.yaml`` (inputs unknown); None for a fresh folder."""
        path = self.path / PROVENANCE
        if path.is_file():
            return json.loads(path.read_text())
        if (self.path / "recipe.yaml").is_file():
            return {"stage": self.stage, "recipe": _flatten(yaml.safe_load((self.path / "recipe.yaml").read_text())),
                    "inputs": None}
        return None

    def changes(self, current: dict | None = None) -> list[str]:
        """One line per recipe key or input that differs between the folder's record and this run
        (none for a fresh folder), leaving out the stage's ``resumable_changes``."""
        old = self._recorded()
        if old is None:
            return []
        current = current or self.provenance()
        lines = [] if old.get("stage") == self.stage else [f"the stage ({old.get('stage')} -> {self.stage})"]
        keys = (set(old["recipe"]) | set(current["recipe"])) - {"output_dir"}  # a moved folder is the same run
        for key in sorted(keys):
            before, after = old["recipe"].get(key, "<unset>"), current["recipe"].get(key, "<unset>")
            if before != after and not self._resumable(key):
                lines.append(f"recipe key {key}: {before!r} -> {after!r}")
        if old["inputs"] is None:  # a folder from before inputs were recorded: only its recipe can be compared
            return lines
        for key in sorted(set(old["inputs"]) | set(current["inputs"])):
            if old["inputs"].get(key) != current["inputs"].get(key) and not self._resumable(key):
                what = ("appeared" if key not in old["inputs"] else
                        "is gone" if key not in current["inputs"] else "changed")
                lines.append(f"input {key} ({current['recipe'].get(key, 'stage input')}) {what}")
        return lines

    def _claims(self) -> dict[str, set[str]]:
        """stage -> the top-level entries it claimed in this folder (``written.jsonl``)."""
        claims: dict[str, set[str]] = {}
        try:
            lines = (self.path / WRITTEN).read_text().splitlines()
        except OSError:
            return claims
        for line in lines:
            try:
                row = json.loads(line)
                claims.setdefault(row["stage"], set()).add(row["entry"])
            except (json.JSONDecodeError, KeyError, TypeError):  # a line cut by a kill: its entry is re-claimed
                continue
        return claims

    def claim_entry(self, name: str) -> None:
        """Append ``name`` to this stage's claims (once per process)."""
        if name in self.written or name in BOOKKEEPING:
            return
        self.written.add(name)
        line = json.dumps({"stage": self.stage, "entry": name}) + "\n"
        self.path.mkdir(parents=True, exist_ok=True)  # another rank may claim before rank 0 made the folder
        fd = os.open(self.path / WRITTEN, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line.encode())  # one short O_APPEND write: ranks appending at once never interleave
        finally:
            os.close(fd)

    def _is_ours(self, child: Path, ours: set[str], bookkept: bool) -> bool:
        """``child`` (a top-level entry) is this stage's bookkeeping, a claimed piece or the temp file
        of one (a killed write's leftover)."""
        name = child.name
        tmp = TMP_NAME.match(name)
        names = {name, tmp["name"]} if tmp else {name}
        return bool(names & ours) or name == LOCK or (bookkept and bool(names & set(BOOKKEEPING)))

    def _foreign(self) -> list[str]:
        """Top-level entries this stage did not write. An empty folder and a nested folder of another
        run (its own bookkeeping: the LTVE run that ltve-eval reuses) are neither foreign nor ever removed."""
        if not self.path.is_dir():
            return []
        children = sorted(self.path.iterdir())  # listed before the claims are read: a claim precedes its entry
        ours = self._claims().get(self.stage, set())
        bookkept = (self.path / WRITTEN).is_file()
        foreign = []
        for child in children:
            if self._is_ours(child, ours, bookkept):
                continue
            if child.is_dir() and not child.is_symlink() and (
                    not any(child.iterdir()) or (child / WRITTEN).is_file() or (child / PROVENANCE).is_file()):
                continue
            foreign.append(child.name + ("/" if child.is_dir() else ""))
        return foreign

    def check_folder(self, foreign: bool = True) -> None:
        """Refuse (``UserError``) an output_dir that is a file or a dangling link, a folder that is one
        of the recipe's inputs or holds one, and (``foreign``) a folder holding entries this stage did
        not write: ``--force`` would delete the user's files or the stage's own input."""
        raw = str(self.recipe.output_dir)
        if raw.startswith("~"):
            raise UserError(f"output_dir={raw}: '~' is not expanded inside a recipe or a key=value override; "
                            f"write the full path (output_dir=$HOME{raw[1:]}).")
        if self.path.is_symlink() and not self.path.exists():
            raise UserError(f"output_dir {self.path} is a symbolic link to {os.readlink(self.path)}, which does not "
                            f"exist; remove the link or set another output_dir.")
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"output_dir {self.path} is an existing file, not a folder; set output_dir to a new "
                            f"folder.")
        out_dir = self.path.resolve()
        for key, path in recipe_paths(self.recipe).items():
            if _is_within(path, out_dir):
                what = "is" if path == out_dir else "holds"
                raise UserError(f"output_dir {self.path} {what} this stage's input {key} ({path}); writing there "
                                f"would overwrite it. Set output_dir to a folder of its own.")
        entries = self._foreign() if foreign else []
        if entries:
            shown = ", ".join(entries[:6]) + (f" and {len(entries) - 6} more" if len(entries) > 6 else "")
            raise UserError(f"output_dir {self.path} holds entries aigp {self.stage} did not write ({shown}); it "
                            f"never deletes them, --force included. Set output_dir to a new or empty folder.")

    def begin(self, force: bool = False) -> bool:
        """Check the folder against this run, take its lock (rank 0), then write the resolved recipe, its
        hash and the provenance. Refuses (``UserError``) a folder this stage may not write into
        (``check_folder``) and one that another run holds; refuses (``ResumeMismatch``) a folder whose
        pieces were made from another recipe or other inputs, which ``force`` clears first (only what
        this stage wrote; a folder of this very recipe and these inputs is only rerun over its pieces).
        Returns whether the folder is new."""
        # the other ranks leave the foreign-entry check to rank 0, which may be clearing the folder now
        self.check_folder(foreign=_rank() == 0)
        current = self.provenance()
        changed = self.changes(current)
        if changed and not force:
            shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
            raise ResumeMismatch(
                f"{self.path} holds {self.stage} output made from another recipe or other inputs: {shown}.\n"
                f"Resuming would mix the two; rerun with --force to start over in it (it removes only what aigp "
                f"{self.stage} wrote there), or set a new output_dir.")
        if _rank() != 0:
            if changed:
                self._wait_for_rank_zero(current)
            self.written = self._claims().get(self.stage, set())
            _ACTIVE.append(self)
            return False
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self.check_folder()  # again under the lock: the folder is ours alone from here
        except UserError:
            self.close()
            raise
        if changed:
            self.clear()
        (self.path / WRITTEN).touch()
        self.written = self._claims().get(self.stage, set())
        self._sweep_temp_files()
        _ACTIVE.append(self)
        atomic_write_text(self.path / "recipe.yaml", yaml.safe_dump(recipe_to_dict(self.recipe), sort_keys=False))
        atomic_write_text(self.path / "recipe.sha256", self.recipe_hash + "\n")
        atomic_write_json(self.path / PROVENANCE, current)
        return created

    def _lock(self) -> None:
        """Take the folder's exclusive lock for this process's lifetime (``close`` drops it), or refuse."""
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"output_dir {self.path} is in use by another aigp run ({holder}); two runs into one "
                            f"folder would mix their pieces. Wait for it to end or set another output_dir.") from None
        stale = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if stale:  # a holder that ended without ``close``: killed; the kernel dropped its lock with it
            print(f"[aigp] note: {self.path} was last locked by {stale}, which is gone (killed?); resuming.",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, aigp {self.stage}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the folder: stop claiming writes into it and drop its lock (emptied: not stale)."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _sweep_temp_files(self) -> None:
        """Remove temp files that killed writes left in this stage's pieces (a resume never reads
        them). Under several ranks only old ones: another rank may be writing one now."""
        cutoff = time.time() - (0 if int(os.environ.get("WORLD_SIZE", "1")) == 1 else 600)
        ours = self.written | set(BOOKKEEPING)
        for child in list(self.path.iterdir()):
            tops = [child] if TMP_NAME.match(child.name) else (
                child.rglob(".*.tmp") if child.name in ours and child.is_dir() and not child.is_symlink() else [])
            for tmp in list(tops):
                match = TMP_NAME.match(tmp.name)
                if match and (tmp.parent != self.path or match["name"] in ours) and tmp.stat().st_mtime < cutoff:
                    tmp.unlink(missing_ok=True)

    def _wait_for_rank_zero(self, current: dict, timeout_s: float = 600.0) -> None:
        """Under ``--force`` rank 0 clears a changed folder: the others start once its new provenance
        is there (same launch), so no rank writes a piece that the clearing then deletes."""
        deadline = time.monotonic() + timeout_s
        while current["launch"] is not None and time.monotonic() < deadline:
            try:
                if json.loads((self.path / PROVENANCE).read_text()).get("launch") == current["launch"]:
                    return
            except (OSError, json.JSONDecodeError):
                pass
            time.sleep(0.2)

    def clear(self) -> None:
        """Remove what this stage wrote in the folder (its claimed entries, their temp files and its
        bookkeeping); nothing else is touched."""
        ours = self._claims().get(self.stage, set())
        for child in list(self.path.iterdir()):
            if child.name == LOCK or not self._is_ours(child, ours, bookkept=True):
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        self.written = set()

    def discard_if_unstarted(self) -> None:
        """Remove the folder if it holds nothing but what ``begin`` wrote (a start that failed)."""
        if not self.path.is_dir():
            return
        files = [p for p in self.path.rglob("*") if not p.is_dir()]
        if all(p.parent == self.path and p.name in BOOKKEEPING for p in files):
            shutil.rmtree(self.path)

    def is_done(self) -> bool:
        """True if a previous run with the same recipe finished here."""
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            return False
        try:
            data = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            return False
        return data.get("recipe_sha256") == self.recipe_hash and data.get("stage") == self.stage

    def finish(self, *, inputs: dict[str, str | Path] | None = None, rows: dict[str, int] | None = None,
               summary: dict[str, Any] | None = None) -> dict:
        manifest = {
            "stage": self.stage,
            "recipe_sha256": self.recipe_hash,
            "inputs": {name: file_hash(p) for name, p in (inputs or {}).items() if Path(p).exists()},
            "code_version": code_version(),
            "rows": rows or {},
            "summary": summary or {},
            "started": self.started,
            "wall_seconds": round(time.time() - self.started, 3),
        }
        for name in self._foreign():  # what writers that do not ``claim`` left while the run held the folder
            self.claim_entry(name.rstrip("/"))
        atomic_write_json(self.path / MANIFEST, manifest)
        return manifest


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST}: the stage that writes it has not finished. Run it first.")
    return json.loads(path.read_text())
