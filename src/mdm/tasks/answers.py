"""Answer extraction and normalisation shared by the task packs.

    extract_numeric("... so she pays $1,200.\n#### 1,200")   # "1200"
    extract_numeric("The answer is \\boxed{-3.50}")          # "-3.5"
    extract_numeric("no digits here")                        # None
    answers_match("1200", "1200.0")                          # True

Order for numeric answers: the `####` marker (GSM8K's gold style), then the last `\\boxed{...}`, then the
last number anywhere in the text. Numbers are normalised: commas, `$` and `%` removed, trailing `.0`/zeros
dropped, `-0` -> `0`.
"""

from __future__ import annotations

import re
from typing import Optional

_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\s?\.\d+")
_HASH = re.compile(r"####\s*([^\n]*)")


def normalize_number(text: str) -> Optional[str]:
    """Canonical string of the first number in `text` ("$1,200.50" -> "1200.5"), or None."""
    m = _NUMBER.search(text)
    if not m:
        return None
    s = re.sub(r"[\s,$]", "", m.group(0))  # any whitespace \s matched (a model may emit "\x1f88")
    neg = s.startswith("-")
    s = s.lstrip("-")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    s = s.lstrip("0") or "0"
    if s.startswith("."):
        s = "0" + s
    return ("-" + s) if neg and s != "0" else s


def last_boxed(text: str) -> Optional[str]:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None  # unbalanced: treat as no boxed answer


def hash_answer(text: str) -> Optional[str]:
    """Text after the last `####` marker on its line, or None."""
    found = _HASH.findall(text)
    return found[-1].strip() if found else None


def last_number(text: str) -> Optional[str]:
    """The last number in `text`, normalised; None when there is none."""
    found = _NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None


def extract_numeric(text: str) -> Optional[str]:
    """A numeric answer: `####` answer, else `\\boxed{}`, else the last number; normalised, or None."""
    if text is None:
        return None
    for candidate in (hash_answer(text), last_boxed(text)):
        if candidate:
            num = normalize_number(candidate)
            if num is not None:
                return num
    return last_number(text)


def normalize_text(text: str) -> str:
    """Lower-case, strip `$`, `%`, surrounding punctuation, LaTeX text wrappers and extra whitespace."""
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    s = s.replace("$", "").replace("%", "").replace("\\%", "")
    s = re.sub(r"\s+", " ", s).strip().strip(".").strip()
    return s.lower()


def answers_match(pred: str, gold: str, rel_tol: float = 1e-6) -> bool:
    """True when both parse as the same number (relative tolerance `rel_tol`), else normalised text equality."""
    p, g = normalize_number(pred), normalize_number(gold)
    if p is not None and g is not None and _is_number(pred) and _is_number(gold):
        a, b = float(p), float(g)
        return abs(a - b) <= rel_tol * max(1.0, abs(a), abs(b))
    return normalize_text(pred) == normalize_text(gold)


def _is_number(text: str) -> bool:
    """True when `text` is just a number (with optional $, %, commas, surrounding spaces/period)."""
    return re.fullmatch(r"\s*-?\$?\s?(\d[\d,]*(\.\d+)?|\.\d+)\s*%?\s*\.?\s*", text) is not None


_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)


def extract_freeform(text: str) -> Optional[str]:
    """A free-form answer: the last `\\boxed{}`, else the `####` answer, else the text after the last
    "answer is"/"Answer:", else the last non-empty line; surrounding `**`, quotes and the final period
    stripped. None when the text is empty."""
    if not text or not text.strip():
        return None
    found = last_boxed(text) or hash_answer(text)
    if not found:
        hits = _ANSWER_IS.findall(text)
        found = hits[-1] if hits else text.strip().splitlines()[-1]
    found = re.sub(r"\\text\{([^}]*)\}", r"\1", found).strip().strip("*").strip("\"'").strip()
    found = found[:-1].strip() if found.endswith(".") else found
    return found or None


_CHOICE_PATTERNS = (
    r"\\boxed\{\s*(?:\\text\{)?\(?([A-Z])\)?\}?\s*\}",          # \boxed{C}, \boxed{\text{C}}, \boxed{(C)}
    r"(?i:answer)\s*(?i:is|:)\s*:?\s*\**\s*(?:option\s*)?\(?([A-Z])\)?(?![A-Za-z])",  # answer is (C) / Answer: C
    r"####\s*\(?([A-Z])\)?(?![A-Za-z])",
)


def extract_choice(text: str, letters: str = "ABCDEFGHIJ") -> Optional[str]:
    """A multiple-choice letter: the last `\\boxed{X}`, else the last "answer is X"/"Answer: X", else a
    `#### X`, else a line that is just the letter ("C", "(C)", "C."). None when there is none."""
    if not text:
        return None
    for pattern in _CHOICE_PATTERNS:
        hits = [h for h in re.findall(pattern, text) if h in letters]
        if hits:
            return hits[-1]
    for line in reversed(text.strip().splitlines()):
        m = re.fullmatch(r"\s*\**\(?([A-Z])\)?[.:]?\**\s*", line)
        if m and m.group(1) in letters:
            return m.group(1)
    return None
