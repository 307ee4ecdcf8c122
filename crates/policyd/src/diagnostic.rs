//! Errors and warnings about a policy file, with file, line and column, in a
//! form people can act on and scripts can parse.

use std::{fmt, ops::Range, sync::Arc};

use serde::{Deserialize, Serialize};

/// A position in a policy file, 1-based.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Location {
    /// Shared by every location in the file: a policy holds one per rule.
    pub file: Arc<str>,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a policy file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub location: Option<Location>,
    pub message: String,
    /// The offending source line, for the caret display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_line: Option<String>,
}

impl Diagnostic {
    /// A warning with no source line: about a policy (`location`), or
    /// about the inventory or the kernel's maps.
    pub fn warning(location: Option<Location>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            location,
            message: message.into(),
            source_line: None,
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.location {
            Some(loc) => write!(f, "{loc}: {severity}: {}", self.message)?,
            None => write!(f, "{severity}: {}", self.message)?,
        }
        if let (Some(loc), Some(line)) = (&self.location, &self.source_line) {
            let gutter = loc.line.to_string().len();
            let caret_pad: String = line
                .chars()
                .take(loc.column.saturating_sub(1) as usize)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(
                f,
                "\n{:gutter$} |\n{} | {line}\n{:gutter$} | {caret_pad}^",
                "", loc.line, ""
            )?;
        }
        Ok(())
    }
}

/// A policy file's text with its line starts, to turn byte offsets into
/// locations.
#[derive(Clone, Debug)]
pub struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
    line_starts: Vec<usize>,
    file: Arc<str>,
}

impl<'a> Source<'a> {
    pub fn new(name: &'a str, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            name,
            text,
            line_starts,
            file: name.into(),
        }
    }

    /// The location of a byte offset (clamped to the text).
    pub fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        // The first line starts at 0: at least one start is not after it.
        let line_index = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let line_start = self.line_starts[line_index];
        let column = self
            .text
            .get(line_start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0);
        Location {
            file: self.file.clone(),
            line: line_index as u32 + 1,
            column: column as u32 + 1,
        }
    }

    fn line_text(&self, line: u32) -> Option<String> {
        let start = *self.line_starts.get(line.checked_sub(1)? as usize)?;
        let rest = self.text.get(start..)?;
        Some(
            rest.split('\n')
                .next()
                .unwrap_or("")
                .trim_end_matches('\r')
                .to_string(),
        )
    }

    pub fn diagnostic(
        &self,
        severity: Severity,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Diagnostic {
        let location = span.map(|s| self.location(s.start));
        let source_line = location.as_ref().and_then(|l| self.line_text(l.line));
        Diagnostic {
            severity,
            location,
            message: message.into(),
            source_line,
        }
    }

    pub fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
        self.diagnostic(Severity::Error, span, message)
    }

    pub fn warning(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
        self.diagnostic(Severity::Warning, span, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let src = Source::new("p.toml", "a = 1\nbb = 2\n\nccc");
        assert_eq!(
            src.location(0),
            Location {
                file: "p.toml".into(),
                line: 1,
                column: 1
            }
        );
        assert_eq!(src.location(7).line, 2);
        assert_eq!(src.location(7).column, 2);
        assert_eq!(src.location(14).line, 4);
        assert_eq!(src.location(999).line, 4);
    }

    #[test]
    fn display_has_caret_under_column() {
        let src = Source::new("p.toml", "x = 1\nports = [70000]\n");
        let d = src.error(Some(15..20), "port 70000 is out of range");
        let text = d.to_string();
        assert!(text.starts_with("p.toml:2:10: error: port 70000"), "{text}");
        assert!(text.ends_with("|          ^"), "{text}");
    }
}
