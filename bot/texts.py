"""Every sentence a user sees, in Korean and English. Handlers pick by key; they hold no prose."""
from __future__ import annotations

from models.labels import CLASSES, NOT_KIMCHI, by_name

KO, EN = "ko", "en"

TEXTS: dict[str, dict[str, str]] = {
    "start": {
        KO: "안녕하세요! 🥢 김치 사진을 보내 주시면 어떤 김치인지 알려 드릴게요.\n"
            "틀렸다면 버튼 한 번이나 /correct 깍두기 처럼 고쳐 주세요. 고쳐 주신 사진으로 더 똑똑해져요.\n"
            "/classes — 알아보는 김치 11종\n"
            "/privacy — 제가 무엇을 얼마나 보관하는지, 사본 받기와 지우기",
        EN: "Hello! 🥢 Send me a photo of kimchi and I'll tell you which kind it is.\n"
            "If I'm wrong, fix it with one tap or with /correct kkakdugi — your fixes teach me.\n"
            "/classes — the 11 kinds I know\n"
            "/privacy — what I keep, for how long, and how to get a copy or erase it",
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
    "btn_ask": {KO: "{name}?", EN: "{name}?"},
    "btn_other": {KO: "✏️ 다른 김치", EN: "✏️ Another kind"},
    "btn_fix": {KO: "✏️ 고치기", EN: "✏️ Fix"},
    # not kimchi (issue 21): the answer, its buttons, the label's name, and the retrain report's open-set figures
    "not_kimchi_answer": {KO: "김치가 아닌 것 같아요 🤔", EN: "I don't think this is kimchi 🤔"},
    "not_kimchi_answer_closest": {KO: "김치가 아닌 것 같아요 🤔 김치라면 가장 가까운 건 {name}({pct})예요",
                                  EN: "I don't think this is kimchi 🤔 If it is, the closest kind is {name} at {pct}."},
    "btn_is_kimchi": {KO: "✏️ 김치예요", EN: "✏️ It is kimchi"},
    "btn_not_kimchi": {KO: "🚫 김치 아님", EN: "🚫 Not kimchi"},
    "label_not_kimchi": {KO: "김치 아님", EN: "Not kimchi"},
    "result_not_kimchi": {KO: "{name} — {pct}", EN: "{name} — {pct}"},
    "classes_not_kimchi": {KO: "🚫 김치가 아니면: /correct 김치아님", EN: "🚫 Not kimchi at all: /correct not kimchi"},
    "report_openset": {KO: "김치 아님 판별: 김치 통과 {kept}, 김치 아닌 사진 걸러냄 {caught}, 통과한 김치 중 맞는 종류 {right_kind}",
                       EN: "not-kimchi check: kimchi kept {kept}, negatives caught {caught}, right kind {right_kind}"},
    "retrain_openset": {KO: "{version}의 김치 아님 점수 분포 (김치 대 김치 아닌 사진)",
                        EN: "Not-kimchi score of {version}: kimchi against negatives"},
    "saved": {KO: "고마워요! {name}(으)로 저장했어요. ✓", EN: "Thanks! Saved as {name}. ✓"},
    "saved_changed": {KO: "고마워요! {old} → {name}(으)로 고쳐서 저장했어요. ✓",
                      EN: "Thanks! Changed {old} → {name} and saved. ✓"},
    "saved_pending": {KO: "고마워요! {name}(으)로 저장했어요. 확인되면 학습에 쓸게요.",
                      EN: "Saved as {name}, thanks; it will be used once it's confirmed."},
    "confirmed": {KO: "고마워요! 맞다고 저장했어요. ✓", EN: "Thanks! Saved as correct. ✓"},
    "privacy": {
        KO: "🔒 제가 보관하는 것\n"
            "• 답한 사진마다: 채팅·메시지·파일 번호, 사진의 해시, 제 답과 확신도, 시각 — {retention}일 동안 (라벨이 된 "
            "사진은 라벨과 함께)\n"
            "• 라벨(고치기·✅·버튼)마다: 라벨, 상태, 그리고 사진 한 장(작게 줄이고 위치 정보 등 메타데이터는 지워서) — "
            "승인된 라벨은 모델 학습에 쓰는 동안, 확인 안 된 라벨은 {pending}일, 거절된 라벨은 {retention}일\n"
            "• 사용자 기록: 처음 본 날, 신뢰·차단 여부, 마지막으로 보내신 텔레그램 이름(관리자의 검토 화면에 보여요)\n"
            "왜: 김치를 알아보고, 고쳐 주신 사진으로 모델을 더 낫게 하려고요.\n"
            "누가 보나요: 이 봇의 관리자만요. 이미 학습된 모델은 배운 것을 지니고 있어요.\n"
            "/mydata — 보관된 모든 것의 사본(zip, 하루 한 번)\n"
            "/forget — 모두 지우기 (확인 후)",
        EN: "🔒 What I keep\n"
            "• For each photo I answered: chat, message and file ids, the photo's hash, my answer and how sure I was, "
            "the time — for {retention} days (a photo that became a label, as long as the label)\n"
            "• For each label you gave (a fix, ✅, a button): the label, its status, and one copy of the photo "
            "(scaled down, with location and all other metadata removed) — accepted ones while the model trains on "
            "them, unconfirmed ones {pending} days, declined ones {retention} days\n"
            "• Your record: when I first saw you, whether you are trusted or blocked, and your Telegram name as you "
            "last sent it (admins see it when they review labels)\n"
            "Why: to tell the kimchi, and to make the model better from your fixes.\n"
            "Who sees it: this bot's admins only. Models already trained keep what they learnt.\n"
            "/mydata — a copy of all of it (a zip, once a day)\n"
            "/forget — erase all of it (after a confirmation)",
    },
    "privacy_contact": {KO: "문의: {contact}", EN: "Questions: {contact}"},
    "privacy_url": {KO: "자세히: {url}", EN: "More: {url}"},
    "privacy_private_only": {KO: "이 명령은 저와의 1:1 채팅에서만 돼요. 여기서는 다른 사람들도 보게 되니까요.",
                             EN: "Please send this to me in a private chat: here, everyone in the group would see it."},
    "mydata_empty": {KO: "보관된 것이 없어요.", EN: "I keep nothing about you."},
    "mydata_caption": {KO: "보관된 모든 것이에요 (예측 {predictions}건, 라벨 {labels}건).",
                       EN: "Everything I keep about you ({predictions} predictions, {labels} labels)."},
    "mydata_limit": {KO: "사본은 하루에 한 번 보내 드려요. 내일 다시 해 주세요.",
                     EN: "I send a copy once a day; please ask again tomorrow."},
    "forget_ask": {KO: "정말 지울까요? 답한 사진, 라벨과 사진 파일, 사용자 기록을 모두 지워요. 되돌릴 수 없어요.",
                   EN: "Erase everything I keep about you? Your answered photos, labels with their photos and your "
                       "record go, for good."},
    "btn_forget_yes": {KO: "🗑 모두 지우기", EN: "🗑 Erase all"},
    "btn_forget_no": {KO: "취소", EN: "Cancel"},
    "forget_done": {KO: "지웠어요: 예측 {predictions}건, 라벨 {labels}건. 이미 학습된 모델은 배운 것을 지니고 있지만, "
                        "다음 재학습에는 쓰지 않아요.",
                    EN: "Erased: {predictions} predictions and {labels} labels. Models already trained keep what they "
                        "learnt, but the next retrain will not use your labels."},
    "forget_cancelled": {KO: "취소했어요. 아무것도 지우지 않았어요.", EN: "Cancelled; nothing was erased."},
    "stats_erasures": {KO: "지우기 요청: {n}건", EN: "erasures: {n}"},
    "saved_stale": {KO: "이 사진은 더 나중에 보내 주신 {name}(으)로 이미 저장돼 있어요. 그대로 둘게요.",
                    EN: "You already labelled this photo {name} in a later message; I kept that."},
    "saved_rejected": {KO: "관리자가 이 사진의 {name} 라벨을 이미 거절했어요. 학습에는 쓰지 않아요.",
                       EN: "An admin already declined {name} for this photo, so it won't be used for training."},
    "quota_full": {KO: "확인을 기다리거나 거절된 사진이 저장 한도({limit} MB)를 다 썼어요. 관리자가 라벨을 받아들이면 "
                       "더 저장할 수 있어요.",
                   EN: "Your photos waiting for review or declined fill your storage ({limit} MB); more can be saved "
                       "once an admin accepts some."},
    "rate_limited": {KO: "사진이 너무 빨리 와요. 1분에 {limit}장까지 볼 수 있어요. 잠시 후 다시 보내 주세요.",
                     EN: "That's a lot of photos! I can look at {limit} a minute; please send more in a moment."},
    "slow_down": {KO: "너무 빨라요! 잠시 후에 다시 해 주세요.", EN: "That's a lot at once! Please try again in a minute."},
    "corrections_limit": {KO: "오늘은 더 고칠 수 없어요 (하루 {limit}번까지). 내일 다시 해 주세요.",
                          EN: "That's all the fixes I can take from you today ({limit} a day); please come back tomorrow."},
    "busy": {KO: "지금 사진이 많이 밀려 있어요. 잠시 후 다시 보내 주세요.",
             EN: "I'm busy with many photos right now; please send it again in a moment."},
    "engine_failed": {KO: "사진을 분석하다 문제가 생겼어요. 한 번만 다시 보내 주세요.",
                      EN: "Something went wrong while looking at the photo; please send it once more."},
    "download_failed": {KO: "사진을 받아오지 못했어요. 다시 보내 주세요.",
                        EN: "I couldn't download the photo; please send it again."},
    "too_big": {KO: "파일이 너무 커요 ({limit}MB까지). 사진으로 보내 주세요.",
                EN: "That file is too big (I can fetch up to {limit} MB); send it as a photo instead."},
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
    "correct_too_long": {KO: "김치 이름이 너무 길어요 ({limit}자까지). 예: /correct 깍두기",
                         EN: "That's too long for a kimchi name ({limit} characters at most). For example: /correct kkakdugi"},
    "correct_not_a_class": {KO: "{name}은(는) 아직 모르는 김치예요. 제가 아는 김치는:\n{classes}",
                            EN: "I don't know {name} yet. The kinds I know are:\n{classes}"},
    "button_invalid": {KO: "이 버튼은 더 이상 쓸 수 없어요.", EN: "This button is no longer valid."},
    "saving": {KO: "저장하는 중…", EN: "Saving…"},
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
    "stats": {KO: "예측: {predictions}\n수정: 고침 {fixes}, 맞음 {confirmations}\n라벨 상태: 승인 {accepted}, 대기 {pending}, "
                  "거절 {rejected} (/review)\n클래스별:\n{per_class}\n고친 사진에서 모델이 틀린 비율: {wrong}\n{model}",
              EN: "predictions: {predictions}\ncorrections: {fixes} fixes, {confirmations} confirmations\n"
                  "labels: {accepted} accepted, {pending} pending, {rejected} rejected (/review)\n"
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
    "retrain_too_few_trainable": {KO: "재학습할 수 없어요: 학습 이미지가 {minimum}장보다 적은 클래스({detail})를 빼면 "
                                      "{n}개만 남아요 (2개 이상 필요).",
                                  EN: "Cannot retrain: once the classes with fewer than {minimum} training images are "
                                      "left out ({detail}), {n} class(es) remain; at least two are needed."},
    "retrain_prepare_failed": {KO: "재학습을 준비하지 못했어요. 자세한 내용은 로그에 있어요.",
                               EN: "Could not prepare the retrain; the details are in the log."},
    "retrain_counts": {KO: "학습 데이터 (클래스별):\n{lines}\n합계 {total}장, 고정 holdout {holdout}장, 사용자 라벨 {corrections}장.\n"
                           "사용자 라벨 상태: 승인 {accepted}, 대기 {pending}, 거절 {rejected}. 기존 라벨과 다른 라벨 {disputes}장은 "
                           "관리자 판단을 기다려요; holdout 쪽 미확정 라벨 {held_back}장은 보류; 중복 사진 {moved}장은 같은 쪽으로 옮겼어요.",
                       EN: "Training data per class:\n{lines}\nTotal {total}, frozen holdout {holdout}, {corrections} from users.\n"
                           "Users' labels: {accepted} accepted, {pending} pending, {rejected} rejected. {disputes} that dispute "
                           "a base label wait for an admin; {held_back} unconfirmed on the holdout side are held back; "
                           "{moved} near-duplicates moved to their group's side."},
    "retrain_audit_counts": {KO: "감사(audit): {summary} 사용자 라벨 {flagged}장은 다시 대기로 돌리고 이번 학습에서 뺐어요; "
                                 "의심되는 기존 이미지 {base}장은 바꾸지 않았어요 (suspects.png 참고).",
                             EN: "Audit: {summary} {flagged} users' labels went back to pending and sit this run out; "
                                 "{base} base images look mislabelled and were left as they are (see suspects.png)."},
    "retrain_no_audit": {KO: "감사(audit)는 건너뛰었어요 (모델이 없거나 KIMCHI_RETRAIN_AUDIT=0, 또는 실패: 로그 참고).",
                         EN: "The audit was skipped (no model yet, KIMCHI_RETRAIN_AUDIT=0, or it failed: see the log)."},
    "retrain_suspects": {KO: "라벨이 의심되는 사진들: {summary}", EN: "Photos whose labels look wrong: {summary}"},
    "retrain_count_line": {KO: "{label}: {n}", EN: "{label}: {n}"},
    "retrain_count_line_holdout": {KO: "{label}: {n} (+holdout {holdout})", EN: "{label}: {n} (+{holdout} holdout)"},
    "retrain_left_out": {KO: "학습 이미지가 {minimum}장보다 적어 이번 학습에서 뺀 클래스: {detail}. 새 모델은 이 클래스를 "
                             "모르고, 이 클래스의 holdout 사진은 비교에서 빠져요. 라벨은 남아 있다가 이미지가 모이면 학습에 들어가요.",
                         EN: "Left out of this run, with fewer than {minimum} training images: {detail}. The new model "
                             "will not know these classes and their holdout photos are not scored; their labels stay "
                             "for a later run, once there are enough."},
    "retrain_left_out_known": {KO: "⚠️ 현재 모델은 {classes}을(를) 알아요: 새 모델을 적용하면 봇이 이 클래스로 더 이상 답하지 않아요.",
                               EN: "⚠️ The current model knows {classes}: if the new model is promoted, the bot stops "
                                   "naming them."},
    "retrain_starting": {KO: "🏋️ 재학습 #{id}을(를) 시작해요: 라벨 감사, 데이터 나누기, 학습…",
                         EN: "🏋️ Starting retrain #{id}: auditing the labels, splitting, training…"},
    "retrain_progress": {KO: "🏋️ 재학습 #{id} — epoch {epoch}/{total} ({phase})\n{bar} {pct}\n"
                             "train loss {train} · valid loss {valid} · 정확도 {acc}",
                         EN: "🏋️ Retrain #{id} — epoch {epoch}/{total} ({phase})\n{bar} {pct}\n"
                             "train loss {train} · valid loss {valid} · accuracy {acc}"},
    "retrain_scoring": {KO: "holdout에서 새 모델과 현재 모델을 비교하는 중…",
                        EN: "Comparing the new model with the current one on the holdout…"},
    "retrain_confusion": {KO: "{version}의 holdout 혼동 행렬", EN: "Confusion matrix of {version} on the holdout"},
    "retrain_promoted": {KO: "✅ {version}을(를) 적용했어요: {reason}", EN: "✅ Promoted {version}: {reason}"},
    "retrain_kept": {KO: "⏸ {version}은(는) 저장만 하고 적용하지 않았어요: {reason}\n그래도 쓰려면 /promote {version}",
                     EN: "⏸ Kept {version} but did not promote it: {reason}\nTo use it anyway: /promote {version}"},
    "retrain_failed": {KO: "❌ 재학습이 실패했어요: {reason}. 현재 모델은 그대로예요.",
                       EN: "❌ The retrain failed: {reason}. The current model keeps serving."},
    "retrain_cancelling": {KO: "재학습 #{id}을(를) 멈추는 중이에요…", EN: "Stopping retrain #{id}…"},
    "retrain_cancelled": {KO: "재학습 #{id}을(를) 취소했어요. 현재 모델은 그대로예요.",
                          EN: "Retrain #{id} was cancelled. The current model keeps serving."},
    # why a run ended, and what the promotion rule found
    "failure_trainer_error": {KO: "학습기가 보고한 오류: {detail}", EN: "the trainer said: {detail}"},
    "failure_signal": {KO: "학습기가 {detail} 신호로 멈췄어요 (메모리 부족이나 강제 종료)",
                       EN: "the trainer was stopped by {detail} (out of memory, or killed)"},
    "failure_exit_status": {KO: "학습기가 상태 {detail}(으)로 끝났어요", EN: "the trainer exited with status {detail}"},
    "failure_no_result": {KO: "학습기가 결과를 보고하지 않았어요", EN: "the trainer reported no result"},
    "failure_timeout": {KO: "{detail}분 안에 끝나지 않아 멈췄어요", EN: "it did not finish within {detail} minutes and was stopped"},
    "failure_load_failed": {KO: "새 모델을 불러오지 못했어요 ({detail})", EN: "the new model could not be loaded ({detail})"},
    "failure_internal": {KO: "봇 내부 오류 ({detail}), 로그를 보세요", EN: "an internal error ({detail}); see the log"},
    "failure_bot_stopped": {KO: "재학습 중에 봇이 멈췄어요", EN: "the bot stopped while this retrain was running"},
    "finding_no_baseline": {KO: "비교할 현재 모델이 없어요", EN: "there is no current model to compare with"},
    "finding_empty_holdout": {KO: "holdout이 비어 있어 측정할 수 없어요", EN: "the holdout is empty, so nothing can be measured"},
    "finding_macro_f1": {KO: "macro-F1 {candidate} vs {current} (허용 오차 {limit})",
                         EN: "macro-F1 {candidate} vs {current} (tolerance {limit})"},
    "finding_corrections": {KO: "holdout의 수정 사진 {n}장 정확도 {candidate} vs {current}",
                            EN: "accuracy on {n} held-out corrected photos {candidate} vs {current}"},
    "finding_kimchi_kept": {KO: "holdout의 김치 {n}장 중 김치로 답한 비율이 {current}에서 {candidate}(으)로 {limit}보다 많이 "
                                "떨어졌어요 (새 모델이 김치를 '김치 아님'으로 돌려보내요)",
                            EN: "kimchi answered as kimchi fell from {current} to {candidate} of {n} holdout kimchi, "
                                "more than {limit} (the new model turns kimchi away as 'not kimchi')"},
    "finding_class_f1": {KO: "{label}의 F1이 {current}에서 {candidate}(으)로 {limit}보다 많이 떨어졌어요 (holdout {n}장)",
                         EN: "{label} F1 fell from {current} to {candidate}, more than {limit} (holdout {n} images)"},
    "finding_paired": {KO: "같은 holdout 사진 {n}장에서 새 모델만 맞힌 사진 {candidate}장, 현재 모델만 맞힌 사진 {current}장 "
                           "(정확 McNemar 검정, 단측 p = {p}; 새 모델이 덜 맞히거나 p < {limit}이면 적용 안 함)",
                       EN: "on the same {n} holdout photos the new model alone was right on {candidate}, the current "
                           "one alone on {current} (exact McNemar test, one-sided p = {p}; not promoted if the new "
                           "one is right less often or p < {limit})"},
    "finding_small_holdout": {KO: "holdout이 작아요 ({n}장, {limit}장 미만): 사진 한 장이 수치를 크게 바꿔요. 기본 이미지나 "
                                  "관리자가 확정한 라벨이 늘면 비교를 더 믿을 수 있어요",
                              EN: "the holdout is small ({n} photos, under {limit}): one photo moves the figures a lot; "
                                  "more base images or admin-decided labels make the comparison more trustworthy"},
    "decision_no_worse": {KO: "더 나쁘지 않아요: {findings}", EN: "no worse: {findings}"},
    "decision_worse": {KO: "더 나빠요: {findings}", EN: "worse: {findings}"},
    "run_status_running": {KO: "진행 중", EN: "running"},
    "run_status_promoted": {KO: "적용됨", EN: "promoted"},
    "run_status_kept": {KO: "보류됨", EN: "kept, not promoted"},
    "run_status_cancelled": {KO: "취소됨", EN: "cancelled"},
    "run_status_failed": {KO: "실패", EN: "failed"},
    "run_status_refused": {KO: "거절됨", EN: "refused"},
    # the report table (monospace)
    "report_accuracy": {KO: "정확도", EN: "accuracy"},
    "report_precision": {KO: "macro 정밀도", EN: "macro precision"},
    "report_recall": {KO: "macro 재현율", EN: "macro recall"},
    "report_f1": {KO: "macro F1", EN: "macro F1"},
    "report_corrections": {KO: "수정 사진 n={n}", EN: "corrections n={n}"},
    "report_per_class": {KO: "클래스별 F1:", EN: "per-class F1:"},
    "report_holdout": {KO: "holdout: {n}장 (고정)", EN: "holdout: {n} images (frozen)"},
    "report_training": {KO: "학습: {total}장, 사용자 수정 {corrections}장", EN: "training: {total} images, {corrections} corrections"},
    "report_left_out": {KO: "뺀 클래스 (이미지 부족): {detail}", EN: "left out (too few images): {detail}"},
    "report_time": {KO: "epoch {epoch} 사용; 학습 {train}초; 전체 {whole}초",
                    EN: "kept epoch {epoch}; training {train} s; whole run {whole} s"},
    "promote_usage": {KO: "사용법: /promote v3 (버전: {versions})", EN: "Usage: /promote v3 (versions: {versions})"},
    "promote_failed": {KO: "{version}을(를) 적용하지 못했어요. 현재 모델 {current}은(는) 그대로예요: {detail}",
                       EN: "Could not serve {version}; {current} keeps serving: {detail}"},
    "promoted_now": {KO: "{version}을(를) 적용했어요 (이전 {previous}).", EN: "{version} now serves (was {previous})."},
    "rolled_back": {KO: "{version}(으)로 되돌렸어요 (이전 {previous}).", EN: "Rolled back to {version} (was {previous})."},
    "rollback_failed": {KO: "되돌리지 못했어요: {detail}", EN: "Could not roll back: {detail}"},
    # admins: reviewing what users taught
    "review_caption": {KO: "사용자 라벨: {label} ({source})\n모델: {top}\n같은 라벨 {votes_for}명, 다른 라벨 {votes_against}명\n"
                           "사용자 {user}: 승인 {accepted}, 거절 {rejected}\n남은 항목 {left}개",
                       EN: "User's label: {label} ({source})\nModel: {top}\nVotes: {votes_for} for, {votes_against} against\n"
                           "User {user}: {accepted} accepted, {rejected} rejected\n{left} left to review"},
    "review_flagged": {KO: "⚠️ 감사(audit) 표시: {flag}", EN: "⚠️ Flagged by the audit: {flag}"},
    # what the label audit found (training/audit.py), one key per reason; audit_reasons joins them
    "audit_label": {KO: "라벨이 사진과 안 맞아 보여요", EN: "the label looks wrong for the photo"},
    "audit_outlier": {KO: "다른 사진들과 많이 달라요", EN: "unlike the other photos"},
    "audit_near_duplicate": {KO: "거의 같은 사진이 또 있어요", EN: "a near-copy of another photo"},
    "audit_not_kimchi": {KO: "김치가 아닌 것 같은 사진에 김치 라벨", EN: "a kimchi label on a photo that does not look like kimchi"},
    "audit_flood": {KO: "거의 같은 사진이 적은 계정에서 많이 왔어요",
                    EN: "one of many near-identical photos labelled by few accounts"},
    "review_empty": {KO: "검토할 항목이 없어요. ✓", EN: "Nothing left to review. ✓"},
    "review_already_decided": {KO: "이 라벨은 이미 (검토 데스크나 다른 관리자가) 결정했어요. 그 결정이 유지돼요.",
                               EN: "This label was already decided (in the review desk, or by another admin); "
                                   "that decision stands."},
    # the review desk (bot/desk.py); the page's own strings are in bot/desk_texts.py
    "desk_open": {KO: "🗂 검토 데스크", EN: "🗂 Review desk"},
    "desk_menu": {KO: "데스크", EN: "Desk"},
    "desk_off": {KO: "검토 데스크가 꺼져 있어요. 운영자가 KIMCHI_DESK_URL 을 설정하면 켜져요.",
                 EN: "The review desk is off; the operator turns it on by setting KIMCHI_DESK_URL."},
    "desk_private_only": {KO: "로그인 링크는 저와의 개인 대화에서만 보내 드려요.",
                          EN: "I send login links only in our private chat."},
    "desk_link": {KO: "검토 데스크 로그인 링크예요 ({minutes}분 동안 한 번만 쓸 수 있어요. 남에게 보내지 마세요):\n{link}",
                  EN: "Your review desk login link (works once, for {minutes} minutes; do not forward it):\n{link}"},
    "desk_refused_signature": {KO: "텔레그램 서명을 확인할 수 없어요. 봇에서 데스크를 다시 열어 주세요.",
                               EN: "Telegram's signature does not check out; open the desk again from the bot."},
    "desk_refused_expired": {KO: "로그인 정보가 만료됐어요. 봇에서 데스크를 다시 열어 주세요.",
                             EN: "This sign-in has expired; open the desk again from the bot."},
    "desk_refused_not_admin": {KO: "관리자만 검토 데스크를 쓸 수 있어요.", EN: "Only admins can use the review desk."},
    "desk_refused_link": {KO: "이 로그인 링크는 이미 쓰였거나 만료됐어요. 봇에 /desk 를 보내 새 링크를 받으세요.",
                          EN: "This login link was used already or has expired; send /desk to the bot for a new one."},
    "desk_signed_out": {KO: "로그인이 끝났어요. 봇에서 데스크를 다시 열거나 /desk 로 새 링크를 받으세요.",
                        EN: "You are signed out; open the desk from the bot again, or send /desk for a new link."},
    "desk_refused_csrf": {KO: "요청을 확인할 수 없어요. 페이지를 새로 고쳐 주세요.",
                          EN: "This request could not be verified; reload the page."},
    "desk_bad_request": {KO: "요청을 이해하지 못했어요.", EN: "That request makes no sense to the desk."},
    "desk_not_found": {KO: "찾을 수 없어요.", EN: "Not found."},
    "review_accept": {KO: "✅ 승인", EN: "✅ Accept"},
    "review_relabel": {KO: "✏️ 라벨 변경", EN: "✏️ Relabel"},
    "review_reject": {KO: "❌ 거절", EN: "❌ Reject"},
    "review_block": {KO: "🚫 차단", EN: "🚫 Block user"},
    "review_done_accepted": {KO: "승인했어요.", EN: "Accepted."},
    "review_done_relabelled": {KO: "{label}(으)로 바꿔 승인했어요.", EN: "Relabelled as {label} and accepted."},
    "review_done_rejected": {KO: "거절했어요.", EN: "Rejected."},
    "review_done_blocked": {KO: "사용자 {user}을(를) 차단했어요. 이미 쓰이던 것까지 라벨 {n}개를 모두 거절했어요.",
                            EN: "Blocked user {user}; all {n} of their labels, accepted ones included, were rejected."},
    "source_correction": {KO: "수정", EN: "a fix"},
    "source_confirm": {KO: "✅ 확인", EN: "a ✅ confirmation"},
    "source_ask": {KO: "두 후보 중 선택", EN: "an answer to 'which of two?'"},
    "source_dispute": {KO: "기존 라벨과 다름", EN: "disputes the base label"},
    "source_label": {KO: "라벨링 모드", EN: "labelling mode"},
    "user_usage": {KO: "사용법: /trust 123456789, /block 123456789, /unblock 123456789",
                   EN: "Usage: /trust 123456789, /block 123456789, /unblock 123456789"},
    "user_trusted": {KO: "사용자 {user}을(를) 신뢰해요. 라벨이 바로 쓰여요.", EN: "User {user} is trusted: their labels are used at once."},
    "user_blocked": {KO: "사용자 {user}을(를) 차단했어요. 이미 쓰이던 것까지 라벨 {n}개를 모두 거절했어요.",
                     EN: "Blocked user {user}; all {n} of their labels, accepted ones included, were rejected."},
    "user_unblocked": {KO: "사용자 {user}의 차단을 풀었어요. 거절된 라벨은 그대로예요.",
                       EN: "User {user} is no longer blocked; their rejected labels stay rejected."},
    # the command menu (set_my_commands)
    "cmd_start": {KO: "시작", EN: "start"},
    "cmd_help": {KO: "도움말", EN: "help"},
    "cmd_classes": {KO: "김치 11종", EN: "the 11 kinds"},
    "cmd_privacy": {KO: "보관하는 정보, 사본, 지우기", EN: "what I keep; a copy; erase it"},
    "cmd_correct": {KO: "고치기: /correct 깍두기", EN: "fix an answer: /correct kkakdugi"},
}


def language(code: str | None) -> str:
    """Korean for Korean users; English when Telegram says the user's language is anything else."""
    return KO if (code or "").lower().startswith("ko") else EN


MAX_MESSAGE = 4096  # Telegram's limit for one message's text


def say(key: str, lang: str, **values: object) -> str:
    """The sentence `key` in `lang`; every key has both languages (a test checks), so no fallback.
    Never longer than a Telegram message can be, whatever the values."""
    return fit(TEXTS[key][lang].format(**values))


def fit(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def percent(p: float | None, digits: int = 0) -> str:
    """A probability or rate as a percentage; '-' when there is none."""
    return "-" if p is None else f"{p * 100:.{digits}f}%"


def number(x: float | None, digits: int = 3) -> str:
    """A loss, F1 or similar figure; '-' when there is none."""
    return "-" if x is None else f"{x:.{digits}f}"


def kimchi_name(name: str, lang: str) -> str:
    if name == NOT_KIMCHI:
        return say("label_not_kimchi", lang)
    cls = by_name(name)
    if lang == KO or cls is None:
        return name
    return f"{name} ({cls.roman})"


def result_line(label: str, confidence: float, lang: str) -> str:
    if label == NOT_KIMCHI:
        return say("result_not_kimchi", lang, name=kimchi_name(label, lang), pct=percent(confidence))
    cls = by_name(label)
    return say("result", lang, name=label, roman=cls.roman if cls else label, gloss=cls.gloss if cls else "",
               pct=percent(confidence))


def class_list(lang: str) -> str:
    """The 11 classes, one a line, and how to say a photo is no kimchi at all."""
    if lang == KO:
        lines = [f"• {c.name} ({c.roman}) — {c.gloss}" for c in CLASSES]
    else:
        lines = [f"• {c.name} — {c.roman}, {c.gloss}" for c in CLASSES]
    return "\n".join([*lines, say("classes_not_kimchi", lang)])


# ---------------------------------------------------------------------------------------------
# reasons and sources by code (the retrain's outcomes are rendered in bot.reports)

IMAGE_KEYS = {"empty": "image_empty", "not_image": "image_not_image", "format": "image_format",
              "truncated": "image_truncated", "animated": "image_animated", "too_large": "image_too_large",
              "too_small": "image_too_small"}
SOURCE_KEYS = {"correction": "source_correction", "confirm": "source_confirm", "ask": "source_ask",
               "dispute": "source_dispute", "label": "source_label"}
AUDIT_KEYS = {"label": "audit_label", "outlier": "audit_outlier", "near_duplicate": "audit_near_duplicate",
              "not_kimchi": "audit_not_kimchi", "flood": "audit_flood"}


def audit_reasons(flag: str, lang: str) -> str:
    """A stored audit flag ("not_kimchi,outlier") in words; a reason without words is shown as it is."""
    reasons = [part.strip() for part in flag.split(",") if part.strip()]
    return "; ".join(say(AUDIT_KEYS[r], lang) if r in AUDIT_KEYS else r for r in reasons) or flag


def command_menu(lang: str) -> list[tuple[str, str]]:
    """(command, description) pairs for Telegram's command menu."""
    return [("start", say("cmd_start", lang)), ("help", say("cmd_help", lang)),
            ("classes", say("cmd_classes", lang)), ("correct", say("cmd_correct", lang)),
            ("privacy", say("cmd_privacy", lang))]
