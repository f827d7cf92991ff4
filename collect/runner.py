"""The study runner: job bookkeeping around the stage functions of `stages.py` (generation -> scoring with
and without the prompt, with activations -> vectors -> steering, capping and ablation -> word guess ->
trait-steered generation -> conversations).

Every job has a deterministic id: `gen-0001` and `conversations-0002`, one per group of roles whose
responses (conversations) are generated together in full batches (`study_roles.role_groups`);
`score-0003`, `steer-0003`, `wordguess-0003`, one per role; `trait-0001`, one per steered trait;
`vectors`. A job writes its Parquet parts atomically
(`tokens/part-score-0003.parquet`, ...) and then its done marker (`_jobs/score-0003.done`); a resumed
run skips jobs with a marker and rewrites the parts of any other, so a killed run resumed gives exactly
the tables of an uninterrupted one. `--shard i/n` runs the jobs whose index is i modulo n (one process
per GPU; a role's scoring job in the shard of its generation job); shard 0 derives the vectors once every
scoring job of every shard is done, and the others wait for them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from animacy.atomic import write_json
from animacy.collect import vectors as vec
from animacy.collect.config import StudyConfig
from animacy.collect.stages import Output, Stages
from animacy.collect.study_roles import study_roles
from animacy.errors import ConfigError
from animacy.progress import progress
from animacy.provenance import config_hash, file_sha256, provenance
from animacy.run import JOBS, MANIFEST
from animacy.schema import SCHEMA_VERSION
from animacy.writers import write_table


@dataclass
class Job:
    stage: str
    index: int  # a role's (a group's for generation and conversations, a trait's for traits; 0: vectors)

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
        if quiet:  # transformers' own bars (loading weights) too
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        self.stages = Stages(cfg, study_roles(cfg), self.out)
        self.roles = self.stages.roles

    # ---- plumbing -------------------------------------------------------------------------------
    def done(self, job: Job) -> bool:
        return (self.out / JOBS / f"{job.id}.done").exists()

    def _finish(self, job: Job, out: Output) -> None:
        """Write what a stage made (each part atomically), then the job's done marker, which records the
        SHA-256 of every file the job wrote (the manifest gathers them; `Run.validate` checks them)."""
        written = [write_table(part, table, self.out, part=f"part-{job.id}") for table, part in out.tables.items()]
        for rel, obj in out.files.items():
            write_json(obj, self.out / JOBS / rel)
        if out.vectors is not None:
            written += vec.save(self.out, *out.vectors)
        files = {p.relative_to(self.out).as_posix(): file_sha256(p) for p in written}
        write_json({"job": job.id, **out.info, "files": files}, self.out / JOBS / f"{job.id}.done")

    def mine(self, jobs: list[Job]) -> list[Job]:
        """This shard's jobs of a stage: every n-th; a role's scoring job goes to the shard that generated
        its responses."""
        i, n = self.shard
        group = {k: g for g, ks in enumerate(self.stages.generation_groups) for k in ks}
        return [j for k, j in enumerate(jobs) if (group[j.index] if j.stage == "score" else k) % n == i]

    # ---- the run --------------------------------------------------------------------------------
    def check_layers(self) -> None:
        """Every capture and steer layer exists in the model: checked before any work."""
        n = self.stages.info["n_layers"]
        conv_layers = self.cfg.conversations.layers if self.cfg.conversations else []
        for key, layers in (("capture.layers", self.cfg.capture_layers), ("steer.layers", self.cfg.steer_layers),
                            ("monitor.layers", self.cfg.monitor_layers), ("conversations.layers", conv_layers)):
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
        n, groups = len(self.roles), len(self.stages.generation_groups)
        jobs = [Job("gen", g) for g in range(groups)] + [Job("score", k) for k in range(n)] + [Job("vectors", 0)]
        if self.cfg.magnitudes or self.cfg.cap_taus or self.cfg.ablate:
            jobs += [Job("steer", k) for k in self.stages.steered_roles]
        if self.cfg.word_guess_prompt:
            jobs += [Job("wordguess", k) for k in self.stages.steered_roles]
        jobs += [Job("trait", k) for k in self.stages.steered_traits]
        jobs += [Job("conversations", k) for k in range(len(self.stages.conversation_groups))]
        return jobs

    def check_markers(self) -> None:
        """Every finished job in the folder is one this study plans, and a generation or conversation job's
        covers the same roles: a folder collected with another job layout (by an older animacy, or with
        another `model.generation_batch`, which groups the roles) is refused, never mixed into."""
        planned = {j.id: j for j in self.jobs()}
        groups = {"gen": self.stages.generation_groups, "conversations": self.stages.conversation_groups}
        for marker in sorted((self.out / JOBS).glob("*.done")) if (self.out / JOBS).exists() else []:
            job = planned.get(marker.stem)
            if marker.stem.startswith("shard-") or (job is not None and job.stage not in groups):
                continue
            if job is None:
                why = "a job this study does not plan"
            else:
                want = [str(self.roles.iloc[k]["role"]) for k in groups[job.stage][job.index]]
                got = json.loads(marker.read_text()).get("roles")
                if got == want:
                    continue
                why = f"the roles {got}, where this study's job has {want}"
            raise ConfigError(self.out, f"{self.out} holds a finished job, {marker.stem} ({why}): the folder was "
                              "collected with another job layout (an older animacy, or another "
                              "model.generation_batch), and resuming would mix the two",
                              hint="Collect into a new folder, or resume with the version and config that made it.")

    def check_memory(self) -> None:
        """On CUDA, a study whose batches cannot fit the card is refused with the numbers, before the model
        loads (its shape read from its config on disk; skipped when that is not on disk yet)."""
        import torch

        from animacy.collect import plan

        if not self.cfg.device.startswith("cuda") or not torch.cuda.is_available():
            return
        try:
            shape = plan.model_shape(self.cfg)
        except ConfigError:
            return
        total = torch.cuda.mem_get_info()[1] / 2**30
        plan.check_memory(self.cfg, shape, total, torch.cuda.get_device_name())

    def run(self) -> Path:
        self.check_memory()
        self.check_layers()
        self.stages.conversation_roles  # noqa: B018 -- the conversation roles exist, before any work
        self.stages.monitored()  # the monitored directions resolve, before any work
        self.check_resume()
        self.check_markers()
        self.out.mkdir(parents=True, exist_ok=True)
        write_table(self.roles, "roles", self.out)
        self._write_manifest()
        st = self.stages
        work = {"gen": st.generate, "score": st.score, "steer": st.steer, "wordguess": st.word_guess,
                "trait": st.trait_steer, "conversations": st.converse}
        plan = self.jobs()
        for stage in ("gen", "score", "vectors", "steer", "wordguess", "trait", "conversations"):
            if stage == "vectors":
                self._vectors_barrier()
                continue
            if stage == "score":  # generation is over: a vLLM engine gives the card back before the scorer loads
                st.release_generator()
            jobs = self.mine([j for j in plan if j.stage == stage])
            unit = "groups of roles" if stage in ("gen", "conversations") else "traits" if stage == "trait" else "roles"
            for job in progress(jobs, f"{stage} ({unit})", quiet=self.quiet) if jobs else []:
                if not self.done(job):
                    self._finish(job, work[stage](job.index))
        write_json({"shard": list(self.shard)}, self.out / JOBS / f"shard-{self.shard[0]}-of-{self.shard[1]}.done")
        self._write_manifest()
        return self.out

    def _write_manifest(self) -> None:
        """The manifest; a resumed run keeps the original's config, hash, model, generation and provenance
        (and any recorded config changes), and updates only what the run adds: jobs planned and done, the
        files they (and the roles table) wrote with their SHA-256, shards done, layer norms."""
        # what the vectors job measured, once it has run
        measured = {key: json.loads((self.out / JOBS / f"{key}.json").read_text())
                    for key in ("layer_norms", "axis_means") if (self.out / JOBS / f"{key}.json").exists()}
        paths = sorted((self.out / JOBS).glob("*.done")) if (self.out / JOBS).exists() else []
        markers = [p.stem for p in paths]
        shards = [m for m in markers if m.startswith("shard-")]
        jobs = {"planned": [j.id for j in self.jobs()], "done": [m for m in markers if not m.startswith("shard-")]}
        files = dict(sorted([("roles.parquet", file_sha256(self.out / "roles.parquet")),
                             *(kv for p in paths if not p.stem.startswith("shard-")
                               for kv in json.loads(p.read_text()).get("files", {}).items())]))
        existing = self.out / MANIFEST
        if existing.exists():
            old = json.loads(existing.read_text())
            old["shards_done"] = shards
            old["jobs"] = jobs
            old["files"] = files
            write_json(old | measured, existing)
            return
        cfg = self.cfg.as_dict()
        write_json({
            "kind": "collected", "schema_version": SCHEMA_VERSION,
            "config": cfg, "config_hash": config_hash(cfg), "model": self.stages.info,
            "chat_template_hash": self.stages.info["chat_template_hash"], "layers": {
                "capture": self.cfg.capture_layers, "steer": self.cfg.steer_layers},
            "seeds": {"study": self.cfg.seed, "per_response": "sha256(seed|role|task|replicate)[:8]"},
            "no_prompt": self.cfg.no_prompt, "magnitude_units": self.cfg.units,
            "generation": {"generator": self.cfg.generator, "batch": self.cfg.generation_batch,
                           "sampling": asdict(self.stages.sampling)},
            "layer_norms": measured.get("layer_norms"), "axis_means": measured.get("axis_means"),
            "jobs": jobs, "shards_done": shards, "files": files, "provenance": provenance(),
        }, self.out / MANIFEST)

    # ---- vectors --------------------------------------------------------------------------------
    def _vectors_barrier(self) -> None:
        job = Job("vectors", 0)
        scores = [Job("score", k) for k in range(len(self.roles))]
        deadline = time.monotonic() + self.wait_timeout
        if self.shard[0] == 0:
            while not all(self.done(j) for j in scores):
                self._wait(deadline, "the other shards' scoring jobs")
            if not self.done(job):
                self._finish(job, self.stages.vectors())
        else:
            while not self.done(job):
                self._wait(deadline, "shard 0 to derive the vectors")

    def _wait(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise ConfigError(self.out, f"gave up waiting for {what}", hint="Run the missing shards, then resume.")
        time.sleep(self.poll)

