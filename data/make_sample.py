"""Make the built-in sample: an invented encyclopedia in DPR's formats (deterministic).

    python data/make_sample.py --output_dir data/sample

Every entity (a town, a composer, a ship, a company or a mountain) has two ~100-word passages
written from the same template as every other entity of its kind: one about its history, one
about its present. Entities come in pairs of namesakes: two entities of the same kind whose names
differ by one letter (Brava and Brova), each history passage naming the other, so four
near-duplicate passages share a title's letters. Answers are invented names that occur in exactly
one passage, so DPR's `has_answer` finds them in the gold passage and nowhere else (checked when
the files are made). Hard negatives are the lexically closest passages: the entity's other passage
(same title, other aspect) and its namesake's passage of the same aspect.

What each retriever has to overcome: BM25 matches the name's exact letters but not a paraphrase,
so it finds the entity yet may pick the wrong aspect; a subword encoder reads a paraphrase but
confuses namesakes. The held-out questions (qa_test.csv) are phrased in words that training and
dev questions never use, half of them keeping one word of their passage and half none, so
fine-tuning cannot memorise the phrasing, and each stage of `make demo` shows what it adds.

Files: passages.tsv (id, text, title), train.json / dev.json (biencoder records, disjoint
entities), qa_test.csv (question<TAB>["answer"], held-out entities).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dpr_paddle.retrieval.evaluation import has_answer  # noqa: E402
from dpr_paddle.common.files import write_json_atomic, write_text_atomic  # noqa: E402

SEED = 20261122
N_ENTITIES = 1100  # x 2 passages = 2,200 passages
TRAIN_ENTITIES, DEV_ENTITIES = 700, 100  # the rest (300) are held out for qa_test.csv

ONSETS = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr",
          "kr", "st", "tr", "th", "sh", "ch", "bl", "fl", "gl", "pl", "sl", "sk", "sp", "qu", "w"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "ae", "y"]
CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "rt", "sk", "v", "x", "ck"]

KINDS = {
    "town": {
        "history": (
            "{title} is a small town on the southern slopes of the {region} hills. It was founded by the "
            "merchant {founder}, who built the first stone bridge across the river {river} to bring wool "
            "to the coast. In its early years the settlers relied on grain shipped from the port of "
            "{port}, and a wooden palisade protected the market square. {filler} The old bridge still "
            "stands, and the town archive keeps the founding charter together with a map of the first streets."
        ),
        "present": (
            "Today {title} is best known for its craft workshops and its mild climate. The largest "
            "employer in {title} is {company}, a maker of glassware that exports to many countries. Every "
            "autumn the town hosts the {festival}, which fills the market square with music and food stalls. "
            "{filler} The local football club, {club}, plays its home games at a small ground beside the "
            "railway station."
        ),
        "questions": {
            "founder": ["Who founded the town of {title}?", "Which merchant established {title}?",
                        "{title} was founded by whom?"],
            "river": ["Which river does the first stone bridge of {title} cross?",
                      "What river flows past {title}?"],
            "port": ["From which port did the early settlers of {title} get their grain?"],
            "company": ["What is the largest employer in {title}?", "Which glassware maker is based in {title}?"],
            "festival": ["What festival is held in {title} every autumn?",
                         "Which autumn festival takes place in {title}?"],
            "club": ["Which football club plays in {title}?", "What is the name of the football team of {title}?"],
        },
        "slots": {"founder": "person", "river": "word", "port": "place", "company": "company",
                  "festival": "festival", "club": "club", "region": "word"},
        "aspects": {"history": ["founder", "river", "port"], "present": ["company", "festival", "club"]},
    },
    "composer": {
        "history": (
            "{title} was a composer and organist born in the city of {birthplace}. As a young man {title} "
            "studied counterpoint with the choirmaster {teacher}, who encouraged him to write for the stage. "
            "His first opera, {opera}, was performed in a converted grain store and drew large crowds. "
            "{filler} Letters from this period show that he often worked late into the night and rewrote "
            "his scores many times before a performance."
        ),
        "present": (
            "The later works of {title} were written under the patronage of the banker {patron}, who paid for "
            "a small orchestra. The best known of them is the {symphony}, a long work in four movements that "
            "is still performed today. {title} spent his last years teaching at the {academy}. {filler} Many of "
            "his manuscripts were lost in a fire, but copies made by his students have survived in several libraries."
        ),
        "questions": {
            "birthplace": ["In which city was the composer {title} born?", "Where was {title} born?"],
            "teacher": ["Who taught counterpoint to {title}?", "Which choirmaster was the teacher of {title}?"],
            "opera": ["What was the first opera of {title}?", "Which opera did {title} write first?"],
            "patron": ["Which banker was the patron of {title}?", "Who paid for the orchestra of {title}?"],
            "symphony": ["What is the best known symphony of {title}?", "Which symphony by {title} is still performed?"],
            "academy": ["Where did {title} teach in his last years?", "At which academy did {title} teach?"],
        },
        "slots": {"birthplace": "place", "teacher": "person", "opera": "work", "patron": "person",
                  "symphony": "symphony", "academy": "academy"},
        "aspects": {"history": ["birthplace", "teacher", "opera"], "present": ["patron", "symphony", "academy"]},
    },
    "ship": {
        "history": (
            "The {title} was a three-masted merchant ship built at the {shipyard} shipyard. Her first captain, "
            "{captain}, sailed her on a long voyage to the island of {island}, carrying timber and returning "
            "with spices. The crew of forty men kept a detailed log of the weather and the currents. {filler} "
            "The ship was later repaired and given a new figurehead carved in the shape of a heron."
        ),
        "present": (
            "The wreck of the {title} lies in shallow water near the cape of {cape}, where she ran aground in a "
            "winter storm. Divers from the {museum} recovered her bell and parts of her rigging. The bell is now "
            "on display next to a model of the ship built by {modeller}. {filler} Visitors can see the wreck "
            "from a glass-bottomed boat when the sea is calm."
        ),
        "questions": {
            "shipyard": ["At which shipyard was the {title} built?", "Where was the ship {title} built?"],
            "captain": ["Who was the first captain of the {title}?", "Who first commanded the ship {title}?"],
            "island": ["To which island did the {title} sail on her first voyage?"],
            "cape": ["Near which cape does the wreck of the {title} lie?", "Where did the {title} run aground?"],
            "museum": ["Which museum recovered the bell of the {title}?", "Who recovered the bell of the {title}?"],
            "modeller": ["Who built the model of the {title}?"],
        },
        "slots": {"shipyard": "word", "captain": "person", "island": "place", "cape": "place",
                  "museum": "museum", "modeller": "person"},
        "aspects": {"history": ["shipyard", "captain", "island"], "present": ["cape", "museum", "modeller"]},
    },
    "company": {
        "history": (
            "{title} is a manufacturer of bicycles and small engines. The company was founded by the engineer "
            "{founder} in a rented workshop in the town of {hometown}. Its first product, the {product}, was a "
            "folding bicycle that sold well among postal workers. {filler} In its first decade the firm employed "
            "fewer than thirty people and delivered its goods by horse-drawn cart."
        ),
        "present": (
            "Today {title} has its headquarters in {hq}, where it employs several thousand people. The company "
            "is led by its chief executive {ceo}, and its best selling product is the {flagship}, an electric "
            "scooter. {filler} The firm also sponsors a cycling team and publishes a yearly report on road safety "
            "for its customers."
        ),
        "questions": {
            "founder": ["Who founded the company {title}?", "Which engineer established {title}?"],
            "hometown": ["In which town did {title} start?", "Where was the first workshop of {title}?"],
            "product": ["What was the first product of {title}?", "Which folding bicycle did {title} make first?"],
            "hq": ["Where are the headquarters of {title}?", "In which city is {title} based today?"],
            "ceo": ["Who is the chief executive of {title}?", "Who leads the company {title}?"],
            "flagship": ["What is the best selling product of {title}?", "Which electric scooter does {title} sell?"],
        },
        "slots": {"founder": "person", "hometown": "place", "product": "product", "hq": "place",
                  "ceo": "person", "flagship": "product"},
        "aspects": {"history": ["founder", "hometown", "product"], "present": ["hq", "ceo", "flagship"]},
    },
    "mountain": {
        "history": (
            "{title} is a mountain in the {range} range with a broad rocky summit. It was first climbed by "
            "{climber}, a surveyor who reached the top by the eastern ridge after two failed attempts. On the way "
            "down the party sheltered in a cave later named {cave}. {filler} For many years the mountain was "
            "thought to be the highest in the region, until new measurements proved otherwise."
        ),
        "present": (
            "The slopes of {title} are covered by the {glacier} glacier, which has shrunk quickly in recent "
            "decades. Walkers usually start from the village of {village} and spend the night at the {hut} "
            "before the final climb. {filler} In summer the meadows below the glacier are grazed by sheep, and "
            "in winter the upper slopes are popular with ski tourers."
        ),
        "questions": {
            "climber": ["Who first climbed {title}?", "Who made the first ascent of {title}?"],
            "cave": ["In which cave did the first climbers of {title} shelter?"],
            "range": ["In which range is the mountain {title}?"],
            "glacier": ["Which glacier covers the slopes of {title}?", "What is the glacier on {title} called?"],
            "village": ["From which village do walkers start the climb of {title}?"],
            "hut": ["Where do walkers spend the night before climbing {title}?",
                    "Which hut is used by climbers of {title}?"],
        },
        "slots": {"climber": "person", "cave": "cave", "range": "word", "glacier": "word", "village": "place",
                  "hut": "hut"},
        "aspects": {"history": ["climber", "cave", "range"], "present": ["glacier", "village", "hut"]},
    },
}

# qa_test.csv's phrasings, two per slot, in words that training and dev questions never use. The first keeps one word
# of its passage that the entity's other passage lacks (as a real question shares a word or two with its answer's
# passage), so BM25 can tell the aspect by that word; the second keeps none, and only reading the paraphrase tells.
HELD_OUT_QUESTIONS = {
    "town": {
        "founder": ["Which trader laid out the first streets of {title}?",
                   "Which trader started the settlement that grew into {title}?"],
        "river": ["Over which waterway did the people of {title} put up their stone crossing?",
                 "Over which waterway did the people of {title} put up their first crossing?"],
        "port": ["Which harbour supplied the first residents of {title} with grain?",
                "Which harbour supplied the first residents of {title} with food?"],
        "company": ["Which glassware firm gives the most jobs in {title}?",
                   "Which firm gives the most jobs in {title}?"],
        "festival": ["Which celebration with music does {title} hold when the leaves fall?",
                    "Which celebration does {title} hold when the leaves fall?"],
        "club": ["Which soccer side plays beside the railway in {title}?",
                "Which soccer side is based in {title}?"],
    },
    "composer": {
        "birthplace": ["What was the hometown of the organist {title}?",
                      "What was the hometown of the musician {title}?"],
        "teacher": ["Under whom did {title} learn to write for the stage?",
                   "Under whom did {title} learn to write for several voices?"],
        "opera": ["Which stage work by {title} first drew crowds?",
                 "What was the debut stage work of {title}?"],
        "patron": ["Which financier supported {title} with an orchestra?",
                  "Which financier supported {title} in later life?"],
        "symphony": ["Which piece in four movements by {title} is the most famous?",
                    "Which piece in four parts by {title} is the most famous?"],
        "academy": ["At which school did {title} have the students who copied his manuscripts?",
                   "Which school employed {title} near the end of his life?"],
    },
    "ship": {
        "shipyard": ["Which yard constructed the three-masted vessel {title}?",
                    "Which yard constructed the vessel {title}?"],
        "captain": ["Who first took the vessel {title} out with its timber?",
                   "Who was the original master of the vessel {title}?"],
        "island": ["Where did the vessel {title} first fetch spices from?",
                  "What was the destination of the maiden voyage of {title}?"],
        "cape": ["Off which headland does the wreck of {title} rest?",
                "Off which headland did the {title} sink?"],
        "museum": ["Which institution sent divers down to the {title}?",
                  "Which institution salvaged the bell of the {title}?"],
        "modeller": ["Who made the replica of the {title} shown beside its bell?",
                    "Who made the replica of the {title}?"],
    },
    "company": {
        "founder": ["Which inventor set up {title} to make small engines?",
                   "Which inventor set up {title}?"],
        "hometown": ["Where did {title} begin in a rented room?",
                    "Where did {title} begin in a hired room?"],
        "product": ["What did {title} first sell to postal workers?",
                   "What did {title} sell at the very start?"],
        "hq": ["Where is the head office of {title} today?",
              "Where is the main office of {title}?"],
        "ceo": ["Who is the boss of {title} today?",
               "Who runs {title} now?"],
        "flagship": ["Which e-scooter is the top seller of {title}?",
                    "Which vehicle is the top seller of {title}?"],
    },
    "mountain": {
        "climber": ["Which surveyor first stood on top of {title}?",
                   "Who was the first to stand on top of {title}?"],
        "cave": ["Where did the first party on {title} take cover on the way down?",
                "Where did the first people on {title} take cover on the descent?"],
        "range": ["Which chain of peaks includes the rocky summit of {title}?",
                 "Which chain of peaks includes {title}?"],
        "glacier": ["Which ice field has shrunk on {title}?",
                   "Which ice field lies on {title}?"],
        "village": ["Where do walkers usually set off for {title}?",
                   "Where do hikers usually set off for {title}?"],
        "hut": ["In which refuge do walkers spend the night before the ascent of {title}?",
               "In which refuge do hikers sleep before the ascent of {title}?"],
    },
}

TITLE_SHAPES = {"town": "{w}", "composer": "{P}", "ship": "{w}", "company": "{w} Works", "mountain": "Mount {w}"}
FILLERS = [
    "Local historians have written several books about this period.",
    "The name is thought to come from an old word for a meeting place.",
    "Records from the time are incomplete, and some dates remain uncertain.",
    "A small exhibition at the public library tells the story in pictures.",
    "The events are remembered each year with a short ceremony.",
    "Some accounts disagree on the details, but the main facts are well established.",
    "Photographs from the period show how little the surroundings have changed.",
    "Travellers who passed through at the time described it in their diaries.",
    "Older residents still tell stories about those days to visitors.",
    "A painting of the scene hangs in the council chamber.",
]


class Namer:
    """Invented words, each used once in the whole corpus (so answers never collide)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used = set()

    def word(self, syllables=(2, 3)) -> str:
        while True:
            n = self.rng.choice(syllables)
            w = "".join(self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + self.rng.choice(CODAS) for _ in range(n))
            if 5 <= len(w) <= 12 and w not in self.used:
                self.used.add(w)
                return w.capitalize()

    def variant(self, word: str) -> str:
        """An unused word one vowel away from `word` (a namesake: Brava -> Brova)."""
        positions = [i for i, c in enumerate(word) if c.lower() in "aeiou"] or [len(word) - 1]
        while True:
            i = self.rng.choice(positions)
            v = self.rng.choice([c for c in "aeiou" if c != word[i].lower()])
            w = word[:i] + (v.upper() if i == 0 else v) + word[i + 1:]
            if w.lower() not in self.used:
                self.used.add(w.lower())
                return w

    def value(self, shape: str) -> str:
        w = self.word
        return {
            "person": lambda: f"{w((2,))} {w()}",
            "word": lambda: w(),
            "place": lambda: w(),
            "company": lambda: f"{w()} Glassworks",
            "festival": lambda: f"{w()} Lantern Festival",
            "club": lambda: f"{w()} Rovers",
            "work": lambda: f"The {w()} Bride",
            "symphony": lambda: f"{w()} Symphony",
            "academy": lambda: f"{w()} Academy",
            "museum": lambda: f"{w()} Maritime Museum",
            "product": lambda: f"{w()} {self.rng.choice(['One', 'Mark II', 'Swift', 'Ranger'])}",
            "cave": lambda: f"{w()} Cave",
            "hut": lambda: f"{w()} Hut",
        }[shape]()


def build(seed: int = SEED):
    """Return (passages, records_by_entity, kinds): passages as dicts with id/title/text."""
    rng = random.Random(seed)
    namer = Namer(rng)
    kinds = list(KINDS)
    passages, entities = [], []
    for e in range(N_ENTITIES):
        kind = kinds[(e // 2) % len(kinds)]  # entities 2i and 2i+1 are namesakes of one kind
        spec = KINDS[kind]
        if e % 2 == 0:
            first, base = namer.word((2,)), namer.word()
        else:
            first, base = entities[e - 1]["first"], namer.variant(entities[e - 1]["base"])
        title = TITLE_SHAPES[kind].format(w=base, P=f"{first} {base}")
        slots = {name: namer.value(shape) for name, shape in spec["slots"].items()}
        ent = {"kind": kind, "title": title, "first": first, "base": base, "slots": slots, "passage_ids": {}}
        ent["fillers"] = rng.sample(FILLERS, 3)
        entities.append(ent)
    for e, ent in enumerate(entities):
        kind, spec, title, slots = ent["kind"], KINDS[ent["kind"]], ent["title"], ent["slots"]
        namesake = entities[e ^ 1]["title"]
        fillers = ent["fillers"]
        for j, aspect in enumerate(("history", "present")):
            filler = (f"{title} is not to be confused with {namesake}, a {kind} of a similar name. {fillers[0]}"
                      if aspect == "history" else " ".join(fillers[1:]))
            text = spec[aspect].format(title=title, filler=filler, **slots)
            pid = str(len(passages) + 1)
            passages.append({"id": pid, "title": title, "text": text, "kind": kind, "aspect": aspect, "entity": e})
            ent["passage_ids"][aspect] = pid
    return passages, entities, rng


def questions_for(ent: dict, rng: random.Random, held_out: bool = False):
    """(question, answer, aspect) for every slot of an entity, its phrasing chosen at random among the training
    phrasings, or among the held-out ones (HELD_OUT_QUESTIONS)."""
    spec = KINDS[ent["kind"]]
    out = []
    for aspect, names in spec["aspects"].items():
        for name in names:
            phrasing = rng.choice(HELD_OUT_QUESTIONS[ent["kind"]][name] if held_out else spec["questions"][name])
            q = phrasing.format(title=ent["title"])
            out.append((q, ent["slots"][name], aspect))
    return out


def ctx(p: dict) -> dict:
    return {"title": p["title"], "text": p["text"], "passage_id": p["id"]}


def make_records(entities, passages, ids, rng, per_entity):
    records = []
    for e in ids:
        ent = entities[e]
        qs = questions_for(ent, rng)
        rng.shuffle(qs)
        for q, answer, aspect in qs[:per_entity]:
            gold = passages[int(ent["passage_ids"][aspect]) - 1]
            other_aspect = "present" if aspect == "history" else "history"
            sibling = passages[int(ent["passage_ids"][other_aspect]) - 1]
            namesake = passages[int(entities[e ^ 1]["passage_ids"][aspect]) - 1]
            others = [p for p in rng.sample(passages, 6) if p["kind"] != ent["kind"]][:3]
            records.append({
                "dataset": "dpr_paddle_sample",
                "question": q,
                "answers": [answer],
                "positive_ctxs": [ctx(gold)],
                "negative_ctxs": [ctx(p) for p in others],
                "hard_negative_ctxs": [ctx(sibling), ctx(namesake)],
            })
    return records


def check_answers(items, passages) -> None:
    """Every answer is found (DPR has_answer) in its gold passage and in no other passage."""
    from dpr_paddle.retrieval.evaluation import normalize, tokenize_words

    by_token = {}  # token -> passages containing it, so each answer is checked against few passages
    for p in passages:
        for tok in set(tokenize_words(normalize(p["text"]))):
            by_token.setdefault(tok, []).append(p)
    for item in items:
        answers, gold_text = item["answers"], item["gold_text"]
        if not has_answer(answers, gold_text):
            raise AssertionError(f"answer {answers} not in its gold passage")
        rarest = min(tokenize_words(normalize(answers[0])), key=lambda t: len(by_token.get(t, [])))
        hits = [p["id"] for p in by_token.get(rarest, []) if has_answer(answers, p["text"])]
        if len(hits) != 1:
            raise AssertionError(f"answer {answers} found in {len(hits)} passages: {hits[:5]}")


def main(argv=None) -> None:
    """Write the sample files into --output_dir."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output_dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample"))
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)

    passages, entities, rng = build(args.seed)
    train = make_records(entities, passages, range(0, TRAIN_ENTITIES), rng, per_entity=2)
    dev = make_records(entities, passages, range(TRAIN_ENTITIES, TRAIN_ENTITIES + DEV_ENTITIES), rng, per_entity=2)
    qa = []
    for e in range(TRAIN_ENTITIES + DEV_ENTITIES, N_ENTITIES):
        q, answer, aspect = rng.choice(questions_for(entities[e], rng, held_out=True))
        gold = passages[int(entities[e]["passage_ids"][aspect]) - 1]
        qa.append({"question": q, "answers": [answer], "gold_text": gold["text"]})
    check_answers([{"answers": r["answers"], "gold_text": r["positive_ctxs"][0]["text"]} for r in train + dev], passages)
    check_answers(qa, passages)

    os.makedirs(args.output_dir, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["id", "text", "title"])
    for p in passages:
        w.writerow([p["id"], p["text"], p["title"]])
    write_text_atomic(os.path.join(args.output_dir, "passages.tsv"), buf.getvalue())
    write_json_atomic(os.path.join(args.output_dir, "train.json"), train, indent=None)
    write_json_atomic(os.path.join(args.output_dir, "dev.json"), dev, indent=None)
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    for item in qa:
        w.writerow([item["question"], json.dumps(item["answers"], ensure_ascii=False)])
    write_text_atomic(os.path.join(args.output_dir, "qa_test.csv"), buf.getvalue())
    words = sum(len(p["text"].split()) for p in passages) / len(passages)
    print(f"{args.output_dir}: {len(passages)} passages ({words:.0f} words on average), {len(train)} train and "
          f"{len(dev)} dev records, {len(qa)} test questions")


if __name__ == "__main__":
    main()
