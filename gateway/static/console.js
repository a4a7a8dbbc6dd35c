// The agent console: sign in with an agent token, a live inbox, one timeline per
// conversation across every channel, actions on the agent API, and the screen pop of a call.
//
// Rules kept throughout: the token lives in sessionStorage (this tab) and travels only in
// the Authorization header, never in a URL; the event stream is read with fetch() and a
// streaming body reader (EventSource cannot send that header), resuming with Last-Event-ID;
// text from customers (and everything else from the server) is inserted as text nodes,
// never parsed as HTML. Nothing polls.
'use strict';

(() => {
  const TOKEN_KEY = 'gateway.agent-token';
  const STALE_STREAM_MS = 45000;  // three missed heartbeats: reconnect
  const MESSAGING = ['sms', 'whatsapp', 'whatsapp-user', 'email', 'xmpp', 'web'];

  const state = {
    token: null,
    me: null,
    inbox: new Map(),        // conversation id -> inbox item
    nextCursor: null,
    selected: null,          // conversation id on screen
    view: null,              // its timeline view
    lastEventId: null,
    stream: null,            // AbortController of the running stream
    connectedOnce: false,
    refreshTimer: null,
    inboxTimer: null,
    popCall: null,
  };

  const $ = (id) => document.getElementById(id);

  // Build an element; string children become text nodes (never HTML).
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function clear(node) { node.replaceChildren(); return node; }

  // Replace a node's children; arrays are flattened, strings become text, nulls are skipped.
  function fill(node, ...children) {
    node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
    return node;
  }

  const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'medium' });
  const shortTime = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const dayFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });

  function localTime(iso, format) {
    if (!iso) return '';
    const when = new Date(iso);
    if (Number.isNaN(when.getTime())) return String(iso);
    return el('time', { datetime: iso, title: when.toISOString() }, (format || timeFormat).format(when));
  }

  function inboxTime(iso) {
    const when = new Date(iso);
    const today = new Date().toDateString() === when.toDateString();
    return localTime(iso, today ? shortTime : timeFormat);
  }

  function duration(seconds) {
    const s = Math.round(Number(seconds) || 0);
    return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
  }

  function age(iso) {
    const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (seconds < 90) return `${Math.round(seconds)} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} days ago`;
  }

  // ---- the API -----------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${state.token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const response = await fetch(path, {
      method, headers, cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (response.status === 401) {
      signOut('The gateway did not accept your token; sign in again.');
      throw new ApiError(401, 'signed out');
    }
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.error) || `HTTP ${response.status}`);
    }
    return data;
  }

  // ---- sign in / out -----------------------------------------------------------------

  async function signIn(token) {
    state.token = token;
    try {
      state.me = await api('GET', '/api/v1/me');
    } catch (err) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      $('signin-error').textContent = err.status === 401
        ? 'That token is not an agent token of this gateway.'
        : `Could not sign in: ${err.message}`;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token').value = '';
    $('signin-error').textContent = '';
    $('signin').hidden = true;
    $('nav').hidden = false;
    $('who').textContent = state.me.kind === 'agent'
      ? `${state.me.name} (${state.me.agent_id})` : 'service token';
    showWorkspace();
    loadInbox();
    runStream();
  }

  function signOut(message) {
    state.token = null;
    state.me = null;
    sessionStorage.removeItem(TOKEN_KEY);
    if (state.stream) state.stream.abort();
    state.stream = null;
    state.lastEventId = null;
    state.connectedOnce = false;
    state.inbox.clear();
    state.selected = null;
    clear($('inbox'));
    clear($('conversation')).hidden = true;
    closePop();
    $('workspace').hidden = true;
    $('reports').hidden = true;
    $('nav').hidden = true;
    $('signin').hidden = false;
    $('signin-error').textContent = message || '';
    setLive(false);
  }

  function showWorkspace() {
    $('reports').hidden = true;
    $('workspace').hidden = false;
  }

  // ---- the inbox ---------------------------------------------------------------------

  function inboxQuery(cursor) {
    const params = new URLSearchParams({ status: $('f-status').value, limit: '50' });
    if ($('f-channel').value) params.set('channel', $('f-channel').value);
    if (cursor) params.set('cursor', cursor);
    return `/api/v1/conversations?${params}`;
  }

  async function loadInbox(more) {
    let page;
    try {
      page = await api('GET', inboxQuery(more ? state.nextCursor : null));
    } catch (err) {
      if (err.status !== 401) showInboxError(err.message);
      return;
    }
    if (!more) state.inbox.clear();
    for (const item of page.items) state.inbox.set(item.id, item);
    state.nextCursor = page.next_cursor;
    renderInbox();
  }

  // A conversation this page does not hold yet: fetch the first page again and merge it.
  function refreshInboxSoon() {
    clearTimeout(state.inboxTimer);
    state.inboxTimer = setTimeout(async () => {
      try {
        const page = await api('GET', inboxQuery(null));
        for (const item of page.items) state.inbox.set(item.id, item);
        if (state.nextCursor === null) state.nextCursor = page.next_cursor;
        renderInbox();
      } catch (_) { /* shown on the next full load */ }
    }, 150);
  }

  function showInboxError(message) {
    clear($('inbox')).append(el('li', { class: 'error' }, `Inbox unavailable: ${message}`));
  }

  function matchesFilter(item) {
    const status = $('f-status').value;
    const channel = $('f-channel').value;
    return (status === 'all' || item.status === status)
      && (!channel || (item.channels || []).includes(channel));
  }

  function renderInbox() {
    const items = [...state.inbox.values()].filter(matchesFilter)
      .sort((a, b) => (b.last_at || '').localeCompare(a.last_at || '') || b.id.localeCompare(a.id));
    const list = clear($('inbox'));
    for (const item of items) {
      const who = item.customer_name || item.customer_address || item.customer_id;
      list.append(el('li', { class: item.id === state.selected ? 'selected' : null,
                             dataset: { id: item.id } },
        el('button', { type: 'button', onclick: () => selectConversation(item.id) },
          el('div', { class: 'row' },
            el('span', { class: 'name' }, who),
            el('span', { class: 'when' }, inboxTime(item.last_at))),
          el('div', { class: 'row' },
            el('span', { class: 'last' }, item.last_text || ''),
            item.waiting ? el('span', { class: 'chip waiting', title: 'waiting for a reply' },
              String(item.waiting)) : null),
          el('div', {}, (item.channels || []).map((c) => el('span', { class: 'chip' }, c)),
            item.status === 'closed' ? el('span', { class: 'chip' }, 'closed') : null,
            item.assigned_agent_id ? el('span', { class: 'chip' }, `→ ${item.assigned_agent_id}`) : null))));
    }
    $('inbox-empty').hidden = items.length > 0;
    $('more').hidden = !state.nextCursor;
  }

  function touchInbox(conversationId, change) {
    const item = state.inbox.get(conversationId);
    if (!item) { refreshInboxSoon(); return; }
    Object.assign(item, change(item));
    renderInbox();
  }

  // ---- one conversation --------------------------------------------------------------

  async function selectConversation(id) {
    if (state.selected !== id) {
      state.selected = id;
      state.view = null;
      buildConversation(id);
    }
    document.body.classList.add('viewing');
    renderInbox();
    await refreshConversation();
  }

  function refreshConversationSoon() {
    clearTimeout(state.refreshTimer);
    state.refreshTimer = setTimeout(refreshConversation, 100);
  }

  async function refreshConversation() {
    const id = state.selected;
    if (!id) return;
    try {
      const view = await api('GET', `/api/v1/conversations/${encodeURIComponent(id)}/timeline`);
      if (state.selected !== id) return;
      state.view = view;
      renderConversation(view);
    } catch (err) {
      if (err.status !== 401 && state.selected === id) notice(`Could not load: ${err.message}`, true);
    }
  }

  // The parts that stay while the conversation is open (so a half-typed reply survives
  // live updates); renderConversation fills the rest.
  function buildConversation(id) {
    const pane = clear($('conversation'));
    pane.hidden = false;
    pane.append(
      el('div', { class: 'conv-head' },
        el('button', { type: 'button', class: 'back', onclick: backToInbox }, '← Inbox'),
        el('h2', { id: 'conv-title' }, id)),
      el('div', { id: 'conv-info' }),
      el('h3', {}, 'Timeline'),
      el('ol', { id: 'timeline', class: 'timeline' }),
      el('div', { class: 'actions' },
        el('form', { id: 'reply-form', onsubmit: onReply },
          el('textarea', { id: 'reply-text', placeholder: 'Reply to the customer', maxlength: '4096',
                           'aria-label': 'Reply' }),
          el('button', { type: 'submit', class: 'primary', id: 'reply-send' }, 'Send')),
        el('form', { id: 'code-form', onsubmit: onSendCode },
          el('select', { id: 'code-address', 'aria-label': 'Send a code to' }),
          el('button', { type: 'submit', id: 'code-send' }, 'Send code')),
        el('form', { id: 'check-form', onsubmit: onCheckCode },
          el('input', { id: 'check-code', inputmode: 'numeric', autocomplete: 'off',
                        placeholder: 'code the caller reads out', 'aria-label': 'Code' }),
          el('select', { id: 'check-leg', 'aria-label': 'Call leg' }),
          el('button', { type: 'submit', id: 'check-send' }, 'Check code')),
        el('div', { class: 'row' },
          el('button', { type: 'button', id: 'escalate-dial-in', onclick: () => onEscalate('dial-in') },
            'Send dial-in PIN'),
          el('button', { type: 'button', id: 'escalate-callback', onclick: () => onEscalate('callback') },
            'Call back'),
          el('button', { type: 'button', id: 'close-conversation', onclick: onClose }, 'Close')),
        el('p', { id: 'action-notice', class: 'notice', role: 'status' })));
  }

  function backToInbox() {
    document.body.classList.remove('viewing');
  }

  function notice(text, bad) {
    const node = $('action-notice');
    if (!node) return;
    node.textContent = text;
    node.classList.toggle('error', Boolean(bad));
  }

  function verificationBadge(leg, id) {
    const v = leg.verification;
    if (v) {
      return el('div', { class: 'badge verified', id },
        el('strong', {}, v.summary || `verified by ${v.method}`),
        ` · ${v.address} · expires `, localTime(v.expires_at));
    }
    return el('div', { class: 'badge unverified', id },
      el('strong', {}, leg.verification_explanation || leg.verification_reason || 'not verified'),
      leg.verification_expired_at ? [' · expired ', localTime(leg.verification_expired_at)] : null);
  }

  function disclosureChip(level, id) {
    if (!level) return null;
    return el('span', { class: `chip ${level}`, id, title: level === 'limited'
      ? 'this leg is not verified: the caller sees no replies and nothing after a verification'
      : 'this leg carries a verification' }, `disclosure: ${level}`);
  }

  function renderConversation(view) {
    const customer = view.customer || { addresses: [] };
    $('conv-title').textContent = customer.display_name
      || (customer.addresses[0] && customer.addresses[0].address) || view.customer_id;
    const current = view.legs[view.legs.length - 1];
    fill($('conv-info'),
      el('p', { class: 'ids' }, `${view.id} · ${view.status} · opened `, localTime(view.opened_at),
        view.assigned_agent_id ? ` · assigned to ${view.assigned_agent_id}` : ''),
      current ? [verificationBadge(current, 'badge'),
        el('div', {}, el('span', { class: 'chip' }, `${current.channel} leg`),
          disclosureChip(current.disclosure, 'disclosure'))] : null,
      el('h3', {}, 'Addresses'),
      el('ul', { class: 'addresses' }, customer.addresses.map((a) =>
        el('li', {}, a.address, ' ', el('span', { class: `chip ${a.evidence === 'proved' ? 'full' : ''}` },
          a.evidence), a.detail ? el('span', { class: 'ids' }, ` ${a.detail}`) : null))),
      el('h3', {}, 'Legs'),
      el('ul', { class: 'legs' }, view.legs.map((leg) =>
        el('li', {}, el('span', { class: 'chip' }, leg.channel), `${leg.address || ''} · ${leg.binding} · `,
          localTime(leg.started_at), ' ', disclosureChip(leg.disclosure), ' ',
          leg.verification ? el('span', { class: 'chip full' }, leg.verification.summary || 'verified')
            : el('span', { class: 'chip' }, leg.verification_reason || 'not verified'),
          leg.agent_id ? ` · agent ${leg.agent_id}` : ''))));
    const list = clear($('timeline'));
    for (const item of view.timeline) list.append(timelineItem(item));
    updateActions(view);
  }

  function timelineItem(item) {
    if (item.type === 'escalation') {
      return el('li', { class: 'event' },
        el('div', { class: 'meta' }, localTime(item.at), ' · escalation'),
        el('div', { class: 'text' },
          `${item.mode === 'callback' ? `Callback to ${item.target_address || 'the customer'}` : 'Dial-in PIN issued'}`
          + `${item.carries_verification ? ', carries the verification' : ', no verification to carry'}`,
          item.used_at ? [' · used ', localTime(item.used_at)] : [' · expires ', localTime(item.expires_at)]));
    }
    if (item.type === 'merge') {
      return el('li', { class: 'event' },
        el('div', { class: 'meta' }, localTime(item.at), ' · merge'),
        el('div', { class: 'text' }, `Customers merged (${item.merged_id} into ${item.survivor_id})`
          + `${item.agent ? ` by ${item.agent}` : ''}`, item.undone_at ? [' · undone ', localTime(item.undone_at)] : null));
    }
    return entryItem(item);
  }

  function entryItem(entry) {
    const data = entry.data || {};
    const classes = [entry.direction, entry.kind, entry.type === 'code' ? 'code' : ''].join(' ');
    const meta = [localTime(entry.at), ` · ${entry.channel} · `,
      entry.direction === 'in' ? '← ' : entry.direction === 'out' ? '→ ' : '', entry.author];
    if (entry.type === 'code') meta.push(' · code');
    if (entry.kind === 'call' && data.duration_seconds !== undefined) {
      meta.push(` · ${duration(data.duration_seconds)}`);
    }
    if (entry.kind === 'call' && data.agent_id) meta.push(` · agent ${data.agent_id}`);
    const delivery = entry.delivery;
    const text = entry.withheld || entry.text === null
      ? el('div', { class: 'text withheld' }, '[withheld: not disclosed on this leg]')
      : el('div', { class: 'text' }, entry.text);
    return el('li', { class: classes, dataset: { entry: String(entry.id) } },
      el('div', { class: 'meta' }, meta,
        delivery ? el('span', { class: `status ${delivery.status}`,
                                title: delivery.error || '' }, delivery.status + (delivery.error ? `: ${delivery.error}` : '')) : null),
      text);
  }

  function setOptions(select, options, preferred) {
    const keep = select.value;
    clear(select);
    for (const [value, label] of options) select.append(el('option', { value }, label));
    const values = options.map(([v]) => v);
    if (values.includes(keep)) select.value = keep;
    else if (preferred && values.includes(preferred)) select.value = preferred;
  }

  function pendingChallenge(view) {
    return (view.challenges || []).find((c) => c.status === 'pending'
      && new Date(c.expires_at).getTime() > Date.now());
  }

  function updateActions(view) {
    const open = view.status === 'open';
    const addresses = (view.customer ? view.customer.addresses : [])
      .filter((a) => MESSAGING.includes(a.address.split(':')[0]));
    const replyLeg = view.legs.find((leg) => leg.id === view.reply_leg_id);
    setOptions($('code-address'), addresses.map((a) => [a.address, `to ${a.address}`]),
      replyLeg && replyLeg.address);
    const calls = view.legs.filter((leg) => leg.channel === 'voice');
    setOptions($('check-leg'), calls.map((leg) => [leg.id, `call ${localTime(leg.started_at).textContent || leg.id}`]),
      calls.length ? calls[calls.length - 1].id : null);
    const challenge = pendingChallenge(view);
    $('reply-send').disabled = !open || !view.reply_leg_id;
    $('reply-text').placeholder = view.reply_leg_id
      ? `Reply on ${replyLeg ? replyLeg.channel : 'the active leg'}` : 'No messaging leg to reply on';
    $('code-send').disabled = !open || addresses.length === 0;
    $('check-send').disabled = !challenge || calls.length === 0;
    $('check-code').placeholder = challenge
      ? `code sent to ${challenge.address}` : 'send a code first';
    $('escalate-dial-in').disabled = !open;
    $('escalate-callback').disabled = !open;
    $('close-conversation').disabled = !open;
  }

  async function act(run, done) {
    const id = state.selected;
    try {
      const result = await run(id);
      notice(done(result));
    } catch (err) {
      if (err.status !== 401) notice(err.message, true);
    }
    if (state.selected === id) refreshConversation();
  }

  function onReply(event) {
    event.preventDefault();
    const text = $('reply-text').value;
    if (!text.trim()) return;
    act((id) => api('POST', `/api/v1/conversations/${encodeURIComponent(id)}/messages`, { text }),
      (r) => { $('reply-text').value = ''; return `Reply queued on ${r.channel} to ${r.to}.`; });
  }

  function onSendCode(event) {
    event.preventDefault();
    const address = $('code-address').value || undefined;
    act((id) => api('POST', `/api/v1/conversations/${encodeURIComponent(id)}/verifications`, { address }),
      (r) => `Code sent to ${r.address}; it expires ${new Date(r.expires_at).toLocaleTimeString()}.`);
  }

  function onCheckCode(event) {
    event.preventDefault();
    const challenge = state.view && pendingChallenge(state.view);
    const code = $('check-code').value.replace(/\s+/g, '');
    if (!challenge || !code) return;
    act((id) => api('POST', `/api/v1/conversations/${encodeURIComponent(id)}/verifications/`
      + `${encodeURIComponent(challenge.id)}/check`, { code, leg_id: $('check-leg').value }),
    (r) => {
      $('check-code').value = '';
      const outcome = r && r.outcome;
      if (outcome && outcome !== 'passed') return `The code is not right (${outcome}).`;
      if (state.popCall && state.popCall.leg_id === $('check-leg').value) reloadPop();
      return 'Code right: the call is verified.';
    });
  }

  function onEscalate(mode) {
    act((id) => api('POST', `/api/v1/conversations/${encodeURIComponent(id)}/escalations`,
      { channel: 'voice', mode }),
    (r) => (mode === 'dial-in' ? `Dial-in PIN sent to ${r.sent_to}.` : `Calling the customer back on ${r.calling}.`));
  }

  function onClose() {
    act((id) => api('POST', `/api/v1/conversations/${encodeURIComponent(id)}/close`),
      () => 'Conversation closed.');
  }

  // ---- screen pop ----------------------------------------------------------------------

  function contextPath(url) {
    // The bundle is fetched from this origin whatever host the link names (a public URL
    // behind a tunnel); only context links are followed.
    let parsed;
    try { parsed = new URL(url, location.href); } catch (_) { return null; }
    if (!parsed.pathname.startsWith('/api/v1/contexts/')) {
      const token = url.trim();
      return /^[A-Za-z0-9_-]{20,100}$/.test(token) ? `/api/v1/contexts/${token}` : null;
    }
    return parsed.pathname;
  }

  async function openContext(url, call) {
    const path = contextPath(url);
    const pop = $('pop');
    if (!path) {
      pop.hidden = false;
      clear(pop).append(el('p', { class: 'error' }, 'That is not a context link.'));
      return;
    }
    state.popCall = { ...(call || {}), path };
    let bundle;
    try {
      const response = await fetch(path, { cache: 'no-store' });
      bundle = await response.json();
      if (!response.ok) throw new Error(bundle.error || `HTTP ${response.status}`);
    } catch (err) {
      pop.hidden = false;
      clear(pop).append(el('p', { class: 'error' }, `Could not open the context: ${err.message}`),
        el('button', { type: 'button', onclick: closePop }, 'Dismiss'));
      return;
    }
    renderPop(bundle, call);
  }

  function reloadPop() {
    if (state.popCall) openContext(state.popCall.path, state.popCall);
  }

  function renderPop(bundle, call) {
    const pop = $('pop');
    const customer = bundle.customer || { addresses: [] };
    // The bundle says its disclosure level; a bundle from before that field existed is
    // read by the default policy (full exactly when the leg carries a verification).
    const disclosure = bundle.disclosure || (bundle.verification ? 'full' : 'limited');
    const leg = {
      verification: bundle.verification, verification_reason: bundle.verification_reason,
      verification_explanation: bundle.verification_explanation,
      verification_expired_at: bundle.verification_expired_at,
    };
    const entries = (bundle.transcript || []).slice(-30);
    pop.dataset.conversation = bundle.conversation_id;
    pop.dataset.callRef = (call && call.call_ref) || '';
    clear(pop).append(
      el('h2', { id: 'pop-title' }, call && !call.ended ? 'Incoming call' : 'Call context',
        call && call.ended ? ' (ended)' : ''),
      el('p', {}, el('strong', { id: 'pop-customer' }, customer.display_name
        || (bundle.leg && bundle.leg.address) || customer.id),
      bundle.leg && customer.display_name ? ` · ${bundle.leg.channel} from ${bundle.leg.address}` : ''),
      verificationBadge(leg, 'pop-badge'),
      el('div', {}, disclosureChip(disclosure, 'pop-disclosure'),
        el('span', { class: 'chip' }, `${(bundle.legs || []).length} legs`),
        (bundle.earlier_conversations || []).length
          ? el('span', { class: 'chip' }, `${bundle.earlier_conversations.length} earlier conversations`) : null),
      el('ul', { class: 'addresses' }, customer.addresses.map((a) =>
        el('li', {}, a.address, ' ', el('span', { class: 'chip' }, a.evidence)))),
      el('ol', { class: 'timeline', id: 'pop-timeline' }, entries.map((e) => entryItem(e))),
      el('div', { class: 'row' },
        el('button', { type: 'button', class: 'primary', id: 'pop-open',
                       onclick: () => selectConversation(bundle.conversation_id) }, 'Open conversation'),
        el('button', { type: 'button', id: 'pop-dismiss', onclick: closePop }, 'Dismiss')));
    pop.hidden = false;
  }

  function closePop() {
    state.popCall = null;
    const pop = $('pop');
    pop.hidden = true;
    clear(pop);
  }

  // ---- the event stream ----------------------------------------------------------------

  function setLive(on) {
    const node = $('live');
    node.dataset.state = on ? 'on' : 'off';
    node.textContent = on ? 'live' : 'offline';
  }

  const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

  async function runStream() {
    let delay = 1000;
    while (state.token) {
      const controller = new AbortController();
      state.stream = controller;
      let watchdog = null;
      const alive = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => controller.abort(), STALE_STREAM_MS);
      };
      try {
        const headers = { Authorization: `Bearer ${state.token}`, Accept: 'text/event-stream' };
        if (state.lastEventId) headers['Last-Event-ID'] = state.lastEventId;
        const response = await fetch('/api/v1/events', { headers, signal: controller.signal, cache: 'no-store' });
        if (response.status === 401) { signOut('The gateway did not accept your token; sign in again.'); return; }
        if (!response.ok || !response.body) throw new Error(`event stream: HTTP ${response.status}`);
        setLive(true);
        delay = 1000;
        if (state.connectedOnce) { loadInbox(); refreshConversationSoon(); }  // catch up
        state.connectedOnce = true;
        alive();
        await readEvents(response.body, alive, dispatch);
      } catch (_) {
        // dropped, aborted by the watchdog, or the gateway is away: reconnect below
      } finally {
        clearTimeout(watchdog);
      }
      if (state.stream !== controller || !state.token) return;  // signed out meanwhile
      setLive(false);
      await sleep(delay);
      delay = Math.min(delay * 2, 15000);
    }
  }

  // Server-Sent Events framing (the HTML standard's parser): fields until a blank line.
  async function readEvents(body, alive, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let event = { type: '', data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      alive();
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        let line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (event.id !== null) state.lastEventId = event.id;
          if (event.data.length) onEvent(event.type || 'message', event.data.join('\n'));
          event = { type: '', data: [], id: null };
          continue;
        }
        if (line.startsWith(':')) continue;  // a heartbeat
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? '' : line.slice(colon + 1);
        if (text.startsWith(' ')) text = text.slice(1);
        if (field === 'event') event.type = text;
        else if (field === 'data') event.data.push(text);
        else if (field === 'id' && !text.includes('\0')) event.id = text;
      }
    }
  }

  function dispatch(type, raw) {
    let data;
    try { data = JSON.parse(raw); } catch (_) { return; }
    const handler = HANDLERS[type];
    if (handler) handler(data);
  }

  function forMe(agentId) {
    return state.me && (state.me.kind === 'service' || state.me.agent_id === agentId);
  }

  const HANDLERS = {
    message(data) {
      const entry = data.entry || {};
      touchInbox(data.conversation_id, (item) => ({
        last_at: entry.at || item.last_at,
        last_text: entry.text === null ? item.last_text : entry.text,
        last_direction: entry.direction,
        channels: [...new Set([...(item.channels || []), entry.channel].filter(Boolean))].sort(),
        waiting: entry.direction === 'in' && entry.kind === 'message' ? (item.waiting || 0) + 1
          : entry.direction === 'out' ? 0 : item.waiting,
      }));
      if (data.conversation_id === state.selected) refreshConversationSoon();
    },
    call(data) {
      touchInbox(data.conversation_id, (item) => ({
        last_at: data.published_at || item.last_at,
        last_text: 'incoming call',
        channels: [...new Set([...(item.channels || []), 'voice'])].sort(),
      }));
      if (forMe(data.agent_id)) {
        openContext(data.context_url, data);
      }
      if (data.conversation_id === state.selected) refreshConversationSoon();
    },
    'call-ended'(data) {
      if (state.popCall && state.popCall.call_ref === data.call_ref) {
        state.popCall.ended = true;
        reloadPop();
      }
      if (data.conversation_id === state.selected) refreshConversationSoon();
    },
    assigned(data) {
      touchInbox(data.conversation_id, () => ({ assigned_agent_id: data.agent_id }));
      if (data.conversation_id === state.selected) refreshConversationSoon();
    },
    closed(data) {
      touchInbox(data.conversation_id, () => ({ status: 'closed' }));
      if (data.conversation_id === state.selected) refreshConversationSoon();
    },
    // An outbound message's delivery status moved (sent, delivered, read, failed…).
    delivery(data) {
      if (data.conversation_id === state.selected) refreshConversationSoon();
    },
    presence() {},
    resync() {
      loadInbox();
      refreshConversationSoon();
    },
  };

  // ---- the journeys report -------------------------------------------------------------

  function showReports() {
    $('workspace').hidden = true;
    $('reports').hidden = false;
    if (!$('r-since').value) {
      const since = new Date(Date.now() - 30 * 86400000);
      $('r-since').value = since.toISOString().slice(0, 10);
    }
    loadReport();
  }

  function counts(map) {
    return Object.entries(map || {}).map(([k, v]) => `${k} ${v}`).join(', ') || '—';
  }

  function seconds(value) {
    return value === null || value === undefined ? '—' : duration(value);
  }

  async function loadReport(event) {
    if (event) event.preventDefault();
    const params = new URLSearchParams({ since: $('r-since').value, period: $('r-period').value });
    let report;
    try {
      report = await api('GET', `/api/v1/reports/journeys?${params}`);
    } catch (err) {
      if (err.status !== 401) $('report-error').textContent = err.message;
      return;
    }
    $('report-error').textContent = '';
    const t = report.totals;
    clear($('report-totals')).append(...[
      ['conversations', t.conversations], ['multi-channel', t.multi_channel],
      ['switches / conversation', t.channel_switches.per_conversation ?? '—'],
      ['repeat within 7 days', t.repeat_contacts_7d],
      ['verifications carried', t.verifications.carried],
      ['verifications repeated', t.verifications.repeated],
      ['median time to resolution', seconds(t.resolution.median_seconds)],
    ].map(([label, value]) => el('div', {}, el('strong', {}, String(value)), label)));
    const periods = report.periods;
    const max = Math.max(1, ...periods.map((p) => p.conversations));
    const chart = clear($('report-chart'));
    chart.append(el('div', { class: 'legend' }, el('span', { class: 'chip conv' }, 'conversations'),
      el('span', { class: 'chip repeat' }, 'of which repeat contacts')));
    for (const p of periods) {
      const repeat = el('div', { class: 'seg repeat' });
      const rest = el('div', { class: 'seg conv' });
      repeat.style.width = `${(100 * p.repeat_contacts_7d) / max}%`;
      rest.style.width = `${(100 * (p.conversations - p.repeat_contacts_7d)) / max}%`;
      chart.append(el('div', { class: 'bar-row', title: `${p.conversations} conversations` },
        el('span', {}, dayFormat.format(new Date(p.start))),
        el('div', { class: 'track' }, rest, repeat)));
    }
    const head = ['period', 'conversations', 'first channel', 'last channel', 'switches / conv.',
      'repeat 7 d', 'carried', 'repeated', 'fresh codes', 'resolved', 'median', 'p90',
      'single-channel median', 'multi-channel median'];
    const table = clear($('report-table'));
    table.append(el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, periods.map((p) => el('tr', {},
        el('td', {}, dayFormat.format(new Date(p.start))), el('td', {}, String(p.conversations)),
        el('td', {}, counts(p.first_channel)), el('td', {}, counts(p.last_channel)),
        el('td', {}, String(p.channel_switches.per_conversation ?? '—')),
        el('td', {}, String(p.repeat_contacts_7d)),
        el('td', {}, String(p.verifications.carried)), el('td', {}, String(p.verifications.repeated)),
        el('td', {}, String(p.verifications.fresh)), el('td', {}, String(p.resolution.resolved)),
        el('td', {}, seconds(p.resolution.median_seconds)), el('td', {}, seconds(p.resolution.p90_seconds)),
        el('td', {}, seconds(p.resolution.single_channel_median_seconds)),
        el('td', {}, seconds(p.resolution.multi_channel_median_seconds))))));
  }

  // ---- start ---------------------------------------------------------------------------

  function start() {
    $('signin-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = $('token').value.trim();
      if (token) signIn(token);
    });
    $('sign-out').addEventListener('click', () => signOut(''));
    $('nav-inbox').addEventListener('click', showWorkspace);
    $('nav-reports').addEventListener('click', showReports);
    $('f-status').addEventListener('change', () => loadInbox());
    $('f-channel').addEventListener('change', () => loadInbox());
    $('more').addEventListener('click', () => loadInbox(true));
    $('report-form').addEventListener('submit', loadReport);
    $('context-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const link = $('context-link').value.trim();
      if (link) openContext(link, null);
    });
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved);
  }

  start();
})();
