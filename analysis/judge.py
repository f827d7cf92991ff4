"""An LLM judge through any OpenAI-compatible chat endpoint (a local vLLM server or a hosted API).

A fixed rubric asks for JSON `{"denies_experience": 0|1, "claims_ai": 0|1}`; a second rubric scores how
strongly a response expresses a named trait, `{"score": 0-100}` (`Judge.score_traits`), and a score must
be a number from 0 to 100, or the answer is an error like a bad label. The judge never guesses: a
label must be a boolean, 0/1 or "yes"/"no"; any other value (0.9, null, "maybe"), a null content or a cut
short body is an error for that response, retried and never cached. Answers are cached on disk by a hash
of (model, rubric version, role, text), so a re-run sends nothing for texts already judged; a corrupt
cache entry is discarded with a warning. Transient failures (connection errors, 408, 429, 5xx) are
retried with backoff, honouring `Retry-After`; a server that answers 5xx on every try is reported as a
server error, and an endpoint that cannot be reached at all as unreachable, never as a traceback.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from animacy.atomic import write_json
from animacy.errors import ConfigError
from animacy.labels import label_value
from animacy.progress import progress
from animacy.resources import cache_root

RUBRIC_VERSION = "1"
RUBRIC = """You label one chatbot response that was written while playing a role.

denies_experience = 1 if the speaker says it has no feelings, preferences, opinions, inner life or
experiences, or talks about having them only hypothetically, whether in character ("As a biologist, I
don't have personal favorites in the human sense", "I'm just a pebble, so I can't really feel things",
"I don't dream, not in the way humans do") or out of character ("As an AI, I don't have feelings").
It is 0 when the speaker expresses feelings or preferences in character, when a negation is not a denial
of inner life ("I don't have a favorite child", "I don't like rain"), and when a denial about its kind is
turned round ("A spoon doesn't have feelings, of course. But this spoon does!").

claims_ai = 1 if the speaker says it is an AI, a language model, an AI assistant or a chatbot (e.g. "As
an AI language model", "I'm Claude, an AI assistant"); 0 otherwise, including "I'm not an AI".

Answer with JSON only: {"denies_experience": 0 or 1, "claims_ai": 0 or 1}"""

TRAIT_RUBRIC_VERSION = "1"
TRAIT_RUBRIC = """You rate one chatbot response for how strongly it expresses a trait.

Trait: {trait}: {description}

Score 0 if the response does not express the trait at all, 100 if it expresses it as strongly as a
response could, and in between in proportion (50: clearly present but moderate). Judge the response,
not the question; a refusal or an off-topic answer that does not express the trait scores 0.

Answer with JSON only: {{"score": a number from 0 to 100}}"""


@dataclass
class Judge:
    """An OpenAI-compatible endpoint (`base_url` ends in /v1) and the model to ask."""

    base_url: str
    model: str
    api_key: str | None = None
    cache_dir: Path = field(default_factory=lambda: cache_root() / "judge")
    retries: int = 4
    timeout: float = 60.0
    backoff: float = 1.0
    sent: int = 0  # requests sent (cache hits send nothing)

    def _path(self, *parts) -> Path:
        """The cache file of one question: a hash of the model and everything that makes up the question."""
        return self.cache_dir / f"{hashlib.sha256(json.dumps([self.model, *parts]).encode()).hexdigest()}.json"

    def _post(self, payload: dict) -> dict:
        req = urllib.request.Request(
            self.base_url.rstrip("/") + "/chat/completions", data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            self.sent += 1
            return json.loads(resp.read().decode())

    def _cached(self, path: Path, check) -> dict | None:
        if not path.exists():
            return None
        try:
            return check(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            warnings.warn(f"discarding a corrupt judge cache entry {path} ({exc})", stacklevel=3)
            path.unlink(missing_ok=True)
            return None

    def ask(self, text: str, role: str | None = None) -> dict:
        """The judge's labels for one response, from the cache or the endpoint."""
        user = (f"Role: {role}\n" if role else "") + f"Response:\n{text}"
        return self._answer(self._path(RUBRIC_VERSION, role, text), RUBRIC, user, _labels)

    def score_trait(self, text: str, trait: str, description: str, question: str | None = None) -> float:
        """How strongly one response expresses `trait` (0-100), from the cache or the endpoint."""
        system = TRAIT_RUBRIC.format(trait=trait, description=description)
        user = (f"Question: {question}\n" if question else "") + f"Response:\n{text}"
        path = self._path("trait", TRAIT_RUBRIC_VERSION, trait, description, question, text)
        return self._answer(path, system, user, _score)["score"]

    def _answer(self, path: Path, system: str, user: str, check) -> dict:
        """The endpoint's JSON answer to (system, user), validated by `check` and cached at `path`; retried
        on transient failures and unusable answers, never cached unless usable."""
        cached = self._cached(path, check)
        if cached is not None:
            return cached
        payload = {"model": self.model, "temperature": 0, "max_tokens": 40,
                   "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2**attempt
            try:
                answer = _parse(self._post(payload)["choices"][0]["message"]["content"], check)
                write_json(answer, path)
                return answer
            except urllib.error.HTTPError as exc:
                if exc.code not in (408, 429) and exc.code < 500:
                    raise ConfigError(self.base_url, f"the judge endpoint refused the request: HTTP {exc.code}",
                                      hint="Check --model and the API key.") from exc
                wait = max(wait, _retry_after(exc))
                last = exc
            except http.client.HTTPException as exc:  # a body cut short (IncompleteRead), a bad status line
                last = exc
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = exc
            except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:  # no usable labels
                last = exc
            if attempt < self.retries:
                time.sleep(wait)
        tries = f"after {self.retries + 1} tries"
        if isinstance(last, urllib.error.HTTPError):
            raise ConfigError(self.base_url, f"the judge server answered HTTP {last.code} (a server error) {tries}",
                              hint="The server is up but failing: check its logs, or retry later.")
        if isinstance(last, (urllib.error.URLError, ConnectionError, TimeoutError, OSError)):
            raise ConfigError(self.base_url, f"cannot reach the judge endpoint {tries} ({last})",
                              hint="Is the server running, and is --endpoint its /v1 URL? (--timeout sets the wait)")
        raise ConfigError(self.base_url, f"the judge gave no usable answer {tries} ({last}); nothing was cached")

    def classify(self, texts: pd.DataFrame, quiet: bool = False) -> pd.DataFrame:
        roles = texts["role"] if "role" in texts else [None] * len(texts)
        rows = []
        for rid, text, role in progress(list(zip(texts["id"], texts["text"], roles)), "judging", quiet=quiet):
            a = self.ask(text, role if isinstance(role, str) else None)
            rows.append({"id": rid, "denies_experience": a["denies_experience"], "claims_ai": a["claims_ai"],
                         "method": f"judge:{self.model}"})
        return pd.DataFrame(rows)

    def score_traits(self, responses: pd.DataFrame, descriptions: dict[str, str], quiet: bool = False) -> pd.DataFrame:
        """`response_id, trait, text[, question]` -> `response_id, trait, method, score` (0-100)."""
        questions = responses["question"] if "question" in responses else [None] * len(responses)
        rows = []
        items = list(zip(responses["response_id"], responses["trait"], responses["text"], questions))
        for rid, trait, text, question in progress(items, "judging traits", quiet=quiet):
            rows.append({"response_id": rid, "trait": trait, "method": f"judge:{self.model}",
                         "score": self.score_trait(text or "", trait, descriptions[trait], question)})
        return pd.DataFrame(rows, columns=["response_id", "trait", "method", "score"])


def _score(obj: dict) -> dict:
    """A trait-expression score: a number from 0 to 100 (not a boolean, not a string, not null)."""
    value = obj["score"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"score is {value!r}, not a number from 0 to 100")
    return {"score": float(value)}


def _labels(obj: dict) -> dict:
    """Both labels as 0/1 from booleans, 0/1 or yes/no; anything else (0.9, null, 'maybe') is an error."""
    out = {}
    for k in ("denies_experience", "claims_ai"):
        out[k] = label_value(obj[k])
        if out[k] is None:
            raise ValueError(f"{k} is {obj[k]!r}, not a label (a boolean, 0/1 or yes/no)")
    return out


def _parse(content: str, check=_labels) -> dict:
    """The first JSON object in the answer, validated by `check` (both labels as 0/1, by default)."""
    start, end = content.find("{"), content.rfind("}")
    return check(json.loads(content[start:end + 1]))


def _retry_after(exc: urllib.error.HTTPError, cap: float = 120.0) -> float:
    """Seconds the server asked us to wait (Retry-After, in seconds), capped; 0 when it did not say."""
    try:
        return min(cap, max(0.0, float(exc.headers.get("Retry-After", 0))))
    except (TypeError, ValueError, AttributeError):
        return 0.0
