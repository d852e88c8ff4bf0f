"""The 11 kimchi classes, their names in three scripts, the reserved label `not_kimchi`, and matching free text
to one of them."""
from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from models.errors import LabelTooLong, NotAClass, UnknownLabel

# The longest label text `match` looks at. Every name and alias is shorter (the longest has 26 characters);
# the cap keeps the typo search, pure Python on the event loop, bounded whatever a user sends.
MAX_LABEL_CHARS = 40


@dataclass(frozen=True)
class KimchiClass:
    """One class of the vocabulary: Korean name, romanisation, English gloss and extra aliases."""

    id: int
    name: str
    roman: str
    gloss: str
    aliases: tuple[str, ...] = field(default=())


# The order is the bot's short callback id; never reorder, only append.
# Aliases are only true synonyms: everyday, regional or common spellings of the same dish. A broader or
# neighbouring kimchi goes to NOT_CLASSES instead, because a wrong mapping becomes a wrong training label.
CLASSES: tuple[KimchiClass, ...] = (
    KimchiClass(0, "배추김치", "baechu-kimchi", "napa cabbage kimchi",
                # 포기김치: whole-head; 막김치 / 맛김치: the same cabbage cut before seasoning (shop name 맛김치)
                ("배추", "포기김치", "통배추김치", "배추포기김치", "막김치", "맛김치",
                 "cabbage kimchi", "napa kimchi", "baechu", "pogi kimchi", "mak kimchi", "mat kimchi")),
    KimchiClass(1, "오이소박이", "oi-sobagi", "stuffed cucumber kimchi",
                # 오이소배기: the spoken form; 오이김치 nearly always means this in everyday use
                ("오이소배기", "오이소박이김치", "오이김치", "cucumber kimchi", "oisobagi", "oi sobagi")),
    KimchiClass(2, "파김치", "pa-kimchi", "green onion kimchi",
                ("쪽파김치", "실파김치", "scallion kimchi", "green onion kimchi", "pa", "jjokpa kimchi")),
    KimchiClass(3, "열무김치", "yeolmu-kimchi", "young summer radish kimchi",
                ("열무", "young radish kimchi", "yeolmu")),
    KimchiClass(4, "깍두기", "kkakdugi", "cubed radish kimchi",
                # 깍뚜기 (spelt as said) is left to the typo suggestion, which asks before saving
                ("무깍두기", "radish cube kimchi", "cubed radish kimchi", "kakdugi", "kkakduki",
                 "kkakttugi")),
    KimchiClass(5, "부추김치", "buchu-kimchi", "garlic chive kimchi",
                # regional words for 부추: 정구지 (Gyeongsang), 솔 (Jeolla, Chungcheong), 소풀 (Gyeongnam)
                ("부추", "정구지김치", "정구지", "솔김치", "소풀김치", "chive kimchi", "buchu",
                 "jeongguji kimchi")),
    KimchiClass(6, "무생채", "musaengchae", "julienned radish salad",
                ("무채", "무채무침", "무생채무침", "radish salad", "spicy radish salad", "mu saengchae")),
    KimchiClass(7, "백김치", "baek-kimchi", "white kimchi, no chili",
                ("white kimchi", "baek kimchi")),
    # 물김치 / "water kimchi" are not aliases here: they name a family (나박김치, 동치미, 열무물김치 …),
    # so they are in NOT_CLASSES; the user picks 나박김치 from the list when that is what it is.
    KimchiClass(8, "나박김치", "nabak-kimchi", "sliced radish water kimchi",
                ("나박", "nabak", "nabak kimchi")),
    KimchiClass(9, "갓김치", "gat-kimchi", "mustard leaf kimchi",
                # 돌산갓김치: Yeosu's Dolsan mustard leaf, the best-known 갓김치 by far
                ("갓", "돌산갓김치", "mustard kimchi", "mustard leaf kimchi", "mustard greens kimchi", "gat")),
    KimchiClass(10, "총각김치", "chonggak-kimchi", "ponytail radish kimchi",
                # 총각무 = 알타리무 = 달랑무: one radish, three names
                ("알타리김치", "알타리", "알타리무김치", "총각무김치", "총각무", "달랑무김치", "달랑무",
                 "ponytail radish kimchi", "altari kimchi", "chonggak")),
)

# The reserved label for a photo that shows none of the classes (another dish, a cat, a selfie): a label like
# the others for training, the audit and the holdout, shown as "김치 아님" / "Not kimchi". Its id follows the
# classes' (callback data), and it is never one of CLASSES: "the 11 classes" stay eleven kimchi.
NOT_KIMCHI = "not_kimchi"
NOT_KIMCHI_CLASS = KimchiClass(len(CLASSES), NOT_KIMCHI, "not-kimchi", "not kimchi",
                               ("김치아님", "김치 아님", "김치가 아님", "김치아니에요", "김치 아니에요", "김치가 아니에요",
                                "아님", "not kimchi", "no kimchi", "none", "nonkimchi"))
# Every label a photo may have: the classes, then not_kimchi.
LABELS: tuple[KimchiClass, ...] = (*CLASSES, NOT_KIMCHI_CLASS)
# Folder names that hold negatives in a folder-per-class tree (compared after NFC and case folding).
NEGATIVE_FOLDERS = frozenset({NOT_KIMCHI, "김치아님", "김치 아님", "기타", "other", "others", "not-kimchi"})

# Kimchi that people name but that are none of the classes: canonical Korean name -> other names.
# A match here is told "not one of mine yet", never mapped and never offered as a typo of a class.
NOT_CLASSES: dict[str, tuple[str, ...]] = {
    "동치미": ("dongchimi", "radish water kimchi"),
    "물김치": ("water kimchi", "mul kimchi", "mulkimchi"),
    "열무물김치": ("yeolmu mulkimchi",),
    "섞박지": ("석박지", "seokbakji"),
    "고들빼기김치": ("고들빼기", "godeulppaegi kimchi"),
    "보쌈김치": ("보김치", "bossam kimchi"),
    "우엉김치": ("burdock kimchi",),
    "얼갈이김치": ("얼갈이", "eolgari kimchi"),
    "양배추김치": ("양배추",),  # not English "cabbage": people say it for 배추 too
    "깻잎김치": ("perilla leaf kimchi", "kkaennip kimchi"),
    "고구마순김치": ("sweet potato stem kimchi",),
    "무청김치": ("radish greens kimchi",),
    "미나리김치": ("water parsley kimchi",),
    "콩나물김치": ("bean sprout kimchi",),
    "씀바귀김치": (),
    "돌나물김치": (),
    "파래김치": (),
    "오이깍두기": (),
    "가지김치": ("eggplant kimchi",),
    "장김치": ("jang kimchi",),
    "비늘김치": (),
    "겉절이": ("배추겉절이", "geotjeori"),
    "무말랭이": ("무말랭이김치", "무말랭이무침"),
    "전복김치": ("abalone kimchi",),
}

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
LABEL_NAMES: tuple[str, ...] = tuple(c.name for c in LABELS)
_BY_NAME = {c.name: c for c in LABELS}


def nfc(text: str) -> str:
    """NFC form: Hangul typed or stored on macOS arrives decomposed (NFD)."""
    return unicodedata.normalize("NFC", text)


def _key(text: str) -> str:
    """The comparison key: NFC, lower case, without spaces or the separators - _ · . ,"""
    folded = nfc(text).casefold()
    return "".join(ch for ch in folded if not ch.isspace() and ch not in "-_·.,")


def _jamo(text: str) -> str:
    """Hangul syllables decomposed into jamo, so 깎두기 and 깍두기 differ by one letter, not one syllable."""
    return unicodedata.normalize("NFD", text)


def _build_indexes() -> tuple[dict[str, KimchiClass], dict[str, str]]:
    classes: dict[str, KimchiClass] = {}
    for cls in LABELS:
        for name in (cls.name, cls.roman, cls.gloss, *cls.aliases):
            classes[_key(name)] = cls
    others: dict[str, str] = {}
    for canonical, names in NOT_CLASSES.items():
        for name in (canonical, *names):
            others[_key(name)] = canonical
    clash = classes.keys() & others.keys()
    if clash:  # a name cannot be a class and not a class; fail at import, not at a user's message
        raise ValueError(f"names both in CLASSES and NOT_CLASSES: {sorted(clash)}")
    return classes, others


_INDEX, _OTHERS = _build_indexes()


_Candidate = tuple[str, str | None, dict[str, int]]


def _build_jamo_buckets() -> dict[int, tuple[_Candidate, ...]]:
    """Every known key in jamo with its letter counts, bucketed by length; the target is a class name,
    or None for a kimchi that is not a class.

    Built once at import, so a typo search decomposes and counts only the user's text.
    """
    targets: dict[str, str | None] = {key: cls.name for key, cls in _INDEX.items()}
    targets.update({key: None for key in _OTHERS})
    buckets: dict[int, list[_Candidate]] = {}
    for key, target in targets.items():
        jamo = _jamo(key)
        buckets.setdefault(len(jamo), []).append((jamo, target, dict(Counter(jamo))))
    return {length: tuple(entries) for length, entries in buckets.items()}


_JAMO_BUCKETS = _build_jamo_buckets()


def by_name(name: str) -> KimchiClass | None:
    """The label whose name is `name` (after NFC): a class by its Korean name, or NOT_KIMCHI_CLASS; else None."""
    return _BY_NAME.get(nfc(name))


def by_id(class_id: int) -> KimchiClass | None:
    """The label with this short id (the classes, then not_kimchi), or None."""
    return LABELS[class_id] if 0 <= class_id < len(LABELS) else None


def is_kimchi(name: str) -> bool:
    """Whether `name` is one of the 11 kimchi classes (not_kimchi is not)."""
    return nfc(name) in CLASS_NAMES


def folder_label(name: str) -> str:
    """The label a folder of a folder-per-class tree stands for: its name in NFC, and `not_kimchi` for any of
    NEGATIVE_FOLDERS (김치아님, 기타, other …)."""
    name = nfc(name)
    return NOT_KIMCHI if name.casefold() in NEGATIVE_FOLDERS else name


def is_known(name: str) -> bool:
    """Whether a folder or label name is one of LABELS (a negatives folder counts as not_kimchi)."""
    return folder_label(name) in _BY_NAME


def _distance_within(a: str, b: str, limit: int) -> int | None:
    """Levenshtein distance of a and b if it is at most `limit`, else None.

    Only the diagonal band |i - j| <= limit can hold such a distance, and a row whose cells all exceed
    the limit ends the search; this keeps the cost near len(a) * (2 * limit + 1).
    """
    if abs(len(a) - len(b)) > limit:
        return None
    over = limit + 1
    previous = [j if j <= limit else over for j in range(len(b) + 1)]
    for i in range(1, len(a) + 1):
        current = [over] * (len(b) + 1)
        current[0] = i if i <= limit else over
        low, high = max(1, i - limit), min(len(b), i + limit)
        ca = a[i - 1]
        for j in range(low, high + 1):
            cell = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != b[j - 1]))
            current[j] = cell if cell < over else over
        if min(current[low - 1:high + 1]) > limit:
            return None
        previous = current
    return previous[-1] if previous[-1] <= limit else None


def _letters_apart(counts: dict[str, int], length: int, other: _Candidate) -> int:
    """A lower bound of the edit distance from letter counts alone: each edit fixes at most one surplus
    letter on each side. Far cheaper than the distance itself, and it rules out nearly every alias."""
    other_counts = other[2]
    surplus = 0
    for letter, n in counts.items():
        m = other_counts.get(letter, 0)
        if n > m:
            surplus += n - m
    return max(surplus, surplus - length + len(other[0]))


def suggest(text: str) -> KimchiClass | None:
    """The one class whose name or alias is a near miss of `text`, by edit distance over jamo.

    None when the text is empty, longer than MAX_LABEL_CHARS, near nothing, near two classes at once,
    or nearest to a kimchi that is not a class (a typo of 양배추김치 is not a 배추김치).
    """
    key = _key(text)
    if not key or len(key) > MAX_LABEL_CHARS:
        return None
    jamo = _jamo(key)
    counts = dict(Counter(jamo))
    allowed = max(1, min(3, len(jamo) // 4))
    best: dict[str | None, int] = {}
    for length in range(len(jamo) - allowed, len(jamo) + allowed + 1):
        for candidate in _JAMO_BUCKETS.get(length, ()):
            if _letters_apart(counts, len(jamo), candidate) > allowed:
                continue
            alias, target, _ = candidate
            d = _distance_within(jamo, alias, allowed)
            if d is not None and d < best.get(target, allowed + 1):
                best[target] = d
    if not best:
        return None
    nearest = min(best.values())
    winners = [target for target, d in best.items() if d == nearest]
    if len(winners) == 1 and winners[0] is not None:
        return _BY_NAME[winners[0]]
    return None


def _check_length(text: str) -> None:
    """Raise LabelTooLong for text over MAX_LABEL_CHARS (after NFC, so decomposed Hangul is not penalised)."""
    stripped = text.strip()
    # NFC composes at most three code points into one (Hangul L+V+T), so text over four times the limit
    # is refused without normalising it at all.
    length = len(stripped) if len(stripped) > 4 * MAX_LABEL_CHARS else len(nfc(stripped))
    if length > MAX_LABEL_CHARS:
        raise LabelTooLong(length, MAX_LABEL_CHARS)


def _lookup(key: str) -> KimchiClass | str | None:
    """What the key names, exactly or with 김치 added or removed: a class, the canonical name of a
    kimchi that is not a class, or None."""
    variants = [key]
    if key.endswith("김치"):
        variants.append(key[: -len("김치")])
    elif key:
        variants.append(key + "김치")
    for variant in variants:
        if variant in _INDEX:
            return _INDEX[variant]
        if variant in _OTHERS:
            return _OTHERS[variant]
    return None


def match(text: str) -> KimchiClass:
    """The class named by `text` (Korean, romanised or English; any case, spacing or Unicode form).

    Raises LabelTooLong over MAX_LABEL_CHARS characters, before any matching; NotAClass for a kimchi that
    is not one of the classes (e.g. 동치미); otherwise UnknownLabel, with a suggestion for a near miss.
    """
    _check_length(text)
    found = _lookup(_key(text))
    if isinstance(found, KimchiClass):
        return found
    if found is not None:
        raise NotAClass(text, found)
    hint = suggest(text)
    raise UnknownLabel(text, hint.name if hint else None)
