"""`kimchi-train import-model`: a fastai `learn.export()` pickle (such as the blog's
identifying_Kimchi_model.pkl) into the safe format.

Unpickling runs whatever code the file holds. So it happens only on the user's say-so (the command's
`--trust-pickle`), and in a separate process started with an allow-listed environment (PATH, HOME, locale,
Python's own variables: no TELEGRAM_BOT_TOKEN, nothing of KIMCHI_). That process writes the weights as
safetensors and the description as JSON; this one reads them back with the safe loader, which never
unpickles, checks them against the architecture and publishes them. The pickle itself is not kept unless
asked (`keep_pickle`), so that a version's learner.pkl is always one our own trainer wrote.

What a clean environment cannot do: the pickle's code still runs as the user who imports it, able to read
what that user can read. Import only files you trust, or import as a user who has no secrets.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from models.archs import ARCHS, build_model
from models.artifact import LEARNER, ModelMeta, Preprocessing, load_artifact, save_artifact
from models.errors import KimchiError
from models.clock import stamp
from models.registry import Registry

log = logging.getLogger(__name__)

# The environment the unpickling process gets: what Python, torch and matplotlib need, and nothing else.
CHILD_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH", "PYTHONHOME",
             "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "MPLCONFIGDIR", "OMP_NUM_THREADS",
             "MKL_NUM_THREADS", "TORCH_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")
CHILD_TIMEOUT_S = 600
ERROR_FILE = "error.txt"  # the child's one sentence when the file cannot be converted


def detect_arch(model: torch.nn.Module, n_out: int) -> str:
    """The architecture whose fastai module tree has exactly these tensor names and shapes."""
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name in ARCHS:
        with torch.device("meta"):  # shapes only: no memory, no random initialisation
            candidate = build_model(name, n_out).state_dict()
        if wanted == {k: tuple(v.shape) for k, v in candidate.items()}:
            return name
    raise KimchiError(f"The exported model is not one of the supported architectures ({', '.join(ARCHS)}) "
                      f"with fastai's default head.")


def preprocessing_of(learn) -> Preprocessing:
    """Resize size, batch size and Normalize stats read off the export's transforms."""
    from fastai.data.transforms import Normalize
    from fastai.vision.augment import AffineCoordTfm, RandomResizedCropGPU, Resize

    pre = Preprocessing(normalize=False)
    for tfm in learn.dls.after_item.fs:
        if isinstance(tfm, Resize):
            pre.presize = int(tfm.size[0])
            if str(tfm.method) != "crop":
                raise KimchiError(f"The export resizes with method '{tfm.method}'; only the recipe's crop is supported.")
    for tfm in learn.dls.after_batch.fs:
        if isinstance(tfm, RandomResizedCropGPU):
            pre.size = int(tfm.size[0])
        elif isinstance(tfm, AffineCoordTfm) and tfm.size is not None:
            pre.size = int(tfm.size[0] if isinstance(tfm.size, tuple) else tfm.size)
        elif isinstance(tfm, Normalize) and tfm.mean is not None:
            pre.normalize = True
            pre.mean = tuple(float(v) for v in torch.as_tensor(tfm.mean).flatten())
            pre.std = tuple(float(v) for v in torch.as_tensor(tfm.std).flatten())
    return pre


def child_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of `environ` (default: ours): no token, no KIMCHI_ setting, no other secret."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k in CHILD_ENV or k.startswith("LC_")}


def import_fastai_export(path: Path, registry: Registry, keep_pickle: bool = False) -> tuple[str, Path]:
    """Load the pickle (trusted by the caller) in a separate process with a clean environment, and publish
    its weights and description as a version; `keep_pickle` also keeps the file as the version's learner.pkl."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise KimchiError(f"{path} does not exist.")
    scratch = Path(tempfile.mkdtemp(prefix="kimchi-import-"))
    try:
        model, meta = _load_in_child(path, scratch)
        meta = ModelMeta(arch=meta.arch, vocab=meta.vocab, preprocessing=meta.preprocessing,
                         source=f"import-model {path.name}", created_at=stamp())
        staging = registry.staging()
        try:
            save_artifact(staging, model, meta)  # written here, from tensors the safe loader read and checked
            if keep_pickle:
                shutil.copyfile(path, staging / LEARNER)
            version = registry.publish(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return version, registry.path(version)


def _load_in_child(path: Path, scratch: Path) -> tuple[torch.nn.Module, ModelMeta]:
    """Unpickle `path` in `python -c ... child_main` with a clean environment, inside `scratch`; read back
    what it wrote with the safe loader."""
    out = scratch / "artifact"
    root = str(Path(__file__).resolve().parent.parent)  # appended: found only where the package is not installed
    code = f"import sys; sys.path.append({root!r}); from training.convert import child_main; sys.exit(child_main())"
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path), str(out)], cwd=scratch,
                              env=child_environment(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise KimchiError(f"Loading {path.name} took more than {CHILD_TIMEOUT_S} s; it was stopped.") from None
    if done.stderr.strip():
        log.info("the process that loaded %s said:\n%s", path.name, done.stderr[-20000:])
    if (scratch / ERROR_FILE).is_file():
        with open(scratch / ERROR_FILE, "rb") as fh:
            raise KimchiError(_printable(fh.read(4000).decode("utf-8", errors="replace")))
    if done.returncode != 0:
        raise KimchiError(f"The process that loaded {path.name} ended with status {done.returncode} and no "
                          f"result; its output is in the log.")
    model, meta = load_artifact(out)  # safetensors + JSON: nothing here runs the pickle's code
    _check_description(meta, path)
    return model, meta


def _check_description(meta: ModelMeta, path: Path) -> None:
    """What came back as JSON from the process that ran the pickle's code, checked before it is published."""
    vocab = meta.vocab
    if not (isinstance(vocab, list) and all(isinstance(v, str) and 0 < len(v) <= 200 for v in vocab)
            and len(set(vocab)) == len(vocab)):
        raise KimchiError(f"The class names read from {path.name} are not usable (empty, repeated or not text).")
    pre = meta.preprocessing
    sizes_ok = all(isinstance(v, int) and 16 <= v <= 4096 for v in (pre.presize, pre.size))
    stats_ok = all(isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) and abs(x) < 1e4 for x in v)
                   for v in (pre.mean, pre.std))
    if not (sizes_ok and stats_ok and pre.resize_method == "crop" and isinstance(pre.normalize, bool)):
        raise KimchiError(f"The transforms read from {path.name} are not usable (sizes {pre.presize} and {pre.size}, "
                          f"resize '{pre.resize_method}').")


def _printable(text: str, limit: int = 500) -> str:
    """The child's sentence, without control characters (it may come from the pickle's own code)."""
    text = "".join(ch if ch.isprintable() else " " for ch in text.strip())
    return text if len(text) <= limit else text[:limit] + "…"


def child_main(argv: list[str] | None = None) -> int:
    """In the separate process: unpickle, then write the safe pair into OUT, or one sentence into error.txt."""
    src, out = (Path(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        _convert(src, out)
    except KimchiError as err:
        (out.parent / ERROR_FILE).write_text(str(err), encoding="utf-8")
        return 1
    except Exception as err:  # a bug or a strange file: the sentence, and the traceback on stderr (the log)
        import traceback

        traceback.print_exc()
        (out.parent / ERROR_FILE).write_text(f"{src.name} could not be converted ({err.__class__.__name__}: {err}).",
                                             encoding="utf-8")
        return 1
    return 0


def _convert(path: Path, out: Path) -> None:
    from fastai.learner import load_learner

    try:
        learn = load_learner(path, cpu=True)
    except RuntimeError as err:
        first = (str(err).splitlines() or [err.__class__.__name__])[0]
        raise KimchiError(f"{path.name} could not be loaded with this fastai: {first}") from err
    except Exception as err:
        raise KimchiError(f"{path.name} is not a fastai export that can be loaded here "
                          f"({err.__class__.__name__}: {err}).") from err
    if not all(hasattr(learn, a) for a in ("dls", "model")) or not hasattr(learn.dls, "vocab"):
        raise KimchiError(f"{path.name} holds a {type(learn).__name__}, not a fastai Learner with class names.")
    vocab = [str(v) for v in learn.dls.vocab]
    arch = detect_arch(learn.model, len(vocab))
    model = build_model(arch, len(vocab))
    model.load_state_dict(learn.model.state_dict())
    save_artifact(out, model, ModelMeta(arch=arch, vocab=vocab, preprocessing=preprocessing_of(learn)))
