// A small markdown renderer for the model's answers. Safety first: the whole text is
// HTML-escaped before any parsing, so every tag in the output is one written here; link
// targets must be http(s) or mailto. Covers what chat answers use: fenced code, inline code,
// headings, lists (nested, ordered), tables, block quotes, rules, bold/italic/strikethrough,
// links. An unclosed code fence runs to the end, so a half-streamed answer renders sensibly.
(function (root) {
  'use strict';

  const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, (c) => ESCAPES[c]);
  }

  // Checked on the escaped URL: entities cannot hide a scheme because '&' itself is escaped.
  const SAFE_URL = /^(?:https?:\/\/|mailto:)\S+$/i;
  // Placeholders for finished HTML inside inline text; NUL never survives from the input.
  const SLOT = /\u0000(\d+)\u0000/g;

  function inline(text) {
    const slots = [];
    const hold = (html) => '\u0000' + (slots.push(html) - 1) + '\u0000';
    let s = text;
    // Code spans first: nothing inside them is formatted.
    s = s.replace(/(`+)([\s\S]{0,2000}?[^`])\1(?!`)/g, (m, ticks, code) => {
      const c = /^ [\s\S]* $/.test(code) && code.trim() ? code.slice(1, -1) : code;
      return hold('<code>' + c + '</code>');
    });
    // Backslash escapes of markdown punctuation.
    s = s.replace(/\\([\\`*_{}[\]()#+\-.!|~])/g, (m, c) => hold(c));
    // [text](url "title"): the URL must be safe, or the whole thing stays text.
    s = s.replace(/\[([^\]\n]{1,500})\]\(\s*(\S{1,2000}?)(?:\s+&quot;[^\n]{0,500}?&quot;)?\s*\)/g, (m, label, url) =>
      SAFE_URL.test(url)
        ? hold('<a href="' + url + '" target="_blank" rel="noopener noreferrer">' + emphasis(label) + '</a>')
        : m);
    // Bare URLs; quotes and angle brackets (escaped by now) and trailing punctuation end them.
    s = s.replace(/\bhttps?:\/\/(?:(?!&quot;|&#39;|&lt;|&gt;)[^\s\u0000])+/g, (m) => {
      const url = m.replace(/[.,:;!?)\]]+$/, '');
      return hold('<a href="' + url + '" target="_blank" rel="noopener noreferrer">' + url + '</a>') +
        m.slice(url.length);
    });
    s = emphasis(s);
    // Slots can nest (a code span inside link text): resolve until none is left.
    for (let i = 0; i < 4 && s.includes('\u0000'); i++) s = s.replace(SLOT, (m, n) => slots[+n]);
    return s;
  }

  // Spans are bounded ({0,500}): unbounded lazy matching is quadratic on a long line full of
  // unmatched markers, and the answer is re-rendered many times while it streams.
  function emphasis(s) {
    return s
      .replace(/\*\*\*(?=\S)([\s\S]{0,500}?\S)\*\*\*/g, '<strong><em>$1</em></strong>')
      .replace(/\*\*(?=\S)([\s\S]{0,500}?\S)\*\*/g, '<strong>$1</strong>')
      .replace(/(^|[^\w])__(?=\S)([\s\S]{0,500}?\S)__(?!\w)/g, '$1<strong>$2</strong>')
      .replace(/\*(?=[^\s*])([\s\S]{0,500}?[^\s*])\*/g, '<em>$1</em>')
      .replace(/(^|[^\w])_(?=[^\s_])([\s\S]{0,500}?[^\s_])_(?!\w)/g, '$1<em>$2</em>')
      .replace(/~~(?=\S)([\s\S]{0,500}?\S)~~/g, '<del>$1</del>');
  }

  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
  const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$/;
  const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
  const QUOTE = /^ {0,3}&gt; ?/;
  const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])(\s+|$)(.*)$/;
  const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

  const indentOf = (line) => line.match(/^\s*/)[0].replace(/\t/g, '    ').length;
  const blank = (line) => !line.trim();

  function isTableStart(lines, i) {
    return lines[i].includes('|') && i + 1 < lines.length && lines[i + 1].includes('|') &&
      TABLE_SEP.test(lines[i + 1]) && cells(lines[i]).length === cells(lines[i + 1]).length;
  }

  function startsBlock(lines, i) {
    const l = lines[i];
    return FENCE.test(l) || HEADING.test(l) || RULE.test(l) || QUOTE.test(l) || ITEM.test(l) ||
      isTableStart(lines, i);
  }

  // Splits a table row on pipes that are not backslash-escaped.
  function cells(row) {
    let r = row.trim();
    if (r.startsWith('|')) r = r.slice(1);
    if (r.endsWith('|') && !r.endsWith('\\|')) r = r.slice(0, -1);
    return r.split(/(?<!\\)\|/).map((c) => c.trim());
  }

  function table(lines, i) {
    const head = cells(lines[i]);
    const align = cells(lines[i + 1]).map((c) =>
      c.startsWith(':') && c.endsWith(':') ? 'center' : c.endsWith(':') ? 'right' : c.startsWith(':') ? 'left' : '');
    const cell = (tag, text, k) =>
      '<' + tag + (align[k] ? ' class="al-' + align[k] + '"' : '') + '>' + inline(text || '') + '</' + tag + '>';
    let html = '<div class="table-wrap"><table><thead><tr>' +
      head.map((c, k) => cell('th', c, k)).join('') + '</tr></thead><tbody>';
    i += 2;
    while (i < lines.length && !blank(lines[i]) && lines[i].includes('|')) {
      const row = cells(lines[i]);
      html += '<tr>' + head.map((_, k) => cell('td', row[k], k)).join('') + '</tr>';
      i++;
    }
    return [html + '</tbody></table></div>', i];
  }

  function list(lines, i, depth) {
    const first = ITEM.exec(lines[i]);
    const base = indentOf(first[1]);
    const ordered = /\d/.test(first[2]);
    const kind = (m) => (/\d/.test(m[2]) ? m[2].slice(-1) : m[2]);
    const items = [];
    let loose = false;
    while (i < lines.length) {
      const m = ITEM.exec(lines[i]);
      if (!m || indentOf(m[1]) !== base || kind(m) !== kind(first)) break;
      // Continuation lines must reach the item's content column (at least two spaces in).
      const content = Math.max(base + 2, Math.min(base + m[2].length + m[3].length, base + 4));
      const body = [m[4]];
      i++;
      while (i < lines.length) {
        const l = lines[i];
        if (blank(l)) {
          let j = i;
          while (j < lines.length && blank(lines[j])) j++;
          if (j < lines.length && indentOf(lines[j]) >= content) {
            body.push(...lines.slice(i, j).map(() => ''));
            loose = true;
            i = j;
            continue;
          }
          const next = j < lines.length && ITEM.exec(lines[j]);
          if (next && indentOf(next[1]) === base && kind(next) === kind(first)) {
            loose = true;
            i = j;
          }
          break;
        }
        if (indentOf(l) >= content) {
          body.push(l.replace(/^\s+/, (ws) => ' '.repeat(Math.max(0, indentOf(ws) - content))));
        } else if (!startsBlock(lines, i)) {
          body.push(l.trim()); // a lazy continuation of the item's paragraph
        } else {
          break;
        }
        i++;
      }
      items.push(body);
    }
    const start = ordered ? parseInt(first[2], 10) : 1;
    const open = ordered ? (start !== 1 ? '<ol start="' + start + '">' : '<ol>') : '<ul>';
    const html = items.map((body) => {
      let inner = blocks(body, depth + 1);
      if (!loose) inner = inner.replace(/^<p>([\s\S]*?)<\/p>/, '$1');
      return '<li>' + inner + '</li>';
    }).join('');
    return [open + html + (ordered ? '</ol>' : '</ul>'), i];
  }

  // Nesting deeper than any answer needs is shown flat: a stack overflow would break the page.
  const MAX_DEPTH = 16;

  function blocks(lines, depth = 0) {
    if (depth > MAX_DEPTH) return '<p>' + lines.map((l) => inline(l.trim())).join('<br>') + '</p>';
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const l = lines[i];
      let m;
      if (blank(l)) {
        i++;
      } else if ((m = FENCE.exec(l))) {
        const fence = m[1];
        const lang = m[2].replace(/[^\w+#.-]/g, '');
        const code = [];
        i++;
        while (i < lines.length && !new RegExp('^ {0,3}' + fence[0] + '{' + fence.length + ',}\\s*$').test(lines[i])) {
          code.push(lines[i]);
          i++;
        }
        i++; // the closing fence, or past the end when the answer is still streaming
        out.push('<pre><code' + (lang ? ' class="language-' + lang + '"' : '') + '>' + code.join('\n') +
          '</code></pre>');
      } else if ((m = HEADING.exec(l))) {
        // Answers sit under the page's own headings: # becomes h3.
        const level = Math.min(6, m[1].length + 2);
        out.push('<h' + level + '>' + inline(m[2] || '') + '</h' + level + '>');
        i++;
      } else if (RULE.test(l)) {
        out.push('<hr>');
        i++;
      } else if (QUOTE.test(l)) {
        const quoted = [];
        while (i < lines.length && !blank(lines[i]) && (QUOTE.test(lines[i]) || !startsBlock(lines, i))) {
          quoted.push(lines[i].replace(QUOTE, ''));
          i++;
        }
        out.push('<blockquote>' + blocks(quoted, depth + 1) + '</blockquote>');
      } else if (ITEM.test(l)) {
        const [html, next] = list(lines, i, depth);
        out.push(html);
        i = next;
      } else if (isTableStart(lines, i)) {
        const [html, next] = table(lines, i);
        out.push(html);
        i = next;
      } else {
        const para = [l.trim()];
        i++;
        while (i < lines.length && !blank(lines[i]) && !startsBlock(lines, i)) {
          para.push(lines[i].trim());
          i++;
        }
        // Chat answers use single newlines as line breaks.
        out.push('<p>' + para.map(inline).join('<br>') + '</p>');
      }
    }
    return out.join('\n');
  }

  function render(markdown) {
    const text = escapeHtml(String(markdown == null ? '' : markdown).replace(/\u0000/g, '\uFFFD'));
    return blocks(text.split(/\r?\n/));
  }

  const api = { render, escapeHtml };
  if (typeof module === 'object' && module.exports) module.exports = api;
  else root.Markdown = api;
})(typeof self !== 'undefined' ? self : this);
