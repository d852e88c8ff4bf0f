"""Dataset import: AI Hub layout, messy crop files, broken and exotic images, presize and dedup."""
import json
import logging
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.cli import main
from training.importer import MANIFEST, import_dataset, parse_crop_file, read_manifest
from tests.imagegen import draw, draw_other, encode


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _stored(dest: Path) -> dict[str, dict]:
    return {Path(r["source"]).name: r for r in read_manifest(dest)}


@pytest.fixture
def aihub(tmp_path: Path) -> Path:
    """kfood/김치/<class>/Img_…jpg with crop_area.properties, one class folder named in NFD (macOS)."""
    root = tmp_path / "kfood" / "김치"
    kkak = root / unicodedata.normalize("NFD", "깍두기")
    for i in range(1, 7):
        draw(4, (400, 300), seed=i).save(_write(kkak / f"Img_004_000{i}.jpg", b"").with_suffix(".jpg"))
    (kkak / "crop_area.properties").write_text("\n".join([
        "#Sat Jan 01 00:00:00 KST 2019",
        "Img_004_0001=10,20,200,150",       # good
        "img_004_0002=50,50,100,100",       # key in another case: still matches
        "Img_004_0003=10,20",               # two values: logged, kept uncropped
        ",Img_004_0004=1,2,3,4",             # starts with a comma: logged
        "some stray words here",             # no '=': logged
        "Img_004_0005=300,200,400,400",     # runs past the image: clipped to 100x100
        # Img_004_0006 has no entry: kept uncropped
    ]), encoding="utf-8")
    baechu = root / "배추김치"
    for i in range(1, 4):
        draw(0, (320, 240), seed=i).save(_write(baechu / f"Img_001_000{i}.jpg", b""))
    return tmp_path / "kfood"


def test_aihub_layout_with_messy_crop_file(aihub, tmp_path, caplog):
    dest = tmp_path / "base"
    with caplog.at_level(logging.INFO):
        summary = import_dataset(aihub, dest, crop=True, presize=0, workers=2)
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == ["깍두기", "배추김치"]  # NFC, no 12th class
    assert summary.added["깍두기"] == 6 and summary.added["배추김치"] == 3
    rows = _stored(dest)
    assert rows["Img_004_0001.jpg"]["crop"] == [10, 20, 210, 170]
    assert rows["Img_004_0001.jpg"]["size"] == [200, 150]
    assert rows["Img_004_0002.jpg"]["crop"] == [50, 50, 150, 150]
    assert rows["Img_004_0005.jpg"]["crop"] == [300, 200, 400, 300]
    assert rows["Img_004_0005.jpg"]["size"] == [100, 100]
    for uncropped in ("Img_004_0003.jpg", "Img_004_0004.jpg", "Img_004_0006.jpg"):
        assert rows[uncropped]["crop"] is None
        assert rows[uncropped]["size"] == [400, 300]
    assert rows["Img_001_0001.jpg"]["crop"] is None  # 배추김치 has no crop file at all
    logged = caplog.text
    assert "expected x,y,w,h" in logged and "no '='" in logged and "unreadable image name" in logged
    assert "no entry for Img_004_0006.jpg" in logged
    assert len(summary.crop_problems) == 3


def test_crop_parser_reports_each_bad_line(tmp_path):
    path = tmp_path / "crop_area.properties"
    path.write_text("A=1,2,3,4\nB=1,2\nC=1,x,3,4\nD=1,2,0,4\n\n# comment\n", encoding="utf-8")
    table = parse_crop_file(path)
    assert table.boxes == {"a": (1.0, 2.0, 3.0, 4.0)}
    assert table.bad_keys == {"b", "c", "d"}
    assert len(table.problems) == 3


def _cmyk_jpeg() -> bytes:
    return encode(draw(1, (64, 48)).convert("CMYK"), "JPEG", quality=90)


def _palette_png() -> bytes:
    return encode(draw(2, (64, 48)).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")


def _alpha_png() -> bytes:
    img = draw(3, (64, 48)).convert("RGBA")
    alpha = Image.new("L", img.size, 0)
    alpha.paste(255, (0, 0, 32, 48))  # left half opaque, right half transparent
    img.putalpha(alpha)
    return encode(img, "PNG")


def _png16() -> bytes:
    arr = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I")
    return encode(img, "PNG")


def _exif_rotated() -> bytes:
    img = Image.new("RGB", (60, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 30, 40))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise: red ends up on top
    return encode(img, "JPEG", quality=95, exif=exif)


def test_broken_files_are_skipped_and_exotic_formats_become_rgb(tmp_path):
    src = tmp_path / "src" / "파김치"
    good = encode(draw(2, (64, 48)), "JPEG")
    _write(src / "a_good.jpg", good)
    _write(src / "b_empty.jpg", b"")
    whole = encode(draw(2, (300, 200), seed=3))
    _write(src / "c_truncated.jpg", whole[: len(whole) // 2])
    _write(src / "d_text.jpg", b"this is not a picture at all")
    _write(src / "e_notes.txt", b"notes")
    _write(src / "f.png", encode(draw(2, (64, 48), seed=5), "PNG"))
    _write(src / "g.gif", encode(draw(2, (64, 48), seed=6), "GIF"))
    _write(src / "h.bmp", encode(draw(2, (64, 48), seed=7), "BMP"))
    _write(src / "i.webp", encode(draw(2, (64, 48), seed=8), "WEBP"))
    _write(src / "j_cmyk.jpg", _cmyk_jpeg())
    _write(src / "k_palette.png", _palette_png())
    _write(src / "l_alpha.png", _alpha_png())
    _write(src / "m_16bit.png", _png16())
    _write(src / "n_rotated.jpg", _exif_rotated())
    dest = tmp_path / "base"
    summary = import_dataset(tmp_path / "src", dest, presize=0, workers=2)
    assert summary.added["파김치"] == 10
    assert dict(summary.skipped["파김치"]) == {"empty": 1, "truncated": 1, "not_image": 2}
    rows = _stored(dest)
    for row in rows.values():
        with Image.open(dest / row["path"]) as img:
            assert img.mode == "RGB" and img.format == "JPEG"
    with Image.open(dest / rows["n_rotated.jpg"]["path"]) as img:
        assert img.size == (40, 60)  # upright
        top, bottom = np.asarray(img)[5, 20], np.asarray(img)[55, 20]
        assert top[0] > 200 and top[2] < 60 and bottom[2] > 200  # red on top after the EXIF rotation
    with Image.open(dest / rows["l_alpha.png"]["path"]) as img:
        right = np.asarray(img)[24, 56]
        assert right.min() > 235  # transparency composited on white, not black
    with Image.open(dest / rows["m_16bit.png"]["path"]) as img:
        arr = np.asarray(img)
        assert arr[0, 0, 0] < 5 and arr[-1, -1, 0] > 250  # the 16-bit range scaled, not clipped


def test_per_class_keeps_first_n_sorted_and_reimport_adds_nothing(tmp_path):
    src = tmp_path / "src"
    for name, index in (("갓김치", 9), ("백김치", 7)):
        for i in range(8):
            draw(index, (300, 200), seed=i).save(_write(src / name / f"Img_{i:03d}.jpg", b""))
    dest = tmp_path / "base"
    first = import_dataset(src, dest, per_class=5, presize=100, workers=2)
    assert first.total_added == 10
    kept = sorted(Path(r["source"]).name for r in read_manifest(dest) if r["class"] == "갓김치")
    assert kept == [f"Img_{i:03d}.jpg" for i in range(5)]
    for row in read_manifest(dest):
        with Image.open(dest / row["path"]) as img:
            assert min(img.size) == 100  # presized: shorter side at PX
    again = import_dataset(src, dest, per_class=5, presize=100, workers=2)
    assert again.total_added == 0
    assert sum(again.duplicates.values()) == 10
    assert len(read_manifest(dest)) == 10
    assert len(list(dest.rglob("*.jpg"))) == 10


def test_small_images_are_not_upscaled_and_unknown_folders_are_left_out(tmp_path):
    src = tmp_path / "src"
    draw(0, (80, 60)).save(_write(src / "배추김치" / "small.jpg", b""))
    draw(1, (80, 60)).save(_write(src / "pizza" / "p.jpg", b""))
    summary = import_dataset(src, tmp_path / "base", presize=460, workers=1)
    assert summary.unknown_classes == ["pizza"]
    (row,) = read_manifest(tmp_path / "base")
    assert row["size"] == [80, 60]
    assert json.loads((tmp_path / "base" / MANIFEST).read_text().splitlines()[0])["sha256"] == row["sha256"]


def test_import_command_prints_summary_and_fills_home(home, aihub, capsys):
    assert main(["import", str(aihub), "--per-class", "2", "--presize", "64", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "깍두기: 2 added" in out and "배추김치: 2 added" in out and "total: 4 added" in out
    assert len(read_manifest(home.base)) == 4


def test_a_negatives_folder_under_any_of_its_names_is_the_not_kimchi_class(tmp_path):
    src = tmp_path / "src"
    for i in range(2):
        draw(0, (80, 60), seed=i).save(_write(src / "배추김치" / f"b{i}.jpg", b""))
    for folder, kind in (("기타", "stripes"), ("Other", "rings"), (unicodedata.normalize("NFD", "김치아님"), "cross")):
        for i in range(2):
            draw_other(kind, (80, 60), seed=i).save(_write(src / folder / f"{kind}{i}.jpg", b""))
    dest = tmp_path / "base"
    summary = import_dataset(src, dest, presize=0, workers=1)
    assert summary.added == {"배추김치": 2, "not_kimchi": 6} and summary.unknown_classes == []
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == ["not_kimchi", "배추김치"]
    negatives = [r for r in read_manifest(dest) if r["class"] == "not_kimchi"]
    assert len(negatives) == 6 and all(r["path"].startswith("not_kimchi/") and "dish" not in r for r in negatives)
    assert "not_kimchi: 6 added, 0 already there" in summary.lines()
