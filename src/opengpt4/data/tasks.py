"""The world's task domains: arithmetic word problems with worked solutions, and small Python
functions with docstrings and asserts (a HumanEval miniature). `World` draws names for them
and splits them into train, val and eval."""

from __future__ import annotations

import random
from dataclasses import dataclass


# --- arithmetic word problems -----------------------------------------------------------
@dataclass(frozen=True)
class MathProblem:
    question: str
    solution: str  # one line of steps "a op b = c", ending "The answer is N."
    answer: int


ITEMS = ("apples", "pencils", "marbles", "stamps", "shells", "coins", "cards", "buttons")
MATH_TEMPLATES = (  # (question, solution); {r} is the answer
    ("{A} has {a} {item}. {A} buys {b} more and then gives {c} to {B}. How many {item} does {A} have now?",
     "{A} starts with {a} {item}. After buying {b} more, {A} has {a} + {b} = {x} {item}. "
     "After giving {c} to {B}, {A} has {x} - {c} = {r} {item}."),
    ("{A} buys {n} boxes of {item} with {m} {item} in each box, and already had {k}. How many {item} does {A} have in total?",
     "The boxes hold {n} * {m} = {x} {item}. With the {k} {A} already had, that makes {x} + {k} = {r} {item}."),
    ("{A} has {t} {item} and shares them equally among {n} friends. How many {item} does each friend get?",
     "Each friend gets {t} / {n} = {r} {item}."),
    ("One {product} costs {p} coins. {A} buys {n} of them and pays with {b} coins. How much change does {A} get?",
     "{n} of them cost {n} * {p} = {x} coins. The change is {b} - {x} = {r} coins."),
    ("{A} is {a} years old. {B} is {b} years older than {A}, and {C} is {c} years younger than {B}. How old is {C}?",
     "{B} is {a} + {b} = {x} years old. {C} is {x} - {c} = {r} years old."),
    ("A train leaves {city} at {s} km per hour for {h} hours, then travels {k} more km to reach {city2}. "
     "How many km does the train travel in total?",
     "In {h} hours the train travels {s} * {h} = {x} km. Adding the last {k} km gives {x} + {k} = {r} km."),
    ("{A} saves {s} coins every week for {w} weeks and then spends {t} coins. How many coins does {A} have left?",
     "{A} saves {s} * {w} = {x} coins. After spending {t}, {A} has {x} - {t} = {r} coins."),
    ("The book {book} has {p} pages. {A} reads {d} pages a day for {n} days. How many pages are left to read?",
     "{A} reads {d} * {n} = {x} pages. That leaves {p} - {x} = {r} pages."),
)


def math_problem(rng: random.Random, names: dict[str, list[str]]) -> MathProblem:
    """A 1-2 step problem with small integers, set in the world (its people, cities, products, books)."""
    a_, b_, c_ = rng.sample(names["person"], 3)
    city, city2 = rng.sample(names["city"], 2)
    v = dict(A=a_, B=b_, C=c_, city=city, city2=city2, item=rng.choice(ITEMS),
             product=rng.choice(names["product"]), book=rng.choice(names["book"]))
    ri, i = rng.randint, rng.randrange(len(MATH_TEMPLATES))
    if i in (0, 4):  # x = a + b, r = x - c
        v.update(a=ri(3, 30), b=ri(2, 15))
        v["x"] = v["a"] + v["b"]
        v["c"] = ri(1, v["x"] - 2)  # at least 2 left: "1 apples" reads badly
        v["r"] = v["x"] - v["c"]
    elif i == 1:
        v.update(n=ri(2, 9), m=ri(2, 12), k=ri(1, 20))
        v["x"] = v["n"] * v["m"]
        v["r"] = v["x"] + v["k"]
    elif i == 2:
        v.update(n=ri(2, 9), r=ri(2, 12))
        v["t"] = v["n"] * v["r"]
    elif i == 3:
        v.update(n=ri(2, 6), p=ri(2, 15))
        v["x"] = v["n"] * v["p"]
        v["b"] = (v["x"] // 10 + ri(1, 3)) * 10
        v["r"] = v["b"] - v["x"]
    elif i == 5:
        v.update(s=ri(20, 90), h=ri(2, 6), k=ri(5, 50))
        v["x"] = v["s"] * v["h"]
        v["r"] = v["x"] + v["k"]
    elif i == 6:
        v.update(s=ri(2, 20), w=ri(2, 10))
        v["x"] = v["s"] * v["w"]
        v["t"] = ri(1, v["x"] - 2)
        v["r"] = v["x"] - v["t"]
    else:
        v.update(d=ri(5, 30), n=ri(2, 7))
        v["x"] = v["d"] * v["n"]
        v["p"] = v["x"] + ri(10, 200)
        v["r"] = v["p"] - v["x"]
    question, solution = MATH_TEMPLATES[i]
    return MathProblem(question.format(**v), f"{solution.format(**v)} The answer is {v['r']}.", v["r"])


# --- small Python functions (a HumanEval miniature) ---------------------------------------
CODE_WORDS = ("apple", "banana", "cactus", "kiwi", "lemon", "mango", "pear", "radar", "salad", "tomato", "walnut",
               "level", "orange", "stars", "fig", "plum", "pineapple", "blueberry", "watermelon")
# (name, argument, docstring, returned expression, input kind, parameters); {k} is the parameter
FUNCTIONS = (
    ("add_{k}", "x", "Return x plus {k}.", "x + {k}", "int", range(1, 31)),
    ("times_{k}", "x", "Return x multiplied by {k}.", "x * {k}", "int", range(2, 13)),
    ("square_plus_{k}", "x", "Return the square of x plus {k}.", "x * x + {k}", "int", range(1, 21)),
    ("mod_{k}", "x", "Return the remainder of x divided by {k}.", "x % {k}", "nat", range(2, 13)),
    ("sum_above_{k}", "xs", "Return the sum of the numbers in xs that are greater than {k}.",
     "sum(x for x in xs if x > {k})", "list", range(0, 21)),
    ("count_above_{k}", "xs", "Return how many numbers in xs are greater than {k}.",
     "len([x for x in xs if x > {k}])", "list", range(0, 21)),
    ("multiples_of_{k}", "xs", "Return the numbers in xs that are divisible by {k}, in order.",
     "[x for x in xs if x % {k} == 0]", "list", range(2, 10)),
    ("max_plus_{k}", "xs", "Return the largest number in xs plus {k}.", "max(xs) + {k}", "list", range(1, 16)),
    ("count_{k}", "s", "Return how many times the letter '{k}' appears in s.", "s.count('{k}')", "str", "aeiolnrst"),
    ("starts_with_{k}", "s", "Return True if s starts with the letter '{k}'.", "s.startswith('{k}')", "str", "abcklmprstw"),
    ("repeat_{k}", "s", "Return s repeated {k} times.", "s * {k}", "str", range(2, 6)),
    ("replace_{k[0]}_{k[1]}", "s", "Return s with every letter '{k[0]}' replaced by '{k[1]}'.",
     "s.replace('{k[0]}', '{k[1]}')", "str", ("ae", "ao", "ea", "eo", "ia", "oa", "ou", "ai", "lr", "rl", "tn")),
    ("longer_than_{k}", "s", "Return True if s has more than {k} letters.", "len(s) > {k}", "str", range(3, 9)),
    ("suffix_{k}", "s", "Return s followed by '{k}'.", "s + '{k}'", "str", ("ing", "er", "ly", "ed", "est", "ful")),
)


@dataclass(frozen=True)
class Function:
    name: str
    arg: str
    doc: str
    expression: str  # what it returns
    inputs: str  # "int" | "nat" | "list" | "str"

    @classmethod
    def of(cls, family: tuple, param: object) -> Function:
        name, arg, doc, expression, inputs, _ = family
        return cls(name.format(k=param), arg, doc.format(k=param), expression.format(k=param), inputs)

    def __call__(self, x: object) -> object:
        return eval(f"lambda {self.arg}: {self.expression}")(x)  # our own generated code

    def _draw(self, rng: random.Random, n: int) -> list:
        """n distinct inputs whose outputs are not all equal, so that a constant cannot pass."""
        while True:
            if self.inputs == "str":
                xs = rng.sample(CODE_WORDS, n)
            else:
                draw = {"int": lambda: rng.randint(-20, 20), "nat": lambda: rng.randint(0, 50),
                        "list": lambda: [rng.randint(0, 30) for _ in range(rng.randint(3, 6))]}[self.inputs]
                xs = [draw() for _ in range(n)]
            if n < 2 or len({repr(self(x)) for x in xs}) > 1:
                return xs

    @property
    def prompt(self) -> str:
        (x,) = self._draw(random.Random(f"function:{self.name}"), 1)
        return f'def {self.name}({self.arg}):\n    """{self.doc}\n\n    >>> {self.name}({x!r})\n    {self(x)!r}\n    """\n'

    @property
    def solution(self) -> str:
        return f"    return {self.expression}\n"

    def asserts(self, rng: random.Random, n: int) -> str:
        return "".join(f"assert {self.name}({x!r}) == {self(x)!r}\n" for x in self._draw(rng, n))

    @property
    def tests(self) -> str:
        return self.asserts(random.Random(f"function:{self.name}:tests"), 3)

    def render(self, rng: random.Random) -> str:
        return f"{self.prompt}{self.solution}\n\n{self.asserts(rng, rng.randint(2, 3))}"
