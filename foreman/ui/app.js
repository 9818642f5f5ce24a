'use strict';

/*
 * foreman's live queue dashboard.
 *
 * All data arrives over one server-sent event stream (/queue/events). It is read with
 * fetch rather than EventSource because EventSource cannot send the Authorization
 * header. The page keeps a small state (who we are, the latest summary, the recent
 * jobs) and redraws sections from it; server data only ever reaches the DOM through
 * textContent and attribute values, never as markup.
 */

const KEY_STORE = 'foreman.key';
const MAX_JOBS = 50;
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 15000;
const NOTICE_MS = 6000;
const PURGE_CONFIRM_MS = 4000;
const ERROR_CHARS = 80;
// the waiting bar's track runs past the bound, so the bound is a mark you can see
// rather than the bar's end
const BAR_SPAN = 1.25;

const STATUS_TEXT = {
  400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found',
  405: 'Method Not Allowed', 409: 'Conflict', 413: 'Payload Too Large',
  429: 'Too Many Requests', 500: 'Internal Server Error', 502: 'Bad Gateway',
  503: 'Service Unavailable', 504: 'Gateway Timeout',
};

const ACTIVE = new Set(['queued', 'loading', 'working']);
const RETRYABLE = new Set(['failed', 'cancelled']);

const state = {
  you: null,          // the stream's `hello`
  summary: null,
  jobs: new Map(),    // id -> job, at most MAX_JOBS
  offset: 0,          // server clock minus this browser's clock, seconds
};

const $ = (id) => document.getElementById(id);

// ---- small helpers --------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') node.className = value;
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  // strings become text nodes, so server data can never turn into markup
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

const plural = (n, word) => `${n.toLocaleString()} ${word}${n === 1 ? '' : 's'}`;
const isNum = (x) => typeof x === 'number' && Number.isFinite(x);
const serverNow = () => Date.now() / 1000 + state.offset;
const shortId = (id) => (typeof id === 'string' && id.length > 10 ? `…${id.slice(-8)}` : id || '—');

function span(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) {
    const m = Math.floor(s / 60);
    const r = s % 60;
    return m < 10 && r ? `${m} min ${r} s` : `${m} min`;
  }
  if (s < 48 * 3600) {
    const hours = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    return m ? `${hours} h ${m} min` : `${hours} h`;
  }
  return `${Math.floor(s / 86400)} d`;
}

// short runs (a load, a quick job) read better with a tenth of a second
function preciseSpan(seconds) {
  return seconds < 10 ? `${Math.max(0, seconds).toFixed(1)} s` : span(seconds);
}

const ago = (t, now) => `${span(now - t)} ago`;

function clock(t) {
  const d = new Date(t * 1000);
  const time = d.toLocaleTimeString([], {
    hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
  });
  // swaps and jobs can reach back past midnight; a bare time would then mislead
  if (d.toDateString() === new Date().toDateString()) return time;
  return `${d.toLocaleDateString([], { weekday: 'short' })} ${time}`;
}

// the same model always gets the same colour, so a drained model shows as one run
function hue(model) {
  let x = 0x811c9dc5;
  for (const ch of String(model)) {
    x ^= ch.codePointAt(0);
    x = Math.imul(x, 0x01000193);
  }
  return (x >>> 0) % 360;
}

// on a phone a model name may have to wrap: let it wrap after the colon of its tag first
function breakable(model) {
  const parts = String(model).split(':');
  return parts.flatMap((part, i) => (i < parts.length - 1 ? [`${part}:`, h('wbr')] : [part]));
}

function badge(jobState) {
  return h('span', { class: `badge state-${jobState}` }, jobState);
}

// ---- the key ----------------------------------------------------------------------------

// sessionStorage can throw (storage disabled); the page then simply has no key
function storedKey() {
  try { return sessionStorage.getItem(KEY_STORE); } catch { return null; }
}
function storeKey(key) {
  try { sessionStorage.setItem(KEY_STORE, key); } catch { /* kept nowhere: asks again */ }
}
function dropKey() {
  try { sessionStorage.removeItem(KEY_STORE); } catch { /* nothing stored */ }
}
function authHeaders(key = storedKey()) {
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// ---- rendering: each section is rebuilt from state, at most once a frame ----------------

const dirty = new Set();
let frame = 0;
// per section, functions of the server time that refresh the ticking bits in place, so
// the per-second tick never rebuilds rows (which would steal focus and eat clicks)
const tickers = {};

function invalidate(...sections) {
  for (const s of sections) dirty.add(s);
  if (!frame) frame = requestAnimationFrame(flush);
}

function invalidateAll() {
  invalidate(...Object.keys(renderers));
}

function flush() {
  frame = 0;
  const sections = [...dirty];
  dirty.clear();
  for (const s of sections) renderers[s]();
  runTickers();
}

function runTickers() {
  const now = serverNow();
  for (const list of Object.values(tickers)) for (const fn of list) fn(now);
}

function renderHeader() {
  const you = state.you;
  let who = '…';
  if (you && !you.keys_enabled) who = 'open access (no API keys)';
  else if (you && you.name) who = `signed in as ${you.name}`;
  else if (you) who = 'no key';
  else if (!$('key-form').hidden) who = 'not signed in';
  $('who').textContent = who;
  $('forget-key').hidden = !storedKey();
  $('readonly').hidden = !you || Boolean(you.can_act);
  $('purge').hidden = !canAct();
}

const canAct = () => Boolean(state.you && state.you.can_act);

function setStat(id, value, note) {
  const card = $(id);
  card.querySelector('.stat-value').textContent =
    isNum(value) ? value.toLocaleString() : '—';
  const noteEl = card.querySelector('.stat-note');
  if (noteEl) noteEl.textContent = note || '';
}

function renderHeadline() {
  const s = state.summary;
  const a = s && s.activity;
  const win = a && isNum(a.window)
    ? (a.window % 3600 === 0 ? `${a.window / 3600} h` : span(a.window)) : '24 h';
  setStat('swaps-avoided', a && a.swaps_avoided,
    a ? `loads: ${a.loads} made vs ${a.arrival_loads} in arrival order, last ${win}` : '');
  setStat('jobs-hour', a && a.done_last_hour);
  setStat('queued-total', s && s.queued);
  const f = (a && a.finished) || {};
  setStat('failures', a ? f.failed || 0 : null,
    a ? `in the last ${win} · ${f.done || 0} done · ${f.cancelled || 0} cancelled` : '');

  const ollama = $('ollama');
  const fleet = upstreams();
  if (fleet.length > 1) {
    const up = fleet.filter((u) => u.online).length;
    ollama.dataset.state = up === fleet.length ? 'ok' : up === 0 ? 'bad' : 'warn';
    ollama.textContent = `Ollama: ${up} of ${fleet.length} upstreams reachable`;
  } else {
    ollama.dataset.state = !s ? 'unknown' : s.ollama_up ? 'ok' : 'bad';
    ollama.textContent = !s ? 'Ollama: unknown' : s.ollama_up ? 'Ollama reachable' : 'Ollama unreachable';
  }
  const accepting = $('accepting');
  accepting.hidden = !s || s.accepting !== false;
  accepting.dataset.state = 'bad';
  accepting.textContent = 'shutting down: not accepting new jobs';
}

// every upstream's lane of the summary (an older foreman sends none)
function upstreams() {
  const list = state.summary && state.summary.upstreams;
  return Array.isArray(list) ? list.filter((u) => u && typeof u.name === 'string') : [];
}

function renderResident() {
  const r = (state.summary && state.summary.resident) || {};
  const fleet = upstreams();
  const ticks = [];
  const chat = $('resident-chat');
  const chatNote = chat.querySelector('.note');
  chatNote.textContent = '';
  if (fleet.length > 1) {
    // each upstream's model is in the table below; here, the models loaded anywhere
    const models = [...new Set(fleet.filter((u) => u.chat).map((u) => u.chat.model))];
    chat.querySelector('.model').textContent = models.length ? models.join(', ') : 'none';
  } else {
    chat.querySelector('.model').textContent = r.chat ? r.chat.model : 'none';
  }
  if (fleet.length <= 1 && r.chat && isNum(r.chat.since)) {
    const since = r.chat.since;
    ticks.push((now) => {
      chatNote.textContent = `since ${clock(since)} (${span(now - since)})`;
    });
  }
  const embed = $('resident-embed');
  embed.querySelector('.model').textContent = r.embedding ? r.embedding.model : 'none';
  const embedNote = embed.querySelector('.note');
  embedNote.textContent = '';
  if (r.embedding && isNum(r.embedding.used_at)) {
    const used = r.embedding.used_at;
    ticks.push((now) => { embedNote.textContent = `last used ${ago(used, now)}`; });
  }
  $('upstreams-table').hidden = fleet.length === 0;
  $('upstreams-table').tBodies[0].replaceChildren(...fleet.map((u) => upstreamRow(u, ticks)));
  tickers.resident = ticks;
}

function upstreamRow(u, ticks) {
  const tr = h('tr', { 'data-upstream': u.name, 'data-online': u.online ? 'true' : 'false' });
  const model = h('td', { class: 'chat' });
  if (u.chat) {
    model.append(h('span', { class: 'model' }, ...breakable(u.chat.model)));
    if (u.loading) model.append(' ', h('span', { class: 'tag loading' }, 'loading'));
    if (isNum(u.chat.since)) {
      const since = u.chat.since;
      const note = h('span', { class: 'note' });
      model.append(note);
      ticks.push((now) => { note.textContent = `since ${clock(since)} (${span(now - since)})`; });
    }
  } else {
    model.append(h('span', { class: 'model' }, 'none'));
  }
  const slots = isNum(u.slots) ? u.slots : 1;
  const inUse = isNum(u.in_use) ? u.in_use : 0;
  tr.append(
    h('th', { scope: 'row', class: 'name' }, ...breakable(u.name)),
    model,
    h('td', { class: 'slots num', title: `${inUse} of ${slots} slots in use` }, `${inUse}/${slots}`),
    h('td', { class: 'health' },
      h('span', { class: 'pill', 'data-state': u.online ? 'ok' : 'bad' }, u.online ? 'up' : 'down')));
  return tr;
}

function fact(label, valueNode) {
  return h('div', null, h('dt', null, label), h('dd', null, valueNode));
}

// every running job with its upstream's lane; an older foreman sends only `running`
function runningJobs() {
  const s = state.summary;
  const fleet = upstreams();
  if (!fleet.length) return s && s.running ? [{ job: s.running, lane: null }] : [];
  return fleet.flatMap((lane) => (Array.isArray(lane.running) ? lane.running : [])
    .filter((job) => job && typeof job === 'object')
    .map((job) => ({ job, lane })));
}

function renderRunning() {
  const section = $('running');
  const body = $('running-body');
  const all = runningJobs();
  const ticks = [];
  tickers.running = ticks;
  if (!all.length) {
    section.dataset.state = 'idle';
    body.replaceChildren(h('p', { class: 'empty' }, 'Idle — nothing running'));
    return;
  }
  section.dataset.state = all.some(({ job }) => job.state !== 'loading') ? 'working' : 'loading';
  const several = upstreams().length > 1;
  body.replaceChildren(...all.map(({ job, lane }) => runningCard(job, lane, several, ticks)));
}

function runningCard(r, lane, several, ticks) {
  const jobState = r.state === 'loading' ? 'loading' : 'working';
  // another key's job comes without id, ref or priority: say so instead of blanks
  const theirs = !('id' in r);

  const elapsed = h('span', { class: 'elapsed' }, '—');
  if (isNum(r.started_at)) {
    ticks.push((now) => { elapsed.textContent = span(now - r.started_at); });
  }
  // tokens are counted per upstream: a job's own only while it runs alone there
  let counted = '—';
  if (isNum(r.tokens) && r.stream) counted = r.tokens.toLocaleString();
  else if (lane && isNum(lane.tokens) && Array.isArray(lane.running) && lane.running.length > 1) {
    counted = `${lane.tokens.toLocaleString()} across ${plural(lane.running.length, 'job')} on ${lane.name}`;
  }
  const tokens = h('span', { class: 'tokens' }, counted);
  const attempts = isNum(r.max_attempts) ? `${r.attempts}/${r.max_attempts}` : String(r.attempts ?? '—');
  const waited = isNum(r.started_at) && isNum(r.enqueued_at)
    ? preciseSpan(r.started_at - r.enqueued_at) : '—';

  const upstream = r.upstream || (lane && lane.name) || null;
  const head = h('p', { class: 'running-head' },
    h('span', { class: 'model' }, r.model || '—'), ' ', badge(jobState));
  if (several && upstream) head.append(' ', h('span', { class: 'tag upstream' }, `on ${upstream}`));
  const facts = h('dl', { class: 'facts' },
    fact('Elapsed', elapsed),
    fact('Tokens so far', tokens),
    fact('Attempt', h('span', { class: 'attempt' }, attempts)),
    fact('Queued for', h('span', { class: 'waited' }, waited)),
    fact('Ref', h('span', { class: 'ref' }, theirs ? 'another key’s job' : r.ref || '—')),
    fact('Job', h('code', { class: 'job-id', title: r.id || null }, theirs ? '—' : shortId(r.id))),
    fact('Upstream', h('span', { class: 'upstream' }, upstream || '—')));
  if (r.state === 'loading') {
    const where = several && upstream ? `Ollama on ${upstream}` : 'Ollama';
    facts.append(fact('Now', h('span', null, `loading ${r.model} into ${where}`)));
  }
  return h('div', { class: 'run', 'data-upstream': upstream, 'data-state': jobState }, head, facts);
}

function renderWaiting() {
  const s = state.summary;
  const rows = (s && s.waiting) || [];
  const maxWait = s && isNum(s.max_wait) && s.max_wait > 0 ? s.max_wait : null;
  const ticks = [];
  tickers.waiting = ticks;

  $('waiting-bound').textContent = !s ? ''
    : maxWait ? `Bars show how long the oldest job has waited. At ${span(maxWait)} it jumps ahead of the resident model’s queue.`
      : 'No starvation bound is set: the resident model’s queue always goes first.';
  $('waiting-empty').hidden = rows.length > 0;
  $('waiting-table').hidden = rows.length === 0;

  const trs = rows.map((w) => {
    const tr = h('tr', {
      'data-model': w.model,
      'data-resident': w.resident ? 'true' : 'false',
      'data-overdue': w.overdue ? 'true' : 'false',
    });
    const name = h('th', { scope: 'row', class: 'model' }, ...breakable(w.model));
    if (w.resident) name.append(' ', h('span', { class: 'tag' }, 'resident'));
    // priority is the exception worth a mark; most queues run everything at 0
    if (isNum(w.top_priority) && w.top_priority !== 0) {
      name.append(' ', h('span', { class: 'tag priority' }, `priority ${w.top_priority}`));
    }
    const age = h('td', { class: 'age' });
    const note = h('span', { class: 'bound-note' });
    const bound = h('td', { class: 'bound' });
    let fill = null;
    let bar = null;
    if (maxWait) {
      fill = h('span', { class: 'bar-fill' });
      const mark = h('span', { class: 'bar-bound' });
      mark.style.left = `${100 / BAR_SPAN}%`;
      bar = h('span', { class: 'bar', role: 'img' }, fill, mark);
      bound.append(bar);
    }
    bound.append(note);
    tr.append(name,
      h('td', { class: 'count num' }, String(w.count)),
      age, bound);
    ticks.push((now) => {
      const waited = now - w.oldest_enqueued_at;
      age.textContent = span(waited);
      // the flag comes with each summary; between summaries the clock can cross it
      const overdue = Boolean(w.overdue) || (maxWait !== null && waited >= maxWait);
      tr.dataset.overdue = overdue ? 'true' : 'false';
      if (maxWait) {
        fill.style.width = `${Math.min(1, waited / (maxWait * BAR_SPAN)) * 100}%`;
        bar.setAttribute('aria-label', `waited ${span(waited)} of ${span(maxWait)}`);
      }
      note.textContent = overdue ? 'over the bound: runs next'
        : w.resident ? 'resident: runs without a swap'
          : maxWait ? `jumps the queue at ${span(maxWait)}` : 'no bound';
    });
    return tr;
  });
  $('waiting-table').tBodies[0].replaceChildren(...trs);
}

// the per-key table: an older foreman sends none; with keys off it is worth showing only
// if some job still carries a key's name
function ownerRows() {
  const list = state.summary && state.summary.owners;
  return Array.isArray(list)
    ? list.filter((r) => r && (typeof r.owner === 'string' || r.owner === null)) : [];
}

function renderOwners() {
  const rows = ownerRows();
  const you = state.you;
  const keyed = Boolean(you && you.keys_enabled) || rows.some((r) => r.owner !== null);
  $('owners').hidden = !keyed || rows.length === 0;
  $('owners-hint').textContent = you && !you.can_act && you.name
    ? 'Your key’s jobs. Among queued jobs for one model, keys take turns by weight.'
    : 'Among queued jobs for one model, keys take turns by weight: a key of weight 2 gets two turns for each turn of a key of weight 1.';
  const count = (n) => (isNum(n) ? n.toLocaleString() : '0');
  const optional = (n) => (isNum(n) ? n.toLocaleString() : '—');
  $('owners-table').tBodies[0].replaceChildren(...rows.map((r) => {
    const keyless = r.owner === null;
    const idle = !r.queued && !r.running;
    return h('tr', {
      'data-owner': keyless ? '' : r.owner,
      'data-keyless': keyless ? 'true' : 'false',
      'data-idle': idle ? 'true' : 'false',
    },
    h('th', { scope: 'row', class: 'owner' }, keyless ? '(no key)' : r.owner),
    h('td', { class: 'queued num' }, count(r.queued)),
    h('td', { class: 'running num' }, count(r.running)),
    h('td', { class: 'weight num' }, optional(r.weight)),
    h('td', { class: 'max-queued num' }, optional(r.max_queued)));
  }));
}

function sortedJobs() {
  // ULIDs: string order is creation order
  return [...state.jobs.values()].sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
}

const pending = new Set();  // "id:action" while the request is out

function durationTicker(job, cell) {
  if (job.state === 'queued') {
    const since = job.enqueued_at ?? job.created_at;
    return (now) => { cell.textContent = `waiting ${span(now - since)}`; };
  }
  if (ACTIVE.has(job.state)) {
    const verb = job.state === 'loading' ? 'loading' : 'running';
    return isNum(job.started_at)
      ? (now) => { cell.textContent = `${verb} ${span(now - job.started_at)}`; }
      : null;
  }
  return null;
}

// a time from the job API (RFC 3339) or the dashboard (epoch seconds), as epoch seconds
function epoch(t) {
  if (isNum(t)) return t;
  if (typeof t !== 'string') return null;
  const ms = Date.parse(t);
  return Number.isFinite(ms) ? ms / 1000 : null;
}

// where a queued job stands, when its row carries it: how many start before it, and
// about when it starts (ticking, as the estimate is a moment, not a span)
function placeInLine(job, ticks) {
  if (job.state !== 'queued' || !isNum(job.position)) return null;
  const ahead = job.position === 0 ? 'next in line' : `${plural(job.position, 'job')} ahead`;
  const place = h('small', { class: 'place', 'data-position': String(job.position) }, ahead);
  const at = epoch(job.estimated_start);
  if (at !== null) {
    place.title = `estimated start ${clock(at)}`;
    ticks.push((now) => {
      place.textContent = `${ahead} · ${at > now ? `starts in ~${span(at - now)}` : 'starts soon'}`;
    });
  }
  return place;
}

function endedDuration(job) {
  if (isNum(job.started_at) && isNum(job.finished_at)) {
    return preciseSpan(job.finished_at - job.started_at);
  }
  return isNum(job.finished_at) ? 'never ran' : '—';
}

function jobRow(job, withActions, ticks) {
  const tr = h('tr', { 'data-job-id': job.id, 'data-state': job.state });
  const endpoint = typeof job.endpoint === 'string' ? job.endpoint.replace(/^\/api\//, '') : '';
  const meta = [shortId(job.id), endpoint, job.owner ? `by ${job.owner}` : '']
    .filter(Boolean).join(' · ');

  const duration = h('td', { class: 'duration' }, endedDuration(job));
  if (isNum(job.queue_ms)) duration.title = `queued ${preciseSpan(job.queue_ms / 1000)}`;
  const tickDuration = durationTicker(job, duration);
  if (tickDuration) ticks.push(tickDuration);

  const created = h('td', { class: 'created' });
  if (isNum(job.created_at)) {
    created.title = clock(job.created_at);
    ticks.push((now) => { created.textContent = ago(job.created_at, now); });
  } else {
    created.textContent = '—';
  }

  const error = h('td', { class: 'error' });
  if (job.error) {
    error.title = job.error;
    error.textContent = job.error.length > ERROR_CHARS
      ? `${job.error.slice(0, ERROR_CHARS - 1)}…` : job.error;
  }

  const attempts = isNum(job.max_attempts) ? `${job.attempts}/${job.max_attempts}` : String(job.attempts);
  // the row's own fields, else the place the latest summary gives for it
  const places = (state.summary && state.summary.places) || {};
  const place = isNum(job.position) ? job : { ...job, ...(places[job.id] || {}) };
  tr.append(
    h('td', { class: 'state' }, badge(job.state), placeInLine(place, ticks)),
    h('td', { class: 'model' }, h('span', null, job.model || '—'),
      h('small', { class: 'meta', title: job.id }, meta)),
    h('td', { class: 'priority num' }, String(job.priority ?? '—')),
    h('td', { class: 'ref' }, job.ref || '—'),
    h('td', { class: 'attempts num' }, attempts),
    h('td', { class: 'upstream' }, job.upstream || '—'),
    duration, created, error);

  if (withActions) {
    const cell = h('td', { class: 'actions' });
    const action = ACTIVE.has(job.state) ? 'cancel' : RETRYABLE.has(job.state) ? 'retry' : null;
    if (action) {
      const busy = pending.has(`${job.id}:${action}`);
      cell.append(h('button', {
        type: 'button',
        'data-action': action,
        class: action,
        title: `${action === 'cancel' ? 'Cancel' : 'Retry'} job ${job.id}`,
        disabled: busy,
        'aria-busy': busy ? 'true' : null,
      }, action === 'cancel' ? 'Cancel' : 'Retry'));
    }
    tr.append(cell);
  }
  return tr;
}

function renderJobs() {
  const jobs = sortedJobs();
  const withActions = canAct();
  const tbody = $('jobs-table').tBodies[0];
  const ticks = [];
  tickers.jobs = ticks;

  // rows are rebuilt on every job change: put keyboard focus back where it was
  const focused = document.activeElement;
  const focusRow = focused && tbody.contains(focused) && focused.closest('tr');
  const refocus = focusRow && focused.dataset.action
    ? [focusRow.dataset.jobId, focused.dataset.action] : null;

  $('jobs-empty').hidden = jobs.length > 0;
  $('jobs-table').hidden = jobs.length === 0;
  $('jobs-table').querySelector('.col-actions').hidden = !withActions;
  tbody.replaceChildren(...jobs.map((job) => jobRow(job, withActions, ticks)));

  if (refocus) {
    for (const button of tbody.querySelectorAll('button[data-action]')) {
      if (button.dataset.action === refocus[1] && button.closest('tr').dataset.jobId === refocus[0]) {
        button.focus();
      }
    }
  }
}

function swapFacts(swap, withUpstream) {
  const load = isNum(swap.load_ms) ? preciseSpan(swap.load_ms / 1000) : '?';
  const when = isNum(swap.started_at) ? clock(swap.started_at) : '?';
  const where = withUpstream && swap.upstream ? ` on ${swap.upstream}` : '';
  return `${swap.model}${where} · load ${load} · ${plural(swap.jobs || 0, 'job')} · ${when}`;
}

// the timeline's lanes: every upstream in configuration order, then any upstream that
// made a listed load but is no longer configured
function swapLanes(swaps) {
  const fleet = upstreams();
  const names = fleet.map((u) => u.name);
  const first = names.length ? names[0] : '';
  const laneOf = (swap) => (typeof swap.upstream === 'string' && swap.upstream) || first;
  for (const swap of swaps) if (!names.includes(laneOf(swap))) names.push(laneOf(swap));
  const chat = new Map(fleet.map((u) => [u.name, u.chat ? u.chat.key : null]));
  return names.map((name) => ({
    name,
    residentKey: chat.get(name) ?? null,
    swaps: swaps.filter((swap) => laneOf(swap) === name),
  }));
}

function renderSwaps() {
  const s = state.summary;
  const swaps = ((s && s.swaps) || []).filter((w) => isNum(w.started_at))
    .sort((a, b) => a.started_at - b.started_at);
  const ticks = [];
  tickers.swaps = ticks;
  $('swaps-empty').hidden = swaps.length > 0;
  $('swap-chart').hidden = swaps.length === 0;
  $('swap-from').textContent = swaps.length ? clock(swaps[0].started_at) : '';
  if (!swaps.length) {
    $('swap-timeline').replaceChildren();
    $('swap-list').replaceChildren();
    return;
  }

  // every lane runs from the first listed load to now, so one axis serves them all
  const from = swaps[0].started_at;
  const lanes = swapLanes(swaps);
  const several = lanes.length > 1;
  const rows = [];
  const items = [];
  for (const lane of lanes) {
    const row = h('div', { class: 'timeline' });
    const segments = [];
    if (!lane.swaps.length) {
      const idle = h('div', { class: 'swap-gap' });
      idle.style.flexGrow = '1';
      segments.push(idle);
    } else if (lane.swaps[0].started_at > from) {
      const before = h('div', { class: 'swap-gap' });
      before.style.flexGrow = String(lane.swaps[0].started_at - from);
      segments.push(before);
    }
    lane.swaps.forEach((swap, i) => {
      const next = lane.swaps[i + 1];
      const last = !next;
      const colour = hue(swap.model);
      const seg = h('div', { class: 'swap', 'data-model': swap.model, 'data-upstream': lane.name });
      seg.style.setProperty('--hue', String(colour));
      const loadPart = h('span', { class: 'swap-load' });
      seg.append(loadPart, h('span', { class: 'swap-label' }, swap.model));

      const facts = swapFacts(swap, several);
      const stayed = h('span', { class: 'stayed' });
      const item = h('li', { class: 'swap-item', 'data-model': swap.model, 'data-upstream': lane.name });
      item.style.setProperty('--hue', String(colour));
      item.append(h('span', { class: 'swatch', 'aria-hidden': 'true' }),
        h('span', { class: 'swap-facts' }, facts), ' ', stayed);
      if (last && swap.key === lane.residentKey) item.append(' ', h('span', { class: 'tag' }, 'loaded now'));

      // segments share the line by flex-grow, so only the open-ended last one changes
      const size = (now) => {
        const end = next ? next.started_at : Math.max(now, swap.started_at);
        const whole = Math.max(0.001, end - swap.started_at);
        const loading = isNum(swap.loaded_at) ? swap.loaded_at - swap.started_at : whole;
        seg.style.flexGrow = String(whole);
        loadPart.style.width = `${Math.min(1, Math.max(0, loading / whole)) * 100}%`;
        const resident = isNum(swap.loaded_at) ? end - swap.loaded_at : 0;
        const text = `${last ? 'loaded for' : 'stayed'} ${span(resident)}`;
        seg.title = `${facts} · ${text}`;
        stayed.textContent = `· ${text}`;
      };
      if (last) ticks.push(size);
      else size(0);
      segments.push(seg);
      items.push([swap.started_at, items.length, item]);
    });
    row.append(...segments);
    rows.push(several
      ? h('div', { class: 'swap-lane', 'data-upstream': lane.name },
        h('span', { class: 'lane-name' }, lane.name), row)
      : row);
  }
  $('swap-timeline').replaceChildren(...rows);
  // the list: newest load first, whichever upstream made it
  items.sort((a, b) => b[0] - a[0] || b[1] - a[1]);
  $('swap-list').replaceChildren(...items.map(([, , item]) => item));
}

const renderers = {
  header: renderHeader,
  headline: renderHeadline,
  resident: renderResident,
  running: renderRunning,
  waiting: renderWaiting,
  owners: renderOwners,
  jobs: renderJobs,
  swaps: renderSwaps,
};

// ---- state changes ----------------------------------------------------------------------

function setSummary(summary) {
  if (!summary || typeof summary !== 'object') return;
  state.summary = summary;
  // every age on the page is measured on the server's clock, not this browser's
  if (isNum(summary.now)) state.offset = summary.now - Date.now() / 1000;
  invalidate('headline', 'resident', 'running', 'waiting', 'owners', 'swaps', 'jobs');
}

function trimJobs() {
  if (state.jobs.size <= MAX_JOBS) return;
  for (const job of sortedJobs().slice(MAX_JOBS)) state.jobs.delete(job.id);
}

function upsertJob(job) {
  if (!job || typeof job.id !== 'string') return;
  state.jobs.set(job.id, job);
  trimJobs();
  invalidate('jobs');
}

function replaceAll(summary, jobs) {
  state.jobs.clear();
  for (const job of jobs || []) {
    if (job && typeof job.id === 'string') state.jobs.set(job.id, job);
  }
  trimJobs();
  setSummary(summary);
  invalidate('jobs');
}

function clearState() {
  state.you = null;
  state.summary = null;
  state.jobs.clear();
  invalidateAll();
}

// ---- notices ----------------------------------------------------------------------------

let noticeTimer = 0;

function notify(text, kind = 'ok') {
  $('notice-text').textContent = text;
  $('notice').dataset.kind = kind;
  $('notice').hidden = false;
  clearTimeout(noticeTimer);
  // successes fade on their own; an error stays until someone has read it
  noticeTimer = kind === 'ok' ? setTimeout(dismissNotice, NOTICE_MS) : 0;
}

function dismissNotice() {
  clearTimeout(noticeTimer);
  $('notice').hidden = true;
  $('notice-text').textContent = '';
}

// ---- talking to the server --------------------------------------------------------------

async function readJson(response) {
  try { return await response.json(); } catch { return null; }
}

function errorText(body) {
  const e = body && body.error;
  if (typeof e === 'string') return e;
  // the OpenAI-shaped routes nest the message
  if (e && typeof e.message === 'string') return e.message;
  return '';
}

function statusLine(response) {
  return `${response.status} ${STATUS_TEXT[response.status] || response.statusText || 'Error'}`;
}

async function call(method, path) {
  const sentKey = storedKey();
  let response;
  try {
    response = await fetch(path, { method, headers: authHeaders(sentKey), cache: 'no-store' });
  } catch (err) {
    return { ok: false, message: `could not reach foreman (${err.message})` };
  }
  const body = await readJson(response);
  if (response.ok) return { ok: true, body };
  if (response.status === 401 && sentKey && sentKey === storedKey()) keyRejected();
  return {
    ok: false,
    message: `${statusLine(response)} — ${errorText(body) || 'no details'}`,
  };
}

async function jobAction(id, action) {
  const token = `${id}:${action}`;
  if (pending.has(token)) return;
  pending.add(token);
  invalidate('jobs');
  const result = await call('POST', `/jobs/${encodeURIComponent(id)}/${action}`);
  pending.delete(token);
  invalidate('jobs');
  // the reply's job is the job API's shape (ISO times); the stream brings the row's
  // new state in the dashboard's shape, so the reply is not applied here
  if (result.ok) {
    notify(action === 'cancel' ? `Cancelled job ${id}` : `Retried job ${id}: it is queued again`);
  } else {
    notify(`Could not ${action} job ${id}: ${result.message}`, 'error');
  }
}

let purgeArmed = 0;

function disarmPurge() {
  clearTimeout(purgeArmed);
  purgeArmed = 0;
  const button = $('purge');
  button.textContent = 'Purge finished jobs';
  delete button.dataset.confirm;
}

async function onPurgeClick() {
  const button = $('purge');
  if (!purgeArmed) {
    button.textContent = 'Confirm purge?';
    button.dataset.confirm = 'true';
    purgeArmed = setTimeout(disarmPurge, PURGE_CONFIRM_MS);
    return;
  }
  disarmPurge();
  button.disabled = true;
  try {
    const result = await call('DELETE', '/jobs?older_than=0');
    if (!result.ok) {
      notify(`Could not purge: ${result.message}`, 'error');
      return;
    }
    const n = isNum(result.body && result.body.purged) ? result.body.purged : 0;
    // purged jobs raise no job events, so the table is refetched whole
    const fresh = await call('GET', '/queue');
    if (fresh.ok && fresh.body) {
      if (fresh.body.you) state.you = fresh.body.you;
      replaceAll(fresh.body.summary, fresh.body.jobs);
      invalidate('header');
      notify(`Purged ${plural(n, 'finished job')}`);
    } else {
      notify(`Purged ${plural(n, 'finished job')}, but the list could not be refreshed: ${fresh.message}`, 'error');
    }
  } finally {
    button.disabled = false;
  }
}

// ---- the event stream -------------------------------------------------------------------

// Splits a text/event-stream into events. Lines may end in \n, \r\n or \r, and a chunk
// may stop anywhere, even between the \r and \n of one line ending.
class EventParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = '';
    this.name = '';
    this.data = [];
  }

  push(text) {
    this.buffer += text;
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== '\n' && c !== '\r') continue;
      if (c === '\r' && i + 1 === this.buffer.length) break;  // maybe half of \r\n
      this.line(this.buffer.slice(start, i));
      if (c === '\r' && this.buffer[i + 1] === '\n') i++;
      start = i + 1;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === '') {
      if (this.data.length) this.onEvent(this.name || 'message', this.data.join('\n'));
      this.name = '';
      this.data = [];
      return;
    }
    if (line.startsWith(':')) return;  // keep-alive comment
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.name = value;
    else if (field === 'data') this.data.push(value);
  }
}

function onEvent(name, text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    console.warn(`foreman: unreadable ${name} event`);
    return;
  }
  if (name === 'hello') {
    state.you = data;
    invalidate('header', 'owners', 'jobs');
  } else if (name === 'snapshot') {
    replaceAll(data.summary, data.jobs);
    retries = 0;  // a full snapshot means the connection really works
  } else if (name === 'job') {
    upsertJob(data);
  } else if (name === 'summary') {
    setSummary(data);
  }
}

let stream = null;      // AbortController of the current stream
let retryTimer = 0;
let retryAt = 0;
let retries = 0;
let retryReason = '';

function setConn(connState, text) {
  const conn = $('conn');
  conn.dataset.state = connState;
  conn.textContent = text;
}

function stopStream() {
  if (stream) stream.abort();
  stream = null;
  clearTimeout(retryTimer);
  retryTimer = 0;
}

function connect() {
  stopStream();
  const ctrl = new AbortController();
  stream = ctrl;
  openStream(ctrl).catch((err) => {
    if (!ctrl.signal.aborted) retryLater(`Live updates lost (${err.message})`);
  });
}

async function openStream(ctrl) {
  const sentKey = storedKey();
  setConn('connecting', 'Connecting…');
  let response;
  try {
    response = await fetch('/queue/events', {
      headers: { ...authHeaders(sentKey), Accept: 'text/event-stream' },
      signal: ctrl.signal,
      cache: 'no-store',
    });
  } catch (err) {
    if (!ctrl.signal.aborted) retryLater('Cannot reach foreman');
    return;
  }
  if (response.status === 401) {
    if (sentKey) keyRejected();
    else needKey('This foreman needs an API key to show its queue.');
    return;
  }
  if (!response.ok || !response.body) {
    const body = await readJson(response);
    if (!ctrl.signal.aborted) {
      retryLater(`${statusLine(response)} — ${errorText(body) || 'the live stream was refused'}`);
    }
    return;
  }
  $('key-form').hidden = true;
  setConn('live', 'Live');
  invalidate('header');

  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new EventParser(onEvent);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(decoder.decode(value, { stream: true }));
    }
  } catch {
    // a dropped connection: handled below like a clean end
  }
  if (!ctrl.signal.aborted) retryLater('Live updates lost');
}

function retryLater(reason) {
  stopStream();
  const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** Math.min(retries, 10));
  retries += 1;
  retryReason = reason;
  retryAt = Date.now() + delay;
  retryTimer = setTimeout(connect, delay);
  showRetry();
}

function showRetry() {
  const secs = Math.max(1, Math.ceil((retryAt - Date.now()) / 1000));
  setConn('lost', `${retryReason} — reconnecting in ${secs} s…`);
}

function needKey(message) {
  stopStream();
  clearState();
  setConn('auth', 'API key needed');
  $('key-message').textContent = message;
  $('key-form').hidden = false;
  invalidate('header');
  $('key').focus();
}

function keyRejected() {
  dropKey();
  needKey('That key was not accepted');
}

// ---- wiring -----------------------------------------------------------------------------

function onKeySubmit(event) {
  event.preventDefault();
  const input = $('key');
  const key = input.value.trim();
  input.value = '';
  if (!key) {
    $('key-message').textContent = 'Enter a key first.';
    input.focus();
    return;
  }
  // a header value must be visible ASCII; anything else would make fetch throw
  if (!/^[\x21-\x7e]+$/.test(key)) {
    $('key-message').textContent = 'That does not look like a foreman key (unexpected characters).';
    input.focus();
    return;
  }
  storeKey(key);
  retries = 0;
  connect();
}

function onForgetKey() {
  dropKey();
  clearState();
  retries = 0;
  connect();
}

function onJobsClick(event) {
  const button = event.target.closest('button[data-action]');
  const row = button && button.closest('tr[data-job-id]');
  if (!row || !canAct()) return;
  const action = button.dataset.action;
  if (action === 'cancel' || action === 'retry') jobAction(row.dataset.jobId, action);
}

function everySecond() {
  if (retryTimer) showRetry();
  runTickers();
}

function start() {
  $('key-form').addEventListener('submit', onKeySubmit);
  $('forget-key').addEventListener('click', onForgetKey);
  $('notice-close').addEventListener('click', dismissNotice);
  $('purge').addEventListener('click', onPurgeClick);
  $('jobs-table').tBodies[0].addEventListener('click', onJobsClick);
  // back online: no point sitting out the rest of a backoff
  window.addEventListener('online', () => { if (retryTimer) connect(); });
  setInterval(everySecond, 1000);
  invalidateAll();
  connect();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
