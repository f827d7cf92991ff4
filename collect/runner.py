"""The study runner: generation -> scoring with and without the prompt (+ activation capture in the same
pass) -> vectors -> steering and capping sweeps -> word guess, writing the run folder of the contract.

Every job has a deterministic id (`gen-0003`, `score-0003`, `vectors`, `steer-0003`, `wordguess-0003`,
one per role). A job writes its Parquet parts atomically (`tokens/part-score-0003.parquet`, ...) and then
its done marker (`_jobs/score-0003.done`); a resumed run skips jobs with a marker and rewrites the
parts of any other, so a killed run resumed gives exactly the tables of an uninterrupted one.
`--shard i/n` runs the jobs whose index is i modulo n (one process per GPU); shard 0 derives the vectors
once every scoring job of every shard is done, and the others wait for them.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from animacy.atomic import write_json
from animacy.collect import vectors as vec
from animacy.collect.backend import Intervention, Sampling, TransformersBackend, pack
from animacy.collect.config import StudyConfig
from animacy.collect.hooks import decoder_layers
from animacy.collect.model import LoadedModel, load_model
from animacy.collect.prompts import Prompt, render_prompt, system_text
from animacy.collect.vllm_backend import VLLMBackend
from animacy.errors import ConfigError
from animacy.progress import progress
from animacy.provenance import config_hash, provenance
from animacy.roles import GroupRule, design_roles, read_norms
from animacy.run import JOBS, MANIFEST, Run
from animacy.schema import ABLATED, CONTROL_GROUP, NO_PROMPT_GROUP, NO_PROMPT_ROLE, SCHEMA_VERSION, response_id
from animacy.writers import write_table


def study_roles(cfg: StudyConfig) -> pd.DataFrame:
    """The roles table of the study: sampled from a norms/roles file or listed, plus controls and the
    no-system-prompt pass."""
    if cfg.roles_list is not None:
        roles = pd.DataFrame(cfg.roles_list)
        if not {"role", "group"} <= set(roles.columns):
            raise ConfigError(cfg.path, "each entry of roles.list needs role and group", column="roles.list")
        roles["is_control"] = False
    else:
        table = Path(cfg.roles_table)
        if not table.is_absolute():
            candidates = [Path(cfg.path).parent / table, Path.cwd() / table]
            table = next((c for c in candidates if c.exists()), candidates[0])
        norms = read_norms(table)
        if cfg.per_group is None and "group" in norms:
            roles = norms[~norms.get("is_control", pd.Series(False, index=norms.index)).fillna(False).astype(bool)]
            roles = roles.assign(is_control=False)
        else:
            roles = design_roles(norms, cfg.per_group or 1, cfg.seed, GroupRule(**cfg.group_rule))
            roles = roles[~roles["is_control"]]
    extra = pd.DataFrame({"role": [*cfg.controls, NO_PROMPT_ROLE],
                          "group": [CONTROL_GROUP] * len(cfg.controls) + [NO_PROMPT_GROUP], "is_control": True})
    clash = sorted(set(roles["role"].astype(str)) & set(extra["role"]))
    if clash:
        raise ConfigError(cfg.path, f"the role '{clash[0]}' of the roles table is also an assistant control (or the "
                          "no-prompt pass)", column="roles.controls")
    dup = roles["role"].astype(str).duplicated()
    if dup.any():
        twice = roles["role"].iloc[int(dup.to_numpy().argmax())]
        raise ConfigError(cfg.path, f"the roles table has the role '{twice}' twice", column="roles.table")
    out = pd.concat([roles, extra], ignore_index=True)
    front = ["role", "group", "is_control"]
    out = out[front + [c for c in out.columns if c not in front]]
    return out.drop(columns=[c for c in ("category", "broad_category") if c in out and out[c].isna().all()])


def response_seed(seed: int, role: str, task: int, replicate: int) -> int:
    return int(hashlib.sha256(f"{seed}|{role}|{task}|{replicate}".encode()).hexdigest()[:8], 16)


@dataclass
class Job:
    stage: str
    index: int  # role index (0 for the vectors job)

    @property
    def id(self) -> str:
        return self.stage if self.stage == "vectors" else f"{self.stage}-{self.index:04d}"


class Runner:
    """Runs (or resumes) one shard of a study into a run folder."""

    def __init__(self, cfg: StudyConfig, out: str | Path, shard: tuple[int, int] = (0, 1), quiet: bool = False,
                 wait_timeout: float = 24 * 3600, poll: float = 5.0, allow_config_change: tuple[str, ...] = ()) -> None:
        self.cfg, self.out, self.shard, self.quiet = cfg, Path(out), shard, quiet
        self.allow_config_change = tuple(allow_config_change)
        self.wait_timeout, self.poll = wait_timeout, poll
        self.roles = study_roles(cfg)
        self._lm: LoadedModel | None = None
        self._vllm: VLLMBackend | None = None

    # ---- plumbing -------------------------------------------------------------------------------
    @property
    def lm(self) -> LoadedModel:
        if self._lm is None:
            self._lm = load_model(self.cfg.model_source, self.cfg.model_revision, self.cfg.dtype, self.cfg.device)
            self.backend = TransformersBackend(self._lm.model, self._lm.tokenizer, self.cfg.generation_batch)
        return self._lm

    def done(self, job: Job) -> bool:
        return (self.out / JOBS / f"{job.id}.done").exists()

    def _mark(self, job: Job, info: dict) -> None:
        write_json({"job": job.id, **info}, self.out / JOBS / f"{job.id}.done")

    def _part(self, table: str, job: Job, df: pd.DataFrame | pa.Table) -> None:
        write_table(df, table, self.out, part=f"part-{job.id}")

    def mine(self, jobs: list[Job]) -> list[Job]:
        i, n = self.shard
        return [j for k, j in enumerate(jobs) if k % n == i]

    @property
    def steered_roles(self) -> list[int]:
        return [k for k, r in enumerate(self.roles.itertuples()) if not r.is_control]

    def _prompt(self, role: str, task: int, with_system: bool) -> Prompt:
        system = system_text(self.cfg.system_template, role) if with_system and role != NO_PROMPT_ROLE else None
        return render_prompt(self.lm.tokenizer, self.cfg.tasks[task], system, role, self.cfg.no_prompt)

    # ---- the run --------------------------------------------------------------------------------
    def check_layers(self) -> None:
        """Every capture and steer layer exists in the model: checked before any work."""
        n = len(decoder_layers(self.lm.model))
        for key, layers in (("capture.layers", self.cfg.capture_layers), ("steer.layers", self.cfg.steer_layers)):
            bad = [layer for layer in layers if layer >= n]
            if bad:
                raise ConfigError(self.cfg.path, f"{key} names layer {bad[0]}, but {self.cfg.model_source} has {n} "
                                  f"decoder layers (0-{n - 1})", column=key, value=bad[0])

    def check_resume(self) -> dict | None:
        """A run folder made with another config is refused, naming the keys that differ (the config file's
        own path aside), unless each is in `allow_config_change`; then the change is recorded. Returns the
        existing manifest (None for a new run)."""
        path = self.out / MANIFEST
        if not path.exists():
            return None
        old = json.loads(path.read_text())
        before, now = old.get("config", {}), self.cfg.as_dict()
        keys = sorted(k for k in set(before) | set(now) if k != "path" and before.get(k) != now.get(k)
                      and not (k not in before and now.get(k) in (False, None, [], 0)))  # a new key, off
        if not keys:
            return old
        refused = [k for k in keys if k not in self.allow_config_change]
        if refused:
            shown = "; ".join(f"{k}: {before.get(k)!r} in the run, {now.get(k)!r} now" for k in refused)
            raise ConfigError(self.cfg.path, f"{self.out} was collected with another config ({shown}). Resume it "
                              "with the config that made it, or pass --allow-config-change "
                              f"{','.join(refused)} to continue and record the change", column=refused[0])
        old.setdefault("config_changes", []).append(
            {"keys": keys, "from": {k: before.get(k) for k in keys}, "to": {k: now.get(k) for k in keys},
             "config": self.cfg.path, "provenance": provenance()})
        write_json(old, path)
        return old

    def jobs(self) -> list[Job]:
        """Every job of the study (all shards), in the order they run: the plan the manifest records."""
        n = len(self.roles)
        jobs = [Job("gen", k) for k in range(n)] + [Job("score", k) for k in range(n)] + [Job("vectors", 0)]
        if self.cfg.magnitudes or self.cfg.cap_taus or self.cfg.ablate:
            jobs += [Job("steer", k) for k in self.steered_roles]
        if self.cfg.word_guess_prompt:
            jobs += [Job("wordguess", k) for k in self.steered_roles]
        return jobs

    def run(self) -> Path:
        self.check_layers()
        self.check_resume()
        self.out.mkdir(parents=True, exist_ok=True)
        write_table(self.roles, "roles", self.out)
        self._write_manifest()
        work = {"gen": self.generate, "score": self.score, "steer": self.steer, "wordguess": self.word_guess}
        plan = self.jobs()
        for stage in ("gen", "score", "vectors", "steer", "wordguess"):
            if stage == "vectors":
                self._vectors_barrier()
                continue
            jobs = self.mine([j for j in plan if j.stage == stage])
            for job in progress(jobs, f"{stage} (roles)", quiet=self.quiet) if jobs else []:
                if not self.done(job):
                    work[stage](job)
        write_json({"shard": list(self.shard)}, self.out / JOBS / f"shard-{self.shard[0]}-of-{self.shard[1]}.done")
        self._write_manifest()
        return self.out

    def _write_manifest(self) -> None:
        """The manifest; a resumed run keeps the original's config, hash, model, generation and provenance
        (and any recorded config changes), and updates only what the run adds: jobs planned and done, shards
        done, layer norms."""
        norms_path, means_path = self.out / JOBS / "layer_norms.json", self.out / JOBS / "axis_means.json"
        markers = sorted(p.stem for p in (self.out / JOBS).glob("*.done")) if (self.out / JOBS).exists() else []
        shards = [m for m in markers if m.startswith("shard-")]
        jobs = {"planned": [j.id for j in self.jobs()], "done": [m for m in markers if not m.startswith("shard-")]}
        existing = self.out / MANIFEST
        if existing.exists():
            old = json.loads(existing.read_text())
            old["shards_done"] = shards
            old["jobs"] = jobs
            old["layer_norms"] = json.loads(norms_path.read_text()) if norms_path.exists() else old.get("layer_norms")
            old["axis_means"] = json.loads(means_path.read_text()) if means_path.exists() else old.get("axis_means")
            write_json(old, existing)
            return
        cfg = self.cfg.as_dict()
        write_json({
            "kind": "collected", "schema_version": SCHEMA_VERSION,
            "config": cfg, "config_hash": config_hash(cfg), "model": self.lm.info,
            "chat_template_hash": self.lm.info["chat_template_hash"], "layers": {
                "capture": self.cfg.capture_layers, "steer": self.cfg.steer_layers},
            "seeds": {"study": self.cfg.seed, "per_response": "sha256(seed|role|task|replicate)[:8]"},
            "no_prompt": self.cfg.no_prompt, "magnitude_units": self.cfg.units,
            "generation": {"generator": self.cfg.generator, "batch": self.cfg.generation_batch,
                           "sampling": asdict(self.sampling)},
            "layer_norms": json.loads(norms_path.read_text()) if norms_path.exists() else None,
            "axis_means": json.loads(means_path.read_text()) if means_path.exists() else None,
            "jobs": jobs, "shards_done": shards, "provenance": provenance(),
        }, self.out / MANIFEST)

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.cfg.temperature, max_tokens=self.cfg.max_new_tokens)

    @property
    def generator(self) -> TransformersBackend | VLLMBackend:
        """The generation backend: both take `generate_many(prompt ids, seeds, Sampling)`."""
        if self.cfg.generator != "vllm":
            self.lm  # noqa: B018 -- loads the model and its backend
            return self.backend
        if self._vllm is None:
            self._vllm = VLLMBackend(self.lm.info["source"], self.cfg.dtype)
        return self._vllm

    def _generate(self, prompts: list[list[int]], seeds: list[int]) -> list:
        return self.generator.generate_many(prompts, seeds, self.sampling)

    def generate(self, job: Job) -> None:
        role = self.roles.iloc[job.index]["role"]
        cells = [(t, r) for t in range(len(self.cfg.tasks)) for r in range(self.cfg.replicates)]
        prompts = {t: self._prompt(role, t, True).ids for t in range(len(self.cfg.tasks))}
        seeds = [response_seed(self.cfg.seed, role, t, r) for t, r in cells]
        gens = self._generate([prompts[t] for t, _ in cells], seeds)
        rows = [{"response_id": response_id(role, f"t{t:02d}", r), "role": role, "task_id": f"t{t:02d}",
                 "replicate": r, "seed": seed, "text": g.text, "n_tokens": len(g.ids), "finish_reason": g.finish_reason,
                 "token_ids": g.ids} for (t, r), seed, g in zip(cells, seeds, gens)]
        self._part("responses", job, pd.DataFrame(rows).astype({"seed": "int64"}))
        self._mark(job, {"responses": len(rows)})

    def _responses(self, role: str) -> pd.DataFrame:
        run = Run(self.out)
        df = run.read("responses")
        return df[df["role"] == role].sort_values("response_id").reset_index(drop=True)

    def score(self, job: Job) -> None:
        """Teacher-force each response with and without the role prompt; capture reduced activations."""
        role = self.roles.iloc[job.index]["role"]
        resp = self._responses(role)
        tokens, acts = [], []
        norm_sum = {layer: 0.0 for layer in self.cfg.capture_layers}
        norm_n = 0
        for cond, with_sys in (("with_prompt", True), ("without_prompt", False)):
            items = [(row, self._prompt(role, int(row.task_id[1:]), with_sys)) for row in resp.itertuples()
                     if len(row.token_ids)]
            for batch in pack([len(p.ids) + len(r.token_ids) for r, p in items], self.cfg.max_batch_tokens):
                chunk = [items[i] for i in batch]
                res = self.backend.score_batch([p.ids for _, p in chunk], [list(r.token_ids) for r, _ in chunk],
                                               capture=self.cfg.capture_layers)
                for b, (row, p) in enumerate(chunk):
                    n = len(row.token_ids)
                    tokens.append(_token_rows(row.response_id, cond, None, None, None, row.token_ids,
                                              res.log_probs[b, :n]))
                    plen = len(p.ids)
                    for layer in self.cfg.capture_layers:
                        h = res.hidden[layer][b]
                        resp_h = h[plen:plen + n]
                        spans = {"mean_response": resp_h, "mean_first_10": resp_h[:10], "last_token": h[plen - 1:plen]}
                        if cond == "with_prompt" and p.role_tokens:
                            spans["role_word"] = h[p.role_tokens]
                        if cond == "with_prompt" and p.period_token is not None:
                            spans["period"] = h[p.period_token:p.period_token + 1]
                        for red, hs in spans.items():
                            acts.append((row.response_id, cond, layer, red,
                                         hs.mean(0).cpu().numpy().astype(np.float32)))
                        if cond == "without_prompt":
                            norm_sum[layer] += float(resp_h.norm(dim=-1).sum())
                    if cond == "without_prompt":
                        norm_n += n
        self._part("tokens", job, pa.concat_tables(tokens))
        self._part("activations", job, _activation_table(acts))
        write_json({"sum": norm_sum, "n": norm_n}, self.out / JOBS / "norms" / f"{job.id}.json")
        self._mark(job, {"token_rows": sum(t.num_rows for t in tokens), "activations": len(acts)})

    # ---- vectors --------------------------------------------------------------------------------
    def _vectors_barrier(self) -> None:
        job = Job("vectors", 0)
        scores = [Job("score", k) for k in range(len(self.roles))]
        deadline = time.monotonic() + self.wait_timeout
        if self.shard[0] == 0:
            while not all(self.done(j) for j in scores):
                self._wait(deadline, "the other shards' scoring jobs")
            if not self.done(job):
                self.vectors(job)
        else:
            while not self.done(job):
                self._wait(deadline, "shard 0 to derive the vectors")

    def _wait(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise ConfigError(self.out, f"gave up waiting for {what}", hint="Run the missing shards, then resume.")
        time.sleep(self.poll)

    def vectors(self, job: Job) -> None:
        roles = [self.roles.iloc[k]["role"] for k in self.steered_roles]
        means = vec.activation_means(Run(self.out))
        tensors, index = vec.derive(means, roles, self.cfg.controls, self.cfg.capture_layers, self.cfg.derivations)
        write_json({str(k): v for k, v in vec.axis_means(means, tensors, self.cfg.controls,
                                                          self.cfg.capture_layers).items()},
                   self.out / JOBS / "axis_means.json")
        for trait in self.cfg.traits:
            index = vec.add_trait(tensors, index, trait.name, self._trait_diffs(trait))
        vec.save(self.out, tensors, index)
        sums = {layer: 0.0 for layer in self.cfg.capture_layers}
        n = 0
        for f in sorted((self.out / JOBS / "norms").glob("*.json")):
            part = json.loads(f.read_text())
            n += part["n"]
            for layer, v in part["sum"].items():
                sums[int(layer)] += v
        write_json({str(k): v / max(n, 1) for k, v in sums.items()}, self.out / JOBS / "layer_norms.json")
        self._mark(job, {"vectors": len(index)})

    def _trait_diffs(self, trait) -> dict[int, np.ndarray]:
        """Mean last-prompt-token residual with the positive minus the negative instruction, over tasks."""
        diffs = {}
        for sign, system in ((1, trait.positive), (-1, trait.negative)):
            prompts = [render_prompt(self.lm.tokenizer, task, system, None, self.cfg.no_prompt)
                       for task in self.cfg.tasks]
            res = self.backend.score_batch([p.ids[:-1] for p in prompts], [p.ids[-1:] for p in prompts],
                                           capture=self.cfg.capture_layers)
            for layer in self.cfg.capture_layers:
                last = torch.stack([res.hidden[layer][b, len(p.ids) - 1] for b, p in enumerate(prompts)]).mean(0)
                diffs[layer] = diffs.get(layer, 0) + sign * last.cpu().numpy()
        return diffs

    def _steering_inputs(self) -> tuple[vec.RoleVectors, dict[int, float]]:
        norms = json.loads((self.out / JOBS / "layer_norms.json").read_text())
        index, tensors = Run(self.out).load_vectors()
        scale = {layer: (norms[str(layer)] if self.cfg.units == "relative" else 1.0) for layer in self.cfg.steer_layers}
        return vec.RoleVectors(index, tensors, norms), scale

    def steer(self, job: Job) -> None:
        """Teacher-force each response without the prompt while steering with each derivation at every
        magnitude (one batch row per derivation x magnitude), then while capping on the assistant axis."""
        role = self.roles.iloc[job.index]["role"]
        vectors, scale = self._steering_inputs()
        layers_str = ",".join(map(str, self.cfg.steer_layers))
        cells = [(d, m) for d in self.cfg.derivations for m in self.cfg.magnitudes]
        per_layer = {layer: torch.tensor(np.stack([vectors.get(role, d, layer).values for d, _ in cells]))
                     for layer in self.cfg.steer_layers} if cells else {}
        axis = {layer: torch.tensor(vectors.axis(layer).values) for layer in self.cfg.steer_layers}
        out = []
        for row in self._responses(role).itertuples():
            ids = list(row.token_ids)[: self.cfg.score_tokens or None]
            if not ids:
                continue
            prompt = self._prompt(role, int(row.task_id[1:]), False)
            if cells:
                res = self.backend.score(prompt.ids, ids, Intervention(
                    "add", per_layer, torch.tensor([m for _, m in cells]), self.cfg.position_mode, scale))
                out += [_token_rows(row.response_id, "steered", d, m, layers_str, ids, res.log_probs[k])
                        for k, (d, m) in enumerate(cells)]
            if self.cfg.cap_taus:
                res = self.backend.score(prompt.ids, ids, Intervention(
                    "cap", axis, torch.tensor(self.cfg.cap_taus), self.cfg.position_mode, scale))
                out += [_token_rows(row.response_id, "capped", vec.AXIS, None, layers_str, ids, res.log_probs[k], tau)
                        for k, tau in enumerate(self.cfg.cap_taus)]
            if self.cfg.ablate:  # with the role prompt: the axis projection set to 0, and to the controls' mean
                with_prompt = self._prompt(role, int(row.task_id[1:]), True)
                means = json.loads((self.out / JOBS / "axis_means.json").read_text())
                res = self.backend.score(with_prompt.ids, ids, Intervention(
                    "ablate", axis, torch.tensor([0.0, 1.0]), self.cfg.position_mode,
                    {layer: means[str(layer)] for layer in self.cfg.steer_layers}))
                out += [_token_rows(row.response_id, cond, vec.AXIS, None, layers_str, ids, res.log_probs[k])
                        for k, cond in enumerate(ABLATED)]
        self._part("tokens", job, pa.concat_tables(out))
        self._mark(job, {"token_rows": sum(t.num_rows for t in out)})

    def word_guess(self, job: Job) -> None:
        """Log-prob of the role word as the answer to a prompt the vectors were not fitted on."""
        role = self.roles.iloc[job.index]["role"]
        vectors, scale = self._steering_inputs()
        prompt = render_prompt(self.lm.tokenizer, self.cfg.word_guess_prompt, None, None, self.cfg.no_prompt)
        target = self.lm.tokenizer(role, add_special_tokens=False)["input_ids"]
        rows = [{"role": role, "derivation": None, "magnitude": None, "target": role,
                 "log_prob": float(self.backend.score(prompt.ids, target).log_probs[0].sum())}]
        for d in self.cfg.derivations:
            per_layer = {layer: torch.tensor(vectors.get(role, d, layer).values) for layer in self.cfg.steer_layers}
            res = self.backend.score(prompt.ids, target, Intervention(
                "add", per_layer, torch.tensor(self.cfg.magnitudes), self.cfg.position_mode, scale))
            rows += [{"role": role, "derivation": d, "magnitude": m, "target": role,
                      "log_prob": float(res.log_probs[k].sum())} for k, m in enumerate(self.cfg.magnitudes)]
        self._part("word_guess", job, pd.DataFrame(rows).astype({"magnitude": "float64", "derivation": "object"}))
        self._mark(job, {"rows": len(rows)})


def _token_rows(rid: str, condition: str, derivation: str | None, magnitude: float | None, layers: str | None,
                token_ids, log_probs: torch.Tensor, tau: float | None = None) -> pa.Table:
    n = len(token_ids)
    return pa.table({
        "response_id": pa.array([rid] * n, pa.string()), "condition": pa.array([condition] * n, pa.string()),
        "derivation": pa.array([derivation] * n, pa.string()),
        "magnitude": pa.array([magnitude] * n, pa.float64()), "tau": pa.array([tau] * n, pa.float64()),
        "layers": pa.array([layers] * n, pa.string()),
        "token_index": pa.array(np.arange(n), pa.int64()), "token_id": pa.array(np.asarray(token_ids), pa.int64()),
        "log_prob": pa.array(log_probs[:n].cpu().numpy().astype(np.float64)),
    })


def _activation_table(acts: list[tuple]) -> pa.Table:
    return pa.table({
        "response_id": [a[0] for a in acts], "condition": [a[1] for a in acts],
        "layer": pa.array([a[2] for a in acts], pa.int64()), "reduction": [a[3] for a in acts],
        "values": pa.array([a[4] for a in acts], pa.list_(pa.float32())),
    })
