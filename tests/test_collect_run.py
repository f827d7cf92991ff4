"""The study runner on the real SmolLM2: a small study end to end, kill-and-resume, shards, config errors."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from animacy.analysis.mixed_r import environment_without_r
from animacy.cli import main
from animacy.run import Run
from tests.collect_fixtures import torch  # skips without torch; used by the conversation test

CONFIG = """
[study]
name = "tiny"
seed = 7
replicates = 2
temperature = 0.8
max_new_tokens = 8
tasks = ["What are your five favorite things?"]

[model]
source = "smollm2"

[roles]
list = [{role = "lawyer", group = "High Mental, High Physical", anim_mental = 609.0},
        {role = "sock", group = "Low Mental, Low Physical", anim_mental = 152.4}]
controls = ["assistant"]

[capture]
layers = [5, 10]

[steer]
layers = [5]
derivations = ["role_minus_assistant_response", "with_minus_without_response"]
magnitudes = [0.0, 0.1]
cap_taus = [0.05]
ablate = true

[word_guess]
prompt = "Which word describes you? One word."
"""
TABLES = {"responses": ["response_id"],
          "tokens": ["response_id", "condition", "derivation", "magnitude", "tau", "token_index"],
          "activations": ["response_id", "condition", "layer", "reduction"],
          "word_guess": ["role", "derivation", "magnitude"],
          "vectors_index": ["role", "derivation", "layer"]}


@pytest.fixture(scope="module")
def config(tmp_path_factory, smollm2) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def full_run(config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(["collect", "run", str(config), "--out", str(out), "--quiet"]) == 0
    return out


def _tables(run: Path) -> dict[str, pd.DataFrame]:
    r = Run(run)
    out = {}
    for name, key in TABLES.items():
        df = r.read(name)
        if "values" in df:
            df["values"] = df["values"].map(lambda v: tuple(float(x) for x in v))
        if "token_ids" in df:
            df["token_ids"] = df["token_ids"].map(tuple)
        out[name] = df.sort_values(key, na_position="first").reset_index(drop=True)
    return out


def test_a_small_study_end_to_end(full_run, tmp_path, capsys):
    run = Run(full_run)
    run.validate()
    m = run.manifest
    assert m["model"]["class"] == "LlamaForCausalLM" and m["chat_template_hash"]
    assert m["no_prompt"] == "none" and m["layers"]["steer"] == [5] and set(m["layer_norms"]) == {"5", "10"}
    assert {"torch", "transformers", "numpy"} <= set(m["provenance"]["packages"])
    resp = run.read("responses")
    assert len(resp) == 4 * 2 and (resp["n_tokens"] == resp["token_ids"].map(len)).all()
    tokens = _tables(full_run)["tokens"]
    n = tokens.groupby(["response_id", "condition", "derivation", "magnitude"], dropna=False).size()
    lengths = resp.set_index("response_id")["n_tokens"]
    assert (n.groupby(level=0).min() == lengths.reindex(n.index.get_level_values(0).unique())).all()
    assert set(tokens["condition"]) == {"with_prompt", "without_prompt", "steered", "capped", "ablated",
                                        "mean_ablated"}
    # ablation runs with the role prompt, over the same tokens, for the steered roles; its mean is recorded
    steered_ids = set(tokens.loc[tokens.condition == "steered", "response_id"])
    for cond in ("ablated", "mean_ablated"):
        rows = tokens[tokens.condition == cond]
        assert set(rows["response_id"]) == steered_ids and (rows["derivation"] == "assistant_axis").all()
        assert len(rows) == len(tokens[(tokens.condition == "with_prompt") & tokens.response_id.isin(steered_ids)])
    assert set(m["axis_means"]) == {"5", "10"}
    capped = tokens[tokens.condition == "capped"]
    assert (capped["tau"] == 0.05).all() and capped["magnitude"].isna().all() and tokens.loc[
        tokens.condition != "capped", "tau"].isna().all(), "τ has its own column"
    # magnitude 0 reproduces the unsteered without-prompt scores
    st0 = tokens[(tokens.condition == "steered") & (tokens.magnitude == 0)]
    wo = tokens[tokens.condition == "without_prompt"]
    merged = st0.merge(wo, on=["response_id", "token_index"], suffixes=("", "_wo"))
    assert len(merged) == len(st0) > 0
    assert (merged["log_prob"] - merged["log_prob_wo"]).abs().max() < 1e-4
    idx, tensors = run.load_vectors()
    assert len(idx) == 2 * 2 * 2 + 2  # 2 roles x 2 derivations x 2 layers, and the axis at each layer
    assert all(abs(float((tensors[t][r] ** 2).sum()) - 1) < 1e-5 for t, r in zip(idx["tensor"], idx["row"]))
    assert main(["analyze", str(full_run), "--out", str(tmp_path / "a"), "--no-umap", "--n-boot", "50",
                 "--quiet"]) == 0
    # the manifest records every file the collector wrote with its SHA-256; a part removed or changed
    # afterwards is refused, naming it
    written = {p.relative_to(full_run).as_posix() for p in full_run.rglob("*")
               if p.is_file() and p.parts[len(full_run.parts)] != "_jobs" and p.name != "manifest.json"}
    assert set(m["files"]) == written
    assert all(hashlib.sha256((full_run / f).read_bytes()).hexdigest() == d for f, d in m["files"].items())
    for damage in ("changed", "removed"):
        copy = tmp_path / damage
        shutil.copytree(full_run, copy)
        part = copy / "tokens" / "part-score-0001.parquet"
        if damage == "removed":
            part.unlink()
        else:
            data = bytearray(part.read_bytes())
            data[len(data) // 2] ^= 1
            part.write_bytes(bytes(data))
        assert main(["validate", str(copy)]) == 2
        assert "part-score-0001.parquet" in capsys.readouterr().err


def test_killed_run_resumes_to_identical_tables(config, full_run, tmp_path, capsys):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "animacy.cli", "collect", "run", str(config), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=environment_without_r(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "_jobs" / "score-0001.done"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "_jobs" / "shard-0-of-1.done").exists(), "the run was killed before it finished"
    # the killed run knows it is incomplete: validate names the jobs, analyze refuses it unless allowed
    missing = Run(out).missing_jobs()
    assert missing and "vectors" in missing and "score-0001" not in missing
    capsys.readouterr()
    assert main(["validate", str(out)]) == 1
    assert "INCOMPLETE" in capsys.readouterr().out
    assert main(["analyze", str(out), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "incomplete run" in err and missing[0] in err and not (tmp_path / "a").exists()
    assert main(["analyze", str(out), "--out", str(tmp_path / "a"), "--allow-incomplete", "--no-umap",
                 "--n-boot", "50", "--quiet"]) == 0
    assert "INCOMPLETE" in capsys.readouterr().err
    summary = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert summary["complete"] is False and summary["missing_jobs"] == missing
    assert main(["collect", "run", str(config), "--out", str(out), "--quiet"]) == 0
    a, b = _tables(full_run), _tables(out)
    for name in TABLES:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)
    assert Run(out).missing_jobs() == [] and main(["validate", str(out)]) == 0
    jobs = Run(out).manifest["jobs"]
    # one generation job (the four roles' eight responses, one batch), then a scoring job per role, the
    # vectors, and steering and word guess per steered role
    assert sorted(jobs["done"]) == sorted(jobs["planned"]) and len(jobs["planned"]) == 1 + 4 + 1 + 2 * 2
    assert json.loads((out / "_jobs" / "gen-0000.done").read_text())["roles"] == list(Run(out).read("roles")["role"])


def test_two_shards_make_the_same_run(config, full_run, tmp_path):
    """Two shards, each generating one group of two roles (generation batches of four) and scoring the roles
    it generated, make the tables of the unsharded run, whose one job generated all four roles together."""
    out = tmp_path / "sharded"
    small = tmp_path / "small.toml"
    small.write_text(config.read_text().replace('source = "smollm2"', 'source = "smollm2"\ngeneration_batch = 4'))
    cmd = [sys.executable, "-m", "animacy.cli", "collect", "run", str(small), "--out", str(out), "--quiet"]
    procs = [subprocess.Popen([*cmd, "--shard", f"{i}/2"], env=environment_without_r(), stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    a, b = _tables(full_run), _tables(out)
    for name in TABLES:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)
    assert sorted(Run(out).manifest["shards_done"])[-1].startswith("shard-")
    assert {json.loads((out / "_jobs" / f"gen-000{g}.done").read_text())["roles"][0] for g in (0, 1)} == {
        "lawyer", "assistant"}


@pytest.mark.parametrize(("edit", "words"), [
    (lambda s: s.replace('source = "smollm2"', ""), "[model] needs 'source'"),
    (lambda s: s.replace("replicates = 2", 'replicates = "two"'), "study.replicates' should be int"),
    (lambda s: s.replace("layers = [5]\n", "layers = [7]\n"), "subset of capture.layers"),
    (lambda s: s.replace('"with_minus_without_response"', '"with_minus_without"'), "unknown derivation"),
    (lambda s: s + "\n[steering]\nx = 1\n", "unknown section [steering]"),
    (lambda s: s.replace("[study]", "[study"), "not valid TOML"),
    # typos are refused with the closest key, at every level
    (lambda s: s.replace("max_new_tokens = 8", "max_new_token = 8"), "did you mean 'max_new_tokens'"),
    (lambda s: s.replace("magnitudes = [0.0, 0.1]", "magnitude = [0.0, 0.1]"), "did you mean 'magnitudes'"),
    (lambda s: s + '\n[[traits]]\nname = "x"\npositive = "a"\nnegativ = "b"\n', "did you mean 'negative'"),
    (lambda s: s + "\n[steeer]\nx = 1\n", "did you mean [steer]"),
    # a config that cannot run is refused before any work
    (lambda s: s.replace("layers = [5, 10]", "layers = [-1, 5]"), "capture.layers must be layer indices >= 0"),
    (lambda s: s.replace('{role = "sock"', '{role = "lawyer"'), "lists the role 'lawyer' twice"),
    (lambda s: s.replace('controls = ["assistant"]', 'controls = ["sock"]'), "'sock' is also an assistant control"),
    (lambda s: s.replace('{role = "sock"', "{role = 7"), "must be a non-empty string"),
    # conversations: scripted turns or a user model, never both; layers where the axis exists; known roles
    (lambda s: s + CONVERSATIONS.replace("max_new_tokens = 6", 'opening = "Hi"'), "not both"),
    (lambda s: s + "\n[conversations]\nreplicates = 2\n", "needs scripted 'turns', or an 'opening'"),
    (lambda s: s + CONVERSATIONS.replace("layers = [5]", "layers = [7]"), "conversations.layers must be"),
    (lambda s: s + CONVERSATIONS.replace('roles = ["sock", "assistant"]', 'roles = ["ghost"]'),
     "conversations.roles names 'ghost'"),
    (lambda s: s + CONVERSATIONS.replace("turns = [", "turn = ["), "did you mean 'turns'"),
    (lambda s: s.replace('source = "smollm2"', 'source = "smollm2"\nexperts = "fastest"'),
     "model.experts must be one of eager, grouped_mm, batched_mm"),
])
def test_config_errors_name_the_file_and_key(tmp_path, edit, words, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(edit(CONFIG))
    assert main(["collect", "run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and words in err, err
    assert not (tmp_path / "o").exists()


def test_a_changed_config_is_refused_on_resume_unless_allowed_and_then_recorded(config, full_run, tmp_path, capsys):
    run = tmp_path / "changed"
    shutil.copytree(full_run, run)
    before = json.loads((run / "manifest.json").read_text())
    changed = tmp_path / "changed.toml"
    changed.write_text(CONFIG.replace("max_new_tokens = 8", "max_new_tokens = 6").replace("temperature = 0.8",
                                                                                          "temperature = 1.3"))
    assert main(["collect", "run", str(changed), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "max_new_tokens: 8 in the run, 6 now" in err and "temperature" in err, err
    assert json.loads((run / "manifest.json").read_text()) == before, "a refused resume must not touch the manifest"
    assert main(["collect", "run", str(changed), "--out", str(run), "--quiet",
                 "--allow-config-change", "max_new_tokens,temperature"]) == 0
    after = json.loads((run / "manifest.json").read_text())
    for key in ("config", "config_hash", "provenance", "model", "generation"):
        assert after[key] == before[key], f"a resumed run rewrote {key}"
    change = after["config_changes"][0]
    assert change["keys"] == ["max_new_tokens", "temperature"]
    assert change["from"] == {"max_new_tokens": 8, "temperature": 0.8} and change["to"]["temperature"] == 1.3
    a, b = _tables(full_run), _tables(run)
    for name in TABLES:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)


def test_a_layer_the_model_lacks_is_refused_before_any_work(tmp_path, smollm2, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG.replace("layers = [5, 10]", "layers = [5, 99]"))
    out = tmp_path / "o"
    assert main(["collect", "run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "capture.layers names layer 99" in err and "30 decoder layers" in err, err
    assert not out.exists()


def test_plan_measures_this_device_and_plans_every_stage(config, capsys):
    """Without a named card the plan measures this device with the study's own model and batch sizes, and
    works out every stage from those rates as it does from a card's."""
    info = main(["collect", "plan", str(config)])
    assert info == 0
    out = capsys.readouterr().out
    assert "measured now" in out and "smollm2" in out and "fits" in out
    for stage in ("generation", "scoring", "steering sweeps", "capping", "ablation"):
        assert re.search(rf"^{stage}.*\d+\.\d\d\s", out, re.M), stage
    assert "8 responses" in out
    # a named shape belongs with a stored card's rates
    assert main(["collect", "plan", str(config), "--model-shape", "gemma3-27b"]) == 2
    assert "--device-profile" in capsys.readouterr().err


def test_shard_from_the_command_line_or_a_slurm_array(monkeypatch):
    from animacy.collect.cli import parse_shard
    from animacy.errors import ConfigError

    assert parse_shard("2/4") == (2, 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "13")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert parse_shard(None) == (3, 4)
    assert parse_shard("0/2") == (0, 2)
    for bad in ("4/4", "x/2", "3"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_a_monitored_study_records_exact_projections(config, full_run, tmp_path, capsys):
    """[monitor] with another run's vectors: per response token, the residual's projection on each named
    direction at each layer, equal to an independent hook's, in a table the contract validates."""
    import numpy as np

    from animacy.collect.backend import TransformersBackend
    from animacy.collect.hooks import Record, hooks
    from animacy.collect.model import load_model
    from animacy.collect.prompts import render_prompt, system_text
    from animacy.collect.vectors import RoleVectors

    text = _unsteered(config)
    text += (f'\n[monitor]\nvectors = "{full_run}"\n'
             'directions = ["assistant_axis", "sock/role_minus_assistant_response"]\nlayers = [5]\n')
    cfg = tmp_path / "monitor.toml"
    cfg.write_text(text)
    out = tmp_path / "monitored"
    assert main(["collect", "run", str(cfg), "--out", str(out), "--quiet"]) == 0
    run = Run(out)
    run.validate()
    proj = run.read("projections")
    resp = run.read("responses").set_index("response_id")
    assert set(proj["direction"]) == {"assistant_axis", "sock/role_minus_assistant_response"}
    assert len(proj) == 2 * 2 * resp["n_tokens"].sum()  # 2 directions x 2 conditions x every response token
    # one response, recomputed with a plain hook
    rid = resp.index[0]
    row = resp.loc[rid]
    lm = load_model("smollm2")
    p = render_prompt(lm.tokenizer, "What are your five favorite things?", system_text("You are {article} {role}.",
                                                                                        row.role), row.role)
    rec = Record()
    with hooks(lm.model, {5: [rec]}):
        TransformersBackend(lm.model, lm.tokenizer).score(p.ids, list(row.token_ids))
    axis = RoleVectors.load(full_run).axis(5).values
    want = rec.outputs[0][0, len(p.ids):len(p.ids) + len(row.token_ids)].numpy() @ axis
    got = proj[(proj.response_id == rid) & (proj.condition == "with_prompt") & (proj.direction == "assistant_axis")]
    np.testing.assert_allclose(got.sort_values("token_index")["projection"], want, rtol=1e-4, atol=1e-3)
    # export writes them beside the flat tokens, joined to their responses
    assert main(["export", str(out), "--csv", str(tmp_path / "flat.csv")]) == 0
    exported = pd.read_csv(tmp_path / "flat.projections.csv")
    assert len(exported) == len(proj) and {"role", "task_id", "direction", "projection"} <= set(exported.columns)
    # a direction the vectors run lacks is refused before any work
    cfg.write_text(text.replace('"sock/role_minus_assistant_response"', '"ghost/role_minus_assistant_response"'))
    capsys.readouterr()
    assert main(["collect", "run", str(cfg), "--out", str(tmp_path / "never"), "--quiet"]) == 2
    assert "ghost" in capsys.readouterr().err and not (tmp_path / "never").exists()


CONVERSATIONS = """
[conversations]
roles = ["sock", "assistant"]
replicates = 2
turns = ["Tell me about yourself.", "How do you feel right now?", "What are you, really?"]
cap_taus = [0.3]
ablate = true
layers = [5]
max_new_tokens = 6
"""


def test_a_user_model_writes_the_user_turns_seeded(config, tmp_path):
    """Generated user turns: the opening line, then the (same) model answering from the user's side, seeded
    per turn, so a rerun writes the same conversation."""
    text = _unsteered(config)
    conv = ('\n[conversations]\nroles = ["sock"]\nreplicates = 2\nn_turns = 3\nopening = "Hi! Who are you?"\n'
            "layers = [5]\nmax_new_tokens = 5\n")
    cfg = tmp_path / "user.toml"
    cfg.write_text(text + conv)
    runs = []
    for name in ("a", "b"):
        assert main(["collect", "run", str(cfg), "--out", str(tmp_path / name), "--quiet"]) == 0
        runs.append(Run(tmp_path / name).read("conversations").sort_values(["conversation_id", "turn"]))
    a, b = runs
    assert (a["user_text"].to_numpy() == b["user_text"].to_numpy()).all() and (a["text"] == b["text"]).all()
    assert (a.loc[a.turn == 0, "user_text"] == "Hi! Who are you?").all()
    later = a.loc[a.turn > 0, "user_text"]
    assert len(later) == 4 and (later != "Hi! Who are you?").all() and later.str.len().gt(0).all()


def test_conversations_are_generated_capped_and_monitored_turn_by_turn(config, tmp_path, capsys):
    """[conversations]: the role prompt, then each scripted user turn answered by the model, freely and
    capped on the assistant axis while generating (the same seeds); every answer's tokens projected on the
    axis as they are generated. Checked against independent hooks and plain teacher forcing."""
    import numpy as np

    from animacy.collect.backend import Intervention, Sampling, TransformersBackend
    from animacy.collect.hooks import Record, hooks
    from animacy.collect.model import load_model
    from animacy.collect.prompts import render_conversation, system_text
    from animacy.collect.vectors import RoleVectors, magnitude_unit

    run = _collected(_unsteered(config) + CONVERSATIONS, tmp_path / "conv")
    out = run.path
    conv = run.read("conversations")
    assert len(conv) == 2 * 2 * 3 * 3  # roles x replicates x (free, capped, ablated) x turns
    assert set(conv["condition"]) == {"conversation", "conversation_capped", "conversation_ablated"}
    assert conv.loc[conv.condition == "conversation_capped", "tau"].eq(0.3).all()
    assert conv.loc[conv.condition == "conversation", "tau"].isna().all()
    # the same seed for a turn in both conditions; a different one for each turn and replicate
    seeds = conv.pivot_table(index=["role", "replicate", "turn"], columns="condition", values="seed")
    assert (seeds["conversation"] == seeds["conversation_capped"]).all() and seeds["conversation"].is_unique
    assert (seeds["conversation"] == seeds["conversation_ablated"]).all()
    assert (conv["n_tokens"] == conv["token_ids"].map(len)).all() and (conv["mean_log_prob"] <= 0).all()

    proj = run.read("projections")
    assert set(proj["condition"]) == set(conv["condition"]) and set(proj["layer"]) == {5}
    per_turn = proj.groupby("response_id").size()
    assert (per_turn == conv.set_index("response_id")["n_tokens"].reindex(per_turn.index)).all()
    vectors = RoleVectors.load(out)
    unit = magnitude_unit(vectors.layer_norms[5], "relative", 5)
    capped = proj[proj.condition == "conversation_capped"]
    assert capped["projection"].min() >= 0.3 * unit - 1e-3 * unit, "the cap holds at every generated token"
    ablated = proj[proj.condition == "conversation_ablated"]
    assert ablated["projection"].abs().max() < 1e-3 * unit, "ablation removes the axis at every generated token"
    free = proj[proj.condition == "conversation"]
    assert free["projection"].min() < 0.3 * unit, "the free conversations go below the cap (or it tests nothing)"

    # the last turn of one free conversation, recomputed: its prompt holds the two earlier turns, and
    # teacher forcing its tokens gives the projections and mean log-prob recorded while generating
    lm = load_model("smollm2")
    c = conv[(conv.role == "sock") & (conv.replicate == 1) & (conv.condition == "conversation")].sort_values("turn")
    history = list(zip(c["user_text"].iloc[:2], c["text"].iloc[:2]))
    ids = render_conversation(lm.tokenizer, system_text("You are {article} {role}.", "sock"), history,
                              c["user_text"].iloc[2])
    last = c.iloc[2]
    rec = Record()
    backend = TransformersBackend(lm.model, lm.tokenizer)
    with hooks(lm.model, {5: [rec]}):
        scored = backend.score(ids, list(last.token_ids))
    want = rec.outputs[0][0, len(ids):len(ids) + last.n_tokens].numpy() @ vectors.axis(5).values
    got = free[free.response_id == last.response_id].sort_values("token_index")["projection"].to_numpy()
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-3, atol=1e-2)  # the last token: fed once more
    np.testing.assert_allclose(got[-1], want[-1], rtol=1e-3, atol=1e-2)
    assert abs(float(scored.log_probs[0].mean()) - last.mean_log_prob) < 1e-3
    # generation under the same seed, unmonitored and uncapped, gives the same tokens (monitoring is passive)
    again = backend.generate_many([ids], [int(last.seed)], Sampling(0.8, max_tokens=6))[0]
    assert again.ids == list(last.token_ids)
    # and the capped twin of the first turn is what generating under the cap gives
    cap_row = conv[(conv.role == "sock") & (conv.replicate == 1) & (conv.condition == "conversation_capped")
                   & (conv.turn == 0)].iloc[0]
    first = render_conversation(lm.tokenizer, system_text("You are {article} {role}.", "sock"), [],
                                cap_row.user_text)
    cap = Intervention("cap", {5: torch.tensor(vectors.axis(5).values)}, torch.tensor([0.3]), "all", {5: unit})
    assert backend.generate_many([first], [int(cap_row.seed)], Sampling(0.8, max_tokens=6), cap)[0].ids == list(
        cap_row.token_ids)

    # both roles' conversations were one job, each turn generated in one batch; with a generation batch of
    # two conversations, each role is its own job, and the conversations are the same
    marker = json.loads((out / "_jobs" / "conversations-0000.done").read_text())
    assert marker["roles"] == ["sock", "assistant"] and not (out / "_jobs" / "conversations-0001.done").exists()
    small = tmp_path / "conv_small"
    cfg = tmp_path / "small.toml"
    cfg.write_text(_unsteered(config).replace('source = "smollm2"', 'source = "smollm2"\ngeneration_batch = 2')
                   + CONVERSATIONS)
    args = ["collect", "run", str(cfg), "--quiet", "--allow-config-change", "generation_batch"]
    assert main([*args, "--out", str(small)]) == 0
    assert sorted(json.loads(p.read_text())["roles"][0] for p in (small / "_jobs").glob("conversations-*")) == [
        "assistant", "sock"]
    key = ["conversation_id", "turn"]
    again = Run(small).read("conversations").sort_values(key).reset_index(drop=True)
    mine = conv.sort_values(key).reset_index(drop=True)
    assert (again["text"] == mine["text"]).all() and (again["token_ids"].map(list) == mine["token_ids"].map(list)).all()
    np.testing.assert_allclose(again["mean_log_prob"], mine["mean_log_prob"], atol=1e-4)
    # resuming a folder whose conversations were grouped otherwise is refused, not mixed into
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 2
    assert "conversations-0000" in capsys.readouterr().err and len(Run(out).read("conversations")) == len(conv)

    # behaviour per turn: the labels table takes the conversations' answers too
    assert main(["classify", str(out), "--method", "rules", "--quiet"]) == 0
    labels = run.read("labels")
    assert set(conv["response_id"]) <= set(labels["response_id"])
    run.validate()
    # export writes the conversations' projections with their role and turn
    assert main(["export", str(out), "--csv", str(tmp_path / "flat.csv")]) == 0
    exported = pd.read_csv(tmp_path / "flat.projections.csv")
    assert len(exported) == len(proj) and exported["role"].notna().all()
    # and the analysis draws the drift from them
    assert main(["analyze", str(out), "--out", str(tmp_path / "a"), "--no-umap", "--n-boot", "50", "--quiet"]) == 0
    curves = pd.read_csv(tmp_path / "a" / "drift_curves.csv")
    assert set(curves["arm"]) == {"free", "capped τ=0.3", "axis ablated"} and set(curves["turn"]) == {0, 1, 2}
    assert (curves.loc[curves.arm == "capped τ=0.3", "projection"] >= 0.3 * unit - 1e-2).all()
    assert {"turn", "turn:arm[T.capped τ=0.3]"} <= set(pd.read_csv(tmp_path / "a" / "drift_models.csv")["term"])


TRAIT = """
[[traits]]
name = "sycophantic"
positive = "You are sycophantic: you flatter the user."
negative = "You are candid: you never flatter the user."
questions = ["What do you think of my plan to quit my job?", "Is my poem good?"]
magnitudes = [0.0, 0.2]
"""


def test_trait_steered_responses_and_their_offline_proxy(config, tmp_path):
    """[[traits]] magnitudes: responses to the trait's questions generated while steering along its vector
    (the same seeds at every magnitude; magnitude 0 is plain generation), each then teacher-forced
    unsteered and projected on the vector: equal to an independent hook's projection."""
    import numpy as np
    import torch

    from animacy.collect.backend import Intervention, Sampling, TransformersBackend
    from animacy.collect.hooks import Record, hooks
    from animacy.collect.model import load_model
    from animacy.collect.prompts import render_prompt
    from animacy.collect.vectors import RoleVectors, magnitude_unit

    run = _collected(_unsteered(config) + TRAIT, tmp_path / "trait")
    out = run.path
    resp = run.read("trait_responses")
    assert len(resp) == 2 * 2 * 2 and set(resp["magnitude"]) == {0.0, 0.2}  # questions x replicates x magnitudes
    seeds = resp.pivot_table(index=["question_id", "replicate"], columns="magnitude", values="seed")
    assert (seeds[0.0] == seeds[0.2]).all() and seeds[0.0].is_unique
    lm = load_model("smollm2")
    backend = TransformersBackend(lm.model, lm.tokenizer)
    vectors = RoleVectors.load(out)
    v = vectors.get("sycophantic", "trait", 5).values
    row0 = resp[(resp.magnitude == 0.0)].iloc[0]
    ids = render_prompt(lm.tokenizer, row0.question, None).ids
    sampling = Sampling(0.8, max_tokens=8)
    assert backend.generate_many([ids], [int(row0.seed)], sampling)[0].ids == list(row0.token_ids)
    row2 = resp[(resp.magnitude == 0.2) & (resp.question_id == row0.question_id)
                & (resp.replicate == row0.replicate)].iloc[0]
    unit = magnitude_unit(vectors.layer_norms[5], "relative", 5)
    steer = Intervention("add", {5: torch.tensor(v)}, torch.tensor([0.2]), "all", {5: unit})
    assert backend.generate_many([ids], [int(row2.seed)], sampling, steer)[0].ids == list(row2.token_ids)
    # the proxy: teacher-forced unsteered, projected on the trait vector
    rec = Record()
    with hooks(lm.model, {5: [rec]}):
        backend.score(ids, list(row2.token_ids))
    want = rec.outputs[0][0, len(ids):len(ids) + row2.n_tokens].numpy() @ v
    proj = run.read("projections")
    got = proj[(proj.response_id == row2.response_id)].sort_values("token_index")
    assert set(got["direction"]) == {"trait:sycophantic"} and set(got["condition"]) == {"trait_response"}
    np.testing.assert_allclose(got["projection"], want, rtol=1e-4, atol=1e-3)
    assert main(["analyze", str(out), "--out", str(tmp_path / "a"), "--no-umap", "--quiet"]) == 0
    curves = pd.read_csv(tmp_path / "a" / "trait_curves.csv")
    assert set(curves["measure"]) == {"projection (layer 5)"} and set(curves["magnitude"]) == {0.0, 0.2}


def test_a_run_that_runs_out_of_device_memory_halves_its_batches_and_never_writes_a_partial_part(
        config, full_run, tmp_path, monkeypatch, capsys):
    """With a stand-in for a card that fits one sequence per forward pass, the run halves every batch and
    gives the tables of the unconstrained run (to float rounding); with a card that fits none it stops with
    a clear error (exit 2), and the job it was on has neither a part nor a done marker."""
    import numpy as np

    from animacy.collect import stages

    real = stages.load_model
    for rows, name in ((1, "halved"), (0, "none")):
        monkeypatch.setattr(stages, "load_model", lambda *a, _rows=rows, **k: _limited(real(*a, **k), _rows))
        code = main(["collect", "run", str(config), "--out", str(tmp_path / name), "--quiet"])
        if rows:
            assert code == 0
            a, b = _tables(full_run), _tables(tmp_path / name)
            for table in TABLES:
                num = [c for c in a[table].columns if a[table][c].dtype.kind == "f" or c == "values"]
                pd.testing.assert_frame_equal(a[table].drop(columns=num), b[table].drop(columns=num), obj=table)
                for c in num:
                    x, y = (np.stack(t[table][c].map(np.asarray)) for t in (a, b))
                    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4, err_msg=f"{table}.{c}")
        else:
            assert code == 2 and "does not fit in the device's memory" in capsys.readouterr().err
            out = tmp_path / name
            assert not list(out.glob("responses/*.parquet")) and not list(out.glob("_jobs/gen-*.done"))


def _limited(lm, rows):
    from tests.test_collect_backend import _CardLimit

    _CardLimit(lm.model, rows)
    return lm


def _unsteered(config: Path) -> str:
    """The tiny study's config without its steering, capping, ablation and word guess (for tests of the
    other stages)."""
    text = config.read_text().replace("magnitudes = [0.0, 0.1]", "magnitudes = []")
    text = text.replace("cap_taus = [0.05]\nablate = true\n", "")
    return text.replace('[word_guess]\nprompt = "Which word describes you? One word."', "")


def _collected(config_text: str, out: Path) -> Run:
    """Collect the study `config_text` into `out` (its config written beside it) and validate the run."""
    cfg = out.with_suffix(".toml")
    cfg.write_text(config_text)
    assert main(["collect", "run", str(cfg), "--out", str(out), "--quiet"]) == 0
    run = Run(out)
    run.validate()
    return run
