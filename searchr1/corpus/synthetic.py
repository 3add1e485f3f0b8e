"""A seeded fictional world: the tiny profile's corpus and its question suites.

Every entity is invented (names built from syllables), so a model cannot answer from memory: it
has to search. Facts are typed relations between entities; passages render them with several
phrasings, and questions ask for them with other phrasings, so a passage is not a copy of its
question. Suites by skill:

- single_hop     one fact about a named entity
- bridge         two hops: a fact about an entity reached through another (the author of W)
- comparison     two entities compared on a year (who was born first)
- compositional  three hops

With `namesake_fraction` > 0 some people have a namesake (one letter apart), so the passage retrieved
first is sometimes about the wrong person: the world where checking a claim can pay.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from searchr1.corpus.config import SKILLS, SyntheticWorldConfig

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st",
           "t", "th", "v", "z", "c", "j", "sh", "tr", "w", "y"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou", "ei"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "v", "x"]
_OCCUPATIONS = ["cartographer", "violinist", "botanist", "architect", "novelist", "astronomer",
                "glassblower", "chemist", "sculptor", "historian", "engineer", "poet"]
_ORG_KINDS = ["Institute", "Company", "Society", "Guild", "Foundation", "Press", "Observatory", "Works"]
_PLACE_KINDS = ["city", "town", "port city", "mountain town", "river town"]
_REGIONS = ["the Northern Reach", "the Amber Coast", "the Low Valleys", "the Eastern Marches",
            "the Salt Plains", "the High Moors"]
_WORK_KINDS = ["novel", "film", "album", "opera", "painting", "atlas"]
_TITLE_WORDS = ["Silent", "Glass", "Amber", "Hollow", "Winter", "Lantern", "Orchard", "River", "Crimson",
                "Quiet", "Iron", "Paper", "Salt", "Copper", "Northern", "Velvet", "Stone", "Distant"]
_TITLE_NOUNS = ["Harbour", "Garden", "Clock", "Bridge", "Tide", "Meadow", "Tower", "Mirror", "Road",
                "Lighthouse", "Archive", "Feather", "Compass", "Season", "Voyage", "Chorus"]


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


@dataclass
class Place:
    id: str
    name: str
    kind: str
    region: str
    founded: int


@dataclass
class Org:
    id: str
    name: str
    founded: int
    hq: Place
    founder: Person | None = None


@dataclass
class Person:
    id: str
    name: str
    born: int
    birthplace: Place
    occupation: str
    employer: Org | None = None


@dataclass
class Work:
    id: str
    title: str
    kind: str
    year: int
    creator: Person
    publisher: Org


@dataclass
class World:
    places: list[Place] = field(default_factory=list)
    orgs: list[Org] = field(default_factory=list)
    people: list[Person] = field(default_factory=list)
    works: list[Work] = field(default_factory=list)


class _Names:
    """Unique invented names: a collision would make a question ambiguous."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def make(self, fn: Callable[[], str]) -> str:
        for _ in range(1000):
            name = fn()
            if name.lower() not in self.used:
                self.used.add(name.lower())
                return name
        raise RuntimeError("could not draw a unique name; the world config asks for too many entities")


def build_world(cfg: SyntheticWorldConfig) -> World:
    rng = random.Random(cfg.seed)
    names = _Names(rng)
    w = World()
    for i in range(cfg.n_places):
        w.places.append(Place(f"place{i}", names.make(lambda: _word(rng, rng.choice([2, 3]))),
                              rng.choice(_PLACE_KINDS), rng.choice(_REGIONS), rng.randint(800, 1700)))
    for i in range(cfg.n_organisations):
        w.orgs.append(Org(f"org{i}", names.make(lambda: f"{_word(rng, 2)} {rng.choice(_ORG_KINDS)}"),
                          rng.randint(1750, 1990), rng.choice(w.places)))
    for i in range(cfg.n_people):
        w.people.append(Person(
            f"person{i}", names.make(lambda: f"{_word(rng, 2)} {_word(rng, rng.choice([2, 3]))}"),
            rng.randint(1800, 1990), rng.choice(w.places), rng.choice(_OCCUPATIONS), rng.choice(w.orgs)))
    for org in w.orgs:
        org.founder = rng.choice(w.people)
    for i in range(cfg.n_works):
        title = names.make(lambda: f"The {rng.choice(_TITLE_WORDS)} {rng.choice(_TITLE_NOUNS)} of {_word(rng, 2)}")
        creator = rng.choice(w.people)
        w.works.append(Work(f"work{i}", title, rng.choice(_WORK_KINDS),
                            creator.born + rng.randint(20, 60), creator, rng.choice(w.orgs)))
    _add_namesakes(w, cfg, names)
    return w


def _one_letter_apart(name: str, rng: random.Random) -> str:
    """The name with one vowel of its surname changed: 'Brae Kouthar' -> 'Brae Kouther'."""
    given, _, surname = name.rpartition(" ")
    spots = [i for i, ch in enumerate(surname) if ch in "aeiou"]
    i = rng.choice(spots)
    vowel = rng.choice([v for v in "aeiou" if v != surname[i]])
    return f"{given} {surname[:i]}{vowel}{surname[i + 1:]}"


def _add_namesakes(w: World, cfg: SyntheticWorldConfig, names: _Names) -> None:
    # Drawn from their own stream after the rest of the world, so a world without namesakes is unchanged.
    rng = random.Random(cfg.seed + 7)
    originals = rng.sample(w.people, round(cfg.namesake_fraction * len(w.people)))
    for k, p in enumerate(originals):
        others = [pl for pl in w.places if pl is not p.birthplace]
        w.people.append(Person(f"namesake{k}", names.make(lambda p=p: _one_letter_apart(p.name, rng)),
                               rng.randint(1800, 1990), rng.choice(others), p.occupation,
                               rng.choice([o for o in w.orgs if o is not p.employer])))


# --- passages -------------------------------------------------------------------------------------
# Each entity gets an overview passage and a second passage with the remaining facts, in one of
# several phrasings, so retrieval has to match meaning rather than a fixed template.

def _passages_for(e: Place | Org | Person | Work, rng: random.Random) -> list[tuple[str, str]]:
    if isinstance(e, Person):
        return [
            (e.name, rng.choice([
                f"{e.name} (born {e.born}) is a {e.occupation} from {e.birthplace.name}.",
                f"{e.name} was born in {e.birthplace.name} in {e.born} and became a noted {e.occupation}.",
                f"Born in {e.born} in the {e.birthplace.kind} of {e.birthplace.name}, {e.name} worked as a "
                f"{e.occupation}.",
            ])),
            (e.name, rng.choice([
                f"In later life {e.name} joined the {e.employer.name}, where the {e.occupation} spent most "
                f"of a long career.",
                f"{e.name} was employed by the {e.employer.name} for many years.",
                f"Colleagues at the {e.employer.name} remembered {e.name} as a meticulous {e.occupation}.",
            ])),
        ]
    if isinstance(e, Org):
        return [
            (e.name, rng.choice([
                f"The {e.name} was established in {e.founded} by {e.founder.name}.",
                f"{e.founder.name} founded the {e.name} in {e.founded}.",
                f"Founded in {e.founded}, the {e.name} owes its creation to {e.founder.name}.",
            ])),
            (e.name, rng.choice([
                f"The {e.name} has its headquarters in {e.hq.name}, a {e.hq.kind} in {e.hq.region}.",
                f"Based in {e.hq.name}, the {e.name} is one of the oldest institutions of {e.hq.region}.",
                f"The offices of the {e.name} stand in {e.hq.name}.",
            ])),
        ]
    if isinstance(e, Work):
        return [
            (e.title, rng.choice([
                f"{e.title} is a {e.kind} by {e.creator.name}, first released in {e.year}.",
                f"{e.creator.name} created the {e.kind} {e.title}, which appeared in {e.year}.",
                f"Released in {e.year}, {e.title} is the best-known {e.kind} of {e.creator.name}.",
            ])),
            (e.title, rng.choice([
                f"{e.title} was published by the {e.publisher.name}.",
                f"The {e.publisher.name} brought out {e.title} to wide acclaim.",
                f"Its publisher, the {e.publisher.name}, reissued {e.title} several times.",
            ])),
        ]
    return [
        (e.name, rng.choice([
            f"{e.name} is a {e.kind} in {e.region}, founded in {e.founded}.",
            f"Founded in {e.founded}, {e.name} is a {e.kind} of {e.region}.",
            f"The {e.kind} of {e.name} lies in {e.region}; records date its founding to {e.founded}.",
        ])),
    ]


def render_passages(world: World, seed: int) -> list[tuple[str, dict[str, str]]]:
    """(entity id, passage) pairs in wiki-18 layout: {"id", "contents"}, contents = '"Title"\\ntext'."""
    rng = random.Random(seed + 1)
    out: list[tuple[str, dict[str, str]]] = []
    for group in (world.places, world.orgs, world.people, world.works):
        for entity in group:
            for title, text in _passages_for(entity, rng):
                out.append((entity.id, {"id": str(len(out)), "contents": f'"{title}"\n{text}'}))
    return out


# --- questions ------------------------------------------------------------------------------------

@dataclass
class _Q:
    skill: str
    subject: str  # entity id the split is made on: a test subject never appears in a train question
    question: str
    answers: list[str]
    chain: list[str]  # entity ids whose passages hold the answer, in hop order
    hop_queries: list[str]
    hop_answers: list[str]  # what each hop's search finds: the next entity's name, a year, the answer


def _single_hop(w: World, rng: random.Random) -> _Q:
    kind = rng.randrange(5)
    if kind == 0:
        p = rng.choice(w.people)
        q = rng.choice([f"Where was {p.name} born?", f"What is the birthplace of {p.name}?",
                        f"In which town or city did {p.name} come into the world?"])
        return _Q("single_hop", p.id, q, [p.birthplace.name], [p.id], [f"{p.name} birthplace"],
                  [p.birthplace.name])
    if kind == 1:
        p = rng.choice(w.people)
        q = rng.choice([f"Which organisation employed {p.name}?", f"Who was {p.name}'s employer?"])
        return _Q("single_hop", p.id, q, [p.employer.name, f"the {p.employer.name}"], [p.id], [f"{p.name} employer"],
                  [p.employer.name])
    if kind == 2:
        o = rng.choice(w.orgs)
        q = rng.choice([f"Who founded the {o.name}?", f"Who established the {o.name}?"])
        return _Q("single_hop", o.id, q, [o.founder.name], [o.id], [f"{o.name} founder"], [o.founder.name])
    if kind == 3:
        wk = rng.choice(w.works)
        q = rng.choice([f"Who created {wk.title}?", f"Who is the author of the {wk.kind} {wk.title}?"])
        return _Q("single_hop", wk.id, q, [wk.creator.name], [wk.id], [f"{wk.title} creator"], [wk.creator.name])
    o = rng.choice(w.orgs)
    q = rng.choice([f"In which city is the {o.name} headquartered?", f"Where are the {o.name}'s headquarters?"])
    return _Q("single_hop", o.id, q, [o.hq.name], [o.id], [f"{o.name} headquarters"], [o.hq.name])


def _bridge(w: World, rng: random.Random) -> _Q:
    wk = rng.choice(w.works)
    kind = rng.randrange(3)
    if kind == 0:
        c = wk.creator
        q = rng.choice([f"Where was the creator of {wk.title} born?",
                        f"What is the birthplace of the person who made the {wk.kind} {wk.title}?"])
        return _Q("bridge", wk.id, q, [c.birthplace.name], [wk.id, c.id],
                  [f"{wk.title} creator", f"{c.name} birthplace"], [c.name, c.birthplace.name])
    if kind == 1:
        pub = wk.publisher
        q = rng.choice([f"Who founded the organisation that published {wk.title}?",
                        f"Who established the publisher of {wk.title}?"])
        return _Q("bridge", wk.id, q, [pub.founder.name], [wk.id, pub.id],
                  [f"{wk.title} publisher", f"{pub.name} founder"], [pub.name, pub.founder.name])
    c = wk.creator
    q = rng.choice([f"Which organisation employed the author of {wk.title}?",
                    f"Who was the employer of the person who created {wk.title}?"])
    return _Q("bridge", wk.id, q, [c.employer.name, f"the {c.employer.name}"], [wk.id, c.id],
              [f"{wk.title} creator", f"{c.name} employer"], [c.name, c.employer.name])


def _comparison(w: World, rng: random.Random) -> _Q:
    if rng.random() < 0.5:
        a, b = rng.sample(w.people, 2)
        while a.born == b.born:
            a, b = rng.sample(w.people, 2)
        q = rng.choice([f"Who was born first, {a.name} or {b.name}?",
                        f"Which of {a.name} and {b.name} is older?"])
        first = a if a.born < b.born else b
        return _Q("comparison", a.id, q, [first.name], [a.id, b.id], [f"{a.name} born", f"{b.name} born"],
                  [str(a.born), str(b.born)])
    a, b = rng.sample(w.orgs, 2)
    while a.founded == b.founded:
        a, b = rng.sample(w.orgs, 2)
    q = rng.choice([f"Which was founded earlier, the {a.name} or the {b.name}?",
                    f"Which is older, the {a.name} or the {b.name}?"])
    first = a if a.founded < b.founded else b
    return _Q("comparison", a.id, q, [first.name, f"the {first.name}"], [a.id, b.id],
              [f"{a.name} founded", f"{b.name} founded"], [str(a.founded), str(b.founded)])


def _compositional(w: World, rng: random.Random) -> _Q:
    wk = rng.choice(w.works)
    c = wk.creator
    if rng.random() < 0.5:
        q = rng.choice([f"In which city is the organisation that employed the creator of {wk.title} based?",
                        f"Where is the headquarters of the employer of the person who made {wk.title}?"])
        return _Q("compositional", wk.id, q, [c.employer.hq.name], [wk.id, c.id, c.employer.id],
                  [f"{wk.title} creator", f"{c.name} employer", f"{c.employer.name} headquarters"],
                  [c.name, c.employer.name, c.employer.hq.name])
    pub = wk.publisher
    q = rng.choice([f"Where was the founder of the publisher of {wk.title} born?",
                    f"What is the birthplace of the person who founded the organisation that published {wk.title}?"])
    return _Q("compositional", wk.id, q, [pub.founder.birthplace.name], [wk.id, pub.id, pub.founder.id],
              [f"{wk.title} publisher", f"{pub.name} founder", f"{pub.founder.name} birthplace"],
              [pub.name, pub.founder.name, pub.founder.birthplace.name])


_GENERATORS: dict[str, Callable[[World, random.Random], _Q]] = {
    "single_hop": _single_hop, "bridge": _bridge, "comparison": _comparison, "compositional": _compositional,
}


def build_questions(world: World, cfg: SyntheticWorldConfig) -> dict[str, dict[str, list[dict]]]:
    """{skill: {"train": [...], "test": [...]}} in FlashRAG format, split by subject entity."""
    rng = random.Random(cfg.seed + 2)
    evidence: dict[str, list[str]] = {}
    for entity_id, passage in render_passages(world, cfg.seed):
        evidence.setdefault(entity_id, []).append(passage["id"])
    subjects = sorted({e.id for e in world.people + world.orgs + world.works})
    name_of = {e.id: e.name for e in world.people + world.orgs + world.places} | {wk.id: wk.title for wk in world.works}
    split_rng = random.Random(cfg.seed + 3)
    test_subjects = {s for s in subjects if split_rng.random() < cfg.test_fraction}
    out: dict[str, dict[str, list[dict]]] = {}
    for skill in SKILLS:
        seen: set[str] = set()
        rows: dict[str, list[dict]] = {"train": [], "test": []}
        attempts = 0
        while len(seen) < cfg.questions_per_skill and attempts < cfg.questions_per_skill * 50:
            attempts += 1
            q = _GENERATORS[skill](world, rng)
            if q.question in seen:
                continue
            seen.add(q.question)
            split = "test" if q.subject in test_subjects else "train"
            rows[split].append({
                "id": f"{skill}-{split}-{len(rows[split])}",
                "question": q.question,
                "golden_answers": q.answers,
                "metadata": {"skill": skill, "hop_queries": q.hop_queries, "hop_answers": q.hop_answers,
                             "hop_entities": [name_of[eid] for eid in q.chain],  # what each hop is about
                             "supporting_ids": [pid for eid in q.chain for pid in evidence[eid]]},
            })
        out[skill] = rows
    return out
