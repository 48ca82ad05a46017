//! Diagnostics: problems in a pipeline file, rendered like a compiler's
//! (file, line, column, the line itself and a caret).

use std::fmt::Write as _;

/// One problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// What is wrong.
    pub message: String,
    /// 1-based line and column, when known.
    pub at: Option<(u64, u64)>,
    /// Other places the problem involves (the input an output would
    /// overwrite, say), each shown with its line.
    pub notes: Vec<(String, (u64, u64))>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, at: Option<(u64, u64)>) -> Self {
        Diagnostic {
            message: message.into(),
            at,
            notes: Vec::new(),
        }
    }

    /// A diagnostic at the position of a spanned YAML value.
    pub fn at<T>(message: impl Into<String>, span: &serde_saphyr::Spanned<T>) -> Self {
        Diagnostic::new(message, Some(location(span)))
    }

    /// Adds a note pointing at another YAML value.
    pub fn note<T>(mut self, message: impl Into<String>, span: &serde_saphyr::Spanned<T>) -> Self {
        self.notes.push((message.into(), location(span)));
        self
    }
}

fn location<T>(span: &serde_saphyr::Spanned<T>) -> (u64, u64) {
    let l = span.referenced;
    (l.line(), l.column())
}

impl From<weir_connectors::ConfigError> for Diagnostic {
    fn from(e: weir_connectors::ConfigError) -> Self {
        Diagnostic::new(e.message, e.at)
    }
}

/// Renders diagnostics rustc-style, each note with its own snippet:
///
/// ```text
/// error: unknown stage 'dedup' in `from`
///   --> pipeline.yaml:23:11
///    |
/// 23 |     from: dedup
///    |           ^
/// ```
pub fn render(file: &str, source: &str, diags: &[Diagnostic]) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let mut out = String::new();
    for d in diags {
        let _ = writeln!(out, "error: {}", d.message);
        snippet(&mut out, file, &lines, d.at);
        for (message, at) in &d.notes {
            let _ = writeln!(out, "note: {message}");
            snippet(&mut out, file, &lines, Some(*at));
        }
        out.push('\n');
    }
    let n = diags.len();
    let _ = write!(out, "{n} error{} in {file}", if n == 1 { "" } else { "s" });
    out
}

/// `  --> file:line:col`, then the line with a caret under the column.
fn snippet(out: &mut String, file: &str, lines: &[&str], at: Option<(u64, u64)>) {
    match at {
        Some((line, col)) if line >= 1 => {
            let _ = writeln!(out, "  --> {file}:{line}:{col}");
            if let Some(text) = lines.get(line as usize - 1) {
                let num = line.to_string();
                let pad = " ".repeat(num.len());
                let caret = " ".repeat(col.saturating_sub(1) as usize);
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{num} | {text}");
                let _ = writeln!(out, "{pad} | {caret}^");
            }
        }
        _ => {
            let _ = writeln!(out, "  --> {file}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_and_caret() {
        let src = "a: 1\nfrom: dedup\n";
        let text = render(
            "p.yaml",
            src,
            &[Diagnostic::new("unknown stage 'dedup'", Some((2, 7)))],
        );
        assert_eq!(
            text,
            "error: unknown stage 'dedup'\n  --> p.yaml:2:7\n  |\n2 | from: dedup\n  |       ^\n\n1 error in p.yaml"
        );
    }
}
