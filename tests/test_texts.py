"""Every sentence has both languages, every placeholder is supplied, no key is dead, every reason has words."""
import ast
import string
from pathlib import Path

import pytest

from bot.texts import EN, IMAGE_KEYS, KO, TEXTS, say
from models.errors import ImageRejected

BOT = Path(__file__).resolve().parent.parent / "bot"


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def say_calls() -> list[tuple[str, str, set[str] | None]]:
    """(file:line, key, keyword names) for every say("key", …) call with a literal key in bot/."""
    calls = []
    for path in sorted(BOT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "say" and node.args \
                    and isinstance(node.args[0], ast.Constant):
                names = None if any(k.arg is None for k in node.keywords) else {k.arg for k in node.keywords}
                calls.append((f"{path.name}:{node.lineno}", node.args[0].value, names))
    return calls


def literal_strings_outside_the_table() -> set[str]:
    found = set()
    for path in sorted(BOT.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        table = {id(n) for stmt in tree.body if isinstance(stmt, ast.AnnAssign) and getattr(stmt.target, "id", "") == "TEXTS"
                 for n in ast.walk(stmt)}
        found |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                  and id(n) not in table}
    return found


def test_every_key_has_korean_and_english():
    for key, entry in TEXTS.items():
        assert set(entry) == {KO, EN} and all(entry.values()), key


def test_every_call_supplies_what_its_template_uses():
    calls = say_calls()
    assert len(calls) > 40  # the scan finds the handlers' calls
    for where, key, names in calls:
        assert key in TEXTS, f"{where}: unknown key {key}"
        needed = placeholders(TEXTS[key][KO]) | placeholders(TEXTS[key][EN])
        if names is not None:
            assert needed <= names, f"{where}: {key} needs {needed - names}"


def test_no_key_is_unused():
    used = literal_strings_outside_the_table()
    unused = sorted(key for key in TEXTS if key not in used)
    assert unused == []


def test_every_image_rejection_reason_has_words():
    assert set(IMAGE_KEYS) == set(ImageRejected.REASONS)
    for key in IMAGE_KEYS.values():
        assert say(key, KO) and say(key, EN)


def test_a_missing_translation_is_an_error_not_korean():
    with pytest.raises(KeyError):
        say("start", "fr")
