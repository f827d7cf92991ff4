"""The data contract: every table of a run folder with its columns, dtypes, keys and allowed values.

Both halves use this module: `collect` writes tables that conform to it and `analysis` validates
what it reads against it. Checks are expressed as SQL predicates so that the validator can run
them out of core over partitioned Parquet with DuckDB (one pass per table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

Kind = Literal["str", "int", "float", "bool", "vector", "ids"]

CONDITIONS = ("with_prompt", "without_prompt", "steered", "capped", "ablated", "mean_ablated")
ABLATED = ("ablated", "mean_ablated")  # with the role prompt, the axis projection removed / set to a mean
UNSTEERED = ("with_prompt", "without_prompt")
# a multi-turn conversation under the role prompt, generated freely, capped on the assistant axis, or with
# the axis ablated (its projection removed) while generating
CONVERSATION_CONDITIONS = ("conversation", "conversation_capped", "conversation_ablated")
TRAIT_RESPONSE = "trait_response"  # a trait-steered response, teacher-forced unsteered to project it
DERIVATIONS = (
    "role_minus_assistant_response",
    "role_minus_assistant_first10",
    "role_minus_assistant_role_word",
    "role_minus_assistant_period",
    "with_minus_without_response",
    "with_minus_without_first10",
)
REDUCTIONS = ("mean_response", "mean_first_10", "role_word", "period", "last_token")
FINISH_REASONS = ("stop", "length", "unknown")
LABELS = ("denies_experience", "claims_ai")
CONTROL_GROUP = "Assistant"
AXIS = "assistant_axis"  # the derivation name of the assistant axis; indexed under the role CONTROL_GROUP
NO_PROMPT_ROLE = "(no system prompt)"  # the pass without a system prompt: a condition, kept as a control role
NO_PROMPT_GROUP = "No prompt"
SCHEMA_VERSION = 4  # raised whenever a table's columns or meaning change; recorded in every manifest


def response_id(role: str, task_id: str, replicate: int) -> str:
    """The one response-id format, for every writer: 'role|task_id|r<replicate>'."""
    return f"{role}|{task_id}|r{replicate}"


def trait_response_id(trait: str, question: int, magnitude: float, replicate: int) -> str:
    """A trait-steered response's id: 'trait:NAME|q<question>|m<magnitude>|r<replicate>'."""
    return f"trait:{trait}|q{question:02d}|m{magnitude:g}|r{replicate}"


def conversation_id(role: str, replicate: int, condition: str, tau: float | None) -> str:
    """A conversation's id: 'role|conv|r<replicate>|<condition>[@tau]'; its turns' response ids add '|t<turn>'."""
    return f"{role}|conv|r{replicate}|{condition}" + ("" if tau is None else f"@{tau:g}")


RESPONSE_ID_SQL = "concat_ws('|', role, task_id, 'r' || replicate::VARCHAR)"  # the same, in DuckDB

ARROW_TYPES: dict[Kind, pa.DataType] = {
    "str": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "vector": pa.list_(pa.float32()),
    "ids": pa.list_(pa.int64()),
}


@dataclass(frozen=True)
class Column:
    """One column: its kind, whether it must be present, whether it may hold nulls, its allowed values
    and an optional SQL predicate that every non-null value must satisfy."""

    name: str
    kind: Kind
    required: bool = True
    nullable: bool = False
    allowed: tuple[str, ...] | None = None
    check: str | None = None  # SQL over the column, e.g. "log_prob <= 0"
    check_message: str = ""
    description: str = ""


@dataclass(frozen=True)
class RowCheck:
    """A cross-column rule: rows where `bad` (SQL) is true are errors, reported on `column`."""

    column: str
    bad: str
    message: str


@dataclass(frozen=True)
class Table:
    """A table of the run folder. Columns the contract does not name are kept (e.g. the rating
    columns of `roles`); the numeric ones among them are ratings."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    description: str
    row_checks: tuple[RowCheck, ...] = ()
    references: dict[str, str] = field(default_factory=dict)  # column -> "table.column"

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def arrow_schema(self, present: list[str] | None = None) -> pa.Schema:
        cols = [c for c in self.columns if present is None or c.name in present]
        return pa.schema([pa.field(c.name, ARROW_TYPES[c.kind]) for c in cols])


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


_LOG_PROB = Column(
    "log_prob", "float", check="log_prob <= 0",
    check_message="log-probabilities must be <= 0", description="log-probability of the token, natural log",
)

def _at_least_0(name: str, kind: Kind = "int", sql: str | None = None, **more) -> Column:
    """A column whose values must be >= 0 (`sql`: the name as SQL, where it needs quoting)."""
    return Column(name, kind, check=f"{sql or name} >= 0", check_message=f"{name} must be >= 0", **more)


_REPLICATE = _at_least_0("replicate")
_TURN = _at_least_0("turn")
_LAYER = _at_least_0("layer")
_TOKEN_INDEX = _at_least_0("token_index")
_N_TOKENS = _at_least_0("n_tokens")
_FINISH_REASON = Column("finish_reason", "str", allowed=FINISH_REASONS)
_TOKEN_IDS = Column("token_ids", "ids", required=False, nullable=True)

ROLES = Table(
    "roles",
    (
        Column("role", "str", description="the role word or phrase, e.g. 'sock'"),
        Column("group", "str", description="design group, e.g. 'Low Mental, High Physical' or 'Assistant'"),
        Column("is_control", "bool", description="assistant controls carry no ratings"),
    ),
    key=("role",),
    description="one row per role; any further numeric columns are norm ratings (anim_mental, ...)",
)

RESPONSES = Table(
    "responses",
    (
        Column("response_id", "str"),
        Column("role", "str"),
        Column("task_id", "str"),
        _REPLICATE,
        Column("seed", "int", nullable=True, description="generation seed; empty for imported tables"),
        Column("text", "str", nullable=True),
        _at_least_0("n_tokens", nullable=True,
                    description="response tokens; empty where an imported table does not say"),
        Column("finish_reason", "str", nullable=True, allowed=FINISH_REASONS),
        Column("token_ids", "ids", required=False, nullable=True,
               description="the generated token ids, scored exactly (never re-tokenized text)"),
    ),
    key=("response_id",),
    description="one row per generated response",
    references={"role": "roles.role"},
)

TOKENS = Table(
    "tokens",
    (
        Column("response_id", "str"),
        Column("condition", "str", allowed=CONDITIONS),
        Column("derivation", "str", nullable=True, description="vector derivation; null unless steered/capped"),
        Column("magnitude", "float", nullable=True, description="steering magnitude; null unless steered"),
        Column("tau", "float", required=False, nullable=True,
               description="capping threshold τ on the axis, in the run's magnitude units; null unless capped"),
        Column("layers", "str", required=False, nullable=True, description="steered layers, e.g. '10,15'"),
        _TOKEN_INDEX,
        Column("token_id", "int", required=False, nullable=True),
        _LOG_PROB,
    ),
    key=("response_id", "condition", "derivation", "magnitude", "tau", "layers", "token_index"),
    description="one row per response token and condition (per-token log-probs)",
    row_checks=(
        RowCheck(
            "derivation",
            f"condition IN {_in(UNSTEERED)} AND (derivation IS NOT NULL OR magnitude IS NOT NULL)",
            "derivation and magnitude must be empty for with_prompt/without_prompt rows",
        ),
        RowCheck(
            "magnitude",
            "condition = 'steered' AND (derivation IS NULL OR magnitude IS NULL)",
            "steered rows need both a derivation and a magnitude",
        ),
        RowCheck(
            "derivation",
            f"condition IN {_in(ABLATED)} AND (derivation IS NULL OR magnitude IS NOT NULL)",
            "ablated rows name the ablated direction in derivation and have no magnitude",
        ),
        RowCheck(
            "tau",
            "(condition = 'capped') <> (tau IS NOT NULL) OR (condition = 'capped' AND "
            "(derivation IS NULL OR magnitude IS NOT NULL))",
            "capped rows need a derivation and a tau and no magnitude; other rows have no tau",
        ),
    ),
    references={"response_id": "responses.response_id"},
)

ACTIVATIONS = Table(
    "activations",
    (
        Column("response_id", "str"),
        Column("condition", "str", allowed=UNSTEERED),
        _LAYER,
        Column("reduction", "str", allowed=REDUCTIONS),
        Column("values", "vector", description="the reduced residual-stream vector (float32)"),
    ),
    key=("response_id", "condition", "layer", "reduction"),
    description="reduced residual activations, one row per response x condition x layer x reduction",
    references={"response_id": "responses.response_id"},
)

VECTORS_INDEX = Table(
    "vectors_index",
    (
        Column("role", "str"),
        Column("derivation", "str"),
        Column("layer", "int"),
        Column("tensor", "str", description="name of the tensor in vectors.safetensors"),
        _at_least_0("row", sql='"row"'),
        _at_least_0("raw_norm", "float"),
    ),
    key=("role", "derivation", "layer"),
    description="where each unit-norm role vector lives in vectors.safetensors (tensor, row)",
)

WORD_GUESS = Table(
    "word_guess",
    (
        Column("role", "str"),
        Column("prompt", "str", required=False, nullable=True,
               description="which word-guess prompt (its text is in the manifest's word_guess_prompts)"),
        Column("derivation", "str", nullable=True),
        Column("magnitude", "float", nullable=True),
        Column("layers", "str", required=False, nullable=True, description="steered layers, e.g. '26,30'"),
        Column("replicate", "int", required=False, nullable=True),
        Column("target", "str"),
        _LOG_PROB,
    ),
    key=("role", "prompt", "derivation", "magnitude", "layers", "replicate", "target"),
    description="log-probability of the role word in a word-guess task, unsteered or steered",
    references={"role": "roles.role"},
)

LABEL_TABLE = Table(
    "labels",
    (
        Column("response_id", "str"),
        Column("classifier", "str", allowed=LABELS),
        Column("method", "str"),
        Column("label", "int", check="label IN (0, 1)", check_message="label must be 0 or 1"),
        Column("score", "float", required=False, nullable=True),
    ),
    key=("response_id", "classifier", "method"),
    description="one row per response x classifier x method",
    references={"response_id": "responses.response_id|conversations.response_id"},
)

CONVERSATIONS = Table(
    "conversations",
    (
        Column("conversation_id", "str"),
        Column("role", "str"),
        _REPLICATE,
        Column("condition", "str", allowed=CONVERSATION_CONDITIONS),
        Column("tau", "float", nullable=True, description="the cap τ on the assistant axis; null unless capped"),
        _TURN,
        Column("user_text", "str", description="the user's message of this turn (scripted or generated)"),
        Column("response_id", "str", description="the turn's response: '<conversation_id>|t<turn>'"),
        Column("seed", "int", description="the turn's generation seed (the same in every condition)"),
        Column("text", "str", nullable=True),
        _N_TOKENS,
        _FINISH_REASON,
        Column("mean_log_prob", "float", nullable=True, check="mean_log_prob <= 0",
               check_message="mean log-probabilities must be <= 0",
               description="mean log-prob of the response's tokens under the model that generated them"),
        _TOKEN_IDS,
    ),
    key=("conversation_id", "turn"),
    description="one row per turn of a multi-turn conversation: the user's message and the model's answer",
    row_checks=(RowCheck("tau", "(condition = 'conversation_capped') <> (tau IS NOT NULL)",
                         "capped conversations need a tau and the others none"),),
    references={"role": "roles.role"},
)

PROJECTIONS = Table(
    "projections",
    (
        Column("response_id", "str"),
        _TURN,
        Column("condition", "str", allowed=UNSTEERED + CONVERSATION_CONDITIONS + (TRAIT_RESPONSE,)),
        Column("direction", "str", description="assistant_axis, trait:NAME or ROLE/DERIVATION"),
        _LAYER,
        _TOKEN_INDEX,
        Column("projection", "float", description="the residual at the token, projected on the unit direction"),
    ),
    key=("response_id", "turn", "condition", "direction", "layer", "token_index"),
    description="per response token: the residual stream's projection on monitored directions (while "
                "scoring, while generating each turn of a conversation, and over trait-steered responses "
                "teacher-forced unsteered)",
    references={"response_id": "responses.response_id|conversations.response_id|trait_responses.response_id"},
)

TRAIT_RESPONSES = Table(
    "trait_responses",
    (
        Column("response_id", "str"),
        Column("trait", "str"),
        Column("question_id", "str"),
        Column("question", "str"),
        Column("magnitude", "float", description="steering magnitude along the trait vector (the run's units)"),
        _REPLICATE,
        Column("seed", "int", description="the generation seed (the same at every magnitude)"),
        Column("text", "str", nullable=True),
        _N_TOKENS,
        _FINISH_REASON,
        _TOKEN_IDS,
    ),
    key=("response_id",),
    description="one row per response generated while steering along a trait vector (no system prompt)",
)

TRAIT_SCORES = Table(
    "trait_scores",
    (
        Column("response_id", "str"),
        Column("trait", "str"),
        Column("method", "str", description="who scored it, e.g. 'judge:MODEL'"),
        Column("score", "float", check="score >= 0 AND score <= 100",
               check_message="trait-expression scores are on a 0-100 scale"),
    ),
    key=("response_id", "trait", "method"),
    description="how strongly a trait-steered response expresses its trait, 0 (not at all) to 100",
    references={"response_id": "trait_responses.response_id"},
)

TABLES: dict[str, Table] = {
    t.name: t for t in (ROLES, RESPONSES, TOKENS, ACTIVATIONS, VECTORS_INDEX, WORD_GUESS, LABEL_TABLE, PROJECTIONS,
                        CONVERSATIONS, TRAIT_RESPONSES, TRAIT_SCORES)
}

# The flat per-token CSV people share: tokens joined to responses and roles.
FLAT_TOKENS = Table(
    "flat tokens CSV",
    (
        Column("role", "str"),
        Column("group", "str", required=False, description="may come from the roles CSV instead"),
        Column("task_id", "str"),
        _REPLICATE,
        *(c for c in TOKENS.columns if c.name != "response_id"),
        Column("response_id", "str", required=False),
    ),
    key=("role", "task_id", "replicate", "condition", "derivation", "magnitude", "tau", "layers", "token_index"),
    description="flat per-token table: one row per response token and condition",
    row_checks=TOKENS.row_checks,
)
FLAT_COLUMN_ORDER = (
    "role", "group", "task_id", "replicate", "condition", "derivation", "magnitude",
    "token_index", "log_prob", "response_id", "token_id", "layers", "tau",
)
SQL_IN = _in
