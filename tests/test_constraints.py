"""System-message constraint checkers: hand-written replies that obey and break each one (IFEval's
semantics where the id is IFEval's), the language detector, and compliant replies generated
from the world passing their own checker over many seeds."""

import random

import pytest

from opengpt4.data.chat.constraints import CONSTRAINTS, HELDOUT_TEMPLATES, check
from opengpt4.data.chat.conversations import ChatWorld
from opengpt4.data.chat.text import detect_language
from opengpt4.data.world import World
from opengpt4.errors import UnknownConstraint

# IFEval's instruction ids (google-research instruction_following_eval/instructions_registry.py).
IFEVAL_IDS = {"keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
              "language:response_language", "length_constraints:number_sentences",
              "length_constraints:number_paragraphs", "length_constraints:number_words",
              "length_constraints:nth_paragraph_first_word", "detectable_content:number_placeholders",
              "detectable_content:postscript", "detectable_format:number_bullet_lists",
              "detectable_format:constrained_response", "detectable_format:number_highlighted_sections",
              "detectable_format:multiple_sections", "detectable_format:json_format", "detectable_format:title",
              "combination:two_responses", "combination:repeat_prompt", "startend:end_checker",
              "change_case:capital_word_frequency", "change_case:english_capital", "change_case:english_lowercase",
              "punctuation:no_comma", "startend:quotation"}

# (id, kwargs, response, expected)
CASES = [
    ("language:response_language", {"language": "fr"}, "Zeildar Koufo exerce le métier de peintre.", True),
    ("language:response_language", {"language": "fr"}, "Zeildar Koufo works as a painter.", False),
    ("language:response_language", {"language": "de"}, "Die Geburtsstadt von Bekfa ist Staikon.", True),
    ("language:response_language", {"language": "es"}, "Kebeilix Stixkren nació en Kalrar.", True),
    ("language:response_language", {"language": "ru"}, "По профессии Kreipei Zexmor — пекарь.", True),
    ("language:response_language", {"language": "fr"}, "Staikon.", False),  # names only: no language at all
    ("change_case:english_lowercase", {}, "bekfa drenselku was born in staikon.", True),
    ("change_case:english_lowercase", {}, "Bekfa drenselku was born in staikon.", False),
    ("change_case:english_lowercase", {}, "staikon.", True),  # no word of any language: passes, as in IFEval
    ("change_case:english_lowercase", {}, "la ville natale de bekfa est staikon.", False),  # French
    ("change_case:english_lowercase", {}, "42.", False),  # nothing cased: str.islower() is False
    ("change_case:english_capital", {}, "THE ANSWER IS 14.", True),
    ("change_case:english_capital", {}, "THE ANSWER is 14.", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "- one\n  * two\nthree", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two\n* three", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 1}, "**bold** text\n* one", True),  # ** is no bullet
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "One.\n\n***\n\nTwo.", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\nOne.\n***\nTwo.\n***", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "One.\n***\n***\nTwo.", False),  # empty middle
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "One.\n***\nTwo.", False),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nOne.\nSECTION 2\nTwo.", True),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nOne and two.", False),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 1},
     "SECTION 1\nOne.", False),  # the marker is case-sensitive
    ("length_constraints:number_words", {"num_words": 4, "relation": "less than"}, "It is Staikon.", True),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "It is Staikon.", False),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, "It's Staikon.", True),  # It, s
    ("length_constraints:number_words", {"num_words": 4, "relation": "at least"}, "It is Staikon.", False),
    ("detectable_format:json_format", {}, '{"answer": "Staikon"}', True),
    ("detectable_format:json_format", {}, '```json\n{"answer": 14}\n```', True),
    ("detectable_format:json_format", {}, "answer: Staikon", False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "It is Staikon. Any other questions?", True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, '"It is Staikon. any other questions?"', True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? It is Staikon.", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Staikon.\n\nP.S. I hope this helps.", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Staikon.\np.s. see you", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Staikon. PS see you", False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Staikon.\nP.P.S. see you", True),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Staikon.\nP.S. see you", False),
    ("keywords:forbidden_words", {"forbidden_words": ["born"]}, "Bekfa came into the world in Staikon.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["born"]}, "Bekfa was reborn in Staikon.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["born", "city"]}, "Bekfa was BORN in Staikon.", False),
    ("keywords:existence", {"keywords": ["lantern", "meadow"]}, "Staikon. Keywords: Lantern, meadow.", True),
    ("keywords:existence", {"keywords": ["lantern", "meadow"]}, "Staikon. Keywords: lantern.", False),
    ("startend:quotation", {}, '  "It is Staikon."  ', True),
    ("startend:quotation", {}, '"It is Staikon.', False),
    ("startend:quotation", {}, '"', False),
    ("detectable_format:title", {}, "<<Bekfa>>\nBekfa was born in Staikon.", True),
    ("detectable_format:title", {}, "<<  >>\nBekfa was born in Staikon.", False),
    ("detectable_format:title", {}, "<<Bekfa\n>> was born in Staikon.", False),
    ("punctuation:no_comma", {}, "In fact Bekfa was born in Staikon.", True),
    ("punctuation:no_comma", {}, "In fact, Bekfa was born in Staikon.", False),
    ("opengpt4:persona", {"persona": "pirate"}, "Arr, matey! Bekfa was born in Staikon.", True),
    ("opengpt4:persona", {"persona": "pirate"}, "Beep boop. Bekfa was born in Staikon.", False),
    ("opengpt4:persona", {"persona": "herald"}, "Hear ye! Bekfa was born in Staikon.", True),
    ("opengpt4:persona", {"persona": "robot"}, "Beeping along, Bekfa was born in Staikon.", False),  # whole words
    ("opengpt4:socratic", {"answer": "Staikon"}, "What do you know about Bekfa? Where was Bekfa born?", True),
    ("opengpt4:socratic", {"answer": "Staikon"}, "Was Bekfa born in staikon?", False),  # states it (any case)
    ("opengpt4:socratic", {"answer": "Staikon"}, "What do you know about Bekfa?  Think about it.", False),
    ("opengpt4:socratic", {"answer": "14"}, "What is 114 - 100? ", True),  # 14 only as a whole number
]


@pytest.mark.parametrize(("cid", "kwargs", "response", "expected"), CASES)
def test_checker_on_hand_written_replies(cid, kwargs, response, expected):
    assert check(cid, kwargs, response) is expected


def test_every_constraint_has_hand_written_positive_and_negative_cases():
    for cid in CONSTRAINTS:
        assert {expected for c, _, _, expected in CASES if c == cid} == {True, False}, cid


def test_at_least_16_types_with_ifeval_ids_where_they_overlap_and_ours_prefixed():
    assert len(CONSTRAINTS) >= 16
    for cid in CONSTRAINTS:
        assert cid in IFEVAL_IDS or cid.startswith("opengpt4:"), cid


def test_unknown_constraint_is_a_typed_error_naming_it():
    with pytest.raises(UnknownConstraint, match="no:such"):
        check("no:such", {}, "x")


def test_detect_language_by_the_worlds_words_and_script():
    assert detect_language("Der Satz von Keilthan wurde 1901 bewiesen.") == "de"
    assert detect_language("Le théorème de Keilthan a été démontré en 1901.") == "fr"
    assert detect_language("El teorema de Keilthan se demostró en 1901.") == "es"
    assert detect_language("Теорема Keilthan доказана в 1901 году.") == "ru"
    assert detect_language("The Keilthan theorem was proved in 1901.") == "en"
    assert detect_language("Keilthan 1901") is None


def test_phrasings_split_and_format_with_their_kwargs():
    world = World.generate(0, "test")
    chat = ChatWorld(world, 0)
    for constraint in CONSTRAINTS.values():
        assert len(constraint.templates) >= HELDOUT_TEMPLATES + 3
        assert len(set(constraint.templates)) == len(constraint.templates)
        train, heldout = constraint.phrasings("train"), constraint.phrasings("heldout")
        assert not set(train) & set(heldout) and len(heldout) == HELDOUT_TEMPLATES
        s = chat.constraint(random.Random(0), constraint, "train")
        kwargs = s.meta["constraints"][0]["kwargs"]
        for template in constraint.templates:
            assert "{" not in template.format(**constraint.fields(kwargs))


@pytest.fixture(scope="module")
def chat():
    return ChatWorld(World.generate(0, "test"), 0)


@pytest.mark.parametrize("cid", sorted(CONSTRAINTS))
def test_compliant_reply_passes_its_checker_over_many_seeds(chat, cid):
    """Property: for every answer the world gives (facts in five languages, arithmetic) and every
    kwargs drawn for it, comply() passes check(); the plain answer fails most (the constraint asks
    for something), except where a plain answer often already obeys (no commas, word bounds)."""
    constraint = CONSTRAINTS[cid]
    drawn, plain_fails = 0, 0
    for seed in range(150):
        rng = random.Random(seed)
        split = ("train", "heldout")[seed % 2]
        if seed % 3:
            fact, lang, question = chat._draw_fact(rng, split)
            answer = chat.fact_answer(rng, fact, lang, split, question)
        else:
            answer = chat.math_answer(rng, rng.choice(chat.problems[split]))
        kwargs = constraint.draw(rng, answer, split)
        if kwargs is None:
            continue
        drawn += 1
        assert constraint.check(kwargs, constraint.comply(kwargs, answer)), (kwargs, constraint.comply(kwargs, answer))
        plain_fails += not constraint.check(kwargs, answer.text)
    assert drawn >= 40  # the type applies to a good share of answers
    if cid not in ("punctuation:no_comma", "length_constraints:number_words"):
        assert plain_fails >= drawn * 0.9
