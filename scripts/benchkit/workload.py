"""What the servers are asked: the prompts and the settings of a run's requests.

Prompts are deterministic given a seed, so that within a step both servers
get identical inputs; seeds are fresh for every step, so that no prefix
cache ever meets a prompt twice where that would flatter it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_WORDS = (  # noqa: SIM905 - prose reads better than a list literal
    "the river carried old lanterns past quiet houses where people kept small gardens and "
    "counted the seasons by the colour of the hills behind the market town every morning "
    "a baker opened her shop before sunrise while farmers brought apples pears cabbages and "
    "fresh milk along the narrow stone road that crossed the bridge near the mill children "
    "walked to school with books under their arms teachers wrote lessons about history "
    "mathematics music weather and the stars sailors told stories of distant harbours "
    "storms islands lighthouses and strange fish merchants argued about prices in loud "
    "voices while cats slept in warm windows the library held maps letters diaries and "
    "records of travellers who had crossed mountains deserts forests and frozen lakes in "
    "search of trade knowledge or simply adventure during long winter evenings families "
    "gathered near the fire to repair tools knit scarves and plan the work of spring"
).split()


def make_document(seed: int, n_words: int) -> str:
    """Deterministic pseudo-prose: the same ``seed`` gives the same text."""
    rng = random.Random(seed)
    words, sentence = [], 0
    for _ in range(n_words):
        w = rng.choice(_WORDS)
        if sentence == 0:
            w = w.capitalize()
        sentence += 1
        if sentence > rng.randint(9, 16):
            w += "."
            sentence = 0
        words.append(w)
    return " ".join(words) + "."


def counting_prompt(start: int) -> str:
    nums = ", ".join(str(start + i) for i in range(12))
    return f"Continue this list of numbers without stopping: {nums},"


@dataclass
class Workload:
    """The request settings of a run, shared by both sides, and its source of fresh seeds."""

    host: str
    gen_tokens: int
    doc_words: int
    concurrency: list[int]
    samples: int
    health_seconds: float
    health_conns: int
    health_tool: str
    timeout: float
    nonce: int = field(default_factory=lambda: random.randrange(1 << 30))
    counter: int = 0

    def fresh_seed(self) -> int:
        self.counter += 1
        return self.nonce * 1000 + self.counter

    def chat(self, content: str | list[dict], max_tokens: int, **sampling: float) -> dict:
        messages = content if isinstance(content, list) else [{"role": "user", "content": content}]
        return {"model": "bench", "messages": messages, "max_tokens": max_tokens,
                "temperature": 0.0, **sampling}

    def doc_prompt(self) -> str:
        seed = self.fresh_seed()
        # The start differs on every request, so no prefix cache can help.
        return (f"Note {seed}: read the following text.\n\n"
                + make_document(seed, self.doc_words)
                + "\n\nSummarize the text above in one sentence.")
