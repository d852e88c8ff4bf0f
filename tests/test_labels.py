import unicodedata

import pytest

import models.labels as labels
from models.errors import LabelTooLong, NotAClass, UnknownLabel
from models.labels import CLASS_NAMES, CLASSES, MAX_LABEL_CHARS, NOT_CLASSES, match, suggest


def test_vocabulary_has_the_eleven_classes_in_callback_order():
    assert CLASS_NAMES == ("배추김치", "오이소박이", "파김치", "열무김치", "깍두기", "부추김치",
                           "무생채", "백김치", "나박김치", "갓김치", "총각김치")
    assert [c.id for c in CLASSES] == list(range(11))


@pytest.mark.parametrize("text,expected", [
    ("깍두기", "깍두기"),
    ("kkakdugi", "깍두기"),
    ("KKAKDUGI", "깍두기"),
    ("Cubed Radish Kimchi", "깍두기"),
    ("  깍 두 기 ", "깍두기"),
    (unicodedata.normalize("NFD", "깍두기"), "깍두기"),
    ("white kimchi", "백김치"),
    ("배추", "배추김치"),
    ("oi-sobagi", "오이소박이"),
    ("Gat-Kimchi", "갓김치"),
    ("파", "파김치"),
])
def test_match_by_korean_roman_or_english(text, expected):
    assert match(text).name == expected


# Everyday and regional names people type for the classes (issue 11, section 6).
SYNONYMS = [
    ("포기김치", "배추김치"), ("통배추김치", "배추김치"), ("배추포기김치", "배추김치"),
    ("막김치", "배추김치"), ("맛김치", "배추김치"),
    ("오이소배기", "오이소박이"), ("오이김치", "오이소박이"), ("오이소박이김치", "오이소박이"),
    ("쪽파김치", "파김치"), ("실파김치", "파김치"),
    ("열무", "열무김치"),
    ("무깍두기", "깍두기"),
    ("정구지김치", "부추김치"), ("정구지", "부추김치"), ("솔김치", "부추김치"), ("소풀김치", "부추김치"),
    ("부추", "부추김치"),
    ("무채", "무생채"), ("무채무침", "무생채"), ("무생채무침", "무생채"),
    ("나박", "나박김치"),
    ("갓", "갓김치"), ("돌산갓김치", "갓김치"),
    ("알타리김치", "총각김치"), ("알타리", "총각김치"), ("알타리무김치", "총각김치"),
    ("총각무김치", "총각김치"), ("총각무", "총각김치"), ("달랑무김치", "총각김치"), ("달랑무", "총각김치"),
]


@pytest.mark.parametrize("text,expected", SYNONYMS)
def test_everyday_and_regional_names_map_to_their_class(text, expected):
    assert match(text).name == expected
    assert match(unicodedata.normalize("NFD", f" {text} ")).name == expected


def test_there_are_at_least_fifteen_everyday_names():
    assert len({text for text, _ in SYNONYMS} - set(CLASS_NAMES)) >= 15


@pytest.mark.parametrize("text,name", [
    ("동치미", "동치미"), ("dongchimi", "동치미"), ("물김치", "물김치"), ("Water Kimchi", "물김치"),
    ("섞박지", "섞박지"), ("석박지", "섞박지"), ("고들빼기김치", "고들빼기김치"), ("고들빼기", "고들빼기김치"),
    ("보쌈김치", "보쌈김치"), ("우엉김치", "우엉김치"), ("양배추김치", "양배추김치"), ("깻잎김치", "깻잎김치"),
    ("오이깍두기", "오이깍두기"), ("겉절이", "겉절이"), ("열무물김치", "열무물김치"),
    (unicodedata.normalize("NFD", "동치미 김치"), "동치미"),
])
def test_a_kimchi_that_is_not_a_class_is_named_never_mapped_or_suggested(text, name):
    with pytest.raises(NotAClass) as err:
        match(text)
    assert err.value.name == name and err.value.text == text
    assert err.value.suggestion is None
    assert isinstance(err.value, UnknownLabel)  # handlers that only know UnknownLabel still answer


def test_no_name_is_both_a_class_and_not_a_class():
    class_keys = {labels._key(n) for c in CLASSES for n in (c.name, c.roman, c.gloss, *c.aliases)}
    other_keys = {labels._key(n) for canonical, names in NOT_CLASSES.items() for n in (canonical, *names)}
    assert not class_keys & other_keys
    assert not class_keys & {labels._key(n) for n in NOT_CLASSES}


def test_near_miss_is_suggested_through_jamo_distance():
    for typo in ("깍뚜기", "깎두기"):
        with pytest.raises(UnknownLabel) as err:
            match(typo)
        assert type(err.value) is UnknownLabel and err.value.suggestion == "깍두기"
    assert suggest("깍두귀").name == "깍두기"
    assert suggest("오이소바기").name == "오이소박이"
    assert suggest("kkakdugee").name == "깍두기"


def test_a_typo_of_a_kimchi_that_is_not_a_class_suggests_no_class():
    # 앙배추김치 is three jamo from 배추김치 but one from 양배추김치, a different kimchi
    with pytest.raises(UnknownLabel) as err:
        match("앙배추김치")
    assert err.value.suggestion is None


def test_unrelated_text_has_no_suggestion():
    with pytest.raises(UnknownLabel) as err:
        match("pizza margherita")
    assert type(err.value) is UnknownLabel and err.value.suggestion is None
    assert "not one of the kimchi classes" in str(err.value)


@pytest.fixture
def no_matching(monkeypatch):
    """Any edit distance or lookup during the test fails it."""
    def forbidden(*args, **kwargs):
        raise AssertionError("matching ran on text that should have been refused")
    monkeypatch.setattr(labels, "_distance_within", forbidden)
    monkeypatch.setattr(labels, "_lookup", forbidden)
    monkeypatch.setattr(labels, "suggest", forbidden)


@pytest.mark.parametrize("text", [
    "가" * (MAX_LABEL_CHARS + 1), "깍두기" * 1400, "x" * 100_000, "a b " * 30,
    "깍두기" + " " * 50 + "깍두기" * 13,
])
def test_text_over_the_limit_is_refused_before_any_matching(text, no_matching):
    with pytest.raises(LabelTooLong) as err:
        match(text)
    assert err.value.limit == MAX_LABEL_CHARS and err.value.length > MAX_LABEL_CHARS
    assert err.value.suggestion is None and err.value.text == ""
    assert "깍두기" not in str(err.value) and "가가" not in str(err.value)  # never echoed
    assert isinstance(err.value, UnknownLabel)


def test_the_limit_counts_composed_characters_and_ignores_outer_spaces():
    at_limit = "가" * MAX_LABEL_CHARS
    for text in (at_limit, "   " + at_limit + "\n", unicodedata.normalize("NFD", at_limit)):
        with pytest.raises(UnknownLabel) as err:
            match(text)
        assert not isinstance(err.value, LabelTooLong)
    assert match(unicodedata.normalize("NFD", "  오이 소박이  ")).name == "오이소박이"


def test_suggest_on_text_over_the_limit_returns_none_without_searching(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the typo search ran on unbounded text")
    monkeypatch.setattr(labels, "_distance_within", forbidden)
    monkeypatch.setattr(labels, "_jamo", forbidden)
    assert suggest("깍두기" * 14) is None
    assert suggest("kkakdugee" * 5) is None


@pytest.mark.parametrize("a,b,limit,expected", [
    ("kitten", "sitting", 3, 3), ("kitten", "sitting", 2, None), ("", "abc", 3, 3), ("abc", "", 2, None),
    ("abc", "abc", 1, 0), ("abcdef", "badcfe", 4, 4), ("abcdef", "badcfe", 3, None), ("abcdef", "azcdxf", 2, 2),
    ("abcdef", "azcdxf", 1, None),
])
def test_banded_distance_is_levenshtein_up_to_the_limit(a, b, limit, expected):
    assert labels._distance_within(a, b, limit) == expected
