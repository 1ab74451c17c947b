// The chat page in headless Chromium against a running `meditron serve` (run.sh starts it with
// --max-input-tokens 300 --max-concurrent-requests 1 --api-key, so the error paths are reachable):
// streaming, multi-turn, copy, regenerate, storage, export, new chat, stop (checked on the
// server's /metrics), the 429 and 422 errors, keyboard, light/dark, phone size; screenshots go
// to $MEDITRON_SCREENSHOTS. Steps run in order and share one page; the first failure ends the
// run with a screenshot of the moment and a non-zero exit.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';

const modules = process.env.PLAYWRIGHT_MODULES;
const { chromium } = createRequire(path.join(modules, 'package.json'))('playwright-core');
const URL = process.env.MEDITRON_URL;
const SHOTS = process.env.MEDITRON_SCREENSHOTS;
const MAX_INPUT = Number(process.env.MEDITRON_MAX_INPUT_TOKENS);
const API_KEY = process.env.MEDITRON_API_KEY;
fs.mkdirSync(SHOTS, { recursive: true });

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const report = {};

async function metrics() {
  const text = await (await fetch(URL + '/metrics')).text();
  const get = (re) => Number((text.match(re) || [])[1]);
  return {
    cancelled: get(/^meditron_requests_total\{outcome="cancelled"\} (\d+)$/m),
    overloaded: get(/^meditron_requests_total\{outcome="overloaded"\} (\d+)$/m),
    generated: get(/^meditron_generated_tokens_total (\d+)$/m),
    running: get(/^meditron_requests_running (\d+)$/m),
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  // CI runs as root, where Chromium's sandbox cannot start.
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({ viewport: DESKTOP, acceptDownloads: true });
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: URL });
const page = await context.newPage();
const problems = [];
const expectedStatus = /status of (401|422|429)/;
page.on('console', (m) => {
  if (m.type() === 'error' && !expectedStatus.test(m.text())) problems.push('console: ' + m.text());
});
page.on('pageerror', (e) => problems.push('page error: ' + e.message));
// Every chat request the page makes, as sent, and its Authorization header.
const sent = [];
const auth = [];
page.on('request', (r) => {
  if (!r.url().endsWith('/v1/chat/completions')) return;
  sent.push(JSON.parse(r.postData()));
  auth.push(r.headers().authorization);
});

const info = await (await fetch(URL + '/info')).json();
const prompt = page.getByLabel('Message', { exact: true });
const stopButton = page.getByRole('button', { name: 'Stop' });
const assistantBodies = page.locator('.msg.assistant .body');
const stored = () => page.evaluate(() => {
  const current = JSON.parse(localStorage.getItem('meditron.current.v1'));
  return JSON.parse(localStorage.getItem('meditron.conversations.v1')).find((c) => c.id === current);
});
async function idle() {
  await stopButton.waitFor({ state: 'hidden', timeout: 120_000 });
}
async function shot(name) {
  const file = path.join(SHOTS, name + '.png');
  await page.screenshot({ path: file });
  console.log('  screenshot ' + file);
}

const steps = [];
const step = (name, fn) => steps.push({ name, fn });

step('the page loads with its headers, the advisory and the model limits', async () => {
  const resp = await page.goto(URL + '/');
  assert.equal(resp.status(), 200);
  const h = resp.headers();
  assert.equal(h['content-type'], 'text/html; charset=utf-8');
  assert.match(h['content-security-policy'], /script-src 'self'/);
  assert.equal(await page.title(), 'Meditron chat');
  const advisory = await page.getByRole('note').innerText();
  assert.match(advisory, /not validated for clinical use/);
  assert.match(advisory, /must not replace professional medical judgment/);
  await page.locator('#model-info', { hasText: info.model_id }).waitFor();
  assert.match(await page.locator('#model-info').innerText(), new RegExp('context ' + info.max_total_tokens));
  assert.equal(await page.evaluate(() => document.activeElement.id), 'prompt');
});

step('every control has an accessible name', async () => {
  const unnamed = await page.evaluate(() => [...document.querySelectorAll('button, input, textarea, summary, select')]
    .filter((e) => !((e.labels && e.labels.length) || e.getAttribute('aria-label') || e.textContent.trim()))
    .map((e) => e.outerHTML.slice(0, 80)));
  assert.deepEqual(unnamed, []);
  assert.equal(await page.getAttribute('html', 'lang'), 'en');
  assert.equal(await page.getByRole('region', { name: 'Conversation' }).count(), 1);
  assert.equal(await page.getByRole('status').and(page.locator('[aria-live=polite]')).count(), 1);
});

step('settings: medical system prompt by default, every sampling field, Esc closes', async () => {
  await page.getByRole('button', { name: 'Settings' }).click();
  const system = await page.getByLabel('System prompt').inputValue();
  assert.match(system, /medical assistant/);
  const fields = { 'Temperature': '0.7', 'Top p': '0.95', 'Top k': '40', 'Repetition penalty': '1.1',
    'Max new tokens': '512', 'Seed': '' };
  for (const [label, value] of Object.entries(fields)) {
    assert.equal(await page.getByLabel(label, { exact: true }).inputValue(), value, label);
  }
  await page.getByLabel('Stop sequences (one per line)').fill('');
  assert.equal(await page.locator('#fact-model').innerText(), info.model_id);
  assert.match(await page.locator('#fact-context').innerText(), new RegExp(String(info.max_total_tokens)));
  // Short answers keep the run fast; a fixed seed keeps it repeatable.
  await page.getByLabel('Max new tokens').fill('40');
  await page.getByLabel('Seed').fill('7');
  await page.keyboard.press('Escape');
  await page.locator('#settings').waitFor({ state: 'hidden' });
});

step('Enter sends; without the API key the server\'s 401 shows, with it the answer streams', async () => {
  await prompt.fill('What is hypertension?');
  await prompt.press('Enter');
  const refused = page.locator('.msg.error');
  await refused.waitFor();
  assert.match(await refused.innerText(), /API key.*HTTP 401/s);
  assert.equal(auth.at(-1), undefined);
  await page.getByRole('button', { name: 'Settings' }).click();
  await page.getByLabel(/^API key/).fill(API_KEY);
  await page.keyboard.press('Escape');
  // Record the answer's length at every change while the Stop button is up.
  await page.evaluate(() => {
    window.__lengths = [];
    new MutationObserver(() => {
      const b = document.querySelector('.msg.assistant.streaming .body');
      if (b && !document.getElementById('stop').hidden) window.__lengths.push(b.textContent.length);
    }).observe(document.getElementById('messages'), { subtree: true, childList: true, characterData: true });
  });
  await page.getByRole('button', { name: 'Retry the request' }).click();
  await stopButton.waitFor({ state: 'visible' });
  await idle();
  assert.equal(auth.at(-1), 'Bearer ' + API_KEY);
  assert.equal(await page.locator('.msg.error').count(), 0);
  const lengths = await page.evaluate(() => [...new Set(window.__lengths.filter((n) => n > 0))]);
  assert.ok(lengths.length >= 2, 'the text grew while streaming: ' + JSON.stringify(lengths));
  const answer = await assistantBodies.last().innerText();
  assert.ok(answer.trim().length > 0);
  const meta = await page.locator('.msg.assistant .meta').last().innerText();
  assert.match(meta, /\d+ tokens · [\d.]+ tok\/s/);
  assert.equal(await page.locator('#announce').textContent(), 'Answer: ' + (await stored()).messages[1].content);
  report.first_answer = meta;
  assert.match(await page.locator('#fact-speed').innerText(), /tok\/s/);
  const body = sent.at(-1);
  assert.deepEqual(body.messages.map((m) => m.role), ['system', 'user']);
  assert.equal(body.stream, true);
  assert.equal(body.model, info.model_id);
  assert.deepEqual([body.temperature, body.top_p, body.top_k, body.repetition_penalty, body.max_tokens, body.seed],
    [0.7, 0.95, 40, 1.1, 40, 7]);
  assert.equal(body.stop, undefined);
  await shot('desktop-light');
});

step('Shift+Enter adds a line; the second turn carries the first', async () => {
  const before = sent.length;
  await prompt.fill('Summarize that');
  await prompt.press('Shift+Enter');
  await prompt.pressSequentially('in one sentence.');
  assert.equal(await prompt.inputValue(), 'Summarize that\nin one sentence.');
  assert.equal(sent.length, before);
  await prompt.press('Enter');
  await stopButton.waitFor({ state: 'visible' });
  await idle();
  const body = sent.at(-1);
  assert.deepEqual(body.messages.map((m) => m.role), ['system', 'user', 'assistant', 'user']);
  const conv = await stored();
  assert.equal(body.messages[2].content, conv.messages[1].content);
  assert.equal(body.messages[3].content, 'Summarize that\nin one sentence.');
  assert.equal(await page.locator('.msg.assistant').count(), 2);
});

step('Copy puts the answer on the clipboard', async () => {
  await page.getByRole('button', { name: 'Copy answer' }).last().click();
  const conv = await stored();
  await page.getByRole('button', { name: 'Copy answer' }).last().filter({ hasText: 'Copied' }).waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), conv.messages.at(-1).content);
});

step('Regenerate asks again with the same history and replaces the answer', async () => {
  const before = sent.length;
  const history = sent.at(-1).messages;
  await page.getByRole('button', { name: 'Regenerate answer' }).click();
  await idle();
  assert.equal(sent.length, before + 1);
  assert.deepEqual(sent.at(-1).messages, history);
  assert.equal(await page.locator('.msg.assistant').count(), 2);
  assert.equal((await stored()).messages.length, 4);
});

step('the conversation survives a reload (localStorage)', async () => {
  const conv = await stored();
  await page.reload();
  await page.locator('#model-info', { hasText: info.model_id }).waitFor();
  assert.equal(await page.locator('.msg').count(), 4);
  assert.equal(await assistantBodies.last().innerText(), await page.evaluate((t) => {
    const d = document.createElement('div');
    d.innerHTML = window.Markdown.render(t);
    document.body.append(d);
    const text = d.innerText;
    d.remove();
    return text;
  }, conv.messages[3].content));
  await page.getByRole('button', { name: 'What is hypertension?', exact: true }).waitFor();
});

step('export as JSON and as Markdown', async () => {
  const conv = await stored();
  await page.getByText('Export', { exact: true }).click();
  const [json] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Export as JSON' }).click()]);
  assert.match(json.suggestedFilename(), /^meditron-chat-.*\.json$/);
  const doc = JSON.parse(fs.readFileSync(await json.path(), 'utf8'));
  assert.equal(doc.format, 'meditron-chat');
  assert.equal(doc.model, info.model_id);
  assert.deepEqual(doc.conversation.messages, conv.messages);
  assert.equal(doc.settings.api_key, undefined);
  await page.getByText('Export', { exact: true }).click();
  const [md] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Export as Markdown' }).click()]);
  const text = fs.readFileSync(await md.path(), 'utf8');
  assert.match(text, /^# What is hypertension\?\n/);
  assert.ok(text.includes('## User\n\nWhat is hypertension?\n'), text.slice(0, 400));
  assert.ok(text.includes('## Assistant\n\n' + conv.messages[3].content), text.slice(0, 400));
});

step('markdown in answers renders as HTML; markup in answers stays text', async () => {
  await page.evaluate(() => {
    const key = 'meditron.conversations.v1';
    const convs = JSON.parse(localStorage.getItem(key));
    convs.unshift({
      id: 'md-demo', title: 'Markdown demo', created: new Date().toISOString(), updated: new Date().toISOString(),
      messages: [
        { role: 'user', content: 'Show me a table of first-line drugs.' },
        { role: 'assistant', content: '## Hypertension drugs\n\n| Class | Example | Note |\n|---|:---:|---|\n' +
          '| ACE inhibitor | lisinopril | **cough** |\n| Thiazide | `chlorthalidone` | _low K+_ |\n\n' +
          '1. Lifestyle first\n   - less salt\n   - exercise\n2. Then drugs\n\n```python\nbp = 140 / 90\n```\n' +
          '<img src=x onerror="window.__pwned=1"> See [WHO](https://www.who.int) and [bad](javascript:alert(1)).' },
      ],
    });
    localStorage.setItem(key, JSON.stringify(convs));
    localStorage.setItem('meditron.current.v1', JSON.stringify('md-demo'));
  });
  await page.reload();
  const md = page.locator('.msg.assistant .md').last();
  await md.locator('table').waitFor();
  assert.equal(await md.locator('th').count(), 3);
  assert.equal(await md.locator('td.al-center').first().innerText(), 'lisinopril');
  assert.equal(await md.locator('ol > li > ul > li').count(), 2);
  assert.equal(await md.locator('pre code.language-python').innerText(), 'bp = 140 / 90');
  assert.equal(await md.locator('a').count(), 1);
  assert.equal(await md.locator('a').getAttribute('href'), 'https://www.who.int');
  assert.equal(await md.locator('img').count(), 0);
  assert.match(await md.innerText(), /<img src=x onerror=/);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  await shot('desktop-markdown');
});

step('dark mode follows the system and the Theme button', async () => {
  const bg = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  const light = await bg();
  await page.emulateMedia({ colorScheme: 'dark' });
  const dark = await bg();
  assert.notEqual(dark, light);
  await shot('desktop-dark');
  const theme = page.locator('#toggle-theme');
  await theme.click(); // auto -> light
  assert.equal(await page.getAttribute('html', 'data-theme'), 'light');
  assert.equal(await bg(), light);
  await theme.click(); // light -> dark
  await page.emulateMedia({ colorScheme: 'light' });
  assert.equal(await bg(), dark);
  assert.match(await theme.getAttribute('aria-label'), /dark/);
  await theme.click(); // dark -> auto
  assert.equal(await page.getAttribute('html', 'data-theme'), null);
});

step('New chat starts empty; the old conversation reopens from the list', async () => {
  await page.getByRole('button', { name: 'New chat' }).click();
  assert.equal(await page.locator('.msg').count(), 0);
  await page.locator('#empty').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#conversations li').count(), 3);
  await page.getByRole('button', { name: 'What is hypertension?', exact: true }).click();
  assert.equal(await page.locator('.msg').count(), 4);
  await page.getByRole('button', { name: 'New chat' }).click();
});

step('Esc and the Stop button stop a long answer and the server cancels it; a second client meanwhile gets 429', async () => {
  // Make sure the answer is long: the page's own request, with vLLM's ignore_eos added so the
  // model cannot end it early. The page still makes the request and aborts it itself.
  await page.route('**/v1/chat/completions', (route) => {
    const body = JSON.parse(route.request().postData());
    route.continue({ postData: JSON.stringify({ ...body, ignore_eos: true, max_tokens: 1500 }) });
  });
  const before = await metrics();
  await prompt.fill('Write a long essay about the heart.');
  await prompt.press('Enter');
  await page.waitForFunction(() => Number(document.querySelector('.msg.streaming')?.dataset.chunks) >= 20,
    null, { timeout: 60_000 });
  await shot('desktop-streaming');

  // --max-concurrent-requests 1: another browser's question is refused while this one runs.
  const other = await browser.newContext({ viewport: PHONE });
  await other.addInitScript((key) => {
    localStorage.setItem('meditron.settings.v1', JSON.stringify({ api_key: key }));
  }, API_KEY);
  const page2 = await other.newPage();
  await page2.goto(URL + '/');
  await page2.getByLabel('Message', { exact: true }).fill('Is this busy?');
  await page2.getByLabel('Message', { exact: true }).press('Enter');
  const refused = page2.locator('.msg.error');
  await refused.waitFor();
  assert.match(await refused.innerText(), /busy.*HTTP 429.*Model is overloaded/s);
  await page2.screenshot({ path: path.join(SHOTS, 'phone-error-429.png') });
  await other.close();

  await page.bringToFront();
  const atStop = await metrics();
  await page.keyboard.press('Escape');
  const stoppedAt = Date.now();
  // The moment the server counts the request as cancelled (it noticed the closed connection).
  let atCancel;
  for (;;) {
    atCancel = await metrics();
    if (atCancel.cancelled === before.cancelled + 1) break;
    assert.ok(Date.now() - stoppedAt < 5000, 'the server did not cancel within 5 s: ' + JSON.stringify(atCancel));
    await sleep(10);
  }
  const cancelMs = Date.now() - stoppedAt;
  await idle();
  await sleep(300);
  const after = await metrics();
  assert.equal(after.running, 0);
  // Once the server has noticed, the next token's hand-off fails and the engine drops the
  // sequence at its next step: the token in flight and one more step at most, plus the
  // scrape's own timing.
  assert.ok(after.generated - atCancel.generated <= 4,
    `${after.generated - atCancel.generated} tokens came after the server noticed the cancel`);
  // From the Esc: the closed connection is noticed at the next write or two (a token each),
  // plus the hops of a loaded 2-core machine; far from the 1500 tokens asked for.
  const extra = after.generated - atStop.generated;
  assert.ok(extra <= 32 && cancelMs < 2000, `${extra} tokens and ${cancelMs} ms after the Esc`);
  const conv = await stored();
  const answer = conv.messages.at(-1);
  assert.equal(answer.role, 'assistant');
  assert.equal(answer.stopped, true);
  assert.match(await page.locator('.msg.assistant .meta').last().innerText(), /stopped/);
  assert.ok(answer.stats.tokens <= after.generated - before.generated);
  report.stop = { shown_tokens: answer.stats.tokens, generated: after.generated - before.generated,
    tokens_after_esc: extra, tokens_after_server_noticed: after.generated - atCancel.generated,
    cancelled_after_ms: cancelMs };
  await shot('desktop-stopped');

  // The Stop button does the same, here on a regenerated answer.
  await page.getByRole('button', { name: 'Regenerate answer' }).click();
  await page.waitForFunction(() => Number(document.querySelector('.msg.streaming')?.dataset.chunks) >= 5);
  await stopButton.click();
  await idle();
  for (let t0 = Date.now(); (await metrics()).cancelled !== before.cancelled + 2; await sleep(20)) {
    assert.ok(Date.now() - t0 < 5000, 'the Stop button did not cancel the generation on the server');
  }
  assert.equal((await stored()).messages.at(-1).stopped, true);
  await page.unroute('**/v1/chat/completions');
});

step('a prompt over --max-input-tokens shows the server\'s 422 message in the chat', async () => {
  await page.getByRole('button', { name: 'New chat' }).click();
  await prompt.fill('Explain this. '.repeat(MAX_INPUT));
  await prompt.press('Enter');
  const error = page.locator('.msg.error');
  await error.waitFor();
  const text = await error.innerText();
  assert.match(text, /HTTP 422/);
  assert.match(text, new RegExp('`inputs` must have less than ' + MAX_INPUT + ' tokens. Given: \\d+'));
  assert.match(text, /Start a new chat/);
  assert.match(await page.locator('#announce').textContent(), /^Error: .*HTTP 422/);
  assert.equal(await page.locator('.msg.user').count(), 1);
  await page.getByRole('button', { name: 'Retry the request' }).waitFor();
  assert.equal(await stopButton.isHidden(), true);
  await shot('desktop-error-422');
});

step('phone size: one column, no sideways scrolling, drawers for chats and settings', async () => {
  await page.setViewportSize(PHONE);
  await page.getByRole('button', { name: 'Chats' }).click();
  await page.getByRole('button', { name: 'What is hypertension?', exact: true }).click();
  assert.equal(await page.locator('#sidebar').isHidden(), true);
  assert.equal(await page.locator('.msg').count(), 4);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `${overflow}px of sideways overflow`);
  const box = await prompt.boundingBox();
  assert.ok(box.y + box.height <= PHONE.height && box.width > PHONE.width / 2, JSON.stringify(box));
  assert.ok(await page.getByRole('note').isVisible());
  await shot('phone');
  await page.emulateMedia({ colorScheme: 'dark' });
  await shot('phone-dark');
  await page.emulateMedia({ colorScheme: 'light' });
  await page.getByRole('button', { name: 'Settings' }).click();
  await shot('phone-settings');
  await page.keyboard.press('Escape');
  await page.getByRole('button', { name: 'Chats' }).click();
  await shot('phone-chats');
});

let failed = false;
for (const { name, fn } of steps) {
  const t0 = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed = true;
    console.log(`FAIL ${name} (${Date.now() - t0} ms)\n${e.stack || e}`);
    await page.screenshot({ path: path.join(SHOTS, 'failure.png') }).catch(() => {});
    break;
  }
}
if (!failed && problems.length) {
  failed = true;
  console.log('FAIL the page logged errors:\n' + problems.join('\n'));
}
console.log('report ' + JSON.stringify(report));
await browser.close();
process.exit(failed ? 1 : 0);
