//! Errors that point at the place in the file and say how to fix it.

use std::fmt;
use std::ops::Range;

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Dotted key, e.g. `pool.backends.address`; empty for whole-file problems.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// Byte range in the source text.
    pub span: Option<Range<usize>>,
    /// 1-based line and column of the span's start, filled in by [`ConfigErrors`].
    pub position: Option<(usize, usize)>,
}

impl Diagnostic {
    /// A diagnostic for `key` without a location yet.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            key: key.into(),
            message: message.into(),
            hint: None,
            span: None,
            position: None,
        }
    }

    /// Adds the fix to suggest.
    pub fn hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    /// Sets the byte range the diagnostic points at.
    pub fn at(mut self, span: Range<usize>) -> Diagnostic {
        self.span = Some(span);
        self
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file's name as the user gave it.
    pub origin: String,
    /// The problems, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigErrors {
    pub(crate) fn single(origin: String, diagnostic: Diagnostic) -> ConfigErrors {
        ConfigErrors {
            origin,
            diagnostics: vec![diagnostic],
        }
    }

    /// Resolves spans against `text` into line and column, and sorts by position.
    pub(crate) fn locate(
        origin: &str,
        text: &str,
        mut diagnostics: Vec<Diagnostic>,
    ) -> ConfigErrors {
        for d in &mut diagnostics {
            if let Some(span) = &d.span {
                d.position = Some(line_col(text, span.start));
            }
        }
        diagnostics.sort_by_key(|d| d.position.unwrap_or((0, 0)));
        ConfigErrors {
            origin: origin.to_string(),
            diagnostics,
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

impl Diagnostic {
    /// `FILE:LINE:COL: key: message (hint)`, `label` (such as "warning: ") before
    /// the key.
    pub fn render(&self, origin: &str, label: &str) -> String {
        let mut out = origin.to_string();
        if let Some((line, col)) = self.position {
            out += &format!(":{line}:{col}");
        }
        out += ": ";
        out += label;
        if !self.key.is_empty() {
            out += &format!("{}: ", self.key);
        }
        out += &self.message;
        if let Some(hint) = &self.hint {
            out += &format!(" ({hint})");
        }
        out
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", d.render(&self.origin, ""))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
