// The review desk (issue 22): one page, plain JS, no framework, no CDN. It signs in (Telegram's initData from
// the URL's hash, or the session cookie of a one-time login link), keeps its bearer token and CSRF token in
// memory only, and talks JSON to /desk/api/ (bot/desk.py). Every text a user wrote (names above all) goes in
// with textContent or a DOM property, never as HTML. The CSP allows no inline script or style: styles are
// classes in desk.css, and the few values set from here go through the CSSOM.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const PHOTO_THREADS = 6; // thumbnails fetched at once
  const POLL_MS = 3000; // a running retrain's progress
  const PICKER_KEYS = ['1', '2', '3', '4', '5', '6', '7', '8', '9', '0', '-', 'n'];
  const USERS_PAGE = 100;

  const S = {
    token: null, csrf: null, texts: {}, lang: 'ko', labels: [], sources: [], flags: [], admin: null,
    tab: 'review',
    f: { label: '', user: '', source: '', flag: '', dispute: false, sort: 'disagreement', limit: 100 },
    offset: 0, total: 0, items: [], counts: null, selected: new Set(), focus: -1, anchor: -1, gridSeq: 0,
    busy: false, photos: new Map(), users: [], usersDone: false, poll: null, modal: null,
  };

  // ---- texts -------------------------------------------------------------------------------------------
  function t(key, vars) {
    let s = S.texts[key];
    if (s === undefined) return key;
    if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (Object.prototype.hasOwnProperty.call(vars, k) ? String(vars[k]) : m));
    return s;
  }

  function applyTexts(root) {
    root.querySelectorAll('[data-t]').forEach((el) => { el.textContent = t(el.dataset.t); });
    root.querySelectorAll('[data-t-title]').forEach((el) => {
      el.title = t(el.dataset.tTitle);
      el.setAttribute('aria-label', el.title);
    });
  }

  function labelShown(name) {
    const found = S.labels.find((l) => l.name === name);
    return found ? found.shown : String(name);
  }

  function sourceName(source) {
    switch (source) {
      case 'correction': return t('src_correction');
      case 'confirm': return t('src_confirm');
      case 'ask': return t('src_ask');
      case 'dispute': return t('src_dispute');
      case 'label': return t('src_label');
      default: return String(source);
    }
  }

  function flagName(flags) {
    // a stored flag may name several reasons: "not_kimchi,outlier"
    return String(flags).split(',').map((f) => f.trim()).filter(Boolean).map(flagReason).join(', ');
  }

  function flagReason(flag) {
    switch (flag) {
      case 'label': return t('flag_label');
      case 'outlier': return t('flag_outlier');
      case 'near_duplicate': return t('flag_near_duplicate');
      case 'not_kimchi': return t('flag_not_kimchi');
      case 'flood': return t('flag_flood');
      default: return String(flag);
    }
  }

  function runStatusName(status) {
    switch (status) {
      case 'promoted': return t('run_promoted');
      case 'kept': return t('run_kept');
      case 'cancelled': return t('run_cancelled');
      case 'failed': return t('run_failed');
      case 'refused': return t('run_refused');
      default: return String(status);
    }
  }

  function pct(x, digits) {
    if (typeof x !== 'number' || !isFinite(x)) return '—';
    return (x * 100).toFixed(digits || 0) + '%';
  }

  function ago(iso) {
    const when = Date.parse(iso);
    if (!isFinite(when)) return '';
    const s = (when - Date.now()) / 1000;
    const fmt = new Intl.RelativeTimeFormat(S.lang, { numeric: 'auto', style: 'short' });
    const steps = [[60, 'second'], [3600, 'minute'], [86400, 'hour'], [86400 * 30, 'day'], [86400 * 365, 'month']];
    let unit = 'year', size = 86400 * 365;
    for (let i = 0; i < steps.length; i++) {
      if (Math.abs(s) < steps[i][0]) { unit = steps[i][1]; size = i === 0 ? 1 : steps[i - 1][0]; break; }
    }
    return fmt.format(Math.round(s / size), unit);
  }

  function day(iso) {
    const when = Date.parse(iso);
    return isFinite(when) ? new Date(when).toLocaleString(S.lang, { dateStyle: 'medium', timeStyle: 'short' }) : '';
  }

  // ---- DOM helper: text children only, never HTML ----------------------------------------------------------
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = v;
        else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'role' || k === 'tabindex') el.setAttribute(k, v);
        else el[k] = v;
      }
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  // ---- Telegram: theme, ready, expand ---------------------------------------------------------------------
  const THEME = {
    bg_color: '--bg', text_color: '--text', hint_color: '--hint', link_color: '--link',
    button_color: '--button', button_text_color: '--button-text', secondary_bg_color: '--bg2',
    section_bg_color: '--card', section_separator_color: '--line', destructive_text_color: '--danger',
    accent_text_color: '--accent', header_bg_color: '--head',
  };

  function applyTheme(params) {
    let p = params;
    if (typeof p === 'string') { try { p = JSON.parse(p); } catch (e) { return; } }
    if (!p || typeof p !== 'object') return;
    const root = document.documentElement;
    let any = false;
    for (const [key, variable] of Object.entries(THEME)) {
      const v = p[key];
      if (typeof v === 'string' && /^#[0-9a-fA-F]{3,8}$/.test(v)) { root.style.setProperty(variable, v); any = true; }
    }
    if (!any) return;
    root.classList.add('telegram');
    const bg = /^#([0-9a-f]{6})$/i.exec(p.bg_color || '');
    if (bg) {
      const n = parseInt(bg[1], 16);
      const lum = 0.2126 * (n >> 16) + 0.7152 * ((n >> 8) & 255) + 0.0722 * (n & 255);
      root.style.setProperty('color-scheme', lum < 128 ? 'dark' : 'light');
      root.classList.toggle('dark', lum < 128);
      root.classList.toggle('light', lum >= 128);
    }
  }

  function tgPost(eventType, eventData) {
    const data = eventData === undefined ? '' : JSON.stringify(eventData);
    try {
      if (window.TelegramWebviewProxy && window.TelegramWebviewProxy.postEvent) {
        window.TelegramWebviewProxy.postEvent(eventType, data);
      } else if (window.parent && window.parent !== window) {
        window.parent.postMessage(JSON.stringify({ eventType, eventData: eventData || '' }), '*');
      }
    } catch (e) { /* not inside Telegram */ }
  }

  // Telegram's apps call window.Telegram.WebView.receiveEvent; Telegram Web posts a message to the iframe.
  function tgEvent(type, data) {
    if (type === 'theme_changed' && data) applyTheme(data.theme_params);
  }
  window.Telegram = window.Telegram || {};
  window.Telegram.WebView = window.Telegram.WebView || { receiveEvent: tgEvent };
  window.addEventListener('message', (e) => {
    if (e.source !== window.parent || typeof e.data !== 'string') return;
    try { const m = JSON.parse(e.data); tgEvent(m.eventType, m.eventData); } catch (err) { /* not ours */ }
  });

  // ---- the API --------------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message, hint) { super(message); this.status = status; this.hint = hint; }
  }

  async function api(path, options) {
    const method = (options && options.method) || 'GET';
    const headers = { Accept: 'application/json' };
    if (S.token) headers.Authorization = 'Bearer ' + S.token;
    let body;
    if (method !== 'GET') {
      headers['Content-Type'] = 'application/json';
      if (S.csrf) headers['X-CSRF-Token'] = S.csrf;
      body = JSON.stringify((options && options.body) || {});
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body, credentials: 'same-origin', cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, t('error_network'));
    }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) {
      const sentence = data && typeof data.error === 'string' ? data.error : t('error_status', { status: res.status });
      throw new ApiError(res.status, sentence, data && typeof data.hint === 'string' ? data.hint : undefined);
    }
    return data;
  }

  // ---- messages -------------------------------------------------------------------------------------------
  function showError(err) {
    const status = err && err.status;
    $('banner-text').textContent = (err && err.message) || t('error_network');
    const hint = $('banner-hint');
    if (status === 401 || status === 403) {
      hint.textContent = S.texts.signin_again ? t('signin_again') : (err.hint || $('signin-fallback').textContent);
      hint.hidden = false;
    } else {
      hint.hidden = true;
    }
    $('banner').hidden = false;
  }

  let toastTimer = null;
  function toast(text, long) {
    const el = $('toast');
    el.textContent = text;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, long ? 8000 : 4000);
  }

  // ---- photos: fetched with the bearer header, shown as blob URLs -----------------------------------------
  const photoWaiting = [];
  let photoRunning = 0;

  function photoURL(opaque, size) {
    const key = size + ':' + opaque;
    if (!S.photos.has(key)) {
      S.photos.set(key, new Promise((resolve, reject) => {
        photoWaiting.push({ url: 'api/photo/' + encodeURIComponent(opaque) + '?size=' + size, resolve, reject });
        pumpPhotos();
      }).catch((e) => { S.photos.delete(key); throw e; }));
    }
    return S.photos.get(key);
  }

  function blobURL(url) {
    return fetch(url, { headers: { Authorization: 'Bearer ' + S.token }, credentials: 'same-origin' })
      .then((r) => { if (!r.ok) throw new ApiError(r.status, t('photo_missing')); return r.blob(); })
      .then((b) => URL.createObjectURL(b));
  }

  function pumpPhotos() {
    while (photoRunning < PHOTO_THREADS && photoWaiting.length) {
      const job = photoWaiting.shift();
      photoRunning++;
      blobURL(job.url).then(job.resolve, job.reject).finally(() => { photoRunning--; pumpPhotos(); });
    }
  }

  function showPhoto(img, loader) {
    img.closest('.thumb, figure')?.classList.add('loading');
    loader().then((url) => { img.src = url; }, () => {
      img.alt = t('photo_missing');
      img.closest('.thumb, figure')?.classList.add('broken');
    }).finally(() => img.closest('.thumb, figure')?.classList.remove('loading'));
  }

  const lazy = 'IntersectionObserver' in window ? new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      lazy.unobserve(e.target);
      const img = e.target;
      showPhoto(img, () => photoURL(img.dataset.photo, 'thumb'));
    }
  }, { rootMargin: '400px' }) : null;

  function thumb(img, opaque) {
    img.dataset.photo = opaque;
    if (lazy) lazy.observe(img); else showPhoto(img, () => photoURL(opaque, 'thumb'));
  }

  // ---- dialogs (Telegram blocks window.confirm) -----------------------------------------------------------
  function openModal(id, onKey) {
    closeModal(null);
    $('overlay').hidden = false;
    $(id).hidden = false;
    S.modal = { id, onKey, back: document.activeElement };
  }

  function closeModal(result) {
    if (!S.modal) return;
    const m = S.modal;
    S.modal = null;
    $(m.id).hidden = true;
    $('overlay').hidden = true;
    if (m.done) m.done(result);
    if (m.back && m.back.focus && document.contains(m.back)) m.back.focus({ preventScroll: true });
  }

  function ask(text, yes) {
    return new Promise((resolve) => {
      $('confirm-text').textContent = text;
      $('confirm-yes').textContent = yes;
      openModal('confirm', (e) => {
        if (e.key === 'y' || e.key === 'Y') { closeModal(true); return true; }
        if (e.key === 'n' || e.key === 'N') { closeModal(false); return true; }
        return false;
      });
      S.modal.done = (r) => resolve(r === true);
      $('confirm-yes').focus();
    });
  }

  function pickLabel(count) {
    return new Promise((resolve) => {
      $('picker-title').textContent = t('picker_title', { n: count });
      const box = $('picker-labels');
      box.replaceChildren();
      S.labels.forEach((l, i) => {
        const key = PICKER_KEYS[i];
        box.append(h('button', { type: 'button', class: 'pick' + (l.name === 'not_kimchi' ? ' not-kimchi' : ''), 'data-label': l.name },
          key ? h('kbd', { text: key === '-' ? '−' : key }) : null, h('span', { text: l.shown })));
      });
      openModal('picker', (e) => {
        const i = PICKER_KEYS.indexOf(e.key);
        if (i >= 0 && i < S.labels.length) { closeModal(S.labels[i].name); return true; }
        return false;
      });
      S.modal.done = (r) => resolve(typeof r === 'string' ? r : null);
      box.querySelector('button')?.focus();
    });
  }

  function showHelp() {
    const rows = [
      ['j / k, ← →', t('key_move')], ['↑ ↓', t('key_move_row')], ['x, Space', t('key_toggle')],
      ['Shift+A', t('key_select_page')], ['Shift+click', t('key_range')], ['a', t('key_accept')],
      ['r', t('key_reject')], ['e, l', t('key_relabel')], ['1–9, 0, −, n', t('key_pick')], ['b', t('key_block')],
      ['o, Enter', t('key_open')], ['n / p', t('key_pages')], ['/', t('key_filter')], ['Esc', t('key_escape')],
      ['?', t('key_help')],
    ];
    $('help-keys').replaceChildren(...rows.flatMap(([k, d]) => [h('dt', null, h('kbd', { text: k })), h('dd', { text: d })]));
    openModal('help', () => false);
    $('help-close').focus();
  }

  function showFull(item) {
    const img = $('viewer-img');
    img.removeAttribute('src');
    img.alt = labelShown(item.label);
    $('viewer-caption').textContent = labelShown(item.label) + (item.user ? ' · ' + (item.user.name || item.user.id) : '');
    openModal('viewer', () => false);
    showPhoto(img, () => photoURL(item.photo, 'full'));
    $('viewer-close').focus();
  }

  // ---- tabs -----------------------------------------------------------------------------------------------
  function showTab(tab) {
    S.tab = tab;
    document.querySelectorAll('.tab').forEach((b) => b.setAttribute('aria-selected', String(b.dataset.tab === tab)));
    document.querySelectorAll('.panel').forEach((p) => { p.hidden = p.id !== 'panel-' + tab; });
    $('actionbar').hidden = tab !== 'review' || S.selected.size === 0;
    stopPolling();
    if (tab === 'review') loadGrid();
    else if (tab === 'dataset') loadDataset();
    else if (tab === 'models') loadModels();
    else if (tab === 'users') loadUsers(false);
  }

  // ---- the review grid ------------------------------------------------------------------------------------
  function option(value, text) { return h('option', { value, text }); }

  function fillSelect(select, options, keep) {
    const value = keep === undefined ? select.value : keep;
    select.replaceChildren(...options);
    select.value = value;
    if (select.value !== value) select.value = '';
  }

  function countOf(kind, name) {
    const c = S.counts && S.counts[kind];
    return c && typeof c[name] === 'number' ? ' (' + c[name] + ')' : '';
  }

  function renderFilters() {
    fillSelect($('f-label'), [option('', t('all_labels')), ...S.labels.map((l) => option(l.name, l.shown + countOf('label', l.name)))], S.f.label);
    fillSelect($('f-source'), [option('', t('all_sources')), ...S.sources.map((s) => option(s, sourceName(s) + countOf('source', s)))], S.f.source);
    fillSelect($('f-flag'), [option('', t('all_flags')), option('any', t('flag_any')), ...S.flags.map((f) => option(f, flagName(f) + countOf('flag', f)))], S.f.flag);
    const users = S.users.filter((u) => u.pending > 0 || String(u.id) === S.f.user);
    if (S.f.user && !users.some((u) => String(u.id) === S.f.user)) {  // a name tapped in a card, beyond the list
      const seen = S.items.find((i) => i.user && String(i.user.id) === S.f.user);
      users.push({ id: S.f.user, name: seen ? seen.user.name || S.f.user : S.f.user, pending: S.total });
    }
    fillSelect($('f-user'), [option('', t('all_users')), ...users.map((u) => option(String(u.id), u.name + ' (' + u.pending + ')'))], S.f.user);
    $('f-sort').value = S.f.sort;
    $('f-limit').value = String(S.f.limit);
    $('f-dispute').checked = S.f.dispute;
    const extra = ['user', 'source', 'flag'].filter((k) => S.f[k]).length + (S.f.dispute ? 1 : 0);
    $('filters-active').textContent = extra ? String(extra) : '';
  }

  function pendingQuery() {
    const q = new URLSearchParams();
    for (const k of ['label', 'user', 'source', 'flag']) if (S.f[k]) q.set(k, S.f[k]);
    if (S.f.dispute) q.set('dispute', '1');
    q.set('sort', S.f.sort);
    q.set('offset', String(S.offset));
    q.set('limit', String(S.f.limit));
    return q.toString();
  }

  async function loadGrid() {
    const seq = ++S.gridSeq;
    $('grid').setAttribute('aria-busy', 'true');
    let data;
    try {
      data = await api('api/pending?' + pendingQuery());
    } catch (e) {
      if (seq === S.gridSeq) { showError(e); $('grid').removeAttribute('aria-busy'); }
      return;
    }
    if (seq !== S.gridSeq) return;
    if (data.items.length === 0 && S.offset > 0 && data.total > 0) {
      S.offset = Math.max(0, Math.floor((data.total - 1) / S.f.limit) * S.f.limit);
      loadGrid();
      return;
    }
    S.items = data.items;
    S.total = data.total;
    S.counts = data.counts || null;
    const ids = new Set(S.items.map((i) => i.id));
    for (const id of [...S.selected]) if (!ids.has(id)) S.selected.delete(id);
    S.focus = Math.min(S.focus, S.items.length - 1);
    S.anchor = -1;
    renderFilters();
    renderGrid();
    $('grid').removeAttribute('aria-busy');
  }

  function card(item, index) {
    const top = Array.isArray(item.top) ? item.top.slice(0, 3) : [];
    const disagree = top.length > 0 && top[0][0] !== item.label;
    const selected = S.selected.has(item.id);
    const u = item.user || {};
    const img = h('img', { alt: labelShown(item.label), draggable: false, decoding: 'async' });
    thumb(img, item.photo);
    const badges = h('div', { class: 'badges' },
      item.flag ? h('span', { class: 'badge flag', title: t('flag_title'), text: '⚠ ' + flagName(item.flag) }) : null,
      item.dispute ? h('span', { class: 'badge dispute', text: '⚖ ' + t('dispute_badge') }) : null);
    const checkbox = h('input', { type: 'checkbox', class: 'pick-box', tabIndex: -1, checked: selected, 'aria-label': t('select_one') });
    const record = h('span', { class: 'record', title: t('record_title', { accepted: u.accepted || 0, rejected: u.rejected || 0 }) },
      '✓' + (u.accepted || 0) + ' ✗' + (u.rejected || 0));
    return h('article', {
      class: 'card' + (selected ? ' selected' : '') + (disagree ? ' disagree' : '') + (index === S.focus ? ' focused' : ''),
      role: 'option', tabindex: '-1', 'aria-selected': String(selected), 'data-id': String(item.id), 'data-index': String(index),
    },
    h('div', { class: 'thumb' }, img, checkbox,
      h('button', { type: 'button', class: 'zoom', title: t('open_photo'), 'aria-label': t('open_photo'), text: '⤢' }), badges),
    h('div', { class: 'body' },
      h('div', { class: 'label', text: labelShown(item.label) }),
      h('ol', { class: 'top3', title: t('top_title') }, ...top.map(([name, p]) =>
        h('li', { class: name === item.label ? 'same' : '' }, h('span', { class: 'name', text: labelShown(name) }), h('span', { class: 'p', text: pct(p) })))),
      h('div', { class: 'votes', title: t('votes_title', { for: item.votes_for || 0, against: item.votes_against || 0 }) },
        h('span', { class: 'for', text: '👍 ' + (item.votes_for || 0) }), h('span', { class: 'against', text: '👎 ' + (item.votes_against || 0) })),
      h('div', { class: 'who' },
        item.user ? h('button', { type: 'button', class: 'user-name', title: t('filter_this_user'), 'data-user': String(u.id), text: u.name || String(u.id) }) : null,
        record,
        u.trusted ? h('span', { class: 'tag trusted', text: t('trusted') }) : null,
        u.blocked ? h('span', { class: 'tag blocked', text: t('blocked') }) : null),
      h('div', { class: 'meta' }, h('span', { class: 'source', text: sourceName(item.source) }), h('span', { class: 'age', title: day(item.created_at), text: ago(item.created_at) }))));
  }

  function renderGrid() {
    const grid = $('grid');
    grid.replaceChildren(...S.items.map(card));
    $('grid-empty').hidden = S.items.length > 0;
    const pages = Math.max(1, Math.ceil(S.total / S.f.limit));
    const page = Math.floor(S.offset / S.f.limit) + 1;
    $('page-info').textContent = t('page_info', { page, pages, total: S.total });
    $('page-prev').disabled = S.offset === 0;
    $('page-next').disabled = S.offset + S.items.length >= S.total;
    $('pager').hidden = S.total <= S.f.limit && S.offset === 0;
    updateSelection();
    updateTotal();
  }

  function updateTotal(left) {
    const filtered = S.f.label || S.f.user || S.f.source || S.f.flag || S.f.dispute;
    if (typeof left === 'number') S.pendingAll = left;
    else if (!filtered) S.pendingAll = S.total;
    $('pending-total').textContent = typeof S.pendingAll === 'number' ? String(S.pendingAll) : '';
    $('grid-summary').textContent = t('grid_summary', { shown: S.items.length, total: S.total });
  }

  function updateSelection() {
    const n = S.selected.size;
    document.querySelectorAll('#grid .card').forEach((el) => {
      const on = S.selected.has(Number(el.dataset.id));
      el.classList.toggle('selected', on);
      el.setAttribute('aria-selected', String(on));
      const box = el.querySelector('.pick-box');
      if (box) box.checked = on;
    });
    const all = $('select-page');
    all.checked = n > 0 && n === S.items.length;
    all.indeterminate = n > 0 && n < S.items.length;
    $('selected-count').textContent = t('selected_count', { n });
    $('actionbar').hidden = n === 0 || S.tab !== 'review';
    document.body.classList.toggle('with-actionbar', n > 0 && S.tab === 'review');
  }

  function setFocus(index, scroll) {
    if (!S.items.length) { S.focus = -1; return; }
    S.focus = Math.max(0, Math.min(S.items.length - 1, index));
    document.querySelectorAll('#grid .card.focused').forEach((el) => el.classList.remove('focused'));
    const el = document.querySelector('#grid .card[data-index="' + S.focus + '"]');
    if (el) {
      el.classList.add('focused');
      el.focus({ preventScroll: true });
      if (scroll !== false) el.scrollIntoView({ block: 'nearest' });
    }
  }

  function columns() {
    const cards = document.querySelectorAll('#grid .card');
    if (cards.length < 2) return 1;
    const top = cards[0].offsetTop;
    let n = 0;
    while (n < cards.length && cards[n].offsetTop === top) n++;
    return Math.max(1, n);
  }

  function toggle(index, range) {
    const item = S.items[index];
    if (!item) return;
    if (range && S.anchor >= 0 && S.anchor !== index) {
      const on = S.selected.has(S.items[S.anchor].id);
      const [a, b] = S.anchor < index ? [S.anchor, index] : [index, S.anchor];
      for (let i = a; i <= b; i++) { if (on) S.selected.add(S.items[i].id); else S.selected.delete(S.items[i].id); }
    } else {
      if (S.selected.has(item.id)) S.selected.delete(item.id); else S.selected.add(item.id);
    }
    S.anchor = index;
    setFocus(index, false);
    updateSelection();
  }

  function selectPage(on) {
    if (on === undefined) on = S.selected.size !== S.items.length;
    S.selected.clear();
    if (on) S.items.forEach((i) => S.selected.add(i.id));
    updateSelection();
  }

  function targets() {
    if (S.selected.size) return S.items.filter((i) => S.selected.has(i.id));
    if (S.focus >= 0 && S.items[S.focus]) return [S.items[S.focus]];
    return [];
  }

  async function decide(action) {
    if (S.busy) return;
    const items = targets();
    if (!items.length) { toast(t('nothing_selected')); return; }
    let label;
    if (action === 'relabel') {
      label = await pickLabel(items.length);
      if (!label) return;
    } else if (action === 'block') {
      const users = new Set(items.map((i) => i.user && i.user.id));
      const names = [...new Set(items.map((i) => (i.user && i.user.name) || ''))].slice(0, 3).join(', ');
      if (!await ask(t('confirm_block', { users: users.size, names, n: items.length }), t('act_block'))) return;
    }
    const ids = items.map((i) => i.id);
    const seen = items.map((i) => i.label); // the labels as shown: one changed meanwhile is left as it is
    S.busy = true;
    document.body.classList.add('busy');
    let r;
    try {
      r = await api('api/decide', { method: 'POST', body: action === 'relabel' ? { ids, seen, action, label } : { ids, seen, action } });
    } catch (e) {
      showError(e);
      return;
    } finally {
      S.busy = false;
      document.body.classList.remove('busy');
    }
    // what was decided leaves the grid at once; the page then refills from the queue
    for (const id of ids) {
      S.selected.delete(id);
      document.querySelector('#grid .card[data-id="' + id + '"]')?.remove();
    }
    let said;
    if (action === 'accept') said = t('done_accept', { n: r.decided });
    else if (action === 'reject') said = t('done_reject', { n: r.decided });
    else if (action === 'relabel') said = t('done_relabel', { n: r.decided, label: labelShown(label) });
    else said = t('done_block', { users: r.blocked_users || 0, n: r.rejected_by_block || 0 });
    if (r.skipped > 0) said += ' ' + t('skipped', { n: r.skipped });
    toast(said, r.skipped > 0);
    updateTotal(r.pending_left);
    if (action === 'block') S.users = [];
    await Promise.all([loadGrid(), action === 'block' ? loadUserChoices() : null]);
    if (document.body.classList.contains('keyboard')) setFocus(Math.max(0, S.focus));
  }

  async function loadUserChoices() {
    try {
      const data = await api('api/users?offset=0&limit=' + USERS_PAGE);
      S.users = data.users || [];
      renderFilters();
    } catch (e) { /* the filter goes without names; the grid says what went wrong */ }
  }

  function setFilter(key, value) {
    S.f[key] = value;
    S.offset = 0;
    S.selected.clear();
    S.focus = -1;
    loadGrid();
  }

  // ---- dataset --------------------------------------------------------------------------------------------
  async function loadDataset() {
    let data;
    try { data = await api('api/dataset'); } catch (e) { showError(e); return; }
    const rows = (data.classes || []).map((c) => h('tr', null,
      h('th', { scope: 'row', text: labelShown(c.label) }),
      ...['base', 'accepted', 'pending', 'rejected', 'holdout'].map((k) => h('td', { text: String(c[k] ?? 0) }))));
    const sum = (k) => (data.classes || []).reduce((a, c) => a + (c[k] || 0), 0);
    rows.push(h('tr', { class: 'total' }, h('th', { scope: 'row', text: t('total') }),
      ...['base', 'accepted', 'pending', 'rejected', 'holdout'].map((k) => h('td', { text: String(sum(k)) }))));
    document.querySelector('#dataset-table tbody').replaceChildren(...rows);
    const n = data.suspects || 0;
    $('suspects-count').textContent = t('suspects_count', { n });
    $('suspects-open').disabled = n === 0;
    const groups = data.duplicate_groups || [];
    $('duplicates-empty').hidden = groups.length > 0;
    $('duplicates').replaceChildren(...groups.map((g) => h('div', { class: 'dupes' }, ...(g.photos || []).map((p, i) => {
      const img = h('img', { alt: labelShown((g.labels || [])[i] || '') });
      thumb(img, p);
      return h('figure', null, img, h('figcaption', { text: labelShown((g.labels || [])[i] || '') }));
    }))));
  }

  // ---- models ---------------------------------------------------------------------------------------------
  function stopPolling() { clearTimeout(S.poll); S.poll = null; }

  async function loadModels() {
    stopPolling();
    let data;
    try { data = await api('api/models'); } catch (e) { showError(e); return; }
    renderModels(data);
    if (data.retrain && data.retrain.running && S.tab === 'models') S.poll = setTimeout(loadModels, POLL_MS);
  }

  function metric(name, value) {
    return h('div', { class: 'metric' }, h('span', { class: 'k', text: name }), h('span', { class: 'v', text: value }));
  }

  function renderModels(data) {
    const run = data.retrain || {};
    const status = $('retrain-status');
    const bar = $('retrain-progress');
    if (run.running) {
      const stage = !run.stage || run.stage === 'preparing' ? t('run_preparing') : run.stage;
      status.textContent = t('run_now', { id: run.id ?? '', stage });
      const m = /(\d+)\s*\/\s*(\d+)/.exec(run.stage || '');
      if (m) { bar.max = Number(m[2]); bar.value = Number(m[1]); } else { bar.removeAttribute('value'); }
      bar.hidden = false;
    } else {
      bar.hidden = true;
      status.textContent = run.last
        ? t('run_last', { id: run.last.id, status: runStatusName(run.last.status), candidate: run.last.candidate || '—' })
        : t('run_none');
    }
    $('retrain-start').disabled = !!run.running;
    const versions = data.versions || [];
    $('rollback').disabled = versions.length < 2;
    $('versions-empty').hidden = versions.length > 0;
    $('versions').replaceChildren(...versions.map((v) => {
      const m = v.metrics || {};
      const open = m.openset || null;
      const pics = h('div', { class: 'pictures', hidden: true });
      const picsButton = (v.pictures || []).length ? h('button', { type: 'button', class: 'show-pictures', text: t('show_pictures') }) : null;
      if (picsButton) {
        picsButton.addEventListener('click', () => {
          pics.hidden = !pics.hidden;
          picsButton.textContent = pics.hidden ? t('show_pictures') : t('hide_pictures');
          if (!pics.hidden && !pics.childElementCount) {
            for (const name of v.pictures) {
              const img = h('img', { alt: name });
              pics.append(h('figure', null, img, h('figcaption', { text: name })));
              showPhoto(img, () => blobURL('api/models/' + encodeURIComponent(v.name) + '/pictures/' + encodeURIComponent(name)));
            }
          }
        });
      }
      const promote = v.current ? null : h('button', { type: 'button', class: 'promote', text: t('promote') });
      if (promote) {
        promote.addEventListener('click', async () => {
          if (!await ask(t('confirm_promote', { version: v.name }), t('promote'))) return;
          await swap('api/promote', { version: v.name });
        });
      }
      return h('article', { class: 'version' + (v.current ? ' current' : '') },
        h('header', null, h('h3', { text: v.name }), v.current ? h('span', { class: 'tag serving', text: t('serving') }) : null,
          h('span', { class: 'hint', text: [v.arch, day(v.created_at)].filter(Boolean).join(' · ') })),
        h('div', { class: 'metrics' },
          metric(t('metric_accuracy'), pct(m.accuracy, 1)), metric(t('metric_f1'), pct(m.f1_macro, 1)),
          open && typeof open.kept === 'number' ? metric(t('metric_kept'), pct(open.kept, 1)) : null,
          open && typeof open.caught === 'number' ? metric(t('metric_caught'), pct(open.caught, 1)) : null),
        v.problem ? h('p', { class: 'problem', text: '⚠ ' + v.problem }) : null,
        h('div', { class: 'buttons' }, picsButton, promote), pics);
    }));
  }

  async function swap(path, body) {
    let r;
    try { r = await api(path, { method: 'POST', body }); } catch (e) { showError(e); return; }
    toast(t('done_swap', { current: r.current, previous: r.previous || '—' }));
    loadModels();
  }

  async function startRetrain() {
    if (!await ask(t('confirm_retrain'), t('retrain_start'))) return;
    let r;
    try { r = await api('api/retrain', { method: 'POST', body: {} }); } catch (e) { showError(e); loadModels(); return; }
    toast(t('retrain_started', { id: r.id }));
    loadModels();
  }

  // ---- users ----------------------------------------------------------------------------------------------
  async function loadUsers(more) {
    const offset = more ? S.users.length : 0;
    let data;
    try { data = await api('api/users?offset=' + offset + '&limit=' + USERS_PAGE); } catch (e) { showError(e); return; }
    const got = data.users || [];
    S.users = more ? S.users.concat(got) : got;
    $('users-more').hidden = got.length < USERS_PAGE;
    renderUsers();
  }

  function renderUsers() {
    document.querySelector('#users-table tbody').replaceChildren(...S.users.map((u) => {
      const trust = h('button', { type: 'button', class: 'user-act', text: u.trusted ? t('untrust') : t('trust'), disabled: u.blocked });
      trust.addEventListener('click', () => userAction(u, u.trusted ? 'untrust' : 'trust'));
      const block = h('button', { type: 'button', class: 'user-act ' + (u.blocked ? '' : 'danger'), text: u.blocked ? t('unblock') : t('block') });
      block.addEventListener('click', () => userAction(u, u.blocked ? 'unblock' : 'block'));
      return h('tr', { 'data-user': String(u.id) },
        h('td', { class: 'who' }, h('span', { class: 'user-name', text: u.name || String(u.id) }), h('small', { class: 'hint', text: ' #' + u.id + (u.first_seen ? ' · ' + day(u.first_seen) : '') })),
        h('td', { class: 'n', 'data-label': t('col_accepted'), text: String(u.accepted || 0) }),
        h('td', { class: 'n', 'data-label': t('col_rejected'), text: String(u.rejected || 0) }),
        h('td', { class: 'n', 'data-label': t('col_pending'), text: String(u.pending || 0) }),
        h('td', { class: 'standing' }, u.trusted ? h('span', { class: 'tag trusted', text: t('trusted') }) : null,
          u.blocked ? h('span', { class: 'tag blocked', text: t('blocked') }) : null),
        h('td', { class: 'actions' }, trust, block));
    }));
  }

  async function userAction(u, action) {
    if (action === 'block' && !await ask(t('confirm_block_user', { name: u.name || String(u.id) }), t('block'))) return;
    let r;
    try { r = await api('api/users/' + encodeURIComponent(u.id), { method: 'POST', body: { action } }); } catch (e) { showError(e); return; }
    const name = u.name || String(u.id);
    if (action === 'trust') toast(t('done_trust', { name }));
    else if (action === 'untrust') toast(t('done_untrust', { name }));
    else if (action === 'block') toast(t('done_block_user', { name, n: r.rejected || 0 }));
    else toast(t('done_unblock', { name }));
    await loadUsers(false);
  }

  // ---- keyboard -------------------------------------------------------------------------------------------
  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (S.modal) {
      if (e.key === 'Escape') { e.preventDefault(); closeModal(null); return; }
      if (S.modal.onKey && !/^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName) && S.modal.onKey(e)) e.preventDefault();
      return;
    }
    const typing = /^(INPUT|TEXTAREA)$/.test(e.target.tagName) && e.target.type !== 'checkbox';
    if (typing) { if (e.key === 'Escape') e.target.blur(); return; }
    if (e.target.tagName === 'SELECT') {
      // a filter keeps the keys it needs; the letters stay shortcuts, so j or a works right after picking a class
      if (e.key === 'Escape') { e.target.blur(); return; }
      if (/^(Arrow|Page|Home|End|Enter|Tab| )/.test(e.key === ' ' ? ' ' : e.key)) return;
    }
    if (e.key === '?') { e.preventDefault(); showHelp(); return; }
    if (S.tab !== 'review') return;
    const onButton = e.target.tagName === 'BUTTON' || (e.target.tagName === 'INPUT' && e.target.type === 'checkbox');
    const cols = () => columns();
    let handled = true;
    switch (e.key) {
      case 'j': case 'ArrowRight': setFocus(S.focus + 1); break;
      case 'k': case 'ArrowLeft': setFocus(S.focus < 0 ? 0 : S.focus - 1); break;
      case 'ArrowDown': setFocus(S.focus < 0 ? 0 : S.focus + cols()); break;
      case 'ArrowUp': setFocus(S.focus - cols()); break;
      case 'x': if (S.focus >= 0) toggle(S.focus, false); break;
      case ' ': if (onButton) handled = false; else if (S.focus >= 0) toggle(S.focus, e.shiftKey); break;
      case 'A': selectPage(true); break;
      case 'a': if (e.shiftKey) selectPage(true); else decide('accept'); break;
      case 'r': decide('reject'); break;
      case 'e': case 'l': decide('relabel'); break;
      case 'b': decide('block'); break;
      case 'o': case 'Enter':
        if (onButton) handled = false; else if (S.items[S.focus]) showFull(S.items[S.focus]);
        break;
      case 'n': if (!$('page-next').disabled) page(1); break;
      case 'p': if (!$('page-prev').disabled) page(-1); break;
      case '/': $('f-label').focus(); break;
      case 'Escape': if (S.selected.size) selectPage(false); else handled = false; break;
      default: handled = false;
    }
    if (handled) e.preventDefault();
  }

  function page(step) {
    S.offset = Math.max(0, S.offset + step * S.f.limit);
    S.selected.clear();
    S.focus = -1;
    loadGrid().then(() => window.scrollTo(0, 0));
  }

  // ---- wiring ---------------------------------------------------------------------------------------------
  function wire() {
    document.querySelectorAll('.tab').forEach((b) => b.addEventListener('click', () => showTab(b.dataset.tab)));
    $('help-button').addEventListener('click', showHelp);
    $('banner-close').addEventListener('click', () => { $('banner').hidden = true; });
    $('filters').addEventListener('submit', (e) => e.preventDefault());
    $('more-filters').addEventListener('click', () => {
      const open = !$('filters').classList.contains('open');
      $('filters').classList.toggle('open', open);
      $('more-filters').setAttribute('aria-expanded', String(open));
    });
    $('f-label').addEventListener('change', (e) => setFilter('label', e.target.value));
    $('f-user').addEventListener('change', (e) => setFilter('user', e.target.value));
    $('f-source').addEventListener('change', (e) => setFilter('source', e.target.value));
    $('f-flag').addEventListener('change', (e) => setFilter('flag', e.target.value));
    $('f-sort').addEventListener('change', (e) => setFilter('sort', e.target.value));
    $('f-limit').addEventListener('change', (e) => setFilter('limit', Number(e.target.value) || 100));
    $('f-dispute').addEventListener('change', (e) => setFilter('dispute', e.target.checked));
    $('select-page').addEventListener('change', (e) => selectPage(e.target.checked));
    $('page-prev').addEventListener('click', () => page(-1));
    $('page-next').addEventListener('click', () => page(1));
    document.querySelectorAll('#actionbar .act').forEach((b) => b.addEventListener('click', () => {
      if (b.dataset.action === 'clear') selectPage(false); else decide(b.dataset.action);
    }));
    $('grid').addEventListener('click', (e) => {
      const el = e.target.closest('.card');
      if (!el) return;
      const index = Number(el.dataset.index);
      if (e.target.closest('.zoom')) { setFocus(index, false); showFull(S.items[index]); return; }
      const who = e.target.closest('.user-name');
      if (who) { setFilter('user', who.dataset.user); return; }
      toggle(index, e.shiftKey);
    });
    $('grid').addEventListener('mousedown', (e) => { if (e.shiftKey) e.preventDefault(); }); // no text selection
    $('suspects-open').addEventListener('click', () => {
      Object.assign(S.f, { label: '', user: '', source: '', flag: 'any', dispute: false });
      S.offset = 0;
      S.selected.clear();
      showTab('review');
    });
    $('retrain-start').addEventListener('click', startRetrain);
    $('rollback').addEventListener('click', async () => {
      if (!await ask(t('confirm_rollback'), t('rollback'))) return;
      await swap('api/rollback', {});
    });
    $('users-more').addEventListener('click', () => loadUsers(true));
    $('confirm-yes').addEventListener('click', () => closeModal(true));
    $('confirm-no').addEventListener('click', () => closeModal(false));
    $('picker-labels').addEventListener('click', (e) => {
      const b = e.target.closest('button[data-label]');
      if (b) closeModal(b.dataset.label);
    });
    $('picker-cancel').addEventListener('click', () => closeModal(null));
    $('help-close').addEventListener('click', () => closeModal(null));
    $('viewer-close').addEventListener('click', () => closeModal(null));
    $('overlay').addEventListener('click', (e) => { if (e.target === $('overlay')) closeModal(null); });
    document.addEventListener('keydown', onKey);
    // the focus ring of a card shows only for keyboard use, not after a tap
    document.addEventListener('keydown', () => document.body.classList.add('keyboard'), true);
    document.addEventListener('pointerdown', () => document.body.classList.remove('keyboard'), true);
  }

  async function boot() {
    const hash = new URLSearchParams(location.hash.slice(1));
    applyTheme(hash.get('tgWebAppThemeParams'));
    const initData = hash.get('tgWebAppData');
    tgPost('web_app_ready');
    tgPost('web_app_expand');
    wire();
    let s;
    try {
      s = await api('api/session', { method: 'POST', body: initData ? { init_data: initData } : {} });
    } catch (e) {
      $('booting').hidden = true;
      showError(e.status ? e : new ApiError(403, e.message));
      return;
    }
    Object.assign(S, {
      token: s.token, csrf: s.csrf, admin: s.admin || null, lang: s.lang || 'ko', texts: s.texts || {},
      labels: s.labels || [], sources: s.sources || [], flags: s.flags || [],
    });
    document.documentElement.lang = S.lang;
    document.title = t('title');
    applyTexts(document);
    $('booting').hidden = true;
    document.body.classList.remove('booting');
    renderFilters();
    await Promise.all([loadGrid(), loadUserChoices()]);
    document.body.classList.add('ready');
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot); else boot();
})();
