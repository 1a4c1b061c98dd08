//! A strict reader of the Prometheus text exposition format (0.0.4), and a
//! scrape over plain HTTP, for the metrics tests.
//!
//! Stricter than Prometheus itself where Weir promises more: every sample
//! needs a `# TYPE` and a `# HELP` before it, and a counter's name ends in
//! `_total`. Rejected, with the line number: a malformed line, a bad metric
//! or label name, a bad value, a duplicate `HELP` or `TYPE`, a duplicate
//! label in one sample, the same series twice, a family whose samples are
//! not together, a negative or NaN counter, text not ending in a newline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels, by name.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A family's `# TYPE` and `# HELP`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Family {
    /// `counter`, `gauge`, …
    pub kind: String,
    /// The help text, unescaped.
    pub help: String,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Families by name.
    pub families: BTreeMap<String, Family>,
    /// Samples in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Samples of `name` whose labels include every pair of `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// The value of the one sample of `name` matching `labels`; `None` if
    /// there is none or more than one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut it = self.find(name, labels);
        let first = it.next()?;
        it.next().is_none().then_some(first.value)
    }

    /// The sum over the samples of `name` matching `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).map(|s| s.value).sum()
    }
}

fn name_ok(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn label_name_ok(s: &str) -> bool {
    let mut c = s.chars();
    !s.starts_with("__")
        && c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// A sample value: a float as Go's `ParseFloat` takes it, or `NaN`,
/// `+Inf`, `-Inf`. No spaces, no hex, no `inf` spelled otherwise.
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => return Some(f64::NAN),
        "+Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && s.chars().any(|c| c.is_ascii_digit());
    if ok { s.parse().ok() } else { None }
}

/// Unescape a HELP text (`\\` and `\n` only).
fn unescape_help(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape in HELP: \\{other:?}")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !label_name_ok(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape in label value: {other:?}")),
                },
                Some((_, '\n')) => return Err("newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// The family a sample name belongs to, given the families declared.
fn family_of<'a>(name: &'a str, families: &HashMap<String, Family>) -> &'a str {
    if families.contains_key(name) {
        return name;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && families
                .get(base)
                .is_some_and(|f| f.kind == "histogram" || f.kind == "summary")
        {
            return base;
        }
    }
    name
}

/// What the parser has seen so far.
#[derive(Default)]
struct State {
    families: HashMap<String, Family>,
    helped: HashSet<String>,
    typed: HashSet<String>,
    /// Families whose samples ended (another family's came after).
    done: HashSet<String>,
    /// The family of the last sample.
    current: Option<String>,
    series: HashSet<(String, BTreeMap<String, String>)>,
    samples: Vec<Sample>,
}

impl State {
    /// A `#` line: `HELP` and `TYPE` are checked, anything else is a comment.
    fn comment(&mut self, comment: &str) -> Result<(), String> {
        let mut parts = comment.splitn(4, ' ');
        let (_, keyword) = (parts.next(), parts.next());
        if !matches!(keyword, Some("HELP" | "TYPE")) {
            return Ok(());
        }
        let name = parts.next().ok_or("no metric name")?;
        if !name_ok(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        if self.done.contains(name) || self.current.as_deref() == Some(name) {
            return Err("HELP or TYPE after the family's samples".into());
        }
        let rest = parts.next().unwrap_or("");
        let family = self.families.entry(name.to_owned()).or_default();
        if keyword == Some("HELP") {
            if !self.helped.insert(name.to_owned()) {
                return Err("second HELP".into());
            }
            family.help = unescape_help(rest)?;
        } else {
            if !self.typed.insert(name.to_owned()) {
                return Err("second TYPE".into());
            }
            if !matches!(
                rest,
                "counter" | "gauge" | "histogram" | "summary" | "untyped"
            ) {
                return Err(format!("bad type {rest:?}"));
            }
            rest.clone_into(&mut family.kind);
        }
        Ok(())
    }

    /// A sample line.
    fn sample(&mut self, line: &str) -> Result<(), String> {
        let name_end = line.find(['{', ' ']).ok_or("no value")?;
        let name = &line[..name_end];
        if !name_ok(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..])?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
        let mut fields = rest.split(' ');
        let value = fields.next().and_then(parse_value).ok_or("bad value")?;
        if let Some(ts) = fields.next()
            && ts.parse::<i64>().is_err()
        {
            return Err("bad timestamp".into());
        }
        if fields.next().is_some() {
            return Err("trailing fields".into());
        }
        let family = family_of(name, &self.families).to_owned();
        self.check_family(&family, name, value)?;
        if self.current.as_deref() != Some(family.as_str()) {
            if self.done.contains(&family) {
                return Err("family's samples are not together".into());
            }
            if let Some(prev) = self.current.replace(family) {
                self.done.insert(prev);
            }
        }
        if !self.series.insert((name.to_owned(), labels.clone())) {
            return Err("the same series twice".into());
        }
        self.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
        Ok(())
    }

    /// The sample's family is declared, described, and its value fits.
    fn check_family(&self, family: &str, name: &str, value: f64) -> Result<(), String> {
        let f = self
            .families
            .get(family)
            .ok_or("sample without TYPE and HELP")?;
        if !self.typed.contains(family) {
            return Err("sample without TYPE".into());
        }
        if !self.helped.contains(family) || f.help.trim().is_empty() {
            return Err("sample without HELP text".into());
        }
        if f.kind == "counter" {
            if !name.ends_with("_total") {
                return Err("counter name without _total".into());
            }
            if value.is_nan() || value < 0.0 {
                return Err("counter value negative or NaN".into());
            }
        }
        Ok(())
    }
}

/// Parse `text` strictly (see the module docs).
pub fn parse(text: &str) -> Result<Exposition, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    let mut st = State::default();
    for (n, line) in text.lines().enumerate() {
        let r = match line.strip_prefix('#') {
            _ if line.is_empty() => Ok(()),
            Some(comment) => st.comment(comment),
            None => st.sample(line),
        };
        r.map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?;
    }
    Ok(Exposition {
        families: st.families.into_iter().collect(),
        samples: st.samples,
    })
}

/// `GET /metrics` from `addr` over HTTP/1.0: the status code, the
/// `Content-Type` header and the body.
pub fn scrape(addr: SocketAddr) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut content_type = String::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-type") {
                v.trim().clone_into(&mut content_type);
            }
            if k.eq_ignore_ascii_case("transfer-encoding") && v.trim() == "chunked" {
                return Err(bad("chunked reply to an HTTP/1.0 request"));
            }
        }
    }
    Ok((status, content_type, body.to_owned()))
}
