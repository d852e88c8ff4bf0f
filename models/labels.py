"""The 11 kimchi classes, their names in three scripts, and matching free text to one of them."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

from models.errors import UnknownLabel


@dataclass(frozen=True)
class KimchiClass:
    """One class of the vocabulary: Korean name, romanisation, English gloss and extra aliases."""

    id: int
    name: str
    roman: str
    gloss: str
    aliases: tuple[str, ...] = field(default=())


# The order is the bot's short callback id; never reorder, only append.
CLASSES: tuple[KimchiClass, ...] = (
    KimchiClass(0, "배추김치", "baechu-kimchi", "napa cabbage kimchi",
                ("배추", "포기김치", "cabbage kimchi", "napa kimchi", "baechu")),
    KimchiClass(1, "오이소박이", "oi-sobagi", "stuffed cucumber kimchi",
                ("오이소배기", "오이김치", "cucumber kimchi", "oisobagi", "oi sobagi")),
    KimchiClass(2, "파김치", "pa-kimchi", "green onion kimchi",
                ("쪽파김치", "scallion kimchi", "green onion kimchi", "pa")),
    KimchiClass(3, "열무김치", "yeolmu-kimchi", "young summer radish kimchi",
                ("열무", "young radish kimchi", "yeolmu")),
    KimchiClass(4, "깍두기", "kkakdugi", "cubed radish kimchi",
                ("radish cube kimchi", "cubed radish kimchi", "kakdugi", "kkakduki")),
    KimchiClass(5, "부추김치", "buchu-kimchi", "garlic chive kimchi",
                ("부추", "정구지김치", "chive kimchi", "buchu")),
    KimchiClass(6, "무생채", "musaengchae", "julienned radish salad",
                ("무채", "radish salad", "spicy radish salad")),
    KimchiClass(7, "백김치", "baek-kimchi", "white kimchi, no chili",
                ("white kimchi", "baek kimchi")),
    KimchiClass(8, "나박김치", "nabak-kimchi", "sliced radish water kimchi",
                ("나박", "물김치", "water kimchi", "nabak")),
    KimchiClass(9, "갓김치", "gat-kimchi", "mustard leaf kimchi",
                ("갓", "mustard kimchi", "mustard leaf kimchi", "mustard greens kimchi", "gat")),
    KimchiClass(10, "총각김치", "chonggak-kimchi", "ponytail radish kimchi",
                ("알타리김치", "알타리", "총각무김치", "ponytail radish kimchi", "altari kimchi", "chonggak")),
)

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
_BY_NAME = {c.name: c for c in CLASSES}


def nfc(text: str) -> str:
    """NFC form: Hangul typed or stored on macOS arrives decomposed (NFD)."""
    return unicodedata.normalize("NFC", text)


def _key(text: str) -> str:
    """The comparison key: NFC, lower case, without spaces, hyphens or underscores."""
    folded = nfc(text).casefold()
    return "".join(ch for ch in folded if not ch.isspace() and ch not in "-_·.")


def _build_index() -> dict[str, KimchiClass]:
    index: dict[str, KimchiClass] = {}
    for cls in CLASSES:
        for name in (cls.name, cls.roman, cls.gloss, *cls.aliases):
            index[_key(name)] = cls
    return index


_INDEX = _build_index()


def by_name(name: str) -> KimchiClass | None:
    """The class whose Korean name is `name` (after NFC), or None."""
    return _BY_NAME.get(nfc(name))


def by_id(class_id: int) -> KimchiClass | None:
    """The class with this short id, or None."""
    return CLASSES[class_id] if 0 <= class_id < len(CLASSES) else None


def is_known(name: str) -> bool:
    return nfc(name) in _BY_NAME


def _jamo(text: str) -> str:
    """Hangul syllables decomposed into jamo, so 깍뚜기 and 깍두기 differ by one letter, not one syllable."""
    return unicodedata.normalize("NFD", text)


def _distance(a: str, b: str) -> int:
    """Levenshtein distance, two rows."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def suggest(text: str) -> KimchiClass | None:
    """The one class whose name or alias is a near miss of `text`, by edit distance over jamo."""
    key = _jamo(_key(text))
    if not key:
        return None
    scored: dict[str, int] = {}
    for alias, cls in _INDEX.items():
        d = _distance(key, _jamo(alias))
        scored[cls.name] = min(d, scored.get(cls.name, d))
    best = min(scored.values())
    allowed = max(1, min(3, len(key) // 4))
    winners = [name for name, d in scored.items() if d == best]
    if best <= allowed and len(winners) == 1:
        return _BY_NAME[winners[0]]
    return None


def match(text: str) -> KimchiClass:
    """The class named by `text` (Korean, romanised or English; any case, spacing or Unicode form).

    Raises UnknownLabel, carrying a suggestion when the text is a near miss.
    """
    key = _key(text)
    found = _INDEX.get(key)
    if found is None and key.endswith("김치"):
        found = _INDEX.get(key[: -len("김치")])
    if found is None and key and not key.endswith("김치"):
        found = _INDEX.get(key + "김치")
    if found is not None:
        return found
    hint = suggest(text)
    raise UnknownLabel(text, hint.name if hint else None)
