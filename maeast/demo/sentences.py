"""Varied English sentences from a small random grammar, for espeak-ng to read aloud."""

from __future__ import annotations

import random

NAMES = ("anna", "peter", "mary", "thomas", "elena", "james", "sofia", "daniel", "grace", "omar",
         "laura", "victor", "nina", "samuel", "clara", "hugo", "irene", "martin", "rosa", "felix")
NOUNS = ("river", "garden", "window", "letter", "village", "mountain", "teacher", "horse", "bridge",
         "kitchen", "storm", "candle", "forest", "market", "engine", "harbour", "lantern", "sister",
         "doctor", "painter", "island", "train", "orchard", "castle", "basket", "violin", "road",
         "meadow", "soldier", "captain", "library", "clock", "shadow", "winter", "morning", "stone",
         "bottle", "festival", "farmer", "merchant", "ocean", "valley", "chimney", "carriage",
         "journey", "question", "answer", "story", "machine", "station", "cloud", "field", "song")
ADJECTIVES = ("old", "quiet", "bright", "narrow", "heavy", "gentle", "distant", "golden",
              "broken", "silent", "crowded", "ancient", "green", "patient", "curious", "cold",
              "little", "strange", "careful", "wooden", "dark", "restless", "familiar", "sudden")
VERBS = ("watched", "carried", "followed", "opened", "painted", "remembered", "visited", "found",
         "described", "repaired", "crossed", "noticed", "answered", "closed", "built", "counted",
         "discovered", "admired", "lost", "borrowed", "explained", "measured", "cleaned", "heard")
INTRANSITIVE = ("waited", "laughed", "arrived", "slept", "wandered", "listened", "hesitated",
                "travelled", "worked", "disappeared", "returned", "sang", "smiled", "rested")
ADVERBS = ("slowly", "quietly", "again", "carefully", "suddenly", "happily", "at last", "early",
           "late in the evening", "without a word", "all afternoon", "once more", "together")
PLACES = ("near the harbour", "behind the old mill", "across the valley", "in the small kitchen",
          "under the bridge", "beside the station", "at the edge of the forest", "in the market",
          "on the narrow road", "by the window", "inside the castle", "along the river")
CONNECTORS = ("and", "but", "while", "because", "although", "so", "before", "after", "until")
NUMBERS = ("two", "three", "four", "seven", "twelve", "twenty", "a hundred", "several", "many")


def _noun_phrase(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.25:
        return rng.choice(NAMES).capitalize()
    if r < 0.4:
        return f"{rng.choice(NUMBERS)} {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}s"
    det = rng.choice(("the", "the", "a", "her", "his", "our", "that"))
    if det == "a" and rng.random() < 0.5:
        return f"a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}".replace("a o", "an o")
    adj = f"{rng.choice(ADJECTIVES)} " if rng.random() < 0.5 else ""
    return f"{det} {adj}{rng.choice(NOUNS)}"


def _clause(rng: random.Random) -> str:
    subject = _noun_phrase(rng)
    if rng.random() < 0.65:
        core = f"{subject} {rng.choice(VERBS)} {_noun_phrase(rng)}"
    else:
        core = f"{subject} {rng.choice(INTRANSITIVE)}"
    if rng.random() < 0.4:
        core += f" {rng.choice(PLACES)}"
    if rng.random() < 0.3:
        core += f" {rng.choice(ADVERBS)}"
    return core


def sentence(rng: random.Random) -> str:
    """One sentence: a clause, maybe joined to a second, or a question."""
    r = rng.random()
    if r < 0.12:
        s = f"did {_noun_phrase(rng).lower()} ever see {_noun_phrase(rng).lower()} {rng.choice(PLACES)}?"
    elif r < 0.55:
        s = f"{_clause(rng)} {rng.choice(CONNECTORS)} {_clause(rng)}."
    else:
        s = f"{_clause(rng)}."
    s = s.replace(" a a", " an a").replace(" a e", " an e").replace(" a i", " an i")
    return s[0].upper() + s[1:]
