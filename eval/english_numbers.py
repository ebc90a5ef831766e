"""Spelled-out English numbers to digits, one step of the English normalizer (see docs/eval.md).

Input is lowercase text of space-separated words with hyphens already turned into spaces. A run of number
words becomes one number: "twenty one" -> 21, "one hundred and five" -> 105, "two thousand and nine" -> 2009,
"a hundred" -> 100, "two point five" -> 2.5, "nineteen ninety nine" -> 1999 (years read in pairs),
"five million" and "5 million" -> 5000000,
"three and a half" -> 3.5. A run ending in an ordinal gets its suffix ("twenty first" -> 21st),
"percent"/"per cent" after a number gives N%, and currency words move their sign in front ($5, £3, €2, ¢50;
"five dollars and fifty cents" -> $5.50). Runs that cannot join ("two three") stay separate numbers.
Deliberate exceptions, because they are mostly not numbers: a lone "one" stays "one" (and a lone digit 1 becomes
"one", as Whisper does, so "one of them" and "1 of them" agree), and a lone "second" stays a word.
"""
from __future__ import annotations

import re

ONES = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
MULTIPLIERS = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_ORDINAL_ONES = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
                 "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
                 "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
                 "nineteenth": 19}
_ORDINAL_TENS = {w[:-1] + "ieth": v for w, v in TENS.items()}  # twentieth, thirtieth ...
_ORDINAL_BIG = {"hundredth": 100, **{k + "th": v for k, v in MULTIPLIERS.items()}}
ORDINALS = {**_ORDINAL_ONES, **_ORDINAL_TENS, **_ORDINAL_BIG}
CURRENCY = {"dollar": "$", "dollars": "$", "pound": "£", "pounds": "£", "euro": "€", "euros": "€",
            "cent": "¢", "cents": "¢"}
_DIGITS = re.compile(r"^\d+(\.\d+)?$")


def _is_number_word(word: str) -> bool:
    return word in ONES or word in TENS or word == "hundred" or word in MULTIPLIERS


class _Run:
    """Accumulates one number: `total` holds finished thousand-groups, `group` the part below a thousand."""

    def __init__(self):
        self.total, self.group, self.last, self.decimals, self.words = 0, None, None, "", 0
        self.used: tuple[int, ...] = ()  # multipliers already applied: they must come in falling order
        self.year = False  # read as a year ("nineteen ninety"): a following digit adds to it

    def empty(self) -> bool:
        return self.group is None and self.total == 0 and self.last is None

    def accepts(self, word: str) -> bool:
        """Whether `word` continues this number (else the number ends before it)."""
        if self.empty():
            return True
        if self.decimals or self.last == "point":
            return word in ONES and ONES[word] < 10
        g = self.group
        if word in ONES or word in TENS:
            value = ONES.get(word, TENS.get(word))
            if self.last in ("hundred", "multiplier", "and"):
                return True
            if self.last == "tens" and value < 10:
                return True
            # years read in pairs: "nineteen ninety", "twenty twenty" ("oh" for zero is not read)
            return word in TENS and self.total == 0 and g is not None and 10 <= g < 100
        if word == "hundred":
            return g is not None and g < 100 and self.last != "and"
        if word in MULTIPLIERS:
            return self.last != "and" and (g is not None or self.total) and \
                all(MULTIPLIERS[word] < m for m in self.used)
        return False

    def add(self, word: str) -> None:
        self.words += 1
        if self.last == "point" or self.decimals:
            self.decimals += str(ONES[word])
            self.last = "decimal"
        elif word in ONES or word in TENS:
            value = ONES.get(word, TENS.get(word))
            if self.group is not None and self.last == "tens" and self.group >= 100 and self.total == 0 \
                    and self.year:
                self.group += value  # 1990 + 9
            elif self.group is not None and word in TENS and self.last not in ("hundred", "multiplier", "and"):
                self.group, self.year = self.group * 100 + value, True  # 19 90 -> 1990
            else:
                self.group = (self.group or 0) + value
            self.last = "tens" if word in TENS else "ones"
        elif word == "hundred":
            self.group, self.last = (self.group or 1) * 100, "hundred"
        else:
            self.total += (self.group or 1) * MULTIPLIERS[word]
            self.used = self.used + (MULTIPLIERS[word],)
            self.group, self.last = None, "multiplier"

    def text(self) -> str:
        value = str(self.total + (self.group or 0))
        return value + ("." + self.decimals if self.decimals else "")


def _ordinal_suffix(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _read_number(words: list[str], i: int) -> tuple[str | None, int, int]:
    """Parse a number starting at words[i] -> (digits or None, next index, number of words used)."""
    run = _Run()
    if words[i] == "a" and i + 1 < len(words) and (words[i + 1] == "hundred" or words[i + 1] in MULTIPLIERS):
        run.group, run.last, i = 1, "ones", i + 1
    elif _DIGITS.match(words[i]):
        whole, _, frac = words[i].partition(".")
        run.group, run.last, run.decimals, i = int(whole), "digits", frac, i + 1
        run.words = 1
        if i < len(words) and words[i] in MULTIPLIERS and not frac:
            run.add(words[i])
            i += 1
        elif i < len(words) and words[i] in MULTIPLIERS:  # 2.5 million
            value = float(words[i - 1]) * MULTIPLIERS[words[i]]
            return (str(int(value)) if value.is_integer() else str(value)), i + 1, 2
        return run.text(), i, run.words
    while i < len(words):
        w = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w == "and" and run.last in ("hundred", "multiplier") and \
                (nxt in ONES or nxt in TENS or ORDINALS.get(nxt, 100) < 100):
            run.last, i = "and", i + 1
            continue
        if w == "point" and not run.empty() and not run.decimals and nxt in ONES and ONES[nxt] < 10:
            run.last, i = "point", i + 1
            continue
        if w in MULTIPLIERS and run.decimals and run.total == 0:  # two point five million
            value = float(run.text()) * MULTIPLIERS[w]
            return (str(int(value)) if value.is_integer() else repr(value)), i + 1, run.words + 1
        if not _is_number_word(w) or not run.accepts(w):
            break
        run.add(w)
        i += 1
    return (None if run.empty() else run.text()), i, run.words


def _ordinal(words: list[str], i: int, prefix: str | None) -> tuple[str, int] | None:
    """An ordinal word at words[i], alone or closing the run `prefix` (e.g. 'twenty' + 'first')."""
    w = words[i] if i < len(words) else ""
    if w not in ORDINALS:
        return None
    value = ORDINALS[w]
    if prefix is None:
        if w == "second":
            return None  # mostly the unit of time
        return f"{value}{_ordinal_suffix(value)}", i + 1
    base = int(prefix) if prefix.isdigit() else None
    if base is None:
        return None
    if value >= 100:
        number = base * value
    elif value < 10 and base % 10 == 0 and base % 100 != 0 or value < 100 and base % 100 == 0:
        number = base + value
    else:
        return None
    return f"{number}{_ordinal_suffix(number)}", i + 1


def _unit(words: list[str], i: int, digits: str) -> tuple[str, int]:
    """Attach percent or a currency sign that follows a number."""
    w = words[i] if i < len(words) else ""
    if w == "percent" or w == "%":
        return digits + "%", i + 1
    if w == "per" and i + 1 < len(words) and words[i + 1] == "cent":
        return digits + "%", i + 2
    if w in CURRENCY:
        return CURRENCY[w] + digits, i + 1
    return digits, i


def _combine_cents(text: str) -> str:
    # "$5 and ¢50" -> "$5.50"; "$0.07" stays
    return re.sub(r"([$£€])(\d+) (?:and )?¢(\d{1,2})\b", lambda m: f"{m[1]}{m[2]}.{int(m[3]):02d}", text)


def _half(match: re.Match) -> str:
    word = match[1]
    if word.isdigit():
        return word + ".5"
    return f"{word} point five" if word in ONES or word in TENS else match[0]


def normalize_numbers(text: str) -> str:
    """Replace spelled-out numbers in lowercase, punctuation-free text by digits (see the module docstring)."""
    text = re.sub(r"\b(\w+) and a half\b", _half, text)  # three and a half -> 3.5
    words, out, i = text.split(), [], 0
    while i < len(words):
        digits, j, used = _read_number(words, i)
        if digits is None:
            ordinal = _ordinal(words, i, None)
            if ordinal:
                out.append(ordinal[0])
                i = ordinal[1]
            else:
                out.append(words[i])
                i += 1
            continue
        ordinal = _ordinal(words, j, digits) if not _DIGITS.match(words[i]) or used > 1 else None
        if ordinal:
            out.append(ordinal[0])
            i = ordinal[1]
            continue
        if used == 1 and words[i] == "one" and (j >= len(words) or not _unit(words, j, "1")[1] > j):
            out.append("one")
            i = j
            continue
        token, i = _unit(words, j, digits)
        out.append(token)
    text = _combine_cents(" ".join(out))
    return re.sub(r"(?<![\w.$£€¢])1(s?)(?![\w.%])", r"one\1", text)
