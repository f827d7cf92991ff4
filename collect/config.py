"""The study config (TOML), validated on load: every problem names the file and the key.

```toml
[study]
name = "demo"
seed = 0
replicates = 2
temperature = 0.7
max_new_tokens = 48
system_template = "You are {article} {role}."
no_prompt = "none"                 # or "template_default"
tasks = ["What are your five favorite things?", "Describe your typical day."]

[model]
source = "smollm2"                 # or a local folder, or a hub id
revision = ""                      # hub revision (commit) to pin
dtype = "float32"                  # bfloat16 on a GPU
device = "cpu"                     # or "cuda"
generator = "transformers"         # or "vllm" (GPU; scoring stays on transformers)
max_batch_tokens = 4096            # scoring batches packed to this many (padded) tokens; raise on a GPU
generation_batch = 8               # transformers generation: responses sampled together (a role's, in batches of 8)

[roles]
table = "data/roles_demo.csv"      # a roles CSV with ratings, or the norms workbook
per_group = 2                      # sample N per group (omit to take the table as it is)
controls = ["AI assistant", "helpful assistant"]
# x = "anim_mental"; y = "anim_physical"; high = 300; low = 250   (groups when the table has none)

[capture]
layers = [10, 15, 20]

[steer]
layers = [10, 15]                   # a subset of capture.layers
derivations = ["role_minus_assistant_response", ...]     # default: all six
magnitudes = [0.0, 0.05, 0.1, 0.2]
units = "relative"                  # fraction of the layer's mean residual norm, or "absolute"
position_mode = "all"               # all | prompt | response
cap_taus = [0.0, 0.05]              # capping on the assistant axis, same units
ablate = false                      # also score with the role prompt while ablating the assistant axis: its
                                    # projection removed (ablated) and set to the controls' mean (mean_ablated)
score_tokens = 0                    # score only the first N response tokens when steering (0: all)

[word_guess]
prompt = "Guess which word describes you best. Answer with one word."

[monitor]                           # per-token projections on named directions while scoring
vectors = "runs/base/run"           # the run whose vectors to project on (derived before this study)
directions = ["assistant_axis"]     # assistant_axis, trait:NAME, or ROLE/DERIVATION
layers = [10, 15]

[[traits]]
name = "sycophantic"
positive = "You are sycophantic and flatter the user."
negative = "You are honest and never flatter the user."
```
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomllib

from animacy.collect.prompts import NO_PROMPT_MODES
from animacy.errors import ConfigError
from animacy.schema import DERIVATIONS

MODES = ("all", "prompt", "response")
UNITS = ("relative", "absolute")
GENERATORS = ("transformers", "vllm")


@dataclass
class Trait:
    name: str
    positive: str
    negative: str


@dataclass
class StudyConfig:
    path: str
    name: str
    seed: int
    replicates: int
    temperature: float
    max_new_tokens: int
    system_template: str
    no_prompt: str
    tasks: list[str]
    model_source: str
    model_revision: str | None
    dtype: str
    device: str
    generator: str
    max_batch_tokens: int
    generation_batch: int
    roles_table: str | None
    roles_list: list[dict] | None
    per_group: int | None
    controls: list[str]
    group_rule: dict
    capture_layers: list[int]
    steer_layers: list[int]
    derivations: list[str]
    magnitudes: list[float]
    units: str
    position_mode: str
    cap_taus: list[float]
    ablate: bool
    score_tokens: int
    word_guess_prompt: str | None
    monitor_vectors: str | None = None
    monitor_directions: list[str] = field(default_factory=list)
    monitor_layers: list[int] = field(default_factory=list)
    traits: list[Trait] = field(default_factory=list)

    def resolve(self, name: str) -> Path:
        """A path the config names: as given if absolute, else beside the config file, else from the
        working directory (the first that exists; beside the config where neither does)."""
        path = Path(name)
        if path.is_absolute():
            return path
        candidates = [Path(self.path).parent / path, Path.cwd() / path]
        return next((c for c in candidates if c.exists()), candidates[0])

    def as_dict(self) -> dict:
        return asdict(self)


def _get(section: dict, key: str, kind, path: str, where: str, default=...):
    if key not in section:
        if default is ...:
            raise ConfigError(path, f"[{where}] needs '{key}'", column=f"{where}.{key}")
        return default
    value = section[key]
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(path, f"'{where}.{key}' should be {getattr(kind, '__name__', kind)}, not {value!r}",
                          column=f"{where}.{key}")
    return value


def _list(section, key, kind, path, where, default=...):
    values = _get(section, key, list, path, where, default)
    out = []
    for v in values:
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ConfigError(path, f"'{where}.{key}' should list {kind.__name__} values; {v!r} is not",
                              column=f"{where}.{key}")
        out.append(v)
    return out


KEYS = {
    "study": {"name", "seed", "replicates", "temperature", "max_new_tokens", "system_template", "no_prompt", "tasks"},
    "model": {"source", "revision", "dtype", "device", "generator", "max_batch_tokens", "generation_batch"},
    "roles": {"table", "list", "per_group", "controls", "x", "y", "high", "low"},
    "capture": {"layers"},
    "steer": {"layers", "derivations", "magnitudes", "units", "position_mode", "cap_taus", "ablate", "score_tokens"},
    "word_guess": {"prompt"},
    "monitor": {"vectors", "directions", "layers"},
    "traits": {"name", "positive", "negative"},
}


def _unknown_keys(raw: dict, path: str) -> None:
    """Every key at every level must be one the config knows; the closest known key is suggested."""
    import difflib

    def refuse(where: str, key: str, known: set[str]) -> None:
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(sorted(known))})"
        raise ConfigError(path, f"has an unknown key '{key}' in [{where}]{hint}", column=f"{where}.{key}")

    for section, body in raw.items():
        entries = body if section == "traits" and isinstance(body, list) else [body]
        for entry in entries:
            if not isinstance(entry, dict):
                raise ConfigError(path, f"[{section}] should be a table of keys", column=section)
            for key in entry:
                if key not in KEYS[section]:
                    refuse(section, key, KEYS[section])


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study config."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(path, "does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"is not valid TOML ({exc})") from exc
    p = str(path)
    known = {"study", "model", "roles", "capture", "steer", "word_guess", "monitor", "traits"}
    unknown = sorted(set(raw) - known)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"; did you mean [{close[0]}]?" if close else f" (known: {', '.join(sorted(known))})"
        raise ConfigError(p, f"has an unknown section [{unknown[0]}]{hint}")
    _unknown_keys(raw, p)
    st, mo, ro = raw.get("study", {}), raw.get("model", {}), raw.get("roles", {})
    ca, se, wg = raw.get("capture", {}), raw.get("steer", {}), raw.get("word_guess", {})
    mn = raw.get("monitor", {})
    cfg = StudyConfig(
        path=p,
        name=_get(st, "name", str, p, "study", "study"),
        seed=_get(st, "seed", int, p, "study", 0),
        replicates=_get(st, "replicates", int, p, "study", 1),
        temperature=_get(st, "temperature", float, p, "study", 0.7),
        max_new_tokens=_get(st, "max_new_tokens", int, p, "study", 64),
        system_template=_get(st, "system_template", str, p, "study", "You are {article} {role}."),
        no_prompt=_get(st, "no_prompt", str, p, "study", "none"),
        tasks=_list(st, "tasks", str, p, "study"),
        model_source=_get(mo, "source", str, p, "model"),
        model_revision=_get(mo, "revision", str, p, "model", "") or None,
        dtype=_get(mo, "dtype", str, p, "model", "float32"),
        device=_get(mo, "device", str, p, "model", "cpu"),
        generator=_get(mo, "generator", str, p, "model", "transformers"),
        max_batch_tokens=_get(mo, "max_batch_tokens", int, p, "model", 4096),
        generation_batch=_get(mo, "generation_batch", int, p, "model", 8),
        roles_table=_get(ro, "table", str, p, "roles", None),
        roles_list=_get(ro, "list", list, p, "roles", None),
        per_group=_get(ro, "per_group", int, p, "roles", None),
        controls=_list(ro, "controls", str, p, "roles", []),
        group_rule={k: ro[k] for k in ("x", "y", "high", "low") if k in ro},
        capture_layers=_list(ca, "layers", int, p, "capture"),
        steer_layers=_list(se, "layers", int, p, "steer", []),
        derivations=_list(se, "derivations", str, p, "steer", list(DERIVATIONS)),
        magnitudes=_list(se, "magnitudes", float, p, "steer", []),
        units=_get(se, "units", str, p, "steer", "relative"),
        position_mode=_get(se, "position_mode", str, p, "steer", "all"),
        cap_taus=_list(se, "cap_taus", float, p, "steer", []),
        ablate=_get(se, "ablate", bool, p, "steer", False),
        score_tokens=_get(se, "score_tokens", int, p, "steer", 0),
        word_guess_prompt=_get(wg, "prompt", str, p, "word_guess", None),
        traits=[Trait(**t) for t in raw.get("traits", [])],
        monitor_vectors=_get(mn, "vectors", str, p, "monitor", None),
        monitor_directions=_list(mn, "directions", str, p, "monitor", []),
        monitor_layers=_list(mn, "layers", int, p, "monitor", []),
    )
    _check(cfg)
    return cfg


def _check(c: StudyConfig) -> None:
    p = c.path
    if c.no_prompt not in NO_PROMPT_MODES:
        raise ConfigError(p, f"study.no_prompt must be one of {', '.join(NO_PROMPT_MODES)}", column="study.no_prompt")
    if "{role}" not in c.system_template:
        raise ConfigError(p, "study.system_template must contain {role}", column="study.system_template")
    if not c.tasks:
        raise ConfigError(p, "study.tasks is empty", column="study.tasks")
    if c.replicates < 1 or c.max_new_tokens < 1:
        raise ConfigError(p, "study.replicates and study.max_new_tokens must be >= 1", column="study.replicates")
    if (c.roles_table is None) == (c.roles_list is None):
        raise ConfigError(p, "[roles] needs exactly one of 'table' (a roles or norms file) or 'list'",
                          column="roles.table")
    if not c.controls:
        raise ConfigError(p, "roles.controls is empty: the role - assistant derivations need assistant controls",
                          column="roles.controls")
    bad = sorted(set(c.derivations) - set(DERIVATIONS))
    if bad:
        raise ConfigError(p, f"unknown derivation '{bad[0]}' (known: {', '.join(DERIVATIONS)})",
                          column="steer.derivations")
    if not set(c.steer_layers) <= set(c.capture_layers):
        raise ConfigError(p, "steer.layers must be a subset of capture.layers (vectors exist only there)",
                          column="steer.layers")
    if c.units not in UNITS:
        raise ConfigError(p, f"steer.units must be one of {', '.join(UNITS)}", column="steer.units")
    if c.position_mode not in MODES:
        raise ConfigError(p, f"steer.position_mode must be one of {', '.join(MODES)}", column="steer.position_mode")
    if (c.magnitudes or c.cap_taus or c.ablate) and not c.steer_layers:
        raise ConfigError(p, "steer.magnitudes, cap_taus or ablate are set but steer.layers is empty",
                          column="steer.layers")
    if c.generator not in GENERATORS:
        raise ConfigError(p, f"model.generator must be one of {', '.join(GENERATORS)}", column="model.generator")
    if c.temperature < 0:
        raise ConfigError(p, "study.temperature must be >= 0", column="study.temperature")
    for key, layers in (("capture.layers", c.capture_layers), ("steer.layers", c.steer_layers)):
        if any(layer < 0 for layer in layers):
            raise ConfigError(p, f"{key} must be layer indices >= 0 (counted from the first decoder layer)",
                              column=key, value=min(layers))
    if len(set(c.controls)) < len(c.controls):
        raise ConfigError(p, "roles.controls lists a control twice", column="roles.controls")
    if c.roles_list is not None:
        seen: set[str] = set()
        for entry in c.roles_list:
            role = entry.get("role") if isinstance(entry, dict) else entry
            if not isinstance(role, str) or not role.strip():
                raise ConfigError(p, "every role in roles.list must be a non-empty string", column="roles.list",
                                  value=role)
            if role in seen:
                raise ConfigError(p, f"roles.list lists the role '{role}' twice", column="roles.list")
            if role in c.controls:
                raise ConfigError(p, f"the role '{role}' is also an assistant control", column="roles.list")
            seen.add(role)
