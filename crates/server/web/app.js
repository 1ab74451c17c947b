// The chat page: talks to the server's own OpenAI route (/v1/chat/completions, streamed),
// keeps conversations and settings in localStorage, and renders answers with md.js.
(function () {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const KEYS = {
    conversations: 'meditron.conversations.v1',
    current: 'meditron.current.v1',
    settings: 'meditron.settings.v1',
    theme: 'meditron.theme.v1',
  };
  const DEFAULTS = {
    system: 'You are a careful medical assistant. Answer clearly and accurately, say when you are ' +
      'not sure, and do not invent facts. Remind the user that your answers are not a diagnosis ' +
      'and that a qualified health professional should be consulted for medical decisions.',
    temperature: 0.7,
    top_p: 0.95,
    top_k: 40,
    repetition_penalty: 1.1,
    max_tokens: 512,
    seed: '',
    stop: '',
    api_key: '',
  };
  const NUMERIC = ['temperature', 'top_p', 'top_k', 'repetition_penalty', 'max_tokens', 'seed'];

  // ---- storage ----

  function load(key, fallback) {
    try {
      const v = localStorage.getItem(key);
      return v == null ? fallback : JSON.parse(v);
    } catch (e) {
      return fallback;
    }
  }

  function save(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch (e) {
      notice('Could not save in the browser storage (' + e.name + '): older conversations may need deleting.');
    }
  }

  function validConversation(c) {
    return c && typeof c.id === 'string' && Array.isArray(c.messages) &&
      c.messages.every((m) => m && typeof m.role === 'string' && typeof m.content === 'string');
  }

  let settings = Object.assign({}, DEFAULTS, load(KEYS.settings, {}));
  let conversations = load(KEYS.conversations, []);
  if (!Array.isArray(conversations)) conversations = [];
  conversations = conversations.filter(validConversation);
  let currentId = load(KEYS.current, null);
  let info = null;
  // The generation in flight: { controller, conversation, message, element }.
  let busy = null;

  const newId = () => Date.now().toString(36) + Math.random().toString(36).slice(2, 8);

  function newConversation() {
    const c = { id: newId(), title: '', created: new Date().toISOString(), updated: new Date().toISOString(), messages: [] };
    conversations.unshift(c);
    return c;
  }

  function current() {
    let c = conversations.find((x) => x.id === currentId);
    if (!c) {
      c = conversations[0] || newConversation();
      currentId = c.id;
    }
    return c;
  }

  function persist() {
    // Empty conversations are not worth keeping, except the one on screen.
    conversations = conversations.filter((c) => c.messages.length || c.id === currentId);
    save(KEYS.conversations, conversations);
    save(KEYS.current, currentId);
  }

  // ---- small helpers ----

  let noticeTimer = 0;
  function notice(text) {
    const n = $('notice');
    n.textContent = text;
    n.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { n.hidden = true; }, 4000);
  }

  function announce(text) {
    $('announce').textContent = text;
  }

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') e.textContent = v;
      else if (k === 'html') e.innerHTML = v; // only ever md.js output, which escapes its input
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children || []) e.append(c);
    return e;
  }

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {
      // navigator.clipboard needs a secure context; a page on a LAN address is not one.
      const t = el('textarea', { readonly: '', class: 'visually-hidden' });
      t.value = text;
      document.body.append(t);
      t.select();
      const ok = document.execCommand('copy');
      t.remove();
      if (!ok) throw e;
    }
  }

  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = el('a', { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  const rate = (s) => (s && s.tokens_per_second ? s.tokens_per_second.toFixed(1) + ' tok/s' : '');
  function statsText(m) {
    const parts = [];
    if (m.stats) {
      parts.push(m.stats.tokens + (m.stats.tokens === 1 ? ' token' : ' tokens'));
      if (m.stats.tokens_per_second) parts.push(rate(m.stats));
    }
    if (m.stopped) parts.push('stopped');
    if (m.finish === 'length') parts.push('cut at the token limit');
    return parts.join(' · ');
  }

  // ---- rendering ----

  const messagesEl = $('messages');

  function atBottom() {
    return messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight < 80;
  }

  function lastIndexOfRole(msgs, roles) {
    for (let i = msgs.length - 1; i >= 0; i--) if (roles.includes(msgs[i].role)) return i;
    return -1;
  }

  function messageElement(m, index, msgs) {
    const isLast = index === msgs.length - 1;
    const roleName = { user: 'You', assistant: 'Assistant', error: 'Error' }[m.role] || m.role;
    const body = m.role === 'assistant'
      ? el('div', { class: 'body md', html: Markdown.render(m.content) })
      : el('div', { class: 'body plain', text: m.content });
    const streaming = busy && busy.message === m;
    const article = el('article', {
      class: 'msg ' + m.role + (streaming ? ' streaming' : ''), 'aria-label': roleName + ' message',
    }, [
      el('h3', { class: 'who', text: roleName }),
      body,
    ]);
    const meta = el('p', { class: 'meta', text: statsText(m) });
    if (m.role === 'assistant') article.append(meta);
    const tools = el('div', { class: 'tools' });
    if (m.role === 'assistant' || m.role === 'user') {
      tools.append(el('button', {
        type: 'button', class: 'copy', text: 'Copy',
        'aria-label': m.role === 'assistant' ? 'Copy answer' : 'Copy question',
        onclick: (ev) => copyText(m.content).then(
          () => { ev.target.textContent = 'Copied'; setTimeout(() => { ev.target.textContent = 'Copy'; }, 1500); },
          () => notice('Copying failed: the browser refused access to the clipboard.')),
      }));
    }
    if (isLast && (m.role === 'assistant' || m.role === 'error') && !busy) {
      tools.append(el('button', {
        type: 'button', class: 'regenerate', text: m.role === 'error' ? 'Retry' : 'Regenerate',
        'aria-label': m.role === 'error' ? 'Retry the request' : 'Regenerate answer',
        onclick: regenerate,
      }));
    }
    if (tools.childElementCount) article.append(tools);
    return article;
  }

  function renderMessages() {
    const c = current();
    const stick = atBottom();
    messagesEl.replaceChildren();
    const system = el('details', { class: 'system-note' }, [
      el('summary', { text: 'System prompt' }),
      el('p', { class: 'plain', text: settings.system || '(none)' }),
    ]);
    if (c.messages.length) messagesEl.append(system);
    c.messages.forEach((m, i) => messagesEl.append(messageElement(m, i, c.messages)));
    if (busy && busy.conversation === c) {
      busy.element = messagesEl.querySelector('.msg.streaming');
      busy.element.setAttribute('aria-busy', 'true');
      renderStreaming();
    }
    $('empty').hidden = c.messages.length > 0;
    if (stick || busy) messagesEl.scrollTop = messagesEl.scrollHeight;
  }

  function renderConversations() {
    const list = $('conversations');
    list.replaceChildren();
    const sorted = conversations.slice().sort((a, b) => (b.updated || '').localeCompare(a.updated || ''));
    for (const c of sorted) {
      const title = c.title || 'New conversation';
      const open = el('button', {
        type: 'button', class: 'open', text: title, title,
        onclick: () => switchTo(c.id),
      });
      if (c.id === currentId) open.setAttribute('aria-current', 'true');
      const del = el('button', {
        type: 'button', class: 'delete', text: '×', 'aria-label': 'Delete conversation: ' + title,
        onclick: () => deleteConversation(c.id),
      });
      list.append(el('li', {}, [open, del]));
    }
  }

  function renderBusy() {
    $('send').disabled = !!busy;
    $('stop').hidden = !busy;
    messagesEl.setAttribute('aria-busy', busy ? 'true' : 'false');
  }

  function renderAll() {
    renderConversations();
    renderMessages();
    renderBusy();
  }

  // Re-rendering markdown per chunk would cost O(n^2) on long answers; a few times a second
  // looks just as live.
  let streamTimer = 0;
  function scheduleStreamRender() {
    if (streamTimer) return;
    streamTimer = setTimeout(() => {
      streamTimer = 0;
      renderStreaming();
    }, 50);
  }

  function renderStreaming() {
    if (!busy || busy.conversation.id !== currentId) return;
    const stick = atBottom();
    const body = busy.element.querySelector('.body');
    body.innerHTML = Markdown.render(busy.message.content);
    busy.element.dataset.chunks = String(busy.chunks);
    busy.element.querySelector('.meta').textContent = busy.chunks + ' tokens…';
    if (stick) messagesEl.scrollTop = messagesEl.scrollHeight;
  }

  // ---- talking to the server ----

  function headers() {
    const h = { 'content-type': 'application/json' };
    if (settings.api_key) h.authorization = 'Bearer ' + settings.api_key;
    return h;
  }

  function requestBody(c) {
    const messages = [];
    if (settings.system.trim()) messages.push({ role: 'system', content: settings.system });
    for (const m of c.messages) {
      if ((m.role === 'user' || m.role === 'assistant') && m.content) {
        messages.push({ role: m.role, content: m.content });
      }
    }
    const body = { messages, stream: true, stream_options: { include_usage: true } };
    if (info && info.model_id) body.model = info.model_id;
    for (const k of NUMERIC) {
      const v = settings[k];
      if (v !== '' && v != null && Number.isFinite(Number(v))) body[k] = Number(v);
    }
    const stop = String(settings.stop || '').split('\n').filter((s) => s.length);
    if (stop.length) body.stop = stop;
    return body;
  }

  const STATUS_TEXT = {
    401: 'The server wants an API key (see Settings)',
    413: 'The conversation is too large for the server',
    422: 'The server refused the request',
    429: 'The server is busy (too many requests at once); try again shortly',
    503: 'The server is unavailable',
  };

  async function describeFailure(resp) {
    let detail = '';
    try {
      const text = await resp.text();
      detail = text;
      const j = JSON.parse(text);
      detail = (j.error && (j.error.message || (typeof j.error === 'string' && j.error))) || text;
    } catch (e) { /* keep the raw text */ }
    const what = STATUS_TEXT[resp.status] || 'The request failed';
    // The whole conversation is the prompt: a long one outgrows the server's limit.
    const hint = resp.status === 422 && /`inputs`.*tokens/.test(detail)
      ? ' Start a new chat, or shorten the message.' : '';
    return what + ' (HTTP ' + resp.status + ')' + (detail ? ': ' + detail : '.') + hint;
  }

  function addError(c, text) {
    c.messages.push({ role: 'error', content: text });
  }

  // Reads the server-sent events of one streamed answer into `b.message`.
  async function readStream(resp, b) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, '');
        const data = event.split(/\r?\n/).filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).replace(/^ /, '')).join('\n');
        if (!data) continue; // keep-alive comments
        if (data === '[DONE]') return;
        let chunk;
        try {
          chunk = JSON.parse(data);
        } catch (e) {
          throw new Error('the server sent something that is not JSON: ' + data.slice(0, 200));
        }
        if (chunk.error) {
          throw new Error(chunk.error.message || JSON.stringify(chunk.error));
        }
        if (chunk.usage) b.usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.finish_reason) b.message.finish = choice.finish_reason;
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          const now = performance.now();
          if (b.first == null) b.first = now;
          b.last = now;
          b.chunks++;
          b.message.content += piece;
          scheduleStreamRender();
        }
      }
    }
    throw new Error('the stream ended before the answer was complete');
  }

  async function generate() {
    if (busy) return;
    const c = current();
    const body = requestBody(c);
    const message = { role: 'assistant', content: '' };
    const controller = new AbortController();
    busy = { controller, conversation: c, message, chunks: 0, first: null, last: null, usage: null, element: null };
    c.messages.push(message);
    renderAll();
    const b = busy;
    let failure = null;
    try {
      const resp = await fetch('/v1/chat/completions', {
        method: 'POST', headers: headers(), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!resp.ok) {
        failure = await describeFailure(resp);
      } else {
        await readStream(resp, b);
      }
    } catch (e) {
      if (controller.signal.aborted) {
        message.stopped = true;
      } else if (e instanceof TypeError) {
        failure = 'Could not reach the server: ' + e.message;
      } else {
        failure = 'The answer was cut short: ' + e.message;
      }
    }
    clearTimeout(streamTimer);
    streamTimer = 0;
    const tokens = b.usage ? b.usage.completion_tokens : b.chunks;
    if (tokens) {
      // Decode speed: tokens after the first over the time they took.
      const secs = b.first != null && b.last > b.first ? (b.last - b.first) / 1000 : 0;
      message.stats = { tokens, tokens_per_second: secs > 0 && tokens > 1 ? (tokens - 1) / secs : 0 };
      if (message.stats.tokens_per_second) {
        $('fact-speed').textContent = tokens + ' tokens at ' + rate(message.stats);
      }
    }
    if (!message.content) c.messages.splice(c.messages.indexOf(message), 1);
    if (failure) addError(c, failure);
    announce(failure ? 'Error: ' + failure
      : (message.stopped ? 'Stopped. ' : 'Answer: ') + (message.content || 'nothing yet'));
    c.updated = new Date().toISOString();
    busy = null;
    persist();
    renderAll();
    if (c.id === currentId) $('prompt').focus();
  }

  function send(text) {
    if (busy || !text.trim()) return;
    const c = current();
    c.messages.push({ role: 'user', content: text });
    if (!c.title) c.title = text.trim().replace(/\s+/g, ' ').slice(0, 60);
    c.updated = new Date().toISOString();
    $('prompt').value = '';
    persist();
    generate();
  }

  function stop() {
    if (busy) busy.controller.abort();
  }

  function regenerate() {
    if (busy) return;
    const c = current();
    // Drop everything after the last question: the answer (or error) being replaced.
    const lastUser = lastIndexOfRole(c.messages, ['user']);
    if (lastUser < 0) return;
    c.messages.splice(lastUser + 1);
    generate();
  }

  function switchTo(id) {
    stop();
    currentId = id;
    persist();
    renderAll();
    closeSidebarIfNarrow();
  }

  function deleteConversation(id) {
    const c = conversations.find((x) => x.id === id);
    if (!c || !confirmDelete(c)) return;
    if (busy && busy.conversation.id === id) stop();
    conversations = conversations.filter((x) => x.id !== id);
    if (currentId === id) currentId = conversations[0] ? conversations[0].id : newConversation().id;
    persist();
    renderAll();
  }

  function confirmDelete(c) {
    return !c.messages.length || window.confirm('Delete "' + (c.title || 'this conversation') + '"?');
  }

  function startNew() {
    stop();
    const c = current();
    if (c.messages.length) currentId = newConversation().id;
    persist();
    renderAll();
    $('prompt').focus();
  }

  // ---- export ----

  function stamp() {
    return new Date().toISOString().slice(0, 16).replace(/[-:]/g, '').replace('T', '-');
  }

  function exportJson() {
    const c = current();
    const doc = {
      format: 'meditron-chat', version: 1, exported: new Date().toISOString(),
      model: info ? info.model_id : null,
      settings: Object.fromEntries(Object.entries(settings).filter(([k]) => k !== 'api_key')),
      conversation: c,
    };
    download('meditron-chat-' + stamp() + '.json', 'application/json', JSON.stringify(doc, null, 2) + '\n');
  }

  function exportMarkdown() {
    const c = current();
    const lines = ['# ' + (c.title || 'Conversation'), '',
      '_Exported from meditron' + (info ? ' (model ' + info.model_id + ')' : '') + ' on ' +
      new Date().toISOString() + '. Not validated for clinical use._', ''];
    if (settings.system.trim()) lines.push('**System prompt:** ' + settings.system, '');
    for (const m of c.messages) {
      const head = { user: 'User', assistant: 'Assistant', error: 'Error' }[m.role] || m.role;
      lines.push('## ' + head, '', m.content + (m.stopped ? '\n\n_(stopped)_' : ''), '');
    }
    download('meditron-chat-' + stamp() + '.md', 'text/markdown', lines.join('\n'));
  }

  // ---- settings, info, theme ----

  function fillSettings() {
    for (const k of Object.keys(DEFAULTS)) {
      const input = $('s-' + k);
      if (input) input.value = settings[k] == null ? '' : settings[k];
    }
  }

  function readSettings() {
    for (const k of Object.keys(DEFAULTS)) {
      const input = $('s-' + k);
      if (input) settings[k] = NUMERIC.includes(k) && input.value !== '' ? Number(input.value) : input.value;
    }
    save(KEYS.settings, settings);
  }

  function toggleSettings(open) {
    const panel = $('settings');
    const show = open == null ? panel.hidden : open;
    panel.hidden = !show;
    $('toggle-settings').setAttribute('aria-expanded', String(show));
    if (show) $('s-system').focus();
    else $('toggle-settings').focus();
  }

  async function loadInfo() {
    try {
      const resp = await fetch('/info');
      if (!resp.ok) throw new Error('HTTP ' + resp.status);
      info = await resp.json();
      const ctx = info.max_total_tokens + ' tokens (prompt up to ' + info.max_input_tokens + ')';
      $('model-info').textContent = info.model_id + ' · context ' + info.max_total_tokens;
      $('fact-model').textContent = info.model_id;
      $('fact-context').textContent = ctx;
    } catch (e) {
      $('model-info').textContent = 'Server not reachable (' + e.message + '); retrying…';
      setTimeout(loadInfo, 3000);
    }
  }

  const THEMES = ['auto', 'light', 'dark'];
  function applyTheme(theme) {
    if (theme === 'auto') delete document.documentElement.dataset.theme;
    else document.documentElement.dataset.theme = theme;
    const b = $('toggle-theme');
    b.textContent = 'Theme: ' + theme;
    b.setAttribute('aria-label', 'Color theme: ' + theme + ' (click to change)');
  }

  function closeSidebarIfNarrow() {
    document.body.classList.remove('sidebar-open');
    $('toggle-sidebar').setAttribute('aria-expanded', 'false');
  }

  // ---- wiring ----

  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    send($('prompt').value);
  });
  $('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.ctrlKey && !e.altKey && !e.metaKey && !e.isComposing) {
      e.preventDefault();
      send($('prompt').value);
    }
  });
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    if (busy) {
      e.preventDefault();
      stop();
    } else if (!$('settings').hidden) {
      toggleSettings(false);
    } else if (document.body.classList.contains('sidebar-open')) {
      closeSidebarIfNarrow();
    } else if ($('export-menu').open) {
      $('export-menu').open = false;
    }
  });
  $('stop').addEventListener('click', stop);
  $('new-chat').addEventListener('click', startNew);
  $('export-json').addEventListener('click', () => { $('export-menu').open = false; exportJson(); });
  $('export-md').addEventListener('click', () => { $('export-menu').open = false; exportMarkdown(); });
  $('toggle-settings').addEventListener('click', () => toggleSettings());
  $('close-settings').addEventListener('click', () => toggleSettings(false));
  $('settings-form').addEventListener('input', () => { readSettings(); renderMessages(); });
  $('settings-form').addEventListener('submit', (e) => e.preventDefault());
  $('reset-settings').addEventListener('click', () => {
    const key = settings.api_key;
    settings = Object.assign({}, DEFAULTS, { api_key: key });
    save(KEYS.settings, settings);
    fillSettings();
    renderMessages();
  });
  $('toggle-theme').addEventListener('click', () => {
    const next = THEMES[(THEMES.indexOf(load(KEYS.theme, 'auto')) + 1) % THEMES.length];
    save(KEYS.theme, next);
    applyTheme(next);
  });
  $('toggle-sidebar').addEventListener('click', () => {
    const open = document.body.classList.toggle('sidebar-open');
    $('toggle-sidebar').setAttribute('aria-expanded', String(open));
  });
  // On a phone the chat list is a drawer: a tap beside it closes it.
  document.addEventListener('click', (e) => {
    if (document.body.classList.contains('sidebar-open') && !e.target.closest('#sidebar, #toggle-sidebar')) {
      closeSidebarIfNarrow();
    }
  });
  // A partial answer survives closing the tab mid-stream. Only then: at other times storage is
  // already up to date, and writing it again could undo another tab's changes.
  window.addEventListener('pagehide', () => { if (busy) persist(); });
  // Another tab changed the conversations: show its version (unless an answer is streaming here).
  window.addEventListener('storage', (e) => {
    if (e.key !== KEYS.conversations || busy) return;
    const fresh = load(KEYS.conversations, []);
    if (!Array.isArray(fresh)) return;
    conversations = fresh.filter(validConversation);
    renderAll();
  });

  applyTheme(THEMES.includes(load(KEYS.theme, 'auto')) ? load(KEYS.theme, 'auto') : 'auto');
  fillSettings();
  current();
  renderAll();
  loadInfo();
  $('prompt').focus();
})();
