// Unit tests of the page's markdown renderer (crates/server/web/md.js), run with `node --test`.
// Expected HTML is written out by hand from what CommonMark/GFM renderers produce for the same
// input, less the parts md.js leaves out on purpose (raw HTML, reference links, images).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { render, escapeHtml } = require('../../web/md.js');

test('raw HTML is shown as text, never as markup', () => {
  assert.equal(render('<script>alert(1)</script>'), '<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>');
  assert.equal(render('<img src=x onerror="alert(1)">'), '<p>&lt;img src=x onerror=&quot;alert(1)&quot;&gt;</p>');
  assert.equal(escapeHtml(`&<>"'`), '&amp;&lt;&gt;&quot;&#39;');
  // NUL would collide with the renderer's placeholders: it becomes U+FFFD.
  assert.equal(render('a\u00000\u0000b'), '<p>a\uFFFD0\uFFFDb</p>');
});

test('links keep only safe schemes', () => {
  assert.equal(render('[PubMed](https://pubmed.ncbi.nlm.nih.gov/?term=a&b=c)'),
    '<p><a href="https://pubmed.ncbi.nlm.nih.gov/?term=a&amp;b=c" target="_blank" rel="noopener noreferrer">PubMed</a></p>');
  assert.equal(render('[mail](mailto:a@b.org)'),
    '<p><a href="mailto:a@b.org" target="_blank" rel="noopener noreferrer">mail</a></p>');
  for (const bad of ['javascript:alert(1)', 'JaVaScRiPt:alert(1)', 'data:text/html,x', 'vbscript:x',
    'java&#115;cript:alert(1)', '//evil.example', '/relative']) {
    const html = render(`[x](${bad})`);
    assert.ok(!html.includes('<a'), `${bad} -> ${html}`);
  }
  // A quote cannot close the attribute: it is escaped before the link is built.
  const html = render('[x](https://a.org/"onmouseover="alert(1))');
  assert.ok(!/href="[^"]*"\s*onmouseover/.test(html), html);
});

test('bare URLs become links without trailing punctuation', () => {
  assert.equal(render('See https://www.who.int/health-topics.'),
    '<p>See <a href="https://www.who.int/health-topics" target="_blank" rel="noopener noreferrer">https://www.who.int/health-topics</a>.</p>');
});

test('emphasis, strong, strikethrough and snake_case', () => {
  assert.equal(render('**bold** and *it* and _it_ and __b__ and ~~gone~~'),
    '<p><strong>bold</strong> and <em>it</em> and <em>it</em> and <strong>b</strong> and <del>gone</del></p>');
  assert.equal(render('call snake_case_name and 2 * 3 * 4'), '<p>call snake_case_name and 2 * 3 * 4</p>');
  assert.equal(render('***both***'), '<p><strong><em>both</em></strong></p>');
  assert.equal(render('\\*not italic\\*'), '<p>*not italic*</p>');
});

test('inline code is escaped and not formatted', () => {
  assert.equal(render('use `<b>**x**</b>` here'), '<p>use <code>&lt;b&gt;**x**&lt;/b&gt;</code> here</p>');
  assert.equal(render('``a ` b``'), '<p><code>a ` b</code></p>');
});

test('fenced code blocks keep their text verbatim', () => {
  assert.equal(render('```python\nif a < b:\n    print("**x**")\n```\nafter'),
    '<pre><code class="language-python">if a &lt; b:\n    print(&quot;**x**&quot;)</code></pre>\n<p>after</p>');
  // A language tag cannot break out of the class attribute.
  assert.equal(render('```x"onclick=y\nz\n```'), '<pre><code class="language-xquotonclicky">z</code></pre>');
  // Half-streamed: the fence is still open.
  assert.equal(render('Code:\n```\nline 1\nline 2'), '<p>Code:</p>\n<pre><code>line 1\nline 2</code></pre>');
  assert.equal(render('~~~\n```\n~~~'), '<pre><code>```</code></pre>');
});

test('lists: bullets, ordered with a start, nesting, lazy continuation', () => {
  assert.equal(render('- one\n- two'), '<ul><li>one</li><li>two</li></ul>');
  assert.equal(render('3. c\n4. d'), '<ol start="3"><li>c</li><li>d</li></ol>');
  assert.equal(render('Causes:\n- salt\n- stress'), '<p>Causes:</p>\n<ul><li>salt</li><li>stress</li></ul>');
  assert.equal(render('1. Diet\n   - less salt\n   - more fruit\n2. Exercise'),
    '<ol><li>Diet\n<ul><li>less salt</li><li>more fruit</li></ul></li><li>Exercise</li></ol>');
  assert.equal(render('- a long\nline'), '<ul><li>a long<br>line</li></ul>');
  assert.equal(render('- a\n\n- b'), '<ul><li><p>a</p></li><li><p>b</p></li></ul>');
  assert.equal(render('- a\n1. b'), '<ul><li>a</li></ul>\n<ol><li>b</li></ol>');
  assert.equal(render('- **Dose**: 5 mg'), '<ul><li><strong>Dose</strong>: 5 mg</li></ul>');
});

test('tables with alignment; pipes inside cells can be escaped', () => {
  assert.equal(render('| Drug | Dose |\n|:-----|-----:|\n| a\\|b | **5** mg |\n| c | |'),
    '<div class="table-wrap"><table><thead><tr><th class="al-left">Drug</th><th class="al-right">Dose</th></tr></thead>' +
    '<tbody><tr><td class="al-left">a|b</td><td class="al-right"><strong>5</strong> mg</td></tr>' +
    '<tr><td class="al-left">c</td><td class="al-right"></td></tr></tbody></table></div>');
  // Without the separator row it is a paragraph.
  assert.equal(render('a | b'), '<p>a | b</p>');
});

test('headings, quotes, rules and line breaks', () => {
  assert.equal(render('# Title\ntext'), '<h3>Title</h3>\n<p>text</p>');
  assert.equal(render('###### deep'), '<h6>deep</h6>');
  assert.equal(render('> quoted *x*\n> more'), '<blockquote><p>quoted <em>x</em><br>more</p></blockquote>');
  assert.equal(render('a\n\n---\n\nb'), '<p>a</p>\n<hr>\n<p>b</p>');
  assert.equal(render('line one\nline two'), '<p>line one<br>line two</p>');
  assert.equal(render(''), '');
  assert.equal(render(null), '');
});

test('pathological input stays fast and shallow', () => {
  const t0 = Date.now();
  render('[' .repeat(20000) + '](');
  render('_a '.repeat(20000));
  render('**a '.repeat(20000));
  const quotes = render('> '.repeat(20000) + 'deep');
  let nested = '';
  for (let i = 0; i < 300; i++) nested += ' '.repeat(i * 2) + '- x\n';
  const lists = render(nested);
  assert.ok(Date.now() - t0 < 2000, `${Date.now() - t0} ms`);
  assert.ok(quotes.split('<blockquote>').length - 1 <= 17);
  assert.ok(lists.split('<ul>').length - 1 <= 17);
  assert.ok(quotes.endsWith('deep</p>' + '</blockquote>'.repeat(17)));
});
