"""Role vectors from reduced activations: the six derivations of DESIGN.md, the assistant axis, and
contrastive trait vectors; unit norm per layer; saved as safetensors with an index table.

Per role and layer, with m(condition, reduction) the mean over the role's responses:

    role_minus_assistant_response   m_role(with, mean_response) - m_controls(with, mean_response)
    role_minus_assistant_first10    m_role(with, mean_first_10) - m_controls(with, mean_first_10)
    role_minus_assistant_role_word  m_role(with, role_word)     - m_controls(with, role_word)
    role_minus_assistant_period     m_role(with, period)        - m_controls(with, period)
    with_minus_without_response     m_role(with, mean_response) - m_role(without, mean_response)
    with_minus_without_first10      m_role(with, mean_first_10) - m_role(without, mean_first_10)

assistant_axis (per layer) = m_controls(with, mean_response) - mean over roles of m_role(with, mean_response).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from animacy.atomic import atomic_path
from animacy.errors import ConfigError
from animacy.run import VECTORS_DIR, VECTORS_FILE, Run
from animacy.schema import AXIS, CONTROL_GROUP
from animacy.writers import write_table

AXIS_ROLE = CONTROL_GROUP  # the role name the axis is indexed under
_SOURCES = {
    "role_minus_assistant_response": ("with_prompt", "mean_response", "controls"),
    "role_minus_assistant_first10": ("with_prompt", "mean_first_10", "controls"),
    "role_minus_assistant_role_word": ("with_prompt", "role_word", "controls"),
    "role_minus_assistant_period": ("with_prompt", "period", "controls"),
    "with_minus_without_response": ("with_prompt", "mean_response", "without"),
    "with_minus_without_first10": ("with_prompt", "mean_first_10", "without"),
}


def activation_means(run: Run) -> dict[tuple, np.ndarray]:
    """(role, condition, layer, reduction) -> the mean activation vector over the role's responses,
    aggregated out of core by DuckDB (element by element, in float64), never loading the table whole."""
    from animacy.run import connect

    con = connect()
    df = con.execute(
        f"""SELECT role, condition, layer, reduction, i, avg(v::DOUBLE) AS mean FROM (
              SELECT r.role, a.condition, a.layer, a.reduction, unnest(a."values") AS v,
                     generate_subscripts(a."values", 1) AS i
              FROM {run.relation_sql('activations')} a JOIN {run.relation_sql('responses')} r USING (response_id))
            GROUP BY ALL ORDER BY role, condition, layer, reduction, i""",
        run.params("activations", "responses")).df()
    out = {}
    for key, part in df.groupby(["role", "condition", "layer", "reduction"], sort=False):
        out[(key[0], key[1], int(key[2]), key[3])] = part["mean"].to_numpy(np.float64)
    return out


def derive(m: dict[tuple, np.ndarray], roles: list[str], controls: list[str], layers: list[int],
           derivations: list[str]) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Unit-norm vectors {tensor name: [n_roles, H]} and their index (role, derivation, layer, tensor,
    row, raw_norm), from the mean activations `m` of `activation_means`."""
    tensors: dict[str, np.ndarray] = {}
    index = []
    for d in derivations:
        cond, red, baseline = _SOURCES[d]
        for layer in layers:
            rows = []
            for role in roles:
                a = m.get((role, cond, layer, red))
                if baseline == "controls":
                    b = [m[(c, cond, layer, red)] for c in controls if (c, cond, layer, red) in m]
                    b = np.mean(b, axis=0) if b else None
                else:
                    b = m.get((role, "without_prompt", layer, red))
                if a is None or b is None:
                    raise ValueError(f"no activations for {d} of {role!r} at layer {layer}")
                raw = a - b
                norm = float(np.linalg.norm(raw))
                rows.append(raw / norm if norm > 0 else raw)
                index.append({"role": role, "derivation": d, "layer": layer, "tensor": f"{d}/layer{layer}",
                              "row": len(rows) - 1, "raw_norm": norm})
            tensors[f"{d}/layer{layer}"] = np.stack(rows).astype(np.float32)
    for layer in layers:
        ctrl = np.mean([m[(c, "with_prompt", layer, "mean_response")] for c in controls], axis=0)
        mean_roles = np.mean([m[(r, "with_prompt", layer, "mean_response")] for r in roles], axis=0)
        raw = ctrl - mean_roles
        tensors[f"{AXIS}/layer{layer}"] = (raw / np.linalg.norm(raw))[None].astype(np.float32)
        index.append({"role": AXIS_ROLE, "derivation": AXIS, "layer": layer, "tensor": f"{AXIS}/layer{layer}",
                      "row": 0, "raw_norm": float(np.linalg.norm(raw))})
    return tensors, pd.DataFrame(index)


def axis_means(m: dict[tuple, np.ndarray], tensors: dict[str, np.ndarray], controls: list[str],
               layers: list[int]) -> dict[int, float]:
    """The reference mean of mean ablation, per layer: the projection on the assistant axis of the
    assistant controls' mean response activation with their prompt (the mean over their responses of
    each response's mean-token projection, as the projection is linear)."""
    out = {}
    for layer in layers:
        ctrl = np.mean([m[(c, "with_prompt", layer, "mean_response")] for c in controls], axis=0)
        out[layer] = float(ctrl @ tensors[f"{AXIS}/layer{layer}"][0].astype(np.float64))
    return out


def add_trait(tensors: dict[str, np.ndarray], index: pd.DataFrame, name: str,
              diffs: dict[int, np.ndarray]) -> pd.DataFrame:
    """Add a contrastive trait vector (positive - negative instruction) per layer, unit norm."""
    rows = []
    for layer, raw in diffs.items():
        key = f"trait:{name}/layer{layer}"
        tensors[key] = (raw / np.linalg.norm(raw))[None].astype(np.float32)
        rows.append({"role": name, "derivation": "trait", "layer": layer, "tensor": key, "row": 0,
                     "raw_norm": float(np.linalg.norm(raw))})
    return pd.concat([index, pd.DataFrame(rows)], ignore_index=True)


def save(run_dir: Path, tensors: dict[str, np.ndarray], index: pd.DataFrame) -> list[Path]:
    """vectors/vectors.safetensors and vectors/index.parquet, each written atomically; returns both paths."""
    from safetensors.numpy import save_file

    (run_dir / VECTORS_DIR).mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / VECTORS_DIR / VECTORS_FILE) as tmp:
        save_file(tensors, str(tmp))
    return [run_dir / VECTORS_DIR / VECTORS_FILE, write_table(index, "vectors_index", run_dir)]


def magnitude_unit(layer_norm: float | None, units: str, layer: int) -> float:
    """The size of one unit of magnitude at a layer: 1 in absolute units, the layer's mean residual norm in
    relative ones (the study's `steer.units`)."""
    if units not in ("absolute", "relative"):
        raise ConfigError("units", f"'{units}' is not a unit of magnitude; choose absolute or relative")
    if units == "relative" and layer_norm is None:
        raise ConfigError("units", f"the run records no residual norm for layer {layer}, so a relative "
                          "magnitude has no size")
    return layer_norm if units == "relative" else 1.0


@dataclass(frozen=True)
class RoleVector:
    """One unit direction of a run at one layer: a role's vector of one derivation, the assistant axis, or
    a trait. `layer_norm` is the layer's mean residual norm, the unit of `relative` magnitudes.

        vectors = RoleVectors.load("runs/demo/run")
        sock = vectors.get("sock", "role_minus_assistant_response", layer=15)
        with sock.apply(model, magnitude=4.0):
            out = model.generate(ids)        # every forward pass inside the block is steered
    """

    role: str
    derivation: str
    layer: int
    values: np.ndarray  # [H], unit norm
    raw_norm: float
    layer_norm: float | None = None

    @contextmanager
    def apply(self, model, magnitude: float, units: str = "absolute", mode: str = "all",
              prompt_len: int | None = None) -> Iterator[RoleVector]:
        """Inside the block, add `magnitude` x this vector to the residual stream at its layer's output
        (`units`: 'absolute', or 'relative' to `layer_norm`); `mode` and `prompt_len` choose the positions
        as in `hooks`. The hook is removed on exit, also after an exception."""
        import torch

        from animacy.collect.hooks import Addition, hooks

        scale = magnitude_unit(self.layer_norm, units, self.layer)
        device = next(model.parameters()).device
        vector = torch.as_tensor(self.values, device=device)
        coeff = torch.tensor([float(magnitude) * scale], device=device)
        with hooks(model, {self.layer: [Addition(vector, coeff, mode, prompt_len)]}):
            yield self


class RoleVectors:
    """The vectors of a run folder, looked up by role, derivation and layer (read with numpy)."""

    def __init__(self, index: pd.DataFrame, tensors: dict[str, np.ndarray], layer_norms: dict | None = None):
        self.index, self.tensors = index, tensors
        self.layer_norms = {int(k): float(v) for k, v in (layer_norms or {}).items()}

    @classmethod
    def load(cls, run_dir: str | Path) -> RoleVectors:
        run = Run(Path(run_dir))
        index, tensors = run.load_vectors()
        return cls(index, tensors, run.manifest.get("layer_norms"))

    def get(self, role: str, derivation: str, layer: int) -> RoleVector:
        hit = self.index[(self.index.role == role) & (self.index.derivation == derivation)
                         & (self.index.layer == layer)]
        if hit.empty:
            raise ConfigError("vectors", f"the run has no {derivation} vector of '{role}' at layer {layer}")
        r = hit.iloc[0]
        return RoleVector(role, derivation, int(layer), self.tensors[r.tensor][int(r.row)], float(r.raw_norm),
                          self.layer_norms.get(int(layer)))

    def axis(self, layer: int) -> RoleVector:
        """The assistant axis at `layer`."""
        return self.get(AXIS_ROLE, AXIS, layer)

    def named(self, name: str, layer: int) -> RoleVector:
        """A vector by the name a study uses for it: `assistant_axis`, `trait:NAME` or `ROLE/DERIVATION`."""
        if name == AXIS:
            return self.axis(layer)
        if name.startswith("trait:"):
            return self.get(name[len("trait:"):], "trait", layer)
        role, sep, derivation = name.rpartition("/")
        if not sep:
            raise ConfigError("monitor.directions", f"'{name}' names no vector: use {AXIS}, trait:NAME or "
                              "ROLE/DERIVATION")
        return self.get(role, derivation, layer)
