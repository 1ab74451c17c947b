//! Chat templates: Hugging Face's Jinja templates rendered with minijinja, set up the way
//! transformers sets up Jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls,
//! `raise_exception`, `strftime_now`, a `tojson` that writes what Python's `json.dumps` writes),
//! with Python string and dict methods (`.strip()`, `.startswith()`, `.items()`) from
//! minijinja-contrib's pycompat.

use crate::TokenizerError;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// "system", "user", "assistant" (Meditron's fine-tunes also use "question"/"answer").
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The template under this name in its environment.
const NAME: &str = "chat";

/// The seed's ChatML prompt; the system block is left out when there is no system message.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A compiled chat template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

impl ChatTemplate {
    /// Compiles a Jinja chat template; syntax errors are reported here, not at render time.
    pub fn new(source: &str) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(template_error)?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
        })
    }

    /// ChatML, the seed's prompt format:
    /// `<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n`.
    pub fn chatml() -> Self {
        match Self::new(CHATML) {
            Ok(t) => t,
            // CHATML is a constant that the tests compile; this cannot happen.
            Err(e) => unreachable!("built-in ChatML template: {e}"),
        }
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt for `messages`; with `add_generation_prompt` it ends where the assistant's
    /// reply starts. `bos_token`/`eos_token` are the strings templates may write themselves.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, TokenizerError> {
        let template = self.env.get_template(NAME).map_err(template_error)?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos_token,
                eos_token => eos_token,
            })
            .map_err(template_error)
    }
}

fn template_error(e: Error) -> TokenizerError {
    // minijinja's message already names the template line: "... (in chat:3)".
    TokenizerError::Template(e.to_string())
}

/// transformers' `raise_exception(message)`: templates call it to reject a conversation.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `strftime_now(format)` (Llama 3.1 writes today's date), in UTC.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, secs)
}

/// The strftime codes chat templates use, for a UNIX time in UTC.
fn strftime(format: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let month_name = MONTHS[(month - 1) as usize];
    let day_name = DAYS[weekday];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(day_name),
            Some('a') => out.push_str(&day_name[..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent)`. Unlike
/// minijinja's own filter it leaves `<`, `>`, `&` and `'` alone and writes Python's
/// separators (`", "` and `": "`), so tool schemas come out byte for byte as in transformers.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    // Python puts ", " between items on one line and "," before a newline.
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64().filter(|_| v.is_integer()) {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => out.push_str(&json_string(v.as_str().unwrap_or_default())),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let key = match k.as_str() {
                    Some(s) => s.to_string(),
                    None => k.to_string(),
                };
                out.push_str(&json_string(&key));
                out.push_str(": ");
                write_json(&v.get_item(k)?, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson cannot write a value of kind {kind}"),
            ))
        }
    }
    Ok(())
}

/// A JSON string literal with only what JSON requires escaped (ensure_ascii=False).
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.escape_default()))
}

/// Python's `repr(float)`: "1.0", not Rust's "1".
fn python_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        f.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<Message> {
        pairs.iter().map(|(r, c)| Message::new(*r, *c)).collect()
    }

    #[test]
    fn chatml_is_the_seed_prompt() {
        let t = ChatTemplate::chatml();
        let with_system = t
            .render(
                &msgs(&[("system", "Be brief."), ("user", "Hi?")]),
                true,
                "",
                "",
            )
            .unwrap();
        assert_eq!(
            with_system,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
        );
        let without = t.render(&msgs(&[("user", "Hi?")]), true, "", "").unwrap();
        assert_eq!(
            without,
            "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
        );
        let no_prompt = t.render(&msgs(&[("user", "Hi?")]), false, "", "").unwrap();
        assert_eq!(no_prompt, "<|im_start|>user\nHi?<|im_end|>\n");
    }

    #[test]
    fn python_methods_loop_vars_and_trim_blocks() {
        let src = "{% for m in messages %}\n  {% if m.content.strip().startswith('x') and loop.last %}{{ m.role.upper() }}|{{ m.content|trim }}{% endif %}\n{% endfor %}{{ bos_token }}{{ eos_token }}";
        let t = ChatTemplate::new(src).unwrap();
        let out = t
            .render(
                &msgs(&[("user", "a"), ("assistant", "  xyz ")]),
                false,
                "<s>",
                "</s>",
            )
            .unwrap();
        assert_eq!(out, "ASSISTANT|xyz<s></s>");
        let ns = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% if loop.index0 == 1 %}{% break %}{% endif %}{% endfor %}{{ ns.n }}{{ messages[-1]['content'].split(',')[1] }}";
        let out = ChatTemplate::new(ns).unwrap().render(
            &msgs(&[("u", "a,b"), ("u", "c,d"), ("u", "e,f")]),
            false,
            "",
            "",
        );
        assert_eq!(out.unwrap(), "2f");
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_clear() {
        let t = ChatTemplate::new("{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}").unwrap();
        let e = t
            .render(&msgs(&[("system", "s")]), true, "", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Conversation must start with user"), "{e}");
        let e = ChatTemplate::new("{% for m in messages %}")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("chat template: syntax error"), "{e}");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new("{{ messages[0]|tojson }} {{ [1, 2.5, 3.0, none, true, '<a&b>é\"'] | tojson }} {{ {'b': [], 'a': {}} | tojson(indent=2) }}").unwrap();
        let out = t
            .render(&msgs(&[("user", "<|im_start|>")]), false, "", "")
            .unwrap();
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"<|im_start|>\"} [1, 2.5, 3.0, null, true, \"<a&b>é\\\"\"] {\n  \"b\": [],\n  \"a\": {}\n}"
        );
    }

    #[test]
    fn strftime_formats_dates() {
        // 2024-07-23 14:05:09 UTC was a Tuesday.
        assert_eq!(
            strftime("%d %b %Y %H:%M:%S %A %B %y %m %%", 1_721_743_509),
            "23 Jul 2024 14:05:09 Tuesday July 24 07 %"
        );
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
    }
}
