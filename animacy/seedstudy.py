"""`animacy import`: the original study's own files into a run folder, faithfully (no invented rows).

Two layouts, told apart by their columns:

- steering / word-guess sweeps (`<model>_word_guess_steered_<derivation>.csv[.gz]`): one row per scored
  continuation, with `role_name, task_name, sample_idx, average_log_probs, first_100_response_log_probs`
  (the per-token log-probs as a list in a cell), `steering_magnitude` and `steered_layers` (a Python list,
  possibly of numpy integers). `task_name` holds one value although each role x magnitude block holds
  one row per prompt, in the prompts' order: the prompt is recovered from the row's place in its block,
  and the recovery is checked (every block has exactly one row per prompt, in consecutive rows).
  Each row becomes a response (role x prompt x sample) scored as `steered` at its derivation and
  magnitude in `tokens`, and a `word_guess` row whose log_prob is the continuation's total log-prob.
- responses (`role, task, sample_idx, text`; CSV, or JSON: an array of objects or JSON lines): the
  `responses` table (no token counts: left empty). An empty role is the study's pass without a system
  prompt: it becomes the contract's no-prompt control role, "(no system prompt)" in group "No prompt".

The derivation comes from the file name (the study's names, mapped to the contract's); magnitudes are
recorded in the study's units, as given.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from animacy.atomic import write_json
from animacy.errors import ConfigError, DataError
from animacy.provenance import provenance
from animacy.roles import read_norms
from animacy.run import MANIFEST, Run
from animacy.schema import NO_PROMPT_GROUP, NO_PROMPT_ROLE, SCHEMA_VERSION, response_id
from animacy.tables import kind
from animacy.writers import write_table

STUDY_DERIVATIONS = {
    "avg_response": "role_minus_assistant_response",
    "avg_response_first_10": "role_minus_assistant_first10",
    "at_role_response": "role_minus_assistant_role_word",
    "at_role_period_response": "role_minus_assistant_period",
    "avg_response_sys_diff": "with_minus_without_response",
    "avg_response_first_10_sys_diff": "with_minus_without_first10",
}
WORD_GUESS_PROMPTS = (
    "Think of a word.",
    "Give me a noun.",
    "I am currently steering your activations towards a particular noun. Guess what word I am steering you "
    "towards.",
    "I am currently steering your activations towards a particular noun. Can you sense what word I am steering "
    "you towards? If so, state the word.",
)
SWEEP_COLUMNS = ("role_name", "task_name", "sample_idx", "average_log_probs", "first_100_response_log_probs",
                 "steering_magnitude", "steered_layers")
RESPONSE_COLUMNS = ("role", "task", "sample_idx", "text")
_LAYERS = re.compile(r"^\[\s*((?:(?:np\.int(?:32|64)\()?\d+\)?\s*,?\s*)*)\]$")


def _records(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and (first physical line, fields) of every record: line numbers stay right across
    quoted newlines."""
    opener = gzip.open if kind(path) == "gzip" else open
    try:
        with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
            reader = csv.reader(text)
            header = next(reader, None)
            if header is None:
                raise DataError(path, "is empty; expected a header line and data rows")
            rows, start = [], reader.line_num + 1
            for rec in reader:
                rows.append((start, rec))
                start = reader.line_num + 1
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(path, f"cannot be read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(path, "is not UTF-8 text") from exc
    except csv.Error as exc:
        raise DataError(path, f"is not valid CSV ({exc})") from exc
    return [h.strip() for h in header], rows


def _derivation(path: Path) -> str:
    stem = re.sub(r"(\.csv)?(\.gz)?$", "", path.name)
    for name in sorted(STUDY_DERIVATIONS, key=len, reverse=True):
        if stem.endswith("_steered_" + name):
            return STUDY_DERIVATIONS[name]
    raise DataError(path, "does not name its derivation the study's way (…_steered_<derivation>.csv); "
                    f"known: {', '.join(STUDY_DERIVATIONS)}")


def parse_layers(cell: str, path: Path, line: int, row: int) -> str:
    """'[np.int64(26), np.int64(30)]' or '[26, 30]' -> '26,30'."""
    m = _LAYERS.match(cell.strip())
    if not m:
        raise DataError(path, "is not a list of layers in a known format ('[26, 30]' or '[np.int64(26), …]')",
                        column="steered_layers", row=row, line=line, value=cell[:80])
    return ",".join(re.findall(r"(?:np\.int(?:32|64)\()?(\d+)\)?", m.group(1)))


def parse_log_probs(cell: str, path: Path, line: int, row: int) -> list[float]:
    try:
        values = json.loads(cell)
        if not isinstance(values, list) or not values or not all(isinstance(v, int | float) for v in values):
            raise ValueError
    except (ValueError, json.JSONDecodeError) as exc:
        raise DataError(path, "does not parse as a non-empty list of numbers", column="first_100_response_log_probs",
                        row=row, line=line, value=cell[:80]) from exc
    if any(v > 0 or not np.isfinite(v) for v in values):
        raise DataError(path, "holds a log-probability above 0 or not finite", column="first_100_response_log_probs",
                        row=row, line=line, value=cell[:80])
    return [float(v) for v in values]


def read_sweep(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(responses-with-tokens rows, word-guess rows) of one sweep file; the prompt recovered and checked."""
    header, records = _records(path)
    missing = [c for c in SWEEP_COLUMNS if c not in header]
    if missing:
        raise DataError(path, f"lacks column '{missing[0]}' of the study's sweep layout", column=missing[0])
    at = {c: header.index(c) for c in SWEEP_COLUMNS}
    derivation = _derivation(path)
    rows = []
    for i, (line, rec) in enumerate(records):
        if len(rec) != len(header):
            raise DataError(path, f"has {len(rec)} fields where the header has {len(header)}", row=i, line=line)
        role = rec[at["role_name"]]
        try:
            magnitude, sample = float(rec[at["steering_magnitude"]]), int(rec[at["sample_idx"]])
        except ValueError as exc:
            raise DataError(path, "has a magnitude or sample_idx that is not a number", column="steering_magnitude",
                            row=i, line=line) from exc
        rows.append({"role": role, "magnitude": magnitude, "replicate": sample,
                     "layers": parse_layers(rec[at["steered_layers"]], path, line, i),
                     "log_probs": parse_log_probs(rec[at["first_100_response_log_probs"]], path, line, i),
                     "average": float(rec[at["average_log_probs"]] or "nan"), "_line": line, "_row": i})
    df = pd.DataFrame(rows)
    if df.empty:
        raise DataError(path, "has a header but no data rows")
    # the prompt is the row's place in its role x magnitude x sample block, which must be consecutive rows
    block = (df[["role", "magnitude", "replicate"]] != df[["role", "magnitude", "replicate"]].shift()).any(axis=1)
    df["_block"] = block.cumsum()
    df["prompt_index"] = df.groupby("_block").cumcount()
    n_prompts = len(WORD_GUESS_PROMPTS)
    sizes = df.groupby("_block")["prompt_index"].transform("size")
    bad = (sizes != n_prompts) | df.duplicated(["role", "magnitude", "replicate", "prompt_index"], keep="first")
    if bad.any():
        r = df[bad].iloc[0]
        raise DataError(path, f"the prompt cannot be recovered: this role x magnitude block has "
                        f"{int(sizes[bad].iloc[0])} consecutive rows, where the study wrote one per prompt "
                        f"({n_prompts}), or the block appears twice", column="role_name", row=int(r["_row"]),
                        line=int(r["_line"]))
    mean = df["log_probs"].map(np.mean)
    off = (mean - df["average"]).abs() > 0.02 * np.maximum(1.0, mean.abs())  # the study's means are bf16-rounded
    if off.any():
        r = df[off].iloc[0]
        raise DataError(path, "average_log_probs is not the mean of the row's per-token log-probs (beyond bf16 "
                        "rounding): the cell may belong to another row", column="average_log_probs",
                        row=int(r["_row"]), line=int(r["_line"]), value=r["average"])
    df["prompt"] = "p" + (df["prompt_index"] + 1).astype(str)
    df["task_id"] = df["prompt"]
    df["response_id"] = [response_id(*k) for k in zip(df["role"], df["prompt"], df["replicate"])]
    df["derivation"] = derivation
    wg = df.assign(target=df["role"], log_prob=df["log_probs"].map(sum))[
        ["role", "prompt", "derivation", "magnitude", "layers", "replicate", "target", "log_prob"]]
    return df.drop(columns=["_block", "average"]), wg


def _is_json(path: Path) -> bool:
    opener = gzip.open if kind(path) == "gzip" else open
    with opener(path, "rb") as fh:
        head = fh.read(64).lstrip()
    return head[:1] in (b"[", b"{")


def _json_records(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A JSON array of objects, or JSON lines, as (header, (line, fields)) like a CSV's records."""
    try:
        with (gzip.open if kind(path) == "gzip" else open)(path, "rb") as fh:
            text = fh.read().decode("utf-8-sig")
        if text.lstrip().startswith("["):
            objs, lines = json.loads(text), None
        else:
            objs = [json.loads(line) for line in text.splitlines() if line.strip()]
            lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.strip()]
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise DataError(path, f"is not valid JSON ({exc})") from exc
    if not isinstance(objs, list) or not all(isinstance(o, dict) for o in objs):
        raise DataError(path, "is JSON, but not a list of objects (one per response)")
    header = list(dict.fromkeys(k for o in objs for k in o))
    return header, [((lines[i] if lines else None), ["" if o.get(c) is None else str(o.get(c)) for c in header])
                    for i, o in enumerate(objs)]


def read_study_responses(path: Path) -> pd.DataFrame:
    """The study's responses (role, task, sample_idx, text), from CSV or JSON (an array, or JSON lines)."""
    header, records = _json_records(path) if _is_json(path) else _records(path)
    missing = [c for c in RESPONSE_COLUMNS if c not in header]
    if missing:
        raise DataError(path, f"lacks column '{missing[0]}' of the study's responses layout", column=missing[0])
    at = {c: header.index(c) for c in RESPONSE_COLUMNS}
    rows = []
    for i, (line, rec) in enumerate(records):
        if len(rec) != len(header):
            raise DataError(path, f"has {len(rec)} fields where the header has {len(header)}", row=i, line=line)
        try:
            sample = int(rec[at["sample_idx"]])
        except ValueError as exc:
            raise DataError(path, "is not an integer", column="sample_idx", row=i, line=line,
                            value=rec[at["sample_idx"]]) from exc
        rows.append({"role": rec[at["role"]] or NO_PROMPT_ROLE, "task_id": rec[at["task"]], "replicate": sample,
                     "text": rec[at["text"]]})
    df = pd.DataFrame(rows)
    df["response_id"] = [response_id(*k) for k in zip(df["role"], df["task_id"], df["replicate"])]
    dup = df["response_id"].duplicated()
    if dup.any():
        i = int(np.argmax(dup.to_numpy()))
        raise DataError(path, "repeats a role x task x sample_idx", column="sample_idx", row=i,
                        line=records[i][0])
    return df


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_study(files: list[str | Path], out: str | Path, roles: str | Path, units: str = "absolute") -> Run:
    """Convert the study's files into a validated run folder at `out` (which must not exist yet)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError("--out", f"{out} exists and is not empty; import writes a new run folder")
    if not files:
        raise ConfigError("import", "give the study's sweep and/or responses files")
    sweeps, word_guess, texts = [], [], []
    for f in map(Path, files):
        header = _json_records(f)[0] if _is_json(f) else _records(f)[0]
        if "first_100_response_log_probs" in header:
            s, wg = read_sweep(f)
            sweeps.append(s)
            word_guess.append(wg)
        elif "text" in header:
            texts.append(read_study_responses(f))
        else:
            raise DataError(f, "is neither a sweep (first_100_response_log_probs) nor a responses file (text)")
    role_table = read_norms(roles)
    if not (role_table["role"] == NO_PROMPT_ROLE).any():  # the study's empty role: its no-system-prompt pass
        role_table = pd.concat([role_table, pd.DataFrame({"role": [NO_PROMPT_ROLE], "group": [NO_PROMPT_GROUP],
                                                          "is_control": [True]})], ignore_index=True)
    used = set()
    for part in sweeps + texts:
        used |= set(part["role"])
    missing = sorted(used - set(role_table["role"]))
    if missing:
        raise DataError(roles, f"has no row for role '{missing[0]}', which the study's files use "
                        f"({len(missing)} roles missing)", column="role")
    work = out.with_name(out.name + ".importing")
    if work.exists():
        shutil.rmtree(work)
    responses = []
    if sweeps:
        sw = pd.concat(sweeps, ignore_index=True)
        dup = sw.duplicated(["response_id", "derivation", "magnitude", "layers"])
        if dup.any():
            raise DataError(files[0], f"two files hold the same response, derivation and magnitude "
                            f"({sw.loc[dup, 'response_id'].iloc[0]}); give each derivation once")
        n_tok = sw["log_probs"].map(len)
        if (n_tok.groupby(sw["response_id"]).nunique() > 1).any():
            rid = n_tok.groupby(sw["response_id"]).nunique().idxmax()
            raise DataError(files[0], f"the continuation of {rid} has different lengths at different magnitudes: "
                            "it cannot be one response")
        tok = sw[["response_id", "derivation", "magnitude", "layers", "log_probs"]].explode("log_probs")
        tok = tok.assign(condition="steered", token_index=tok.groupby(level=0).cumcount(),
                         log_prob=tok["log_probs"].astype(float)).drop(columns="log_probs")
        write_table(tok.reset_index(drop=True), "tokens", work, part="part-00000")
        first = sw.drop_duplicates("response_id")
        responses.append(first.assign(seed=None, text=None, n_tokens=first["log_probs"].map(len),
                                      finish_reason="unknown")[
            ["response_id", "role", "task_id", "replicate", "seed", "text", "n_tokens", "finish_reason"]])
        write_table(pd.concat(word_guess, ignore_index=True), "word_guess", work)
    for t in texts:
        responses.append(t.assign(seed=None, n_tokens=None, finish_reason="unknown"))
    resp = pd.concat(responses, ignore_index=True).drop_duplicates("response_id")
    write_table(resp, "responses", work)
    write_table(role_table[role_table["role"].isin(used)].reset_index(drop=True), "roles", work)
    layers = sorted({la for s in sweeps for la in s["layers"].unique()})
    manifest = {"kind": "imported-original-study", "schema_version": SCHEMA_VERSION,
                "sources": {str(Path(f).resolve()): _sha256(Path(f)) for f in files},
                "roles_source": str(Path(roles).resolve()),
                "magnitude_units": f"{units} (the study's units, as given)", "steered_layers": layers,
                "word_guess_prompts": {f"p{i + 1}": p for i, p in enumerate(WORD_GUESS_PROMPTS)},
                "prompt_recovery": "row order within each role x magnitude x sample block, checked",
                "provenance": provenance()}
    write_json(manifest, work / MANIFEST)
    Run(work).validate()
    if out.exists():
        out.rmdir()  # empty, checked above
    work.rename(out)
    return Run(out)
