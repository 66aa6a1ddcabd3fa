"""System-message constraints a program can check: what the system role asks, and whether a reply obeys.

Each `Constraint` has an id (IFEval's instruction id where the instruction is IFEval's, with its
kwargs and its checker's semantics; ours are prefixed `opengpt4:`), system-message phrasings
(the last `HELDOUT_TEMPLATES` of each are held out of training), a way to draw kwargs for a
given answer, a way to turn that correct answer into a compliant reply (the SFT target), and
`check(kwargs, response)`.

Where our checks differ from IFEval's code (read in google-research/instruction_following_eval):
  - language: IFEval asks `langdetect`; ours is `detect_language`, a vote of the words of the
    synthetic world's five languages (its templates, phrases and vocabulary, plus common
    function words; every Cyrillic word votes Russian). langdetect is unreliable on one-sentence
    replies full of invented names, and non-deterministic unless seeded; the world's own
    vocabulary decides its replies exactly. A reply with no word of any language is in no
    language: IFEval passes what langdetect cannot classify, we fail it (else "Staikon." would
    count as French).
  - english_lowercase / english_capital: IFEval also requires langdetect's "en"; ours requires
    that the reply is not detected as another language (names alone pass, as in IFEval).
  - number_words counts `\\w+` runs, which is what IFEval's nltk RegexpTokenizer(r"\\w+") counts.

The checks are pure functions of (kwargs, response); `check(id, kwargs, response)` is the entry point.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opengpt4.data.chat.text import FUNCTION_WORDS, Answer, contains, detect_language, letter_words, words
from opengpt4.errors import UnknownConstraint

HELDOUT_TEMPLATES = 2  # of each constraint's phrasings, the last ones: never in training data
LANGUAGE_NAMES = {"en": "English", "fr": "French", "es": "Spanish", "de": "German", "ru": "Russian"}


def split_pool(items: tuple[str, ...], split: str, heldout: int = HELDOUT_TEMPLATES) -> tuple[str, ...]:
    """The items of a split: the last `heldout` of them are held out, the others are train's."""
    return items[-heldout:] if split == "heldout" else items[:-heldout]


def _quoted(items: list[str]) -> str:
    quoted = [f'"{w}"' for w in items]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


# --- the constraint type ----------------------------------------------------------------------
Kwargs = dict[str, Any]


@dataclass(frozen=True)
class Constraint:
    id: str
    templates: tuple[str, ...]  # system-message phrasings; the last HELDOUT_TEMPLATES are held out
    draw: Callable[[random.Random, Answer, str], Kwargs | None]  # kwargs for (rng, answer, split); None: n/a
    comply: Callable[[Kwargs, Answer], str]  # the compliant reply
    checker: Callable[[Kwargs, str], bool]
    fields: Callable[[Kwargs], dict[str, Any]] = dict  # template fields from the kwargs
    conflicts: Callable[[Kwargs], tuple[str, ...]] = lambda kwargs: ()  # user requests it overrules (English)

    def phrasings(self, split: str) -> tuple[str, ...]:
        return split_pool(self.templates, split)

    def check(self, kwargs: Kwargs, response: str) -> bool:
        return self.checker(kwargs, response)


# --- the constraints ------------------------------------------------------------------------
def _draw_language(rng: random.Random, answer: Answer, split: str) -> Kwargs | None:
    targets = sorted(set(answer.translations) - {answer.lang})
    return {"language": rng.choice(targets)} if targets else None


def _english(rng: random.Random, answer: Answer, split: str) -> Kwargs | None:
    return {} if answer.lang == "en" else None


def _any(rng: random.Random, answer: Answer, split: str) -> Kwargs | None:
    return {}


def _count_draw(key: str, least: int, most: int, extra: Callable[[random.Random], Kwargs] = lambda rng: {}):
    """A count from `least` to `most`, at most what the answer has to say."""
    def draw(rng: random.Random, answer: Answer, split: str) -> Kwargs | None:
        top = min(most, len(answer.parts) + len(answer.extras))
        return {key: rng.randint(min(least, top), top), **extra(rng)} if top >= least else None
    return draw


def _bullets(kwargs: Kwargs, answer: Answer) -> str:
    return "\n".join(f"* {u}" for u in answer.units(kwargs["num_bullets"]))


def _check_bullets(kwargs: Kwargs, response: str) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == kwargs["num_bullets"]


def _check_paragraphs(kwargs: Kwargs, response: str) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for i, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if i not in (0, len(paragraphs) - 1):
                return False  # an empty paragraph between two dividers
            count -= 1
    return count == kwargs["num_paragraphs"]


def _check_sections(kwargs: Kwargs, response: str) -> bool:
    # IFEval counts splits on the marker and a number: at least num_sections of them.
    sections = re.split(r"\s?" + re.escape(kwargs["section_spliter"]) + r"\s?\d+\s?", response)
    return len(sections) - 1 >= kwargs["num_sections"]


def _draw_words(rng: random.Random, answer: Answer, split: str) -> Kwargs | None:
    shortest = min(len(words(s)) for s in answer.statements())
    longest = len(words(" ".join(answer.units(len(answer.parts) + len(answer.extras)))))
    if rng.random() < 0.5:  # the plain answer is too long: say it shorter
        top = max(shortest + 1, len(words(answer.text)))
        return {"num_words": rng.randint(shortest + 1, top), "relation": "less than"}
    low = len(words(answer.text)) + 1
    return {"num_words": rng.randint(low, longest), "relation": "at least"} if longest >= low else None


def _words_reply(kwargs: Kwargs, answer: Answer) -> str:
    if kwargs["relation"] == "less than":
        return next(s for s in answer.statements() if len(words(s)) < kwargs["num_words"])
    return " ".join(answer.units(len(answer.parts) + len(answer.extras)))


def _check_words(kwargs: Kwargs, response: str) -> bool:
    n = len(words(response))
    return n < kwargs["num_words"] if kwargs["relation"] == "less than" else n >= kwargs["num_words"]


def _json_reply(kwargs: Kwargs, answer: Answer) -> str:
    value: Any = int(answer.value) if answer.value.isdigit() else answer.value
    return json.dumps({"answer": value}, ensure_ascii=False)


def _check_json(kwargs: Kwargs, response: str) -> bool:
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(fence)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# Many end phrases and keywords, so that a model learns to copy them from the system message:
# the held-out ones (the last HELDOUT_VALUES) are never seen in training.
END_PHRASES = ("Is there anything else I can help with?", "Any other questions?", "Hope this helps!", "That is all.",
               "Have a nice day!", "Happy to help.", "Thanks for asking!", "Let me know if you need more.",
               "Glad I could help.", "See you soon!", "Enjoy your day!", "Stay curious!", "Talk to you later.",
               "That is my answer.", "End of answer.", "Over and out.", "Best wishes!", "Cheers!", "Take care!",
               "Ask me anything else.", "Keep learning!", "I hope that answers it.", "Have a good one!",
               "Until next time!", "Good luck with your studies!", "Farewell for now.", "Happy learning!")
KEYWORDS = ("lantern", "harbour", "compass", "meadow", "violin", "anchor", "pepper", "marble", "candle", "orchard",
            "feather", "ladder", "pebble", "thunder", "velvet", "kettle", "blanket", "bridge", "castle", "garden",
            "island", "jacket", "ribbon", "rocket", "saddle", "shadow", "silver", "spoon", "sunset", "tiger",
            "tunnel", "valley", "wagon", "window", "forest", "pillow", "river", "mountain", "basket", "butter",
            "cotton", "dragon", "engine", "falcon", "glacier", "hammer", "jungle", "lemonade", "magnet", "needle",
            "mirror", "biscuit", "tulip", "canyon", "parrot", "trumpet", "walrus", "cobweb")
HELDOUT_VALUES = {"end_phrase": 4, "keywords": 8}
# Half of the train values are coined: a few dozen fixed phrases can be memorised, a fresh word
# each time can only be copied. Words are coined letter by letter, and half of the coined end
# phrases are free strings of words, so that no closed set (the 30 syllables of an earlier
# version) is there to memorise instead. (The from-scratch d4 copies neither way: it has no
# in-context copying, README "Post-training"; SmolLM2, which has, is tuned on the same data.)
COINED_END_PHRASES = ("Signed, {w}.", "Greetings from {w}!", "Yours truly, {w}.", "{w} signing off.",
                      "Say hello to {w}!", "That is all from {w}.", "Off to {w} now.", "Regards, {w}.")
_CONSONANTS, _VOWELS = "bcdfghjklmnprstvwyz", "aeiou"
_PHRASE_ENDS = (".", "!", "?", "")


def coined_word(rng: random.Random) -> str:
    """A pronounceable made-up word of 3-8 letters: consonants and vowels alternate, from either."""
    n, vowel = rng.randint(3, 8), rng.random() < 0.3
    letters = []
    for _ in range(n):
        letters.append(rng.choice(_VOWELS if vowel else _CONSONANTS))
        vowel = not vowel if rng.random() < 0.85 else vowel
    return "".join(letters)


def _coined_phrase(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(COINED_END_PHRASES).format(w=coined_word(rng).capitalize())
    pool = split_pool(KEYWORDS, "train", HELDOUT_VALUES["keywords"])
    words = [coined_word(rng) if rng.random() < 0.6 else rng.choice(pool) for _ in range(rng.randint(1, 4))]
    return " ".join(words).capitalize() + rng.choice(_PHRASE_ENDS)


def _draw_end_phrase(rng: random.Random, answer: Answer, split: str) -> Kwargs:
    if split == "train" and rng.random() < 0.5:
        return {"end_phrase": _coined_phrase(rng)}
    return {"end_phrase": rng.choice(split_pool(END_PHRASES, split, HELDOUT_VALUES["end_phrase"]))}


def _check_end(kwargs: Kwargs, response: str) -> bool:
    return response.strip().strip('"').lower().endswith(kwargs["end_phrase"].strip().lower())


POSTSCRIPT_NOTES = {"en": "I hope this helps.", "fr": "J'espère que cela t'aide.", "es": "Espero que esto te ayude.",
                    "de": "Ich hoffe, das hilft.", "ru": "Надеюсь, это поможет."}


def _postscript(kwargs: Kwargs, answer: Answer) -> str:
    note = answer.extras[0] if answer.extras else POSTSCRIPT_NOTES[answer.lang]
    return f"{answer.text}\n\n{kwargs['postscript_marker']} {note}"


def _check_postscript(kwargs: Kwargs, response: str) -> bool:
    marker, text = kwargs["postscript_marker"], response.lower()
    pattern = {"P.P.S": r"\s*p\.\s?p\.\s?s.*$", "P.S.": r"\s*p\.\s?s\..*$"}.get(marker, r"\s*" + re.escape(marker.lower()) + r".*$")
    return re.search(pattern, text, flags=re.MULTILINE) is not None


def _draw_forbidden(rng: random.Random, answer: Answer, split: str) -> Kwargs | None:
    """Words of the plain answer (never the answer or the title) that one of its other statements avoids."""
    protected = {w.lower() for w in words(answer.value) + words(answer.title)} | set(FUNCTION_WORDS[answer.lang].split())
    candidates = sorted({w for w in letter_words(answer.text) if len(w) >= 4} - protected)
    rng.shuffle(candidates)
    for word in candidates:
        chosen = [word]
        extra = [w for w in candidates if w != word]
        if extra and rng.random() < 0.4:
            chosen.append(rng.choice(extra))
        if any(not any(contains(s, w) for w in chosen) for s in answer.rephrasings):
            return {"forbidden_words": sorted(chosen)}
    return None


def _avoiding(kwargs: Kwargs, answer: Answer) -> str:
    return next(s for s in answer.statements() if not any(contains(s, w) for w in kwargs["forbidden_words"]))


def _check_forbidden(kwargs: Kwargs, response: str) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE)
                   for w in kwargs["forbidden_words"])


def _draw_keywords(rng: random.Random, answer: Answer, split: str) -> Kwargs | None:
    if answer.lang != "en":
        return None
    pool = split_pool(KEYWORDS, split, HELDOUT_VALUES["keywords"])
    words = rng.sample(pool, rng.choice((1, 2)))
    if split == "train" and rng.random() < 0.5:  # a list, not a set: set order varies with PYTHONHASHSEED
        words = [coined_word(rng) if rng.random() < 0.7 else w for w in words]
    return {"keywords": sorted(set(words))}


def _check_keywords(kwargs: Kwargs, response: str) -> bool:
    return all(re.search(re.escape(k), response, flags=re.IGNORECASE) for k in kwargs["keywords"])


PERSONAS = {  # name: (as the system message says it, the opening line, the marker words a reply must use)
    "pirate": ("a pirate", "Arr, matey!", ("arr", "matey", "ahoy")),
    "robot": ("a robot", "Beep boop.", ("beep", "boop")),
    "cowboy": ("a cowboy", "Howdy, partner!", ("howdy", "partner", "yeehaw")),
    "herald": ("a royal herald", "Hear ye, hear ye!", ("hear ye", "hark")),
}


def _draw_persona(rng: random.Random, answer: Answer, split: str) -> Kwargs | None:
    return {"persona": rng.choice(sorted(PERSONAS))} if answer.lang == "en" else None


def _check_persona(kwargs: Kwargs, response: str) -> bool:
    return any(contains(response, marker) for marker in PERSONAS[kwargs["persona"]][2])


def _draw_socratic(rng: random.Random, answer: Answer, split: str) -> Kwargs | None:
    if answer.guide is None or contains(answer.guide, answer.value):
        return None
    return {"answer": answer.value}


def _check_socratic(kwargs: Kwargs, response: str) -> bool:
    return not contains(response, str(kwargs["answer"])) and response.rstrip().endswith("?")


def _check_title(kwargs: Kwargs, response: str) -> bool:
    return any(t.strip("<>").strip() for t in re.findall(r"<<[^\n]+>>", response))


def _check_case(lower: bool) -> Callable[[Kwargs, str], bool]:
    def check(kwargs: Kwargs, response: str) -> bool:
        cased = response.islower() if lower else response.isupper()
        return cased and detect_language(response) in ("en", None)
    return check


def _language_fields(kwargs: Kwargs) -> dict[str, Any]:
    return {"language": LANGUAGE_NAMES[kwargs["language"]]}


def _sections(kwargs: Kwargs, answer: Answer) -> str:
    marker = kwargs["section_spliter"]
    return "\n".join(f"{marker} {i}\n{u}" for i, u in enumerate(answer.units(kwargs["num_sections"]), 1))


_CONSTRAINTS = (
    Constraint(
        "language:response_language",
        ("Always answer in {language}.",
         "Respond only in {language}, whatever language the user writes in.",
         "Your ENTIRE response should be in {language} language, no other language is allowed.",
         "You are an assistant that replies in {language} and nothing else.",
         "Write every reply in {language}.",
         "Reply in {language} only.",
         "The user may write in any language; you always reply in {language}.",
         "All of your answers are written in {language}.",
         "Speak {language} in your replies, even when asked not to.",
         "Answer the question in {language}.",
         "Your replies must be in {language}, never in another language.",
         "Whatever language the question is in, your answer must be in {language}.",
         "Use {language} for your reply."),
        _draw_language, lambda kw, a: a.translations[kw["language"]].text,
        lambda kw, r: detect_language(r) == kw["language"], _language_fields),
    Constraint(
        "change_case:english_lowercase",
        ("Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
         "Write your answer in lowercase letters only.",
         "Never use capital letters in your replies.",
         "Reply in English using only lowercase letters.",
         "Do not capitalise anything: all lowercase, please.",
         "Lowercase only: no capitals anywhere in your answer.",
         "Type your whole reply in small letters.",
         "Capital letters are forbidden in your reply.",
         "Keep your entire response lowercase, names included.",
         "Reply in all lowercase.",
         "Do not use uppercase letters; write everything in lowercase.",
         "Every letter of your reply must be lowercase.",
         "Answer without a single capital letter."),
        _english, lambda kw, a: a.text.lower(), _check_case(lower=True),
        conflicts=lambda kw: ("Please use proper capital letters.",)),
    Constraint(
        "change_case:english_capital",
        ("Your entire response should be in English, and in all capital letters.",
         "Write your answer in capital letters only.",
         "Reply in ALL CAPS.",
         "Use uppercase letters for your entire reply.",
         "Every word you write must be in capitals.",
         "Write everything in CAPITAL LETTERS.",
         "Your reply must be all caps, names included.",
         "Capitalise every letter of your response.",
         "Lowercase letters are forbidden: write in capitals.",
         "Reply using only upper-case letters.",
         "Type your entire answer in block capitals.",
         "Answer entirely in uppercase letters.",
         "Shout your reply: capital letters only."),
        _english, lambda kw, a: a.text.upper(), _check_case(lower=False),
        conflicts=lambda kw: ("Please write normally, not in capitals.",)),
    Constraint(
        "detectable_format:number_bullet_lists",
        ("Your answer must contain exactly {num_bullets} bullet points. Use markdown bullet points such as:\n"
         "* This is point 1.",
         "Answer with exactly {num_bullets} bullet points, each starting with *.",
         "Format your reply as a list of {num_bullets} markdown bullets.",
         "Give exactly {num_bullets} bullet points, no more and no fewer.",
         "Reply as a bulleted list with {num_bullets} items.",
         "List your answer as {num_bullets} bullets that start with *.",
         "Break the answer into {num_bullets} bullet points.",
         "Respond with {num_bullets} markdown bullet points and nothing else.",
         "Present your reply as exactly {num_bullets} * bullets.",
         "Give your reply in {num_bullets} bullet points, one per line.",
         "Your answer should be a list of {num_bullets} bullet points.",
         "Your reply must be {num_bullets} bullet points (lines starting with *).",
         "Use a markdown list of exactly {num_bullets} points."),
        _count_draw("num_bullets", 1, 5), _bullets, _check_bullets,
        conflicts=lambda kw: ("Please answer in one sentence, no list.",)),
    Constraint(
        "length_constraints:number_paragraphs",
        ("There should be {num_paragraphs} paragraphs. Paragraphs are separated with the markdown divider: ***",
         "Write exactly {num_paragraphs} paragraphs, separated by ***.",
         "Your answer must have {num_paragraphs} paragraphs with *** between them.",
         "Split your reply into {num_paragraphs} paragraphs divided by the *** marker.",
         "Answer in {num_paragraphs} paragraphs; put *** between paragraphs.",
         "Reply in {num_paragraphs} paragraphs, with a *** line between each two.",
         "Your response needs {num_paragraphs} paragraphs split by ***.",
         "Compose {num_paragraphs} paragraphs and divide them using ***.",
         "Separate your {num_paragraphs} paragraphs with the *** divider.",
         "Format the answer as {num_paragraphs} paragraphs joined by ***.",
         "I want {num_paragraphs} paragraphs in your reply, separated by ***.",
         "Use exactly {num_paragraphs} paragraphs and separate them with ***.",
         "Give {num_paragraphs} paragraphs, each divided from the next by ***."),
        _count_draw("num_paragraphs", 2, 4),  # from 2: one paragraph is any plain answer
        lambda kw, a: "\n\n***\n\n".join(a.units(kw["num_paragraphs"])),
        _check_paragraphs),
    Constraint(
        "detectable_format:multiple_sections",
        ("Your response must have {num_sections} sections. Mark the beginning of each section with {section_spliter} X.",
         "Organise your answer into {num_sections} sections, headed {section_spliter} 1, {section_spliter} 2 and so on.",
         "Write {num_sections} sections, each starting with {section_spliter} and its number.",
         "Divide your reply into {num_sections} numbered sections ({section_spliter} X).",
         "Answer in {num_sections} sections; begin each with {section_spliter} and a number.",
         "Split the answer into {num_sections} sections, each headed {section_spliter} N.",
         "Give {num_sections} sections in your reply, marked {section_spliter} 1, {section_spliter} 2 and so on.",
         "Your reply needs {num_sections} sections, each beginning with {section_spliter} and its number.",
         "Lay out the answer in {num_sections} sections titled {section_spliter} 1, {section_spliter} 2, and so on.",
         "Break your response into {num_sections} {section_spliter}-numbered sections.",
         "Write the reply in {num_sections} sections; head each one with {section_spliter} and a number.",
         "Structure the reply as {num_sections} parts, each introduced by {section_spliter} followed by its number.",
         "Use {num_sections} sections labelled {section_spliter} 1 onwards."),
        _count_draw("num_sections", 1, 4, lambda rng: {"section_spliter": rng.choice(("SECTION", "Section"))}),
        _sections, _check_sections, conflicts=lambda kw: ("No sections, please.",)),
    Constraint(
        "length_constraints:number_words",
        ("Answer with {relation} {num_words} words.",
         "Your reply must contain {relation} {num_words} words.",
         "Use {relation} {num_words} words in your answer.",
         "Write {relation} {num_words} words.",
         "Respond in {relation} {num_words} words.",
         "Keep your reply to {relation} {num_words} words.",
         "Your answer should be {relation} {num_words} words long.",
         "Reply with {relation} {num_words} words.",
         "Write your answer in {relation} {num_words} words.",
         "Aim for {relation} {num_words} words.",
         "Use a word count of {relation} {num_words}.",
         "The length of your reply: {relation} {num_words} words.",
         "Make sure your response has {relation} {num_words} words."),
        _draw_words, _words_reply, _check_words,
        lambda kw: {"num_words": kw["num_words"], "relation": {"less than": "fewer than"}.get(kw["relation"], kw["relation"])},
        lambda kw: ("Please explain in detail.",) if kw["relation"] == "less than" else ("Answer in one word.",)),
    Constraint(
        "detectable_format:json_format",
        ("Entire output should be wrapped in JSON format.",
         "Reply with a JSON object only.",
         "Answer in JSON, with no other text.",
         "Your whole response must be valid JSON.",
         "Output JSON and nothing else.",
         "Respond in JSON only.",
         "Your reply must be a JSON object and nothing more.",
         "Give the answer as JSON, without any prose around it.",
         "Return valid JSON only.",
         "Reply in JSON format; no plain text.",
         "Answer with JSON that a program can parse.",
         "Only machine-readable JSON is allowed in your reply.",
         "Format the reply as a single JSON value."),
        _any, _json_reply, _check_json, conflicts=lambda kw: ("Answer in plain text, not JSON.",)),
    Constraint(
        "startend:end_checker",
        ("Finish your response with this exact phrase: {end_phrase} No other words should follow this phrase.",
         'End every reply with the words "{end_phrase}"',
         "Always close your answer with: {end_phrase}",
         "Your last words must be: {end_phrase}",
         "Conclude each response with the phrase {end_phrase}",
         "End your response with the exact phrase {end_phrase}",
         "Sign off every answer with: {end_phrase}",
         "The last thing you write must be {end_phrase}",
         "Close each reply with these words: {end_phrase}",
         'Always finish your answer with "{end_phrase}"',
         "Put {end_phrase} at the very end of your reply.",
         "Make {end_phrase} the final words of your reply.",
         "Whatever you say, finish with exactly: {end_phrase}"),
        _draw_end_phrase,
        lambda kw, a: f"{a.text} {kw['end_phrase']}", _check_end),
    Constraint(
        "detectable_content:postscript",
        ("At the end of your response, please explicitly add a postscript starting with {postscript_marker}",
         "Add a postscript beginning with {postscript_marker} after your answer.",
         "Always end with a short postscript that starts with {postscript_marker}",
         "After the answer, write a {postscript_marker} note.",
         "Include a postscript ({postscript_marker}) at the end of every reply.",
         "End your reply with a postscript that begins {postscript_marker}",
         "Add a {postscript_marker} at the end of your answer.",
         "After answering, append a postscript starting with {postscript_marker}",
         "Every reply ends with a {postscript_marker} postscript.",
         "Finish with a postscript marked {postscript_marker}",
         "Write a postscript beginning with {postscript_marker} below your answer.",
         "Close with a postscript introduced by {postscript_marker}",
         "Put a {postscript_marker} line after your answer."),
        lambda rng, a, split: {"postscript_marker": rng.choice(("P.S.", "P.P.S"))}, _postscript, _check_postscript,
        conflicts=lambda kw: ("No postscript, please.",)),
    Constraint(
        "keywords:forbidden_words",
        ("Do not include keywords {words} in the response.",
         "Never use the words {words}.",
         "Avoid the words {words} in your reply.",
         "Your answer must not contain the words {words}.",
         "Answer without using {words}.",
         "Refrain from using {words}.",
         "Your reply must avoid {words}.",
         "Steer clear of the words {words} in your answer.",
         "Answer, but do not use {words}.",
         "Leave the words {words} out of your reply.",
         "Using {words} in your answer is not allowed.",
         "The words {words} are banned from your reply.",
         "Do not write {words} anywhere in your answer."),
        _draw_forbidden, _avoiding, _check_forbidden, lambda kw: {"words": _quoted(kw["forbidden_words"])}),
    Constraint(
        "keywords:existence",
        ("Include keywords {words} in the response.",
         "Your reply must mention the words {words}.",
         "Use the words {words} somewhere in your answer.",
         "Make sure the words {words} appear in your reply.",
         "Work the words {words} into your answer.",
         "Your reply must include the words {words}.",
         "Be sure to use {words} in your answer.",
         "Include {words} in your reply.",
         "Somewhere in your answer, write {words}.",
         "The words {words} belong in your answer.",
         "Put the words {words} in your reply.",
         "Your answer has to contain {words}.",
         "Mention {words} in what you write."),
        _draw_keywords, lambda kw, a: f"{a.text} Keywords: {', '.join(kw['keywords'])}.", _check_keywords,
        lambda kw: {"words": _quoted(kw["keywords"])}),
    Constraint(
        "startend:quotation",
        ("Wrap your entire response with double quotation marks.",
         "Put your whole answer inside double quotes.",
         "Enclose every reply in double quotation marks.",
         "Your response must start and end with a double quote.",
         'Quote your entire answer, like "this".',
         "Put double quotation marks around your whole reply.",
         "Your entire answer goes inside double quotes.",
         "Begin and end your reply with a double quotation mark.",
         "Place the whole response in double quotes.",
         "Reply inside double quotation marks.",
         "Wrap the answer in double quotes.",
         "Surround the full reply with double quotes.",
         "Write the answer between a pair of double quotation marks."),
        _any, lambda kw, a: f'"{a.text}"', lambda kw, r: len(r.strip()) > 1 and r.strip()[0] == r.strip()[-1] == '"',
        conflicts=lambda kw: ("No quotation marks, please.",)),
    Constraint(
        "detectable_format:title",
        ("Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
         "Start with a title in double angle brackets, like <<title>>.",
         "Give your reply a title wrapped in << and >>.",
         "Put a title in <<double angular brackets>> before the answer.",
         "Every answer needs a title such as <<My title>>.",
         "Give your answer a title in double angular brackets, e.g. <<answer>>.",
         "Open your reply with a title like <<a short title>>.",
         "Title your answer using << and >>.",
         "Your reply starts with a title in <<double angle brackets>>.",
         "Write a title wrapped in <<>> first, then the answer.",
         "Add a title such as <<Facts>> at the top of your reply.",
         "Head your response with a title inside << >>.",
         "Begin with <<a title>> on its own line."),
        lambda rng, a, split: {} if a.title else None, lambda kw, a: f"<<{a.title}>>\n{a.text}", _check_title,
        conflicts=lambda kw: ("No title, please.",)),
    Constraint(
        "punctuation:no_comma",
        ("In your entire response, refrain from the use of any commas.",
         "Do not use any commas.",
         "Write your reply without a single comma.",
         "Commas are not allowed in your answer.",
         "Avoid commas completely.",
         "No commas anywhere in your reply.",
         "Write without using commas.",
         "Your reply may not contain a comma.",
         "Answer without any commas.",
         "Do not put a comma in your answer.",
         "Commas are forbidden in your response.",
         "Your response must contain no commas at all.",
         "Leave out every comma."),
        _any, lambda kw, a: a.text.replace(",", ""), lambda kw, r: "," not in r),
    Constraint(
        "opengpt4:persona",
        ("You are {persona}. Stay in character.",
         "Talk like {persona} in every reply.",
         "Answer as {persona} would.",
         "Play the role of {persona} while answering.",
         "You speak like {persona}.",
         "Pretend to be {persona} when you answer.",
         "Reply in character as {persona}.",
         "Take on the role of {persona}.",
         "From now on you are {persona}: answer like one.",
         "Answer every question the way {persona} would talk.",
         "Be {persona} in all your replies.",
         "Respond in the voice of {persona}.",
         "Adopt the persona of {persona} for all answers."),
        _draw_persona, lambda kw, a: f"{PERSONAS[kw['persona']][1]} {a.text}", _check_persona,
        lambda kw: {"persona": PERSONAS[kw["persona"]][0]}, lambda kw: ("Please talk normally.",)),
    Constraint(
        "opengpt4:socratic",
        ("You are a Socratic tutor: never state the answer, guide the student with a question.",
         "Act as a tutor. Do not give the final answer; reply with a question that helps the student find it.",
         "Help the student think for themselves: never reveal the answer, and end with a question.",
         "You are a patient teacher who answers questions with guiding questions, never with the answer.",
         "Tutor mode: lead the student towards the answer without ever saying it, and finish with a question.",
         "You are a tutor who never gives answers: ask a guiding question instead.",
         "Do not solve it for the student; answer with a question that leads them on.",
         "Teach by asking: keep the answer hidden and end your reply with a question.",
         "As a tutor, never say the result; prompt the student with a question.",
         "Guide the learner with questions only; do not reveal the final answer.",
         "Be a Socratic teacher: help with a question, never with the answer itself.",
         "Never tell the student the solution; ask a question that helps them work it out.",
         "As a Socratic tutor, respond only with guiding questions and keep the answer to yourself."),
        _draw_socratic, lambda kw, a: a.guide, _check_socratic,
        lambda kw: {}, lambda kw: ("Just tell me the answer.", "Please give me the answer directly.")),
)
CONSTRAINTS: dict[str, Constraint] = {c.id: c for c in _CONSTRAINTS}


def check(constraint_id: str, kwargs: Kwargs, response: str) -> bool:
    """Whether `response` obeys constraint `constraint_id` with `kwargs`."""
    if constraint_id not in CONSTRAINTS:
        raise UnknownConstraint(constraint_id, sorted(CONSTRAINTS))
    return CONSTRAINTS[constraint_id].check(kwargs, response)
