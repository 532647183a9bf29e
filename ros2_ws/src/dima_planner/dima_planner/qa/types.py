"""One question-answer pair."""
from __future__ import annotations

from dataclasses import dataclass

# DriveLM's four QA groups; generated QA uses the same names.
QA_CATEGORIES: tuple[str, ...] = ("perception", "prediction", "planning", "behavior")


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    category: str = "perception"

    def __post_init__(self) -> None:
        if self.category not in QA_CATEGORIES and self.category != "edit":
            raise ValueError(f"QA category {self.category!r} is not one of {QA_CATEGORIES + ('edit',)}")
