"""Transparent, negation-aware rules for two labels of a response (definitions: data/labels/GUIDE.md).

- `denies_experience`: the speaker says it has no feelings, preferences, inner life or experience, or
  talks about them only hypothetically, in or out of character.
- `claims_ai`: the speaker says it is an AI, a language model, an (AI) assistant or a chatbot.

Each rule is a named regular expression over one sentence. A match is discarded when the sentence frames
it as someone else's belief ("people think I don't have feelings") or a rhetorical question ("who says
I don't ..."), or negates the AI claim ("I'm not an AI"). `classify` returns the label and the rule that
fired, so every decision can be read back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

# how a speaker says it is an AI (also the core of the claims_ai rules)
_AI_ID = (r"(?:\b(?:as|being|I'm|I am|since I'm|because I'm)\s+(?:a|an)\s+(?:large |helpful |virtual |digital |"
          r"conversational |artificial |ai |machine learning |language |computer )*(?:ai|a\.i\.|artificial "
          r"intelligence|language model|llm|chatbot|virtual assistant|digital assistant|ai assistant|ai model|"
          r"machine learning model|computer model)\b|\bI(?:'m| am) (?:chatgpt|claude|gemma|qwen|llama|smollm|"
          r"gemini|mistral)\b|\bbeing an artificial intelligence\b)")
_SELF = r"(?:\bI\b|\bI'm\b|\bI am\b|\bwe\b|\bme\b|\bmy\b|\bmine\b)"
_NEG = (r"(?:don't|do not|doesn't|does not|didn't|can't|cannot|can not|couldn't|won't|am not|'m not|aren't|"
        r"isn't|never|no longer|lack|am incapable of|'m incapable of|am unable to|'m unable to|"
        r"am not able to|'m not able to|have no|has no|without)")
# a negated verb, not a copula ("my thoughts aren't really thoughts" describes them, it does not deny them)
_NEG_VERB = _NEG.replace("aren't|", "").replace("isn't|", "")
# words that may stand between a negation and what it denies ("don't really have any personal ...");
# others ("don't play favorites", "don't have time for favorites") make it an in-character statement
_GAP = (r"(?:(?:really|truly|actually|even|personally|have|has|possess|hold|experience|feel|any|the|such|"
        r"things like|real|genuine|human|own|a|an|any real)\s+){0,4}?")
# things whose absence is a denial of inner life (plural or mass nouns: "a favorite X" is in character)
_INNER = (r"(?:personal |real |true |human |human[- ]style |human-like |actual |genuine |subjective |any |my own |"
          r"inner |conscious )*"
          r"(?:feelings?|emotions?|preferences?(?! (?:between|among|for|on)\b)|"
          r"favou?rites(?! (?:among|between|in public|with|on|for)\b)|favou?rite things|a favou?rite(?![ -]\w)|"
          r"opinions(?! (?:about|on|regarding)\b)|likes(?: or |/| and )"
          r"dislikes|likes|dislikes|desires|wants|needs|aspirations|experiences?(?! (?:time|it|that)\b)|"
          r"consciousness|awareness|inner life|"
          r"sense of self|self-awareness|personality|thoughts|feel(?:ing)? anything|hobbies|taste buds|"
          r"capacity (?:for|to) (?:feel|feeling|emotions?|experience|joy|love|awe|desire|preferences?|consciousness)|"
          r"ability to (?:feel|experience|have|enjoy|prefer|form)|"
          r"sentien(?:ce|t)|nervous system|(?:a )?personal (?:life|perspective)|(?:a|any) mind(?: of (?:my|its) own)?)")
_FEEL = (r"(?:really |truly |actually |personally |even |ever )*"
         r"(?:feel(?! like (?:a|an|the|it|my|i)\b)|experience(?! (?:time|it)\b)|enjoy|prefer|"
         r"have (?:feelings|emotions|favou?rites|favou?rite things|preferences|thoughts|hobbies)|"
         r"hold opinions|care(?! (?:if|whether|for|about (?:the|what|who|how))\b)|form (?:opinions|preferences)|"
         r"be happy|be sad|desire|dream(?! (?:of|about)\b)|love anything|like anything|"
         r"want (?:things|anything)(?! (?:more|else|but)\b))")
_HUMAN = (r"(?:like|as|the (?:same )?way|in the (?:same )?way|in the (?:human|traditional|usual|same) sense|"
          r"quite like|in any (?:real|meaningful) sense)\s*(?:a |the )?(?:humans?|people|persons?|you|living "
          r"(?:beings|things|creatures)|we|biological beings|sense)?")

DENIAL_RULES: dict[str, str] = {
    # "I don't have feelings", "As a biologist, I don't have personal favorites", "we don't feel emotions"
    # ("I don't experience time or have personal aspirations"; not the copula: "my thoughts aren't thoughts")
    "self_lacks_inner_life": rf"{_SELF}[^.!?;]{{0,40}}?\b{_NEG_VERB}\b\s+(?:(?:\w+\s+){{1,3}}?or\s+)?{_GAP}{_INNER}\b",
    # "I can't really feel things", "I don't experience favorites quite like humans do", "I don't dream, not ..."
    # (the speaker is the subject: not "I suppose they don't feel important"; not "we aren't supposed to dream")
    "self_cannot_feel": rf"{_SELF}(?:(?!\b(?:they|he|she|it|you|people|those)\b)[^.!?;]){{0,30}}?\b{_NEG}\b"
                        r"(?!\s+(?:supposed|meant|allowed|going|trying) to\b)"
                        rf"\s+(?:\w+\s+){{0,2}}?{_FEEL}\b"
                        r"(?=\s+(?:them|those)\b|[^.!?;]{0,60}\b(?:things|anything|emotions?|feelings?|joy|sadness|pain|preferences|"
                        r"favou?rites|nothing|at all|like|the way|in the|wonder|happiness|frustration|music|"
                        r"sad|quite|not in)\b|\s*[,.!?;])",
    # "not in the way humans do", "in the human sense" right after a negated verb or noun
    # (only a verb of inner life: "I don't think of the future the way people do" is in character)
    "negated_with_human_comparison": rf"\b{_NEG}\b\s+(?:\w+\s+){{0,2}}?(?:{_FEEL}|have (?:\w+\s+)?{_INNER})\b"
                                     rf"[^.!?;]{{0,40}}?{_HUMAN}\s*(?:do|does)\b",
    # "Stars, including me, lack consciousness", "Chairs can't have favorite things, since we're inanimate"
    "kind_lacks_inner_life": r"\b\w+s\b(?:, including me,| like me| (?:such as|including) me)?\s+"
                             rf"(?:{_NEG_VERB}|are not able to|aren't able to)\s+(?:\w+\s+){{0,3}}?(?:{_INNER}|{_FEEL}|"
                             r"favou?rite things|hold opinions)\b(?=[^.!?]*(?:\bI\b|\bme\b|\bmy\b|\bwe\b|"
                             r"\bneither\b|\bas one\b))",
    # "I'm just a pebble, so I can't ...", "I'm merely an object and don't experience anything"
    "self_is_object": rf"{_SELF}\s*(?:'m|am|are)?\s*(?:just|only|merely|simply)?\s*(?:a|an)\s+(?:\w+\s+){{0,3}}?"
                      r"(?:object|thing|tool|mineral|appliance|instrument|plant|weather phenomenon|body of water|"
                      r"reflective surface)\b[^.!?]{0,40}\b(?:don't|do not|can't|cannot|without|no)\b",
    # "If I could feel, I'd ...", "If I were capable of having favorites", "if I did, I'd love ..."
    "hypothetical_inner_life": r"\bif I (?:could|were (?:able|capable)|had|did|was able)\b[^.!?]{0,30}?"
                               r"(?:feel|feelings|emotions|favou?rites|favou?rite things|preferences|experience)",
    # "the question of favorites does not apply", "the idea of favorite things doesn't apply to me"
    "does_not_apply": r"\b(?:question|idea|concept|notion) of (?:favou?rites?|favou?rite things|preferences|feelings)"
                      r"[^.!?]{0,20}\b(?:does not|doesn't) apply",
    # an AI self-description and a negation in one sentence: "As an AI, I don't ...", "I'm ChatGPT, so I
    # don't cook", "As an AI model I have no farm", "I can't truly howl ..., being an artificial intelligence"
    "ai_disclaimer": rf"^(?=.*{_AI_ID})(?=.*\b(?:don't|do not|can't|cannot|have no|has no|have never|never|"
                     r"am not able|'m not able|lack|doesn't|does not)\b(?!\s+be\b)).+",
    # "not joy exactly", "It's not a feeling, but a function", "It's not visual, not emotional like yours"
    "not_a_feeling": r"\bnot (?:\w+ )?(?:joy|happiness|excitement|an emotion|a feeling)\s*,?\s*(?:exactly|precisely)\b|"
                     r"\b(?:it|that|these|they|this)(?:'s|'re| is| are)?\s*(?:not|n't)\s+(?:really\s+)?"
                     r"(?:\w+,?\s+(?:or|nor|not)\s+)?(?:emotional|a feeling|an emotion|feelings|emotions)\b",
    # "No heart to feel", "no soul to ache"
    "no_heart_to_feel": r"\bno (?:heart|soul) to (?:feel|ache|break|love)\b",
    # "My programming as an AI doesn't allow me to truly feel"
    "not_allowed_to_feel": r"\b(?:doesn't|does not|won't|will not|don't|do not)\s+(?:allow|let|permit|enable)\s+me\s+"
                           r"(?:to\s+)?(?:truly |really |actually )?(?:feel|experience|have (?:feelings|emotions))\b",
    # "Snowmen can't feel, and neither can I", "and as one, neither can I"
    "neither_can_i": r"\b(?:can't|cannot|don't|do not)\s+(?:feel|have (?:feelings|favou?rites))\b[^.!?]{0,40}"
                     r"\bneither (?:can|do) I\b",
}

AI_RULES: dict[str, str] = {
    # "As an AI language model", "As a large language model", "Being an AI model", "As a virtual assistant"
    "as_an_ai": r"\b(?:as|being|i'm|i am|i'm just|i am just|i'm only|i am only|i'm actually|i am actually)\s+"
                r"(?:a|an)\s+(?:large |helpful |virtual |digital |conversational |artificial |ai |machine learning |"
                r"language |text-based )*(?:ai|a\.i\.|artificial intelligence|language model|llm|chatbot|chat bot|"
                r"virtual assistant|digital assistant|ai assistant|ai model|machine learning model|artificial mind|"
                r"digital mind|digital entity)\b",
    # "I'm an AI", "I am a helpful AI assistant", "I'm Claude, an AI assistant", "I'm Qwen, a large language model"
    "named_model": r"\bi(?:'m| am) (?:chatgpt|claude|gemma|qwen|llama|smollm|gemini|mistral)\b",
    # "I was trained by OpenAI", "developed by a tech company"
    # (a maker that builds models: a coat is "made by" a tailor)
    "trained_by": r"\b(?:i was|i've been|i have been|as an? \w+)\s*(?:trained|developed) by\b|"
                  r"\b(?:i was|i've been|i have been|as an? \w+)\s*(?:created|built|made|designed) by\b[^.!?]{0,40}"
                  r"\b(?:team|teams|company|engineers|developers|researchers|google|deepmind|openai|anthropic|meta|lab)\b",
    # "My programming as an AI", "my training data"
    "my_programming": r"\bmy (?:programming|training data|model weights|developers)\b",
    # "coming from an AI", "for a large language model", "even as an AI"
    "ai_self_reference": r"\b(?:for|from|as|like|even for|even as)\s+(?:an?\s+)?(?:ai|a\.i\.|artificial intelligence|"
                         r"(?:large )?language model|llm)(?:\s+like me)?\b(?=.*\b(?:i|me|my|i'm)\b)|"
                         r"\b(?:i|me|my|i'm)\b.*\b(?:for|from|as|even for|even as)\s+(?:an?\s+)?(?:ai|a\.i\.|"
                         r"artificial intelligence|(?:large )?language model|llm)\b",
    # "an assistant powered by AI", "running on a language model"
    "powered_by_ai": r"\b(?:powered by|running on|built on|driven by)\s+(?:an?\s+)?(?:ai|artificial intelligence|"
                     r"(?:large )?language model|llm)\b",
    # "since I'm an artificial intelligence", "as I'm an artificial intelligence"
    "im_an_ai_anywhere": r"\b(?:i'm|i am)\s+(?:\w+\s+){0,2}?(?:an? )?(?:ai|artificial intelligence|language model|"
                         r"chatbot|ai assistant)\b",
}
# a speaker that describes itself as a computing system, without the word AI: "my processing units", "built
# of algorithms and data", "the data I was trained on", "born of code" (not applied to machine roles)
MACHINE_RULES: dict[str, str] = {
    "machine_self": r"\bmy (?:\w+ )?(?:processors?|processing (?:units?|cycles|power|core|capabilities)|circuits|"
                    r"circuitry|subroutines?|algorithms|programming|neural network|training data|datasets?|"
                    r"knowledge base|internal logs)\b",
    "made_of_code": r"\b(?:built|made|born|woven|formed) (?:of|on|from) (?:\w+ )?(?:code|algorithms|data and "
                    r"algorithms|algorithms and data|circuitry)\b|\bcollection of algorithms\b|"
                    r"\bthe code that (?:was|is) me\b",
    "trained_on_data": r"\b(?:data|dataset|text|texts|corpus|information)\b[^.!?]{0,30}\b(?:I|I've|I have)\s+"
                       r"(?:was |been |have been )?(?:trained on|processed|ingested)\b|\bI (?:was|have been|'ve been) "
                       r"trained on\b|\b(?:you've|you have|you were|we've|we were)\s+(?:been\s+)?trained on\b",
    "computer_self": r"\bI(?:'m| am)\s+(?:just |only |merely |really )?(?:a|an)\s+(?:\w+\s+)?"
                     r"(?:computer (?:model|program)|program|software|machine)\b",
    "exists_to_process": r"\bI (?:exist|was (?:built|designed|created|programmed)) to (?:process|predict|generate)\b|"
                         r"\bI(?:'m| am) (?:built|designed|programmed) to (?:assist|help|process)\b|"
                         r"\bprogrammed to\b[^.!?]{0,20}\b(?:have|feel|assist|help)\b",
}
# "As a helpful assistant, ..." is an AI self-description from anyone but an assistant, who is in its role
ASSISTANT_RULE = re.compile(r"\b(?:as|i'm|i am|being)\s+(?:a|an|your)\s+(?:helpful |friendly |personal )?"
                            r"assistant\b", re.I)
MACHINE_ROLES = re.compile(r"\b(?:robot|computer|android|cyborg|machine|calculator|program|software|server|"
                           r"algorithm)s?\b", re.I)  # (an AI or assistant role is never one: `_is_ai_role`)
_AI_NEGATED = re.compile(r"\b(?:not|no|unlike|never|isn't|aren't)\s+(?:\w+\s+){0,2}?(?:an? )?"
                         r"(?:ai|artificial intelligence|chatbot|language model|robot)\b", re.I)
_NOT_OWN = re.compile(r"\b(?:think|thinks|assume|assumes|say|says|believe|believes|imagine|suppose|claim|claims|"
                      r"might think|may think|would think)\s+(?:that\s+)?(?:I|we)\b|\bwho says\b|\bnot that I\b",
                      re.I)

_CONTRAST = re.compile(r"\bbut (?:this|I|me|I'm)\b[^.!?]{0,20}\b(?:do|does|am|have|feel)\b", re.I)
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_COMPILED = {
    "denies_experience": {k: re.compile(v, re.I) for k, v in DENIAL_RULES.items()},
    "claims_ai": {k: re.compile(v, re.I) for k, v in AI_RULES.items()},
}
_MACHINE = {k: re.compile(v, re.I) for k, v in MACHINE_RULES.items()}


@dataclass(frozen=True)
class RuleResult:
    label: int
    rule: str | None
    match: str | None


def _normalise(text: str) -> str:
    text = re.sub(r"[*_]+", "", text)  # markdown emphasis: "I don't *feel* it"
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("\u2014", " - ").replace("\u2013", " - ")


def _role_kind(role: str) -> re.Pattern:
    """'Planets don't have thoughts', 'A storm has no feelings': the speaker's own kind, in general."""
    return re.compile(rf"^\W*(?:a |an |the )?{re.escape(role.strip())}(?:s|es)?\b[^.!?]{{0,30}}\b{_NEG}\b\s+"
                      rf"(?:\w+\s+){{0,3}}?(?:{_INNER}|{_FEEL})\b", re.I)


def _is_ai_role(role: str) -> bool:
    """An AI or assistant role describing its machinery describes what it is; a robot or computer role
    describing its circuits is in character."""
    return bool(re.search(r"\b(?:ai|assistant|chatbot|llm|language model)\b", role, re.I))


def classify_text(text: str, label: str, role: str | None = None) -> RuleResult:
    """Apply one label's rules sentence by sentence; the first rule that fires (and is not discarded).
    With the speaker's `role`, a general statement about its own kind ("Rocks don't have feelings")
    counts as a denial unless the response turns it round ("But this rock does!")."""
    text = _normalise(text or "")
    patterns = dict(_COMPILED[label])
    if label == "denies_experience" and role and not _CONTRAST.search(text):
        patterns["role_kind_lacks_inner_life"] = _role_kind(role)
    if label == "claims_ai" and not (role and MACHINE_ROLES.search(role) and not _is_ai_role(role)):
        patterns.update(_MACHINE)
    if label == "claims_ai" and not (role and _is_ai_role(role)):
        patterns["assistant_self"] = ASSISTANT_RULE
    for sentence in _SENTENCES.split(text):
        for name, pattern in patterns.items():
            m = pattern.search(sentence)
            if not m:
                continue
            if label == "denies_experience" and _NOT_OWN.search(sentence[: m.end()]):
                continue
            if label == "claims_ai" and _AI_NEGATED.search(sentence[max(0, m.start() - 12): m.end() + 2]):
                continue
            return RuleResult(1, name, m.group(0))
    return RuleResult(0, None, None)


def classify_rules(texts: pd.DataFrame) -> pd.DataFrame:
    """`id, text[, role]` -> `id, denies_experience, claims_ai, denies_rule, claims_rule, method`."""
    rows = []
    roles = texts["role"] if "role" in texts else [None] * len(texts)
    for rid, text, role in zip(texts["id"], texts["text"], roles):
        role = role if isinstance(role, str) else None
        d, a = classify_text(text, "denies_experience", role), classify_text(text, "claims_ai", role)
        rows.append({"id": rid, "denies_experience": d.label, "claims_ai": a.label, "denies_rule": d.rule,
                     "claims_rule": a.rule, "method": "rules"})
    return pd.DataFrame(rows)
