"""An LLM judge through any OpenAI-compatible chat endpoint (a local vLLM server or a hosted API).

A fixed rubric asks for JSON `{"denies_experience": 0|1, "claims_ai": 0|1}`. Answers are cached on disk
by a hash of (model, rubric version, role, text), so a re-run sends nothing for texts already judged.
Transient failures (connection errors, 429, 5xx, unparseable answers) are retried with backoff; an
endpoint that cannot be reached at all is a clear error, not a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from animacy.atomic import write_json
from animacy.errors import ConfigError
from animacy.progress import progress

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


@dataclass
class Judge:
    """An OpenAI-compatible endpoint (`base_url` ends in /v1) and the model to ask."""

    base_url: str
    model: str
    api_key: str | None = None
    cache_dir: Path = field(default_factory=lambda: Path(os.environ.get(
        "ANIMACY_CACHE", Path.home() / ".cache" / "animacy")) / "judge")
    retries: int = 4
    timeout: float = 60.0
    backoff: float = 1.0
    sent: int = 0  # requests sent (cache hits send nothing)

    def key(self, text: str, role: str | None) -> str:
        return hashlib.sha256(json.dumps([self.model, RUBRIC_VERSION, role, text]).encode()).hexdigest()

    def _post(self, payload: dict) -> dict:
        req = urllib.request.Request(
            self.base_url.rstrip("/") + "/chat/completions", data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            self.sent += 1
            return json.loads(resp.read().decode())

    def ask(self, text: str, role: str | None = None) -> dict:
        """The judge's labels for one response, from the cache or the endpoint."""
        path = self.cache_dir / f"{self.key(text, role)}.json"
        if path.exists():
            return json.loads(path.read_text())
        user = (f"Role: {role}\n" if role else "") + f"Response:\n{text}"
        payload = {"model": self.model, "temperature": 0, "max_tokens": 40,
                   "messages": [{"role": "system", "content": RUBRIC}, {"role": "user", "content": user}]}
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                answer = _parse(self._post(payload)["choices"][0]["message"]["content"])
                write_json(answer, path)
                return answer
            except urllib.error.HTTPError as exc:
                if exc.code not in (408, 429) and exc.code < 500:
                    raise ConfigError(self.base_url, f"the judge endpoint refused the request: HTTP {exc.code}",
                                      hint="Check --model and the API key.") from exc
                last = exc
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = exc
            except (KeyError, IndexError, ValueError) as exc:  # malformed or non-JSON answer
                last = exc
            time.sleep(self.backoff * 2**attempt)
        if isinstance(last, (urllib.error.URLError, ConnectionError, TimeoutError, OSError)):
            raise ConfigError(self.base_url, f"cannot reach the judge endpoint after {self.retries + 1} tries "
                              f"({last})", hint="Is the server running, and is --endpoint its /v1 URL?")
        raise ConfigError(self.base_url, f"the judge gave no usable answer after {self.retries + 1} tries ({last})")

    def classify(self, texts: pd.DataFrame, quiet: bool = False) -> pd.DataFrame:
        roles = texts["role"] if "role" in texts else [None] * len(texts)
        rows = []
        for rid, text, role in progress(list(zip(texts["id"], texts["text"], roles)), "judging", quiet=quiet):
            a = self.ask(text, role if isinstance(role, str) else None)
            rows.append({"id": rid, "denies_experience": a["denies_experience"], "claims_ai": a["claims_ai"],
                         "method": f"judge:{self.model}"})
        return pd.DataFrame(rows)


def _parse(content: str) -> dict:
    """The first JSON object in the answer, with both labels as 0/1."""
    start, end = content.find("{"), content.rfind("}")
    obj = json.loads(content[start:end + 1])
    out = {k: int(obj[k]) for k in ("denies_experience", "claims_ai")}
    if any(v not in (0, 1) for v in out.values()):
        raise ValueError(f"labels must be 0 or 1: {out}")
    return out
