"""What a comparison with the fp32 reference concludes, for a stage, an input, an engine or a report.

``Verdict`` members are strings (``StrEnum``), so the reports and manifests that hold them stay the
JSON they were. They are declared least severe first: an input's verdict is its worst stage's, an
engine's its worst input's, a report's its worst engine's (``Verdict.most_severe``). Each carries the
sentence that explains it and the tone the HTML page gives it.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Self


class NonfiniteKind(StrEnum):
    """Where non-finite values come from: the engine's reduced precision, or the fp32 graph itself."""

    PRECISION = "precision"  # non-finite in the engine, finite in fp32
    FP32 = "fp32"  # already non-finite in fp32: a model defect

    @property
    def verdict(self) -> Verdict:
        return Verdict.NONFINITE_PRECISION if self is NonfiniteKind.PRECISION else Verdict.NONFINITE_FP32


class Verdict(StrEnum):
    """One comparison's conclusion; declared from least to most severe."""

    CLEAN = "clean", "ok", "every engine matches fp32 within its tolerance on every input"
    BASIS_AMBIGUOUS = ("basis_ambiguous", "ok", ("engines differ from fp32 only where two answers are "
                                                 "equally correct (repeated eigenvalues, top-k near-ties)"))
    NONFINITE_INPUT = "nonfinite_input", "neutral", "an input itself holds non-finite values"
    DIVERGENCE = "divergence", "warn", "values stay finite, but an engine is beyond its tolerance"
    NONFINITE_PRECISION = ("nonfinite_precision", "bad", ("an engine's reduced precision makes values "
                                                          "non-finite where fp32 stays finite"))
    NONFINITE_FP32 = "nonfinite_fp32", "bad", "the fp32 reference itself goes non-finite"

    tone: str  # the HTML page's colour class: the banner, the pills
    meaning: str  # the page's banner when no engine names an origin

    def __new__(cls, value: str, tone: str, meaning: str) -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.tone, member.meaning = tone, meaning
        return member

    @property
    def severity(self) -> int:
        return list(Verdict).index(self)

    @property
    def accepted(self) -> bool:
        """Within tolerance, or differing only where two answers are equally correct."""
        return self in (Verdict.CLEAN, Verdict.BASIS_AMBIGUOUS)

    @property
    def nonfinite(self) -> bool:
        """Non-finite values anywhere: in the input, the engine or fp32."""
        return self in (Verdict.NONFINITE_INPUT, Verdict.NONFINITE_PRECISION, Verdict.NONFINITE_FP32)

    @property
    def nonfinite_kind(self) -> NonfiniteKind | None:
        """The kind of non-finite values this verdict reports, if it reports any from the engine or fp32."""
        return {Verdict.NONFINITE_PRECISION: NonfiniteKind.PRECISION,
                Verdict.NONFINITE_FP32: NonfiniteKind.FP32}.get(self)

    @staticmethod
    def most_severe(verdicts: Iterable[Verdict]) -> Verdict:
        return max(verdicts, key=lambda verdict: verdict.severity, default=Verdict.CLEAN)


class FailOn(StrEnum):
    """``brr-diff --fail-on``: which verdicts fail the run."""

    NONFINITE = "nonfinite"
    DIVERGENCE = "divergence"
    NEVER = "never"

    @property
    def failing(self) -> frozenset[Verdict]:
        nonfinite = {Verdict.NONFINITE_PRECISION, Verdict.NONFINITE_FP32}
        return frozenset({FailOn.NONFINITE: nonfinite, FailOn.DIVERGENCE: {Verdict.DIVERGENCE, *nonfinite},
                          FailOn.NEVER: set()}[self])
