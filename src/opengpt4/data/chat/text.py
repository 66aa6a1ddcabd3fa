"""What the constraints reshape and test: a correct answer in its forms (`Answer`), and text
helpers (words, phrase search, language detection by function words)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

from opengpt4.data.world_text import LANGUAGES, PHRASES, TEMPLATE_TEXT, WORDS


# --- answers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """A correct answer, in the forms the constraints reshape it into."""

    lang: str
    text: str  # the plain answer: one sentence for a fact, the worked solution for arithmetic
    value: str  # the exact answer the text states ("Staikon", "14")
    parts: tuple[str, ...]  # `text` cut into sentences; lists and sections keep all of them
    extras: tuple[str, ...] = ()  # more true sentences on the topic, to fill a list when asked for more
    rephrasings: tuple[str, ...] = ()  # other statements of the answer, the shortest last
    guide: str | None = None  # a question that leads to the answer without stating it (Socratic)
    title: str = ""  # what it is about
    translations: Mapping[str, Answer] = field(default_factory=dict)  # the same answer in other languages

    def units(self, n: int) -> list[str] | None:
        """Exactly n pieces that together state the answer: all parts (the first ones merged when
        there are more than n), then extras; None when there is not enough to say."""
        if n < 1 or n > len(self.parts) + len(self.extras):
            return None
        if n <= len(self.parts):
            head = len(self.parts) - n + 1
            return [" ".join(self.parts[:head]), *self.parts[head:]]
        return [*self.parts, *self.extras[:n - len(self.parts)]]

    def statements(self) -> tuple[str, ...]:
        return (self.text, *self.rephrasings)


# --- text helpers -----------------------------------------------------------------------------
def words(text: str) -> list[str]:
    """IFEval's words: runs of word characters."""
    return re.findall(r"\w+", text)


def contains(text: str, phrase: str, *, ignore_case: bool = True) -> bool:
    """`phrase` in `text` as a whole word or words (not inside a longer word)."""
    flags = re.IGNORECASE if ignore_case else 0
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, flags) is not None


FUNCTION_WORDS = {  # the commonest words of each language, for text beyond the world's templates
    "en": "the a an is was are of in on at to and or by for with from it this that what which who when "
          "where how its his her their be has have had as not",
    "fr": "le la les un une des est et de du au aux à en par pour avec dans sur qui que quel quelle ce "
          "cette son sa ses il elle ont été",
    "es": "el la los las un una es y de del en por para con que qué cuál quién dónde su sus fue está "
          "son se lo al",
    "de": "der die das den dem des ein eine einen ist und von zu im in mit für auf wer was wo wann "
          "wie welche welcher sein seine ihr ihre wurde hat",
    "ru": "и в на с по из что кто где когда как это был была было его её их",
}


@cache
def _vocabulary() -> dict[str, frozenset[str]]:
    """Lower-case words of each language: its templates, fixed phrases, vocabulary, function words."""
    vocab: dict[str, set[str]] = {lang: set(FUNCTION_WORDS[lang].split()) for lang in LANGUAGES}
    for by_lang in TEMPLATE_TEXT.values():
        for lang, text in by_lang.items():
            vocab[lang].update(letter_words(text.replace("{s}", " ").replace("{v}", " ")))
    for lang, phrases in PHRASES.items():
        vocab[lang].update(letter_words(str(phrases)))
    for rows in WORDS.values():
        for row in rows:
            for lang, word in zip(LANGUAGES, row, strict=True):
                vocab[lang].update(letter_words(word))
    return {lang: frozenset(v) for lang, v in vocab.items()}


def letter_words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def detect_language(text: str) -> str | None:
    """The world language `text` is written in, or None when no word of any language is in it.

    Every word votes: a Cyrillic one for Russian, a known Latin-script one for each language
    whose vocabulary has it (a word of k languages gives each 1/k); invented names do not vote.
    The most votes win; a tie is no language."""
    vocab = _vocabulary()
    votes = dict.fromkeys(LANGUAGES, 0.0)
    for token in letter_words(text):
        if any("а" <= c <= "я" or c == "ё" for c in token):
            votes["ru"] += 1
            continue
        langs = [lang for lang in LANGUAGES if lang != "ru" and token in vocab[lang]]
        for lang in langs:
            votes[lang] += 1 / len(langs)
    ranked = sorted(votes.items(), key=lambda kv: -kv[1])
    if ranked[0][1] == 0 or ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]
