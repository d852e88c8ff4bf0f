"""Registry helpers for tests."""
from __future__ import annotations

import json
import shutil

from models.artifact import META
from models.registry import Registry


def publish_relabelled(registry: Registry, version: str) -> str:
    """`version`'s weights with the vocabulary reversed, published as a new version: a model that is
    confidently wrong, and whose answers show which of the two versions produced them."""
    staging = registry.staging()
    shutil.rmtree(staging)
    shutil.copytree(registry.path(version), staging)
    meta = json.loads((staging / META).read_text(encoding="utf-8"))
    meta["vocab"] = list(reversed(meta["vocab"]))
    (staging / META).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return registry.publish(staging)
