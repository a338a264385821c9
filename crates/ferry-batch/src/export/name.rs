//! File-name templates: `orders-{window_start:%Y%m%d}-{part:03}.{ext}`.
//!
//! Placeholders:
//!
//! | placeholder | becomes |
//! |---|---|
//! | `{job}` | the job's name |
//! | `{window_start}`, `{window_start:<strftime>}` | the window's start, in UTC, formatted by chrono's strftime (default `%Y%m%dT%H%M%SZ`); a watermark window's value as is |
//! | `{window_end}`, `{window_end:<strftime>}` | the window's end, the same way |
//! | `{run_id}` | the run's id (a re-run gets another: leave it out to keep names stable) |
//! | `{part}`, `{part:03}` | the part number from 1, optionally zero-padded to a width |
//! | `{ext}` | `csv` or `jsonl`, with `.gz` when gzip |
//!
//! `{{` and `}}` are a literal brace. An unknown placeholder or a bad
//! strftime format is refused when the job is loaded.

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, Utc};
use ferry_core::Failure;

/// The default data file name: stable across re-runs of a window.
pub const DEFAULT_FILE_NAME: &str = "{job}-{window_start:%Y%m%dT%H%M%SZ}-{part:03}.{ext}";

/// The default batch name (the manifest is `<batch>.manifest.json`).
pub const DEFAULT_BATCH_NAME: &str = "{job}-{window_start:%Y%m%dT%H%M%SZ}";

const DEFAULT_TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    text: String,
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Job,
    WindowStart(String),
    WindowEnd(String),
    RunId,
    Part(usize),
    Ext,
}

/// A window bound as a template shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    /// A time: formatted by the placeholder's strftime.
    Time(DateTime<Utc>),
    /// A watermark value: shown as is, characters other than letters,
    /// digits, `-`, `_` and `.` replaced by `_`.
    Value(String),
}

/// What a template is filled with.
#[derive(Clone, Debug)]
pub struct Values<'a> {
    /// The job's name.
    pub job: &'a str,
    /// The window's start.
    pub window_start: &'a Bound,
    /// The window's end.
    pub window_end: &'a Bound,
    /// The run's id.
    pub run_id: &'a str,
    /// The part number (from 1).
    pub part: u32,
    /// `csv`, `jsonl`, `csv.gz` or `jsonl.gz`.
    pub ext: &'a str,
}

impl Template {
    /// Parses `text`; `key` names the config key in errors (`file_name`).
    pub fn parse(key: &str, text: &str) -> Result<Self, Failure> {
        let bad = |why: String| Failure::permanent(format!("{key} = {text:?}: {why}"));
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(bad("a `}` without its `{` (write `}}` for a brace)".into())),
                '{' => {
                    let mut inner = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        inner.push(c);
                    }
                    if !closed {
                        return Err(bad("a `{` without its `}`".into()));
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(placeholder(&inner).map_err(bad)?);
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Self {
            text: text.to_owned(),
            pieces,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it names `{part}` (needed when a run writes several parts).
    pub fn has_part(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Part(_)))
    }

    /// Whether it names `{run_id}` (names then change on a re-run).
    pub fn has_run_id(&self) -> bool {
        self.pieces.contains(&Piece::RunId)
    }

    /// The name for `values`.
    pub fn render(&self, values: &Values<'_>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Job => out.push_str(values.job),
                Piece::WindowStart(f) => out.push_str(&bound(values.window_start, f)),
                Piece::WindowEnd(f) => out.push_str(&bound(values.window_end, f)),
                Piece::RunId => out.push_str(values.run_id),
                Piece::Part(width) => out.push_str(&format!("{:0width$}", values.part)),
                Piece::Ext => out.push_str(values.ext),
            }
        }
        out
    }
}

fn placeholder(inner: &str) -> Result<Piece, String> {
    let (name, arg) = match inner.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (inner, None),
    };
    let time_format = |arg: Option<&str>| -> Result<String, String> {
        let f = arg.unwrap_or(DEFAULT_TIME_FORMAT);
        if f.is_empty() || StrftimeItems::new(f).any(|i| matches!(i, Item::Error)) {
            return Err(format!("{{{inner}}} has a bad strftime format {f:?}"));
        }
        Ok(f.to_owned())
    };
    let no_arg = |piece: Piece| match arg {
        None => Ok(piece),
        Some(_) => Err(format!("{{{name}}} takes no `:` format, got {{{inner}}}")),
    };
    match name {
        "job" => no_arg(Piece::Job),
        "run_id" => no_arg(Piece::RunId),
        "ext" => no_arg(Piece::Ext),
        "window_start" => Ok(Piece::WindowStart(time_format(arg)?)),
        "window_end" => Ok(Piece::WindowEnd(time_format(arg)?)),
        "part" => match arg {
            None => Ok(Piece::Part(0)),
            Some(w) => match w.parse::<usize>() {
                Ok(width) if width <= 12 => Ok(Piece::Part(width)),
                _ => Err(format!(
                    "{{{inner}}}: the part's width must be a number up to 12, such as {{part:03}}"
                )),
            },
        },
        other => Err(format!(
            "unknown placeholder {{{other}}} (known: job, window_start, window_end, run_id, part, ext)"
        )),
    }
}

fn bound(b: &Bound, format: &str) -> String {
    match b {
        Bound::Time(t) => t.format(format).to_string(),
        Bound::Value(v) => v
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(start: &'a Bound, end: &'a Bound, part: u32) -> Values<'a> {
        Values {
            job: "orders",
            window_start: start,
            window_end: end,
            run_id: "r1",
            part,
            ext: "csv.gz",
        }
    }

    #[test]
    fn fills_every_placeholder() {
        let start = Bound::Time("2026-12-06T00:00:00Z".parse().unwrap());
        let end = Bound::Time("2026-12-07T00:00:00Z".parse().unwrap());
        let t = Template::parse(
            "file_name",
            "{job}/{window_start:%Y%m%d}-{window_end:%d}-{part:03}-{part}-{run_id}.{ext}{{x}}",
        )
        .unwrap();
        assert_eq!(
            t.render(&values(&start, &end, 7)),
            "orders/20261206-07-007-7-r1.csv.gz{x}"
        );
        assert!(t.has_part() && t.has_run_id());
        let d = Template::parse("file_name", DEFAULT_FILE_NAME).unwrap();
        assert_eq!(
            d.render(&values(&start, &end, 2)),
            "orders-20261206T000000Z-002.csv.gz"
        );
        assert!(!d.has_run_id());
        let w = Bound::Value("10 0/".into());
        assert_eq!(
            Template::parse("b", "{window_start}")
                .unwrap()
                .render(&values(&w, &w, 1)),
            "10_0_"
        );
    }

    #[test]
    fn refuses_unknown_placeholders_naming_them() {
        let e = Template::parse("file_name", "{job}-{date}.csv").unwrap_err();
        assert!(
            e.message.contains("file_name = ") && e.message.contains("{date}"),
            "{}",
            e.message
        );
        assert!(Template::parse("file_name", "{part:x}").is_err());
        assert!(Template::parse("file_name", "{job").is_err());
        assert!(Template::parse("file_name", "job}").is_err());
        assert!(Template::parse("file_name", "{job:x}").is_err());
        assert!(Template::parse("file_name", "{window_start:%Q}").is_err());
    }
}
