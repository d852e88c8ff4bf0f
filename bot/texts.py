"""Every sentence a user sees, in Korean and English. Handlers pick by key; they hold no prose."""
from __future__ import annotations

from models.labels import CLASSES, by_name

KO, EN = "ko", "en"

TEXTS: dict[str, dict[str, str]] = {
    "start": {
        KO: "안녕하세요! 🥢 김치 사진을 보내 주시면 어떤 김치인지 알려 드릴게요.\n"
            "틀렸다면 버튼 한 번이나 /correct 깍두기 처럼 고쳐 주세요. 고쳐 주신 사진으로 더 똑똑해져요.\n"
            "/classes — 알아보는 김치 11종",
        EN: "Hello! 🥢 Send me a photo of kimchi and I'll tell you which kind it is.\n"
            "If I'm wrong, fix it with one tap or with /correct kkakdugi — your fixes teach me.\n"
            "/classes — the 11 kinds I know",
    },
    "help": {
        KO: "사진을 보내면 김치 종류와 확신도를 알려 드려요.\n"
            "• 틀렸으면: 답장 아래 ✏️ 고치기, 또는 /correct 깍두기\n"
            "• /correct 는 답장한 사진, 아니면 최근 사진을 고쳐요\n"
            "• /classes — 김치 11종",
        EN: "Send a photo and I'll reply with the kind of kimchi and how sure I am.\n"
            "• Wrong? Tap ✏️ Fix under my answer, or send /correct kkakdugi\n"
            "• /correct fixes the photo you reply to, or else your latest one\n"
            "• /classes — the 11 kinds",
    },
    "classes_title": {KO: "제가 알아보는 김치 11종이에요:", EN: "The 11 kinds of kimchi I know:"},
    "result": {KO: "{name} — {pct}", EN: "{name} ({roman}, {gloss}) — {pct}"},
    "unsure": {KO: "잘 모르겠어요. 후보는:", EN: "I'm not sure. My best guesses:"},
    "labelling_mode": {
        KO: "아직 학습된 모델이 없어서 라벨을 모으는 중이에요. 어떤 김치인지 골라 주세요!",
        EN: "I have no trained model yet, so I'm collecting labels. Which kimchi is this?",
    },
    "btn_ok": {KO: "✅ 맞아요", EN: "✅ Right"},
    "btn_fix": {KO: "✏️ 고치기", EN: "✏️ Fix"},
    "choose": {KO: "어떤 김치인가요?", EN: "Which kimchi is it?"},
    "saved": {KO: "고마워요! {name}(으)로 저장했어요. ✓", EN: "Thanks! Saved as {name}. ✓"},
    "saved_changed": {KO: "고마워요! {old} → {name}(으)로 고쳐서 저장했어요. ✓",
                      EN: "Thanks! Changed {old} → {name} and saved. ✓"},
    "confirmed": {KO: "고마워요! 맞다고 저장했어요. ✓", EN: "Thanks! Saved as correct. ✓"},
    "rate_limited": {KO: "사진이 너무 빨리 와요. 1분에 {limit}장까지 볼 수 있어요. 잠시 후 다시 보내 주세요.",
                     EN: "That's a lot of photos! I can look at {limit} a minute; please send more in a moment."},
    "busy": {KO: "지금 사진이 많이 밀려 있어요. 잠시 후 다시 보내 주세요.",
             EN: "I'm busy with many photos right now; please send it again in a moment."},
    "engine_failed": {KO: "사진을 분석하다 문제가 생겼어요. 한 번만 다시 보내 주세요.",
                      EN: "Something went wrong while looking at the photo; please send it once more."},
    "download_failed": {KO: "사진을 받아오지 못했어요. 다시 보내 주세요.",
                        EN: "I couldn't download the photo; please send it again."},
    "too_big": {KO: "파일이 너무 커요 (20MB까지). 사진으로 보내 주세요.",
                EN: "That file is too big (Telegram lets bots fetch up to 20 MB); send it as a photo instead."},
    "image_empty": {KO: "빈 파일이에요. 사진을 보내 주세요.", EN: "That file is empty; please send a photo."},
    "image_not_image": {KO: "이미지로 열 수 없는 파일이에요. JPEG, PNG, WEBP 사진을 보내 주세요.",
                        EN: "I can't open that as an image; please send a JPEG, PNG or WEBP photo."},
    "image_format": {KO: "이 형식은 지원하지 않아요. JPEG, PNG, WEBP로 보내 주세요.",
                     EN: "I don't support that image format; please send a JPEG, PNG or WEBP."},
    "image_truncated": {KO: "사진이 손상되었거나 일부만 왔어요. 다시 보내 주세요.",
                        EN: "The image is damaged or incomplete; please send it again."},
    "image_animated": {KO: "움직이는 이미지는 볼 수 없어요. 사진 한 장을 보내 주세요.",
                       EN: "I can't read animated images; please send a single photo."},
    "image_too_large": {KO: "해상도가 너무 높아요. 조금 작은 사진으로 보내 주세요.",
                        EN: "That image has too many pixels; please send a smaller photo."},
    "image_too_small": {KO: "사진이 너무 작아요. 더 큰 사진을 보내 주세요.",
                        EN: "That image is too small to see anything; please send a bigger photo."},
    "not_image_document": {KO: "사진 파일만 볼 수 있어요 (JPEG, PNG, WEBP).",
                           EN: "I can only look at image files (JPEG, PNG, WEBP)."},
    "sticker": {KO: "귀여운 스티커네요! 김치 사진을 보내 주시면 알려 드릴게요. 🥬",
                EN: "Nice sticker! Send me a photo of kimchi and I'll tell you which one it is. 🥬"},
    "video": {KO: "동영상은 볼 수 없어요. 사진 한 장을 보내 주세요.",
              EN: "I can't watch videos; please send a photo."},
    "other": {KO: "사진을 보내 주시면 어떤 김치인지 알려 드릴게요.",
              EN: "Send me a photo and I'll tell you which kimchi it is."},
    "text_hint": {KO: "김치 사진을 보내 주세요! 고치려면 /correct 깍두기, 도움말은 /help.",
                  EN: "Send me a photo of kimchi! To fix an answer: /correct kkakdugi. More: /help."},
    "correct_usage": {KO: "어떤 김치로 고칠까요? 예: /correct 깍두기\n{classes}",
                      EN: "Which kimchi should it be? For example: /correct kkakdugi\n{classes}"},
    "correct_suggest": {KO: "'{text}'… 혹시 {name}? 맞다면 /correct {name}",
                        EN: "'{text}'… did you mean {name}? If so: /correct {name}"},
    "correct_unknown": {KO: "'{text}'은(는) 모르는 김치예요. 이 중에서 골라 주세요:\n{classes}",
                        EN: "I don't know '{text}'. Please pick one of these:\n{classes}"},
    "correct_nothing": {KO: "고칠 사진을 찾지 못했어요. 제 답장에 답장하며 /correct 깍두기 를 보내거나, 사진을 먼저 보내 주세요.",
                        EN: "I can't find a photo to fix. Reply to my answer with /correct kkakdugi, or send a photo first."},
    "not_yours": {KO: "사진을 보낸 분만 고칠 수 있어요.", EN: "Only the person who sent the photo can fix it."},
    "expired": {KO: "이 답은 더 이상 고칠 수 없어요. 사진을 다시 보내 주세요.",
                EN: "This answer can no longer be changed; please send the photo again."},
    "save_failed": {KO: "저장하지 못했어요. 잠시 후 다시 시도해 주세요.",
                    EN: "I couldn't save that; please try again in a moment."},
    "admin_only": {KO: "이 명령은 사용할 수 없어요.", EN: "Sorry, you can't use this command."},
    "no_model": {KO: "아직 모델이 없어요 (라벨링 모드).", EN: "No model yet (labelling mode)."},
    "error": {KO: "문제가 생겼어요. 잠시 후 다시 시도해 주세요.", EN: "Something went wrong; please try again in a moment."},
    # admins: statistics and the model
    "stats": {KO: "예측: {predictions}\n수정: 고침 {fixes}, 맞음 {confirmations}\n클래스별:\n{per_class}\n"
                  "고친 사진에서 모델이 틀린 비율: {wrong}\n{model}",
              EN: "predictions: {predictions}\ncorrections: {fixes} fixes, {confirmations} confirmations\n"
                  "per class:\n{per_class}\nmodel wrong on corrected photos: {wrong}\n{model}"},
    "stats_none": {KO: "  (없음)", EN: "  (none)"},
    "model_line": {KO: "모델 {version} ({arch})", EN: "model {version} ({arch})"},
    "model_metrics": {KO: "정확도 {accuracy}, macro-F1 {f1}", EN: "accuracy {accuracy}, macro-F1 {f1}"},
    "model_trained": {KO: "학습 {at}", EN: "trained {at}"},
    # admins: retraining and versions
    "retrain_usage": {KO: "사용법: /retrain, /retrain status, /retrain cancel",
                      EN: "Usage: /retrain, /retrain status, /retrain cancel"},
    "retrain_running": {KO: "이미 재학습 중이에요 (한 번에 하나). {status}\n/retrain status, /retrain cancel",
                        EN: "A retrain is already running (one at a time). {status}\n/retrain status, /retrain cancel"},
    "retrain_idle": {KO: "지금 진행 중인 재학습은 없어요.", EN: "No retrain is running."},
    "retrain_never": {KO: "아직 재학습한 적이 없어요.", EN: "There has been no retrain yet."},
    "retrain_last": {KO: "마지막 재학습 #{id}: {status} ({candidate}) — {reason}",
                     EN: "Last retrain #{id}: {status} ({candidate}) — {reason}"},
    "retrain_status_starting": {KO: "재학습 #{id}: 준비 중 ({elapsed}초)", EN: "Retrain #{id}: starting ({elapsed} s)"},
    "retrain_status": {KO: "재학습 #{id}: epoch {epoch}/{total} ({elapsed}초)",
                       EN: "Retrain #{id}: epoch {epoch}/{total} ({elapsed} s)"},
    "retrain_too_few_classes": {KO: "재학습할 수 없어요: 클래스가 {n}개뿐이에요 (2개 이상 필요).",
                                EN: "Cannot retrain: only {n} class(es) have images; at least two are needed."},
    "retrain_too_few": {KO: "재학습할 수 없어요: 이미지가 {minimum}장보다 적은 클래스가 있어요 — {detail}.",
                        EN: "Cannot retrain: some classes have fewer than {minimum} training images — {detail}."},
    "retrain_prepare_failed": {KO: "재학습을 준비하지 못했어요: {reason}", EN: "Could not prepare the retrain: {reason}"},
    "retrain_counts": {KO: "학습 데이터 (클래스별):\n{lines}\n합계 {total}장, 고정 holdout {holdout}장, 사용자 수정 {corrections}장 "
                           "(기존 라벨을 바꾼 것 {overridden}장).",
                       EN: "Training data per class:\n{lines}\nTotal {total}, frozen holdout {holdout}, "
                           "{corrections} from users ({overridden} relabelled base images)."},
    "retrain_starting": {KO: "🏋️ 재학습을 시작해요…", EN: "🏋️ Starting the retrain…"},
    "retrain_progress": {KO: "🏋️ 재학습 #{id} — epoch {epoch}/{total} ({phase})\n{bar} {pct}%\n"
                             "train loss {train} · valid loss {valid} · 정확도 {acc}",
                         EN: "🏋️ Retrain #{id} — epoch {epoch}/{total} ({phase})\n{bar} {pct}%\n"
                             "train loss {train} · valid loss {valid} · accuracy {acc}"},
    "retrain_comparing": {KO: "holdout에서 새 모델과 현재 모델을 비교하는 중…",
                          EN: "Comparing the new model with the current one on the holdout…"},
    "retrain_confusion": {KO: "{version}의 holdout 혼동 행렬", EN: "Confusion matrix of {version} on the holdout"},
    "retrain_promoted": {KO: "✅ {version}을(를) 적용했어요: {reason}", EN: "✅ Promoted {version}: {reason}"},
    "retrain_kept": {KO: "⏸ {version}은(는) 저장만 하고 적용하지 않았어요: {reason}\n그래도 쓰려면 /promote {version}",
                     EN: "⏸ Kept {version} but did not promote it: {reason}\nTo use it anyway: /promote {version}"},
    "retrain_crashed": {KO: "❌ 재학습이 실패했어요: {reason}. 현재 모델은 그대로예요.",
                        EN: "❌ The retrain failed: {reason}. The current model keeps serving."},
    "retrain_cancelling": {KO: "재학습 #{id}을(를) 멈추는 중이에요…", EN: "Stopping retrain #{id}…"},
    "retrain_cancelled": {KO: "재학습 #{id}을(를) 취소했어요. 현재 모델은 그대로예요.",
                          EN: "Retrain #{id} was cancelled. The current model keeps serving."},
    "promote_usage": {KO: "사용법: /promote v3 (버전: {versions})", EN: "Usage: /promote v3 (versions: {versions})"},
    "promoted_now": {KO: "{version}을(를) 적용했어요 (이전 {previous}).", EN: "{version} now serves (was {previous})."},
    "rolled_back": {KO: "{version}(으)로 되돌렸어요 (이전 {previous}).", EN: "Rolled back to {version} (was {previous})."},
}


def language(code: str | None) -> str:
    """Korean for Korean users; English when Telegram says the user's language is anything else."""
    return KO if (code or "").lower().startswith("ko") else EN


def say(key: str, lang: str, **values: object) -> str:
    entry = TEXTS[key]
    return entry.get(lang, entry[KO]).format(**values)


def percent(p: float) -> str:
    return f"{p * 100:.0f}%"


def kimchi_name(name: str, lang: str) -> str:
    cls = by_name(name)
    if lang == KO or cls is None:
        return name
    return f"{name} ({cls.roman})"


def result_line(label: str, confidence: float, lang: str) -> str:
    cls = by_name(label)
    return say("result", lang, name=label, roman=cls.roman if cls else label, gloss=cls.gloss if cls else "",
               pct=percent(confidence))


def class_list(lang: str) -> str:
    if lang == KO:
        return "\n".join(f"• {c.name} ({c.roman}) — {c.gloss}" for c in CLASSES)
    return "\n".join(f"• {c.name} — {c.roman}, {c.gloss}" for c in CLASSES)
