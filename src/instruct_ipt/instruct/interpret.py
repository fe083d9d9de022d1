"""From an instruction to the task(s) to run, with confidences, or a clear refusal."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from .corpus import UNSUPPORTED
from .encoder import SentenceEncoder, default_encoder
from .head import InstructionHead
from .order import order_tasks

EXAMPLES = {
    "denoise": "remove the noise",
    "deblur": "my hand shook, fix the blur",
    "derain": "remove the rain",
    "dehaze": "the photo is foggy, clear it up",
    "desnow": "remove the falling snow",
    "jpeg": "remove the JPEG artifacts",
}

_CONJUNCTION = re.compile(r"\s*(?:;|&|\+|\band then\b|\bthen\b|\band also\b|\balso\b|\bas well as\b|\bplus\b|\band\b)\s*", re.IGNORECASE)
_LIST_COMMA = re.compile(r"\s*,\s*")


def clauses(text: str) -> list[str]:
    """Split at conjunctions ("and", "then", "plus", ";", ...); commas split only in a list that
    also has a conjunction ("rain, noise and blur"), since a lone comma usually joins a symptom to
    a request ("the photo is foggy, clear it up")."""
    parts = [p for p in _CONJUNCTION.split(text) if p and len(p.strip()) > 1]
    if len(parts) > 1:
        parts = [q for p in parts for q in _LIST_COMMA.split(p) if q and len(q.strip()) > 1]
    return parts if len(parts) > 1 else []


#: a question about the picture, not a request ("is there noise in this image?", "what is haze?");
#: "how do I remove the rain" and "is it possible to remove the rain" stay requests
_QUESTION = re.compile(
    r"^\s*(?:(?:what|why|which|where|who|whom|whose|when)\b"
    r"|(?:is|are|was|were|does|did|has|have)\s+(?!it\s+possible)(?:there|this|that|it|the|my|these|those|your|a|an)\b)",
    re.IGNORECASE,
)


#: words for the built-in degradations, unless followed by "free", "removal", "reduction", ...
_DEGRADATION = (
    r"(?:fog|foggy|haze|hazy|mist|misty|smog|rain|rainy|raindrops?|rain ?streaks|snow|snowy|snowflakes?"
    r"|noise|noisy|grain|grainy|blur|blurry|blurred|motion blur|camera shake|jpeg|jpg|compression"
    r"|compressed|artifacts|pixelated|pixelation|blockiness|blocky)"
    r"(?![\s-]*(?:\w+\s+)?(?:free|removal|reduction|remover|filter|suppression|correction|cleanup)\b)"
)
#: a request to create a degradation ("add some fog", "make it look grainy", "make it snow",
#: "blur it on purpose"): the sentence encoder puts these next to the opposite request ("remove the
#: fog"), so a rule catches them before the head is asked
_CREATE = re.compile(
    r"\b(?:add|adding|put|insert|apply|simulate|introduce|create|generate|fake|overlay|sprinkle)\b"
    r"(?:\s+\w+){0,3}?\s+" + _DEGRADATION + r"\b"
    r"|\bmake\b(?:\s+(?:it|this|the\s+\w+|everything))?(?:\s+look)?"
    r"(?:\s+(?:more|extra|very|really|a bit|slightly|super))?\s+" + _DEGRADATION + r"\b"
    r"|\bmake it (?:rain|snow)\b(?![\s-]*free)|^\s*(?:please\s+)?cover\b.*\bsnow\b|\bon purpose\b",
    re.IGNORECASE,
)


class InstructionError(ValueError):
    """An instruction that names no supported task; the message lists the tasks and examples."""


@dataclass
class Interpretation:
    instruction: str
    tasks: list[str]
    confidences: list[float]
    #: each clause that was classified separately, with its best class and probability
    segments: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return ", then ".join(f"{t} ({c:.0%})" for t, c in zip(self.tasks, self.confidences))


class Interpreter:
    """Maps instructions to tasks with an :class:`InstructionHead` over frozen sentence embeddings.

    The whole instruction and each of its :func:`clauses` are embedded in one encoder call. If two or more clauses confidently name different tasks, all of
    them run, in the order :func:`~instruct_ipt.instruct.order.order_tasks` gives; otherwise the whole instruction decides. Below
    ``threshold`` (or when "unsupported" wins) the instruction is refused; so is one whose chosen
    task's closest training phrasing is less than ``support_threshold`` similar (nonsense such as
    "banana" that the softmax still files under some task), a question about the picture ("is
    there noise in this image?": it asks for an answer, not a restoration) and a request to create
    a degradation ("add some fog"). The thresholds were chosen by cross-validation on the
    corpus's training split (benchmarks/instruction_cv.py).
    """

    def __init__(
        self,
        head: InstructionHead | None = None,
        encoder: SentenceEncoder | None = None,
        threshold: float = 0.5,
        segment_threshold: float = 0.8,
        support_threshold: float = 0.5,
    ) -> None:
        self.head = head or InstructionHead.default()
        self._encoder = encoder
        self.threshold = threshold
        self.segment_threshold = segment_threshold
        self.support_threshold = support_threshold

    @property
    def encoder(self) -> SentenceEncoder:
        if self._encoder is None:
            self._encoder = default_encoder()
        return self._encoder

    def refusal(self, text: str, reason: str) -> InstructionError:
        examples = "; ".join(f'{t}: "{EXAMPLES.get(t, t)}"' for t in self.head.tasks)
        return InstructionError(
            f"{reason} Supported tasks: {', '.join(self.head.tasks)}. Try e.g. {examples}."
        )

    def __call__(self, text: str) -> Interpretation:
        text = (text or "").strip()
        if not text:
            raise self.refusal(text, "the instruction is empty.")
        if _QUESTION.match(text):
            raise self.refusal(text, f"{text!r} is a question, not a request to restore the image.")
        if m := _CREATE.search(text):
            raise self.refusal(text, f"{text!r} asks to add a degradation ({m.group(0)!r}); this model only removes them.")
        segments = clauses(text)
        emb = self.encoder.encode([text, *segments])
        probs, support = self.head.probabilities(emb), self.head.support(emb)
        classes = self.head.classes
        seg_info = []
        found: dict[str, float] = {}
        for s, p, sup in zip(segments, probs[1:], support[1:]):
            conf, idx = p.max(0)
            seg_info.append({"text": s, "class": classes[int(idx)], "confidence": round(float(conf), 4)})
            if (classes[int(idx)] != UNSUPPORTED and float(conf) >= self.segment_threshold
                    and float(sup[int(idx)]) >= self.support_threshold):
                found[classes[int(idx)]] = max(found.get(classes[int(idx)], 0.0), float(conf))
        if len(found) >= 2:
            tasks = order_tasks(found)
            return Interpretation(text, tasks, [round(found[t], 4) for t in tasks], seg_info)
        whole = probs[0]
        conf, idx = whole.max(0)
        best = classes[int(idx)]
        if best == UNSUPPORTED:
            raise self.refusal(text, f"{text!r} does not ask for a supported restoration ({float(conf):.0%} sure).")
        if float(conf) < self.threshold:
            raise self.refusal(text, f"{text!r} is unclear: the best guess, {best}, is only {float(conf):.0%} sure.")
        if (sim := float(support[0, int(idx)])) < self.support_threshold:
            raise self.refusal(text, f"{text!r} is unlike any known request (closest {best} phrasing is {sim:.0%} similar).")
        return Interpretation(text, [best], [round(float(conf), 4)], seg_info)
