"""The benchmark's conversations: deterministic text for (seed, user, session, turn).

Pure and locust-free, so the runner, the locust file and the tests share one definition. Lengths
are in words (`*_words`): the mock tokenizes a word (with its trailing space) as one token, real
tokenizers give roughly 1.3 tokens per English word. Only `answer_tokens` is in tokens: it is the
requests' max_tokens. (bench/real/gpu/host.py's TokenWorkload is the same shape in real tokens.)
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

# Word pools for the generated text: ordinary words, and identifiers for the code-file contexts.
_WORD_TEXT = (
    "the a of to and in that is for on with as by at from this be are was it an or not which "
    "system request replica cache prefix token block model router session turn answer question "
    "latency throughput memory engine batch queue schedule prefill decode stream context window "
    "document section table figure result value error retry health metric counter label gauge "
    "cluster service node pod deployment config option default limit budget capacity weight hash "
    "ring key load bound spill policy client server network packet header body field message"
)
_IDENT_TEXT = (
    "config request response replica buffer index count total offset length handler session "
    "tokens blocks ratio cache state result value items entry record parser writer reader"
)
_WORDS = tuple(_WORD_TEXT.split())
_IDENTS = tuple(_IDENT_TEXT.split())
# Every word the generated text is made of, and the parts of its code identifiers
# (`a_b`): the mock's tokenizer has each word and each identifier as one token.
VOCABULARY = (*_WORDS, *_IDENTS)
IDENTIFIER_PARTS = _IDENTS


@dataclass(frozen=True)
class Workload:
    """What every simulated user does; the same knobs and seed give the same conversations."""

    seed: int = 1
    system_words: int = 400  # shared by every session: cacheable across sessions
    context_words: int = 2000  # a document or code file pasted in each session's first turn
    followup_words: int = 40  # each later user message
    answer_tokens: int = 120  # max_tokens of every request
    turns: int = 6  # turns per session, then the user starts a new session
    think_time: float = 1.0  # mean seconds between an answer and the next question
    # Skew: this share of sessions is "hot": its document is `hot_context_factor` times longer
    # and its turns come `hot_pace_factor` times faster (an agent rather than a person).
    hot_share: float = 0.0
    hot_context_factor: float = 3.0
    hot_pace_factor: float = 3.0
    # An agent's fixed preamble: every session's first user message is the same instruction, its
    # own document comes in turn 2. Without a session id, every session has the same prompt
    # anchor (system prompt + first user message).
    shared_opening: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _rng(workload: Workload, *parts: object) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and processes.
    return random.Random(":".join(str(p) for p in (workload.seed, *parts)))


def _words(rng: random.Random, count: int, pool: tuple[str, ...] | list[str]) -> list[str]:
    return [rng.choice(pool) for _ in range(count)]


def is_hot(workload: Workload, user: int, session: int) -> bool:
    """Whether this session is one of the hot ones (seeded: the same in every run)."""
    return workload.hot_share > 0 and _rng(workload, "hot", user, session).random() < (
        workload.hot_share
    )


def session_id(workload: Workload, user: int, session: int) -> str:
    return f"bench-{workload.seed}-u{user}-s{session}"


def system_prompt(workload: Workload) -> str:
    rng = _rng(workload, "system")
    words = _words(rng, max(workload.system_words - 8, 1), _WORDS)
    return "You are a careful assistant for a team that runs inference clusters. " + " ".join(words)


def _document(rng: random.Random, tokens: int) -> str:
    lines: list[str] = []
    used = 0
    while used < tokens:
        words = _words(rng, min(rng.randint(8, 16), tokens - used), _WORDS)
        lines.append(" ".join(words).capitalize() + ".")
        used += len(words)
    return "\n".join(lines)


def _code_file(rng: random.Random, tokens: int) -> str:
    lines: list[str] = []
    used = 0
    while used < tokens:
        names = _words(rng, 4, _IDENTS)
        line = (
            f"{names[0]}_{names[1]} = compute {names[2]} with {names[3]} and {rng.randint(0, 999)}"
        )
        lines.append(line)
        used += 7
    return "\n".join(lines)


def first_message(workload: Workload, user: int, session: int) -> str:
    """The long first turn: a generated document or code file, then a question about it."""
    rng = _rng(workload, "context", user, session)
    words = workload.context_words
    if is_hot(workload, user, session):
        words = round(words * workload.hot_context_factor)
    if rng.random() < 0.5:
        body = _code_file(rng, words)
        ask = "Here is a file from our code base. Explain what it does, briefly."
    else:
        body = _document(rng, words)
        ask = "Here is a design document. Summarise the main points, briefly."
    return f"{ask}\n\n{body}"


def followup(workload: Workload, user: int, session: int, turn: int) -> str:
    """A short later turn (turn >= 2)."""
    rng = _rng(workload, "followup", user, session, turn)
    words = _words(rng, max(workload.followup_words - 3, 1), _WORDS)
    return "Follow up: " + " ".join(words) + "?"


def think_seconds(workload: Workload, user: int, session: int, turn: int) -> float:
    """Pause after turn `turn`: uniform in [0.5, 1.5] x think_time, seeded."""
    if workload.think_time <= 0:
        return 0.0
    rng = _rng(workload, "think", user, session, turn)
    pace = workload.hot_pace_factor if is_hot(workload, user, session) else 1.0
    return workload.think_time * rng.uniform(0.5, 1.5) / pace


OPENING = (
    "You work in our repository. I will paste a file or a document next; read it, then answer "
    "my questions about it briefly."
)


def user_message(workload: Workload, user: int, session: int, turn: int) -> str:
    if workload.shared_opening:
        if turn == 1:
            return OPENING
        turn -= 1  # the session's own document comes second
    return (
        first_message(workload, user, session)
        if turn == 1
        else followup(workload, user, session, turn)
    )
