import unicodedata

import pytest

from models.errors import UnknownLabel
from models.labels import CLASS_NAMES, CLASSES, match, suggest


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
    ("알타리김치", "총각김치"),
    ("배추", "배추김치"),
    ("oi-sobagi", "오이소박이"),
    ("Gat-Kimchi", "갓김치"),
    ("열무", "열무김치"),
])
def test_match_by_korean_roman_or_english(text, expected):
    assert match(text).name == expected


def test_near_miss_is_suggested_through_jamo_distance():
    with pytest.raises(UnknownLabel) as err:
        match("깍뚜기")
    assert err.value.suggestion == "깍두기"
    assert suggest("오이소바기").name == "오이소박이"
    assert suggest("kkakdugee").name == "깍두기"


def test_unrelated_text_has_no_suggestion():
    with pytest.raises(UnknownLabel) as err:
        match("pizza margherita")
    assert err.value.suggestion is None
    assert "not one of the kimchi classes" in str(err.value)
