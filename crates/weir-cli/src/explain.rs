//! `weir list` and `weir explain`: every component of the registry
//! ([`weir_connectors::registry::COMPONENTS`]), with its documentation
//! generated from its configuration type (the same type that parses the
//! YAML), so the docs cannot drift from the code.

use std::io::Write;

use anyhow::{Result, bail};
use schemars::Schema;
use serde_json::Value;

use weir_connectors::registry::{COMPONENTS, Info, Kind};

/// The first sentence of the description (its first paragraph when that
/// has no full stop), on one line.
fn summary(s: &Schema) -> String {
    let d = s.get("description").and_then(Value::as_str).unwrap_or("");
    let paragraph = d.split("\n\n").next().unwrap_or("");
    let text = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.find(". ") {
        Some(i) => text[..=i].to_string(),
        None => text,
    }
}

pub fn list(kind: Option<&str>) -> Result<()> {
    if let Some(k) = kind
        && !["source", "processor", "sink"].contains(&k)
    {
        bail!("unknown kind '{k}': expected source, processor or sink");
    }
    // Names line up in a column as wide as the longest.
    let width = COMPONENTS.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for c in COMPONENTS
        .iter()
        .filter(|c| kind.is_none_or(|k| k == c.kind.as_str()))
    {
        let line = writeln!(
            out,
            "{:<10} {:<width$} {}",
            c.kind.as_str(),
            c.name,
            summary(&(c.schema)())
        );
        match line {
            Ok(()) => {}
            // `weir list | head`: the reader has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub fn explain(name: &str) -> Result<()> {
    let found: Vec<&Info> = COMPONENTS.iter().filter(|c| c.name == name).collect();
    if found.is_empty() {
        let names = |kind: Kind| weir_connectors::registry::names(kind).join(", ");
        bail!(
            "unknown component '{name}'; sources: {}; processors: {}; sinks: {}",
            names(Kind::Source),
            names(Kind::Processor),
            names(Kind::Sink)
        );
    }
    let texts: Vec<String> = found.into_iter().map(describe).collect();
    print!("{}", texts.join("\n"));
    Ok(())
}

/// The text `weir explain` prints for one component.
pub fn describe(c: &Info) -> String {
    use std::fmt::Write as _;
    let s = (c.schema)();
    let mut out = String::new();
    let _ = writeln!(out, "{} ({})", c.name, c.kind.as_str());
    if let Some(d) = s.get("description").and_then(Value::as_str) {
        let _ = writeln!(out, "\n{d}");
    }
    let required: Vec<&str> = s
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        let _ = writeln!(out, "\noptions:");
        for (name, p) in props {
            let ty = type_name(&s, p, 0);
            let req = if required.contains(&name.as_str()) {
                " (required)"
            } else {
                ""
            };
            let default = p
                .get("default")
                .map(|d| format!(" [default: {d}]"))
                .unwrap_or_default();
            let _ = writeln!(out, "  {name}: {ty}{req}{default}");
            if let Some(d) = p.get("description").and_then(Value::as_str) {
                for line in d.lines() {
                    let _ = writeln!(out, "      {line}");
                }
            }
        }
    }
    let _ = writeln!(out, "\nexample:");
    for line in c.example.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// How an option's type reads in `weir explain`: `string`, `integer`,
/// `"jsonl" | "csv" | null`, `"all" | {count: integer} | ...`; references
/// into the schema's `$defs` are followed.
fn type_name(root: &Schema, p: &Value, depth: usize) -> String {
    if depth > 8 {
        return "value".into();
    }
    if let Some(c) = p.get("const") {
        return c.to_string();
    }
    if let Some(e) = p.get("enum").and_then(Value::as_array) {
        return e
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(" | ");
    }
    if let Some(r) = p.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or("");
        return match root
            .get("$defs")
            .or_else(|| root.get("definitions"))
            .and_then(|d| d.get(name))
        {
            Some(def) => type_name(root, def, depth + 1),
            None => "value".into(),
        };
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = p.get(key).and_then(Value::as_array) {
            let mut names: Vec<String> = Vec::new();
            for a in alts {
                let n = type_name(root, a, depth + 1);
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            return names.join(" | ");
        }
    }
    if let Some(t) = p.get("type") {
        // An externally tagged enum variant with options: `{count: integer}`.
        if t == "object"
            && let Some(props) = p.get("properties").and_then(Value::as_object)
            && props.len() == 1
            && p.get("required").and_then(Value::as_array).map(Vec::len) == Some(1)
        {
            let (k, v) = props.iter().next().expect("one property");
            return format!("{{{k}: {}}}", type_name(root, v, depth + 1));
        }
        return match t {
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" | "),
            _ => "value".into(),
        };
    }
    "value".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_documents_every_option_and_its_example_parses() {
        for c in COMPONENTS {
            let s = (c.schema)();
            assert!(!summary(&s).is_empty(), "{} has no description", c.name);
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (name, p) in props {
                    assert!(
                        p.get("description").is_some(),
                        "{}.{name} has no doc",
                        c.name
                    );
                }
            }
            let text = describe(c);
            assert!(text.contains("example:"));
        }
    }
}
