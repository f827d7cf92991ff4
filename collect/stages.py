"""The stages of a study, each a function of one role (the vectors: of the whole run) that computes its
tables and returns them as an `Output`; the runner (`runner.py`) plans the jobs, skips those done, writes
what a stage returns through the contract's writers and marks the job done.

Stages: generation (seeded per response) -> teacher-forced scoring with and without the role prompt, with
reduced activations -> vectors (role vectors, the assistant axis, traits) -> steering, capping and
ablation -> word guess.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from animacy.collect import vectors as vec
from animacy.collect.backend import Intervention, Sampling, TransformersBackend, halving, pack
from animacy.collect.config import StudyConfig
from animacy.collect.model import LoadedModel, describe_model, load_model
from animacy.collect.prompts import Prompt, render_conversation, render_prompt, system_text
from animacy.collect.study_roles import role_groups
from animacy.collect.vllm_backend import VLLMBackend
from animacy.errors import ConfigError
from animacy.run import JOBS, Run
from animacy.schema import (
    ABLATED,
    NO_PROMPT_ROLE,
    TRAIT_RESPONSE,
    conversation_id,
    response_id,
    trait_response_id,
)


def response_seed(seed: int, role: str, task: int | str, replicate: int) -> int:
    return int(hashlib.sha256(f"{seed}|{role}|{task}|{replicate}".encode()).hexdigest()[:8], 16)


def turn_seed(seed: int, role: str, replicate: int, turn: int, speaker: str = "model") -> int:
    """The seed of one turn of a conversation: the same in every condition, so a capped conversation and
    its uncapped twin differ only by the cap (from the first turn the cap changes)."""
    return response_seed(seed, role, f"conv-{speaker}-t{turn}", replicate)


@dataclass
class Output:
    """What a stage made: table parts by table name, what its done marker records, bookkeeping files
    under `_jobs/` (JSON, by relative path), and the vectors (tensors, index) of the vectors stage."""

    tables: dict[str, pd.DataFrame | pa.Table]
    info: dict
    files: dict[str, dict] = field(default_factory=dict)
    vectors: tuple[dict[str, np.ndarray], pd.DataFrame] | None = None


class Stages:
    """The stage functions of one study, sharing its config, roles, run folder and (loaded once, on first
    use) model and backends."""

    def __init__(self, cfg: StudyConfig, roles: pd.DataFrame, out: Path) -> None:
        self.cfg, self.roles, self.out = cfg, roles, out
        self._lm: LoadedModel | None = None
        self._vllm: VLLMBackend | None = None
        self._monitored: dict[int, tuple[list[str], torch.Tensor]] | None = None
        self._user: TransformersBackend | None = None
        self._described: tuple[object, dict] | None = None

    @property
    def lm(self) -> LoadedModel:
        """The transformers model (scoring, steering, and generation unless vLLM generates), loaded on first
        use; with vLLM, never while its engine holds the card (`release_generator` first)."""
        if self._lm is None:
            self.release_generator()
            self._lm = load_model(self.cfg.model_source, self.cfg.model_revision, self.cfg.dtype, self.cfg.device,
                                  experts=self.cfg.experts)
            self._backend = TransformersBackend(self._lm.model, self._lm.tokenizer, self.cfg.generation_batch,
                                                self.cfg.compile_decoding)
        return self._lm

    @property
    def backend(self) -> TransformersBackend:
        """The transformers backend of `lm` (loading it on first use)."""
        self.lm  # noqa: B018 -- loads the model and its backend
        return self._backend

    def _description(self) -> tuple[object, dict]:
        if self._lm is not None:
            return self._lm.tokenizer, self._lm.info
        if self.cfg.generator != "vllm":  # transformers generates: the model is needed now anyway
            return self.lm.tokenizer, self.lm.info
        if self._described is None:
            self._described = describe_model(self.cfg.model_source, self.cfg.model_revision, self.cfg.dtype,
                                             self.cfg.device, self.cfg.experts)
        return self._described

    @property
    def tokenizer(self):
        return self._description()[0]

    @property
    def info(self) -> dict:
        """The manifest's model info; with vLLM, read without loading the weights."""
        return self._description()[1]

    def release_generator(self) -> None:
        """Shut the vLLM engine down and check its memory went back to the driver (before the scorer loads)."""
        if self._vllm is not None:
            engine, self._vllm = self._vllm, None
            engine.release()

    @property
    def steered_roles(self) -> list[int]:
        return [k for k, r in enumerate(self.roles.itertuples()) if not r.is_control]

    def _prompt(self, role: str, task: int, with_system: bool) -> Prompt:
        system = system_text(self.cfg.system_template, role) if with_system and role != NO_PROMPT_ROLE else None
        return render_prompt(self.tokenizer, self.cfg.tasks[task], system, role, self.cfg.no_prompt)

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.cfg.temperature, max_tokens=self.cfg.max_new_tokens)

    @property
    def generator(self) -> TransformersBackend | VLLMBackend:
        """The generation backend: both take `generate_many(prompt ids, seeds, Sampling)`."""
        if self.cfg.generator != "vllm":
            return self.backend
        if self._vllm is None:
            if self._lm is not None:
                raise ConfigError(self.cfg.path, "the transformers model is loaded: the vLLM engine would need the "
                                  "card beside it", hint="Generate every response before scoring (the runner does).")
            self._vllm = VLLMBackend(self.info["source"], self.cfg.dtype)
        return self._vllm

    def _generate(self, prompts: list[list[int]], seeds: list[int]) -> list:
        return self.generator.generate_many(prompts, seeds, self.sampling)

    @property
    def generation_groups(self) -> list[list[int]]:
        """The roles in groups, one generation job each, so responses are sampled in full batches
        (`study_roles.role_groups`)."""
        return role_groups(list(range(len(self.roles))), len(self.cfg.tasks) * self.cfg.replicates,
                           self.cfg.generation_batch)

    def generate(self, group: int) -> Output:
        """Sample every response of the roles of generation group `group` together (seeded per response)."""
        roles = [self.roles.iloc[k]["role"] for k in self.generation_groups[group]]
        cells = [(role, t, r) for role in roles for t in range(len(self.cfg.tasks)) for r in range(self.cfg.replicates)]
        prompts = {(role, t): self._prompt(role, t, True).ids for role in roles for t in range(len(self.cfg.tasks))}
        seeds = [response_seed(self.cfg.seed, role, t, r) for role, t, r in cells]
        gens = self._generate([prompts[role, t] for role, t, _ in cells], seeds)
        rows = [{"response_id": response_id(role, f"t{t:02d}", r), "role": role, "task_id": f"t{t:02d}",
                 "replicate": r, "seed": seed, "text": g.text, "n_tokens": len(g.ids), "finish_reason": g.finish_reason,
                 "token_ids": g.ids} for (role, t, r), seed, g in zip(cells, seeds, gens)]
        return Output({"responses": pd.DataFrame(rows).astype({"seed": "int64"})},
                      {"responses": len(rows), "roles": [str(r) for r in roles]})

    def _responses(self, role: str) -> pd.DataFrame:
        run = Run(self.out)
        df = run.read("responses")
        return df[df["role"] == role].sort_values("response_id").reset_index(drop=True)

    def score(self, index: int) -> Output:
        """Teacher-force each response of role `index` with and without the role prompt; capture reduced
        activations, and the residual norms that relative magnitudes are measured in."""
        role = self.roles.iloc[index]["role"]
        resp = self._responses(role)
        tokens, acts, projections = [], [], []
        monitor = self.monitored()
        norm_sum = {layer: 0.0 for layer in self.cfg.capture_layers}
        norm_n = 0
        for cond, with_sys in (("with_prompt", True), ("without_prompt", False)):
            items = [(row, self._prompt(role, int(row.task_id[1:]), with_sys)) for row in resp.itertuples()
                     if len(row.token_ids)]
            for chunk, res in self._batches(items, lambda p: p.ids, lambda r: list(r.token_ids),
                                            capture=self.cfg.capture_layers,
                                            project={layer: d for layer, (_, d) in monitor.items()}):
                for b, (row, p) in enumerate(chunk):
                    n = len(row.token_ids)
                    tokens.append(_token_rows(row.response_id, cond, None, None, None, row.token_ids,
                                              res.log_probs[b, :n]))
                    plen = len(p.ids)
                    for layer, (names, _) in monitor.items():
                        projections.append(_projection_rows(row.response_id, cond, names, layer,
                                                            res.projections[layer][b, plen:plen + n]))
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
        tables = {"tokens": pa.concat_tables(tokens), "activations": _activation_table(acts)}
        if projections:
            tables["projections"] = pa.concat_tables(projections)
        return Output(tables, {"token_rows": sum(t.num_rows for t in tokens), "activations": len(acts)},
                      files={f"norms/score-{index:04d}.json": {"sum": norm_sum, "n": norm_n}})

    def _batches(self, items: list[tuple], prompt_ids, continuation, **kwargs):
        """Score (row, prompt) items in batches packed to `max_batch_tokens`, halving a batch that runs out of
        device memory: yields (the items of a batch, its ScoreResult)."""
        for batch in pack([len(prompt_ids(p)) + len(continuation(r)) for r, p in items], self.cfg.max_batch_tokens):
            chunk = [items[i] for i in batch]
            yield from halving(chunk, lambda part: self.backend.score_batch(
                [prompt_ids(p) for _, p in part], [continuation(r) for r, _ in part], **kwargs))

    def monitored(self) -> dict[int, tuple[list[str], torch.Tensor]]:
        """{layer: (direction names, [K, H] unit directions)} of `[monitor]`, from the run it names; {} when
        nothing is monitored. Every name is resolved at every layer, or a ConfigError says which is missing."""
        if not self.cfg.monitor_directions:
            return {}
        if self._monitored is None:
            if not self.cfg.monitor_vectors:
                raise ConfigError(self.cfg.path, "monitor.directions needs monitor.vectors: the run whose vectors "
                                  "to project on", column="monitor.vectors")
            vectors = vec.RoleVectors.load(self.cfg.resolve(self.cfg.monitor_vectors))
            self._monitored = {layer: (list(self.cfg.monitor_directions), torch.tensor(np.stack(
                [vectors.named(name, layer).values for name in self.cfg.monitor_directions])))
                for layer in self.cfg.monitor_layers}
        return self._monitored

    def vectors(self) -> Output:
        """The role vectors, the assistant axis and trait vectors from every role's activations; the
        layers' mean residual norms; the axis' reference mean for mean ablation."""
        roles = [self.roles.iloc[k]["role"] for k in self.steered_roles]
        means = vec.activation_means(Run(self.out))
        tensors, index = vec.derive(means, roles, self.cfg.controls, self.cfg.capture_layers, self.cfg.derivations)
        axis_means = {str(k): v for k, v in vec.axis_means(means, tensors, self.cfg.controls,
                                                            self.cfg.capture_layers).items()}
        for trait in self.cfg.traits:
            index = vec.add_trait(tensors, index, trait.name, self._trait_diffs(trait))
        sums = {layer: 0.0 for layer in self.cfg.capture_layers}
        n = 0
        for f in sorted((self.out / JOBS / "norms").glob("*.json")):
            part = json.loads(f.read_text())
            n += part["n"]
            for layer, v in part["sum"].items():
                sums[int(layer)] += v
        norms = {str(k): v / max(n, 1) for k, v in sums.items()}
        return Output({}, {"vectors": len(index)}, files={"layer_norms.json": norms, "axis_means.json": axis_means},
                      vectors=(tensors, index))

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
        index, tensors = Run(self.out).load_vectors()
        vectors = vec.RoleVectors(index, tensors, json.loads((self.out / JOBS / "layer_norms.json").read_text()))
        scale = {layer: vec.magnitude_unit(vectors.layer_norms.get(layer), self.cfg.units, layer)
                 for layer in self.cfg.steer_layers}
        return vectors, scale

    def steer(self, index: int) -> Output:
        """Teacher-force each response of role `index` without the prompt while steering with each
        derivation at every magnitude (one batch row per derivation x magnitude), then while capping on the
        assistant axis; and with the prompt while ablating the axis."""
        role = self.roles.iloc[index]["role"]
        vectors, scale = self._steering_inputs()
        layers_str = ",".join(map(str, self.cfg.steer_layers))
        cells = [(d, m) for d in self.cfg.derivations for m in self.cfg.magnitudes]
        per_layer = {layer: torch.tensor(np.stack([vectors.get(role, d, layer).values for d, _ in cells]))
                     for layer in self.cfg.steer_layers} if cells else {}
        axis = {layer: torch.tensor(vectors.axis(layer).values) for layer in self.cfg.steer_layers}
        if self.cfg.ablate:  # the projection each ablated row is set to: 0, and the controls' mean (per layer)
            means = json.loads((self.out / JOBS / "axis_means.json").read_text())
            ablate = Intervention("ablate", axis, torch.tensor([0.0, 1.0]), self.cfg.position_mode,
                                  {layer: means[str(layer)] for layer in self.cfg.steer_layers})
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
            if self.cfg.ablate:  # with the role prompt
                res = self.backend.score(self._prompt(role, int(row.task_id[1:]), True).ids, ids, ablate)
                out += [_token_rows(row.response_id, cond, vec.AXIS, None, layers_str, ids, res.log_probs[k])
                        for k, cond in enumerate(ABLATED)]
        return Output({"tokens": pa.concat_tables(out)}, {"token_rows": sum(t.num_rows for t in out)})

    @property
    def conversation_roles(self) -> list[int]:
        """Indices of the roles that hold conversations: `[conversations] roles`, else every role but the
        no-prompt pass."""
        conv = self.cfg.conversations
        if conv is None:
            return []
        names = list(self.roles["role"])
        if conv.roles is None:
            return [k for k, r in enumerate(names) if r != NO_PROMPT_ROLE]
        missing = [r for r in conv.roles if r not in names]
        if missing:
            raise ConfigError(self.cfg.path, f"conversations.roles names '{missing[0]}', which is not a role of the "
                              "study", column="conversations.roles")
        return [names.index(r) for r in conv.roles]

    @property
    def conversation_groups(self) -> list[list[int]]:
        """The conversation roles in groups, one job each, so each turn of each arm is generated in full
        batches (`study_roles.role_groups`)."""
        roles = self.conversation_roles
        return role_groups(roles, self.cfg.conversations.replicates, self.cfg.generation_batch) if roles else []

    def _user_backend(self) -> TransformersBackend:
        """The model that writes generated user turns: the study's own, or `user_model` (loaded once)."""
        source = self.cfg.conversations.user_model
        if not source or source == self.cfg.model_source:
            return self.backend
        if self._user is None:
            lm = load_model(source, None, self.cfg.dtype, self.cfg.device)
            self._user = TransformersBackend(lm.model, lm.tokenizer, self.cfg.generation_batch)
        return self._user

    def _user_turns(self, turn: int, convs: list[tuple[str, int]], histories: list[list[tuple[str, str]]]) -> list[str]:
        """The user's message of `turn` in each conversation (role, replicate): scripted, or the opening line
        then written by the user model, which sees the conversation from the other side (seeded per turn)."""
        conv = self.cfg.conversations
        if conv.scripted:
            return [conv.turns[turn]] * len(histories)
        if turn == 0:
            return [conv.opening] * len(histories)
        user = self._user_backend()
        prompts = []
        for h in histories:  # the user model's view: it spoke first; the answers are its 'user' messages
            flipped = [(a, u_next) for (_, a), (u_next, _) in itertools.pairwise(h)]
            prompts.append(render_conversation(user.tokenizer, conv.user_prompt,
                                               [("Hello.", conv.opening), *flipped], h[-1][1], self.cfg.no_prompt))
        seeds = [turn_seed(self.cfg.seed, role, r, turn, "user") for role, r in convs]
        gens = user.generate_many(prompts, seeds, Sampling(self.cfg.temperature, max_tokens=conv.max_new_tokens))
        return [g.text.strip() or "..." for g in gens]

    def converse(self, group: int) -> Output:
        """The conversations of the roles of conversation group `group`: each role's prompt, then each user
        turn answered in turn by the model, freely, capped on the assistant axis at each τ, and (with
        `ablate`) with the axis ablated (the same seeds in every arm); every turn of an arm is generated for
        all the group's conversations together. Every answer's tokens are projected on the axis (and
        `[monitor]`'s directions) at `conversations.layers` as it is generated, and its mean log-prob kept."""
        conv = self.cfg.conversations
        roles = [self.roles.iloc[k]["role"] for k in self.conversation_groups[group]]
        convs = [(role, r) for role in roles for r in range(conv.replicates)]
        systems = {role: system_text(self.cfg.system_template, role) if role != NO_PROMPT_ROLE else None
                   for role in roles}
        vectors, _ = self._steering_inputs()
        unit = {layer: vec.magnitude_unit(vectors.layer_norms.get(layer), self.cfg.units, layer)
                for layer in conv.layers}
        axis = {layer: torch.tensor(vectors.axis(layer).values) for layer in conv.layers}
        names, directions = {}, {}  # the axis, then [monitor]'s directions, at each layer
        for layer in conv.layers:
            more, dirs = self.monitored().get(layer, ([], axis[layer][None][:0]))
            names[layer], directions[layer] = [vec.AXIS, *more], torch.cat([axis[layer][None], dirs])
        sampling = Sampling(self.cfg.temperature, max_tokens=conv.max_new_tokens)
        arms = {("conversation", None): None}
        arms |= {("conversation_capped", t): Intervention("cap", axis, torch.tensor([t]), "all", unit)
                 for t in conv.cap_taus}
        if conv.ablate:  # the axis' projection removed at every position
            arms[("conversation_ablated", None)] = Intervention("ablate", axis, torch.tensor([0.0]), "all")
        rows, projections = [], []
        for (condition, tau), intervention in arms.items():
            histories: list[list[tuple[str, str]]] = [[] for _ in convs]
            for turn in range(conv.n_turns):
                users = self._user_turns(turn, convs, histories)
                prompts = [render_conversation(self.lm.tokenizer, systems[role], h, u, self.cfg.no_prompt)
                           for (role, _), h, u in zip(convs, histories, users)]
                seeds = [turn_seed(self.cfg.seed, role, r, turn) for role, r in convs]
                gens = self.backend.generate_many(prompts, seeds, sampling, intervention, directions)
                for (role, r), history, user, seed, g in zip(convs, histories, users, seeds, gens):
                    cid = conversation_id(role, r, condition, tau)
                    rid = f"{cid}|t{turn}"
                    rows.append({"conversation_id": cid, "role": role, "replicate": r, "condition": condition,
                                 "tau": tau, "turn": turn, "user_text": user, "response_id": rid, "seed": seed,
                                 "text": g.text, "n_tokens": len(g.ids), "finish_reason": g.finish_reason,
                                 "mean_log_prob": float(np.mean(g.log_probs)) if g.ids else None,
                                 "token_ids": g.ids})
                    for layer in conv.layers:
                        projections.append(_projection_rows(rid, condition, names[layer], layer,
                                                            g.projections[layer], turn))
                    history.append((user, g.text))
        tables = {"conversations": pd.DataFrame(rows).astype({"tau": "float64", "seed": "int64"})}
        if projections:
            tables["projections"] = pa.concat_tables(projections)
        return Output(tables, {"turns": len(rows), "roles": [str(r) for r in roles]})

    @property
    def steered_traits(self) -> list[int]:
        return [k for k, t in enumerate(self.cfg.traits) if t.magnitudes]

    def trait_steer(self, index: int) -> Output:
        """Responses to the trait's questions (no system prompt) generated while steering along its vector at
        each magnitude (the same seeds at every magnitude); then each teacher-forced unsteered, its tokens
        projected on the trait vector at the steered layers: the offline proxy for the judge's score."""
        trait = self.cfg.traits[index]
        vectors, scale = self._steering_inputs()
        per_layer = {layer: torch.tensor(vectors.get(trait.name, "trait", layer).values)
                     for layer in self.cfg.steer_layers}
        questions = trait.questions or self.cfg.tasks
        prompts = [render_prompt(self.lm.tokenizer, q, None, None, self.cfg.no_prompt).ids for q in questions]
        cells = [(q, r) for q in range(len(questions)) for r in range(self.cfg.replicates)]
        seeds = [response_seed(self.cfg.seed, f"trait:{trait.name}", q, r) for q, r in cells]
        rows = []
        for m in trait.magnitudes:
            steer = Intervention("add", per_layer, torch.tensor([m]), self.cfg.position_mode, scale)
            gens = self.backend.generate_many([prompts[q] for q, _ in cells], seeds, self.sampling, steer)
            rows += [{"response_id": trait_response_id(trait.name, q, m, r), "trait": trait.name,
                      "question_id": f"q{q:02d}", "question": questions[q], "magnitude": m, "replicate": r,
                      "seed": seed, "text": g.text, "n_tokens": len(g.ids), "finish_reason": g.finish_reason,
                      "token_ids": g.ids} for (q, r), seed, g in zip(cells, seeds, gens)]
        monitor = {layer: v[None] for layer, v in per_layer.items()}
        items = [(row, prompts[int(row["question_id"][1:])]) for row in rows if row["n_tokens"]]
        projections = []
        for chunk, res in self._batches(items, lambda p: p, lambda row: row["token_ids"], project=monitor):
            for b, (row, p) in enumerate(chunk):
                for layer in monitor:
                    projections.append(_projection_rows(
                        row["response_id"], TRAIT_RESPONSE, [f"trait:{trait.name}"], layer,
                        res.projections[layer][b, len(p):len(p) + row["n_tokens"]]))
        tables = {"trait_responses": pd.DataFrame(rows).astype({"seed": "int64", "magnitude": "float64"})}
        if projections:
            tables["projections"] = pa.concat_tables(projections)
        return Output(tables, {"trait_responses": len(rows)})

    def word_guess(self, index: int) -> Output:
        """Log-prob of the role word as the answer to a prompt the vectors were not fitted on."""
        role = self.roles.iloc[index]["role"]
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
        return Output({"word_guess": pd.DataFrame(rows).astype({"magnitude": "float64", "derivation": "object"})},
                      {"rows": len(rows)})


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


def _projection_rows(rid: str, condition: str, names: list[str], layer: int, proj: torch.Tensor,
                     turn: int = 0) -> pa.Table:
    """Projections [n tokens, K directions] of one response (one turn of a conversation) at one layer, as rows."""
    n, k = proj.shape
    return pa.table({
        "response_id": pa.array([rid] * (n * k), pa.string()), "turn": pa.array(np.full(n * k, turn, np.int64)),
        "condition": pa.array([condition] * (n * k), pa.string()), "direction": pa.array(names * n, pa.string()),
        "layer": pa.array(np.full(n * k, layer, np.int64)), "token_index": pa.array(np.repeat(np.arange(n), k)),
        "projection": pa.array(proj.reshape(-1).cpu().numpy().astype(np.float64)),
    })


def _activation_table(acts: list[tuple]) -> pa.Table:
    return pa.table({
        "response_id": [a[0] for a in acts], "condition": [a[1] for a in acts],
        "layer": pa.array([a[2] for a in acts], pa.int64()), "reduction": [a[3] for a in acts],
        "values": pa.array([a[4] for a in acts], pa.list_(pa.float32())),
    })
