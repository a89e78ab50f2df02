"""Deterministic English-like documents for end-to-end tests: varied enough to pass the
quality and repetition rules, and distinct enough that no two are near-duplicates."""

import random

ADJ = ("old quiet bright narrow heavy gentle busy distant green cold warm early late broad "
       "small famous hidden simple strange careful").split()
NOUN = ("farmer teacher river market bridge village doctor sailor garden library window road "
        "mountain harbour baker student letter engine forest castle painter kitchen storm "
        "valley bell lamp soldier merchant orchard clock").split()
VERB = ("crossed watched built carried found opened followed painted repaired visited "
        "described remembered measured noticed answered borrowed").split()
PLACE = ("the north the coast the city the hills the island the plain the border the lake "
         "the capital the south").split(" the ")
LINK = ("and then because while although after before so that until when").split()


TEMPLATES = (
    "The {a} {n} {v} a {n} near {p}.",
    "In {y} a {a} {n} {v} the {n} of {p} {l} nobody {v} it.",
    "Everyone who {v} that {n} says it was {a}.",
    "We {v} {k} {a} {n}s before the {n} {v} them.",
    "Her {n}, {a} and {a}, {v} what his {n} had {v}.",
)


def sentence(rng):
    return rng.choice(TEMPLATES).format_map(_Pick(rng))


class _Pick(dict):
    """Each {a} {n} {v} {p} {l} {y} {k} placeholder draws a fresh word."""

    def __init__(self, rng):
        super().__init__()
        self.rng = rng

    def __missing__(self, key):
        r = self.rng
        return {"a": lambda: r.choice(ADJ), "n": lambda: r.choice(NOUN), "v": lambda: r.choice(VERB),
                "p": lambda: r.choice(PLACE).removeprefix("the "), "l": lambda: r.choice(LINK),
                "y": lambda: str(r.randint(1500, 2020)), "k": lambda: str(r.randint(2, 99))}[key]()


def english_doc(seed, n_sentences=30):
    rng = random.Random(seed)
    paras = [" ".join(sentence(rng) for _ in range(5)) for _ in range(n_sentences // 5)]
    return "\n\n".join(paras)
