//! `html`: extract values from HTML pages by CSS selectors (crawling).
//!
//! The processor reads a page's HTML text from the record (by default where
//! the [`http`](super::http) processor puts an answer's text,
//! `response.body`), parses it once with [scraper] (html5ever, the HTML5
//! parsing algorithm browsers use: malformed markup is repaired, never
//! refused), and puts one value per configured selector into an object at
//! `into`. Links (`href`, `src`) are resolved against the page URL
//! (`response.url`, the final URL after redirects, or the page's own
//! `<base href>`), without their `#fragment` so that a downstream `dedupe`
//! sees one URL per page; only `http` and `https` links are kept.
//!
//! # Untrusted pages
//! A page is whatever a server sent. Its size is bounded upstream (the
//! `http` processor's `max_response_bytes`; a text body that is not UTF-8
//! is dead-lettered there). Parsing and selecting walk the document with
//! loops, not recursion, so a deeply nested page does not overflow a
//! worker's stack. Nesting costs time, though: the HTML parsing algorithm
//! looks through the elements still open for each new tag, so parse time
//! grows with the square of the nesting (100,000 nested `<div>`s, 500 KB,
//! take minutes). The page is therefore fed to the parser in chunks of
//! [`CHUNK`] bytes, and one that holds more than `max_nesting` elements
//! open is dead-lettered (`html_too_deep`) at the end of the chunk where it
//! does: parse time stays linear in the page's size. The values one
//! selector yields are bounded by `max_values`, so a page with a million
//! links makes a record of at most that many.
//!
//! [scraper]: https://docs.rs/scraper

use std::collections::HashSet;
use std::fmt;

use scraper::{ElementRef, Html, Node, Selector};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

use super::{Processor, ProcessorContext};
use crate::error::{ConfigError, ProcessError};
use crate::record::Record;
use crate::value::{self, Val};

/// Extract values from HTML pages by CSS selectors; links are resolved
/// against the page URL.
///
/// Reads the HTML text at `html` (by default the `http` processor's
/// answer), and puts an object with one field per `extract` entry at
/// `into`. A record whose `html` field is missing or not a string (a JSON
/// answer, say) is dead-lettered with reason `html_input`, as is one whose
/// page URL is missing or not a URL when a link has to be resolved; a
/// `null` body (the `http` processor's empty answer) is an empty page.
/// Malformed HTML is not an error: it is repaired the way browsers repair
/// it.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HtmlConfig {
    /// Where the HTML text is in the record: a field name, or a path of
    /// field names separated by dots. Default: `response.body` (where the
    /// `http` processor puts an answer's text).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub html: Option<Spanned<String>>,
    /// Where the page's URL is in the record, to resolve relative links
    /// against (a `<base href>` in the page takes precedence, as in a
    /// browser): a field name or dotted path. Read only when some entry
    /// resolves links. Default: `response.url` (the `http` processor's
    /// final URL, after redirects).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub base_url: Option<Spanned<String>>,
    /// The values to extract: output field name → what to take, in the
    /// order written (at least one). The short form `title: "h1"` is the
    /// text of the first element matching the CSS selector (`null` when
    /// none matches). The long form is a mapping:
    ///
    /// - `selector` (required): a CSS selector, for example `a[href]`,
    ///   `meta[name=description]` or `article > h2.title`.
    /// - `attr`: what to take from each matching element: `text` (the
    ///   default: its text, runs of whitespace made one space, trimmed;
    ///   text inside nested `script`, `style`, `template` and `noscript`
    ///   left out), `raw_text` (all of its text exactly as in the page),
    ///   `html` (the element's HTML), `inner_html` (its content's HTML), or
    ///   the name of an attribute (`href`, `src`, `content`, ...). An
    ///   element without that attribute is skipped.
    /// - `all`: `true` gives a list of the values of every matching
    ///   element (empty when none, at most `max_values`); `false` (the
    ///   default) the first value, or `null`.
    /// - `resolve`: resolve each value as a URL against the page URL and
    ///   keep only `http`/`https` URLs, without their `#fragment`
    ///   (`mailto:`, `javascript:` and unparseable links are skipped, not
    ///   errors). Default: `true` for `attr: href` and `attr: src`, else
    ///   `false`.
    /// - `unique`: with `all`, keep only the first of equal values.
    ///   Default: `false`.
    #[schemars(with = "std::collections::BTreeMap<String, Extract>")]
    pub extract: Extracts,
    /// Where the extracted object goes in the record: a field name or a
    /// dotted path (objects are created on the way; an existing value
    /// there is replaced). Default: `html`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub into: Option<Spanned<String>>,
    /// Keep the HTML text in the record. `true` (the default) passes the
    /// page on, for a crawler that stores pages; `false` removes the field
    /// at `html`, so that records that only need the extracted values (a
    /// crawl frontier fed back upstream) do not carry whole pages through
    /// the pipeline.
    #[serde(default = "default_keep_html")]
    pub keep_html: bool,
    /// Values one entry extracts from one page, at most: the list of an
    /// `all` entry stops there (the rest of the page's matches are left
    /// out, silently), so a hostile page cannot make a record of millions
    /// of values. Default: 10000.
    #[serde(default = "default_max_values")]
    pub max_values: usize,
    /// Elements a page may hold open at once while it is parsed (its
    /// nesting depth, counting formatting elements such as `<b>` that are
    /// still in effect): a page over it is dead-lettered with reason
    /// `html_too_deep`. Parse time grows with the square of the nesting,
    /// so this bound keeps a hostile page from taking a worker for
    /// minutes. Under it, the parser's work per tag is still up to this
    /// many steps, so a page's worst-case parse time is its size times
    /// this bound. Real pages stay under a few hundred (browsers stop
    /// nesting at 512); raise it for sloppy pages that leave thousands of
    /// tags unclosed. Default: 1024.
    #[serde(default = "default_max_nesting")]
    pub max_nesting: usize,
    /// Bytes of text the entries extract from one page, all together, at
    /// most: a page whose values would be more is dead-lettered with reason
    /// `html_too_large`. The text or HTML of an element includes its whole
    /// subtree, so `all: true` over nested elements can repeat a page
    /// hundreds of times. Default: 4194304 (4 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

fn default_max_bytes() -> usize {
    4 << 20
}

/// Attributes one tag may have: real tags have a few dozen; the parser's
/// duplicate check is quadratic in them, so a page with a tag of more is
/// dead-lettered (`html_too_many_attributes`) before it is parsed.
pub const MAX_ATTRIBUTES: usize = 1000;

/// [`HtmlConfig::max_nesting`] when not set: twice the depth at which
/// browsers stop nesting elements (Chromium's 512), so a page a browser
/// shows is not refused, while the parser's work per tag stays bounded.
pub const DEFAULT_MAX_NESTING: usize = 1024;

fn default_max_nesting() -> usize {
    DEFAULT_MAX_NESTING
}

/// Bytes of HTML given to the parser at a time; the nesting is checked
/// after each. Small enough that the tags of one chunk (at most a third
/// of its bytes) over a deep stack cost little, large enough that the
/// check (a walk over the open elements) is rare.
pub const CHUNK: usize = 4096;

fn default_keep_html() -> bool {
    true
}

/// [`HtmlConfig::max_values`] when not set: more links than a real page
/// has (a large index page has a few thousand), few enough that a record
/// stays a few hundred kilobytes.
pub const DEFAULT_MAX_VALUES: usize = 10_000;

fn default_max_values() -> usize {
    DEFAULT_MAX_VALUES
}

/// One `extract` entry: a CSS selector alone (the text of its first match)
/// or the long form.
#[derive(Debug, Clone, schemars::JsonSchema)]
#[schemars(untagged)]
pub enum Extract {
    /// The text of the first element matching this CSS selector.
    Selector(String),
    /// The long form.
    Entry(ExtractEntry),
}

impl<'de> Deserialize<'de> for Extract {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Extract;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CSS selector, or a mapping with `selector`, `attr`, `all`, ...")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Extract, E> {
                Ok(Extract::Selector(s.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Extract, A::Error> {
                ExtractEntry::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Extract::Entry)
            }
        }
        d.deserialize_any(V)
    }
}

/// The long form of an `extract` entry (see `extract`).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractEntry {
    /// A CSS selector, for example `a[href]`.
    #[schemars(with = "String")]
    pub selector: Spanned<String>,
    /// What to take from each matching element: `text` (default),
    /// `raw_text`, `html`, `inner_html`, or an attribute name.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub attr: Option<Spanned<String>>,
    /// Every match as a list (`true`), or the first match (`false`, the
    /// default).
    #[serde(default)]
    pub all: bool,
    /// Resolve values as URLs against the page URL, keeping http(s) only,
    /// fragments dropped. Default: `true` for `href` and `src`.
    #[serde(default)]
    pub resolve: Option<bool>,
    /// With `all`, keep only the first of equal values. Default: `false`.
    #[serde(default)]
    pub unique: bool,
}

/// The `extract` entries in the order they are written.
#[derive(Debug, Clone, Default)]
pub struct Extracts(pub Vec<(String, Spanned<Extract>)>);

impl<'de> Deserialize<'de> for Extracts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Extracts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of output field names to CSS selectors")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Extracts, A::Error> {
                let mut entries: Vec<(String, Spanned<Extract>)> = Vec::new();
                while let Some((name, e)) = map.next_entry::<String, Spanned<Extract>>()? {
                    if entries.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!(
                            "duplicate extract field '{name}'"
                        )));
                    }
                    entries.push((name, e));
                }
                Ok(Extracts(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// A minimal `html` configuration.
pub const EXAMPLE: &str = "\
extract:
  title: title
  links: { selector: \"a[href]\", attr: href, all: true, unique: true }
keep_html: false
";

impl HtmlConfig {
    /// Parses the selectors and paths.
    ///
    /// # Errors
    /// No `extract` entry, an empty field name, a CSS selector that does
    /// not parse (at its YAML location), an empty `attr`, a path that is
    /// not a dotted path of field names, or `max_values` or `max_nesting`
    /// of 0.
    pub fn build(&self, _ctx: &ProcessorContext) -> Result<HtmlExtractor, ConfigError> {
        if self.extract.0.is_empty() {
            return Err(ConfigError::new(
                "html processor: `extract` needs at least one entry",
            ));
        }
        if self.max_values == 0 || self.max_nesting == 0 || self.max_bytes == 0 {
            return Err(ConfigError::new(
                "html processor: max_values, max_nesting and max_bytes must be at least 1",
            ));
        }
        let mut entries = Vec::with_capacity(self.extract.0.len());
        for (name, e) in &self.extract.0 {
            if name.is_empty() {
                return Err(ConfigError::at(
                    "html processor: an extract field name must not be empty",
                    e,
                ));
            }
            entries.push(Entry::build(name, e)?);
        }
        Ok(HtmlExtractor {
            html: path_option(self.html.as_ref(), "html", "response.body")?,
            base_url: path_option(self.base_url.as_ref(), "base_url", "response.url")?,
            into: path_option(self.into.as_ref(), "into", "html")?,
            keep_html: self.keep_html,
            max_values: self.max_values,
            max_nesting: self.max_nesting,
            max_bytes: self.max_bytes,
            resolves: entries.iter().any(|e| e.resolve),
            entries,
            base_selector: Selector::parse("base[href]").expect("a valid selector"),
        })
    }
}

/// The field names of a path option, or of its default.
fn path_option(
    option: Option<&Spanned<String>>,
    name: &str,
    default: &str,
) -> Result<Vec<String>, ConfigError> {
    let Some(s) = option else {
        return Ok(default.split('.').map(str::to_owned).collect());
    };
    super::http::parse_path(&s.value).ok_or_else(|| {
        ConfigError::at(
            format!(
                "html processor: `{name}` must be a field name or a dotted path of field names"
            ),
            s,
        )
    })
}

/// What an entry takes from an element.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Take {
    Text,
    RawText,
    Html,
    InnerHtml,
    Attr(String),
}

/// One compiled `extract` entry.
#[derive(Debug)]
struct Entry {
    name: String,
    selector: Selector,
    take: Take,
    all: bool,
    resolve: bool,
    unique: bool,
}

impl Entry {
    fn build(name: &str, e: &Spanned<Extract>) -> Result<Entry, ConfigError> {
        let (selector, span, attr, all, resolve, unique) = match &e.value {
            Extract::Selector(s) => (s.as_str(), e.referenced, None, false, None, false),
            Extract::Entry(x) => (
                x.selector.value.as_str(),
                x.selector.referenced,
                x.attr.as_ref(),
                x.all,
                x.resolve,
                x.unique,
            ),
        };
        let bad_selector = |why: String| ConfigError {
            message: format!("html processor: extract '{name}': {why}"),
            at: Some((span.line(), span.column())),
        };
        if selector.trim().is_empty() {
            return Err(bad_selector("the CSS selector is empty".to_owned()));
        }
        let selector = Selector::parse(selector)
            .map_err(|err| bad_selector(format!("`{selector}` is not a CSS selector: {err}")))?;
        let take = match attr {
            None => Take::Text,
            Some(a) => match a.value.trim().to_ascii_lowercase().as_str() {
                "" => {
                    return Err(ConfigError::at(
                        format!("html processor: extract '{name}': `attr` must not be empty"),
                        a,
                    ));
                }
                "text" => Take::Text,
                "raw_text" => Take::RawText,
                "html" => Take::Html,
                "inner_html" => Take::InnerHtml,
                other => Take::Attr(other.to_owned()),
            },
        };
        let link = matches!(&take, Take::Attr(a) if a == "href" || a == "src");
        Ok(Entry {
            name: name.to_owned(),
            selector,
            take,
            all,
            resolve: resolve.unwrap_or(link),
            unique,
        })
    }

    /// The entry's value on `doc`: a list with `all`, else the first value
    /// or `null`; `Err` when the values would take more than `budget`
    /// bytes (what is left of `max_bytes`; reduced by what this entry
    /// takes).
    fn extract(
        &self,
        doc: &Html,
        base: Option<&url::Url>,
        max: usize,
        budget: &mut usize,
    ) -> Result<Val, ()> {
        let limit = if self.all { max } else { 1 };
        let mut values: Vec<Val> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for el in doc.select(&self.selector) {
            let Some(v) = self.value_of(el, base) else {
                continue;
            };
            if self.unique && self.all && !seen.insert(v.clone()) {
                continue;
            }
            *budget = budget.checked_sub(v.len()).ok_or(())?;
            values.push(value::string(v));
            if values.len() >= limit {
                break;
            }
        }
        Ok(if self.all {
            Val::Arr(jaq_json::Rc::new(values))
        } else {
            values.pop().unwrap_or(Val::Null)
        })
    }

    /// What the entry takes from `el`; `None` when it has nothing (no such
    /// attribute, a link that does not resolve to an http(s) URL).
    fn value_of(&self, el: ElementRef<'_>, base: Option<&url::Url>) -> Option<String> {
        let v = match &self.take {
            Take::Text => text(el),
            Take::RawText => el.text().collect(),
            Take::Html => el.html(),
            Take::InnerHtml => el.inner_html(),
            Take::Attr(a) => el.value().attr(a)?.to_owned(),
        };
        if !self.resolve {
            return Some(v);
        }
        resolve(
            base.expect("the page URL is read when an entry resolves"),
            &v,
        )
    }
}

/// The text of `el` as a reader sees it: its text nodes, without what is
/// inside nested `script`, `style`, `template` and `noscript` elements
/// (`el` itself may be one: the JSON-LD of a `script` is its text), runs
/// of ASCII whitespace (HTML's whitespace; a no-break space stays) made
/// one space, trimmed. A loop over the subtree, not recursion: untrusted
/// pages nest deep.
fn text(el: ElementRef<'_>) -> String {
    let root = *el;
    let mut raw = String::new();
    let mut next = root.first_child();
    while let Some(node) = next {
        let descend = match node.value() {
            Node::Text(t) => {
                raw.push_str(t);
                false
            }
            Node::Element(e) => !matches!(e.name(), "script" | "style" | "template" | "noscript"),
            _ => false,
        };
        next = if descend { node.first_child() } else { None };
        // Then the next sibling of the node or of its nearest ancestor
        // below `root` that has one.
        let mut at = node;
        while next.is_none() {
            if let Some(s) = at.next_sibling() {
                next = Some(s);
            } else if let Some(p) = at.parent().filter(|p| *p != root) {
                at = p;
            } else {
                break;
            }
        }
    }
    let mut out = String::with_capacity(raw.len());
    for word in raw.split_ascii_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// `html` parsed as a document, as [`Html::parse_document`] does, but in
/// chunks of [`CHUNK`] bytes with the elements held open counted after
/// each: `Err` with that count when it goes over `max_nesting`.
fn parse_document(html: &str, max_nesting: usize) -> Result<Html, usize> {
    use html5ever::tendril::{StrTendril, TendrilSink};
    let mut parser = html5ever::parse_document(
        scraper::HtmlTreeSink::new(Html::new_document()),
        html5ever::ParseOpts::default(),
    );
    let mut rest = html;
    while !rest.is_empty() {
        let mut cut = CHUNK.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        let (chunk, tail) = rest.split_at(cut);
        parser.process(StrTendril::from(chunk));
        rest = tail;
        let open = Count(std::cell::Cell::new(0));
        // Every handle the tree builder holds: the document, the open
        // elements, the active formatting elements (and head, form).
        parser.tokenizer.sink.trace_handles(&open);
        let open = open.0.get();
        if open > max_nesting {
            return Err(open);
        }
    }
    Ok(parser.finish())
}

/// Counts the handles a tree builder holds.
struct Count(std::cell::Cell<usize>);

impl html5ever::interface::Tracer for Count {
    type Handle = <scraper::HtmlTreeSink as html5ever::interface::TreeSink>::Handle;

    fn trace_handle(&self, _: &Self::Handle) {
        self.0.set(self.0.get() + 1);
    }
}

/// `link` resolved against `base`, without its fragment; `None` unless it
/// is an http or https URL (`mailto:`, `javascript:`, `data:`, a link that
/// does not parse).
fn resolve(base: &url::Url, link: &str) -> Option<String> {
    let mut url = base.join(link).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    url.set_fragment(None);
    Some(url.into())
}

/// The `html` processor: see [`HtmlConfig`].
#[derive(Debug)]
pub struct HtmlExtractor {
    html: Vec<String>,
    base_url: Vec<String>,
    into: Vec<String>,
    keep_html: bool,
    max_values: usize,
    max_nesting: usize,
    max_bytes: usize,
    /// Some entry resolves links: the page URL is needed.
    resolves: bool,
    entries: Vec<Entry>,
    base_selector: Selector,
}

fn input_error(detail: String) -> ProcessError {
    ProcessError::new("html_input", detail)
}

impl HtmlExtractor {
    /// The page URL links are resolved against: the record's `base_url`
    /// field, or the page's `<base href>` resolved against it.
    fn base(&self, record: &Record, doc: &Html) -> Result<url::Url, ProcessError> {
        let path = self.base_url.join(".");
        let text = match get_path(&record.value, &self.base_url) {
            None => {
                return Err(input_error(format!(
                    "the record has no field `{path}` (the page URL, option `base_url`) to resolve links against"
                )));
            }
            Some(v) => value::as_str(v).ok_or_else(|| {
                input_error(format!(
                    "field `{path}` (the page URL, option `base_url`) is {}, not a URL",
                    kind(v)
                ))
            })?,
        };
        let page = url::Url::parse(text).map_err(|e| {
            input_error(format!(
                "field `{path}` (the page URL, option `base_url`) is not a URL ({e}): {}",
                excerpt(text)
            ))
        })?;
        // The document's base URL, as a browser sets it: the first
        // `<base href>`, resolved against the page URL.
        Ok(doc
            .select(&self.base_selector)
            .next()
            .and_then(|b| b.value().attr("href"))
            .and_then(|href| page.join(href).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .unwrap_or(page))
    }
}

impl Processor for HtmlExtractor {
    fn process(&self, record: &Record, out: &mut Vec<Record>) -> Result<(), ProcessError> {
        let html = match get_path(&record.value, &self.html) {
            None => {
                return Err(input_error(format!(
                    "the record has no field `{}` (the HTML text, option `html`)",
                    self.html.join(".")
                )));
            }
            // The http processor's empty answer.
            Some(Val::Null) => "",
            Some(v) => value::as_str(v).ok_or_else(|| {
                input_error(format!(
                    "field `{}` (option `html`) is {}, not HTML text",
                    self.html.join("."),
                    kind(v)
                ))
            })?,
        };
        if let Some(n) = attributes_over(html, MAX_ATTRIBUTES) {
            return Err(ProcessError::new(
                "html_too_many_attributes",
                format!(
                    "the page at `{}` has a tag with more than {MAX_ATTRIBUTES} attributes (at least {n})",
                    self.html.join(".")
                ),
            ));
        }
        let doc = parse_document(html, self.max_nesting).map_err(|open| {
            ProcessError::new(
                "html_too_deep",
                format!(
                    "the page at `{}` nests more than {} elements deep ({open} open at once; option `max_nesting`)",
                    self.html.join("."),
                    self.max_nesting
                ),
            )
        })?;
        let base = if self.resolves {
            Some(self.base(record, &doc)?)
        } else {
            None
        };
        let mut budget = self.max_bytes;
        let mut fields = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let v = e
                .extract(&doc, base.as_ref(), self.max_values, &mut budget)
                .map_err(|()| {
                    ProcessError::new(
                        "html_too_large",
                        format!(
                            "the values extracted from the page at `{}` come to more than {} bytes (option `max_bytes`; at `{}`)",
                            self.html.join("."),
                            self.max_bytes,
                            e.name
                        ),
                    )
                })?;
            fields.push((e.name.as_str(), v));
        }
        let extracted = value::object(fields);
        drop(doc);
        let v = if self.keep_html {
            record.value.clone()
        } else {
            remove_path(&record.value, &self.html)
        };
        let v = super::http::set_path(&v, &self.into, extracted).map_err(|_| {
            ProcessError::new(
                "html_into",
                format!(
                    "the extracted values go into field `{}`, but the record (or a field on the way) is not an object",
                    self.into.join(".")
                ),
            )
        })?;
        out.push(record.derive(v));
        Ok(())
    }
}

/// Whether a tag of `html` has more than `max` attributes: the count
/// reached, or `None`. A byte scan, linear: inside a tag (`<` then a
/// letter, up to `>` outside quotes) each word after whitespace counts.
fn attributes_over(html: &str, max: usize) -> Option<usize> {
    let b = html.as_bytes();
    let (mut i, mut in_tag, mut quote, mut count, mut after_space) = (0, false, 0u8, 0usize, false);
    while i < b.len() {
        let c = b[i];
        if !in_tag {
            if c == b'<' && b.get(i + 1).is_some_and(u8::is_ascii_alphabetic) {
                in_tag = true;
                count = 0;
                after_space = false;
            }
        } else if quote != 0 {
            if c == quote {
                quote = 0;
            }
        } else {
            match c {
                b'>' => in_tag = false,
                b'"' | b'\'' => quote = c,
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => after_space = true,
                b'/' | b'=' => after_space = false,
                _ => {
                    if after_space {
                        count += 1;
                        if count > max {
                            return Some(count);
                        }
                    }
                    after_space = false;
                }
            }
        }
        i += 1;
    }
    None
}

/// The value at `path` in `v`, when every step is an object that has it.
fn get_path<'a>(v: &'a Val, path: &[String]) -> Option<&'a Val> {
    path.iter().try_fold(v, |v, key| value::get(v, key))
}

/// `v` without the value at `path` (unchanged when it has none).
fn remove_path(v: &Val, path: &[String]) -> Val {
    let (Val::Obj(o), Some((first, rest))) = (v, path.split_first()) else {
        return v.clone();
    };
    let Some(child) = value::field(o, first) else {
        return v.clone();
    };
    let mut map = (**o).clone();
    let key = value::string(first.as_str());
    if rest.is_empty() {
        map.shift_remove(&key);
    } else {
        let inner = remove_path(child, rest);
        map.insert(key, inner);
    }
    Val::obj(map)
}

/// What a value is, for errors: "a number", "an object", ...
fn kind(v: &Val) -> &'static str {
    match v {
        Val::Null => "null",
        Val::Bool(_) => "a boolean",
        Val::Num(_) => "a number",
        Val::TStr(_) | Val::BStr(_) => "a string",
        Val::Arr(_) => "an array",
        Val::Obj(_) => "an object",
    }
}

/// The start of a possibly long text, for an error message.
fn excerpt(s: &str) -> String {
    const MAX: usize = 100;
    match s.char_indices().nth(MAX) {
        None => format!("`{s}`"),
        Some((i, _)) => format!("`{}...`", &s[..i]),
    }
}

impl crate::registry::Documented for HtmlConfig {
    const EXAMPLE: &'static str = EXAMPLE;
}

impl crate::registry::ProcessorComponent for HtmlConfig {
    fn scope(&self) -> crate::registry::Scope {
        crate::registry::Scope::PerRecord
    }

    fn build(&self, ctx: &ProcessorContext) -> Result<crate::registry::Stage, ConfigError> {
        Ok(crate::registry::Stage::Records(std::sync::Arc::new(
            HtmlConfig::build(self, ctx)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::sync::Arc;
    use std::time::Duration;

    fn parse(yaml: &str) -> HtmlConfig {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    fn build(yaml: &str) -> HtmlExtractor {
        parse(yaml).build(&ProcessorContext::default()).unwrap()
    }

    fn build_err(yaml: &str) -> ConfigError {
        parse(yaml)
            .build(&ProcessorContext::default())
            .expect_err("a config error")
    }

    fn record(v: Value) -> Record {
        let pos = Arc::new(crate::record::Position {
            input: "i".into(),
            file: None,
            line: 1,
        });
        Record::from_json(&v, pos)
    }

    /// A record as the http processor leaves it.
    fn page(url: &str, body: &str) -> Record {
        record(json!({"id": 1, "response": {"status": 200, "url": url, "body": body}}))
    }

    fn run(p: &HtmlExtractor, r: &Record) -> Result<Value, ProcessError> {
        let mut out = Vec::new();
        p.process(r, &mut out)?;
        assert_eq!(out.len(), 1);
        Ok(out[0].json())
    }

    /// The extracted object of the `html` processor for `yaml` on a page.
    fn extract(yaml: &str, url: &str, body: &str) -> Value {
        run(&build(yaml), &page(url, body)).unwrap()["html"].clone()
    }

    #[test]
    fn example_parses_builds_and_runs() {
        let cfg = parse(EXAMPLE);
        let p = cfg.build(&ProcessorContext::default()).unwrap();
        let out = run(
            &p,
            &page(
                "http://site.test/a/",
                "<title>Home</title><a href=b>b</a><a href=/c#top>c</a><a href=b>again</a>",
            ),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({
                "id": 1,
                "response": {"status": 200, "url": "http://site.test/a/"},
                "html": {
                    "title": "Home",
                    "links": ["http://site.test/a/b", "http://site.test/c"]
                }
            })
        );
        // Through the trait, as the registry builds it.
        let stage = crate::registry::ProcessorComponent::build(&cfg, &ProcessorContext::default());
        assert!(matches!(stage, Ok(crate::registry::Stage::Records(_))));
        assert_eq!(
            crate::registry::ProcessorComponent::scope(&cfg),
            crate::registry::Scope::PerRecord
        );
    }

    /// What `weir explain html` prints: every option has a description.
    #[test]
    fn every_option_is_documented() {
        let schema = schemars::schema_for!(HtmlConfig);
        let props = schema.get("properties").and_then(Value::as_object).unwrap();
        assert_eq!(props.len(), 8);
        for (name, p) in props {
            assert!(p.get("description").is_some(), "{name} has no doc");
        }
    }

    #[test]
    fn text_attributes_first_and_all() {
        let body = r##"<html><head><title>  The
            Title </title><meta name="description" content="About us">
            <script type="application/ld+json">{"@type": "Thing"}</script></head>
            <body><h1>Hello <b>big</b>world<script>var x = 1;</script><style>h1{}</style></h1>
            <ul><li class=item>one</li><li class=item>two&nbsp;2</li><li class=item data-k=3>three</li></ul>
            <p id=x>a  <i>b</i></p></body></html>"##;
        let got = extract(
            r##"
extract:
  title: title
  h1: h1
  missing: h2
  description: { selector: "meta[name=description]", attr: content }
  items: { selector: li.item, all: true }
  keys: { selector: li, attr: data-k, all: true }
  first_key: { selector: li, attr: DATA-K }
  none: { selector: h2, all: true }
  raw: { selector: "#x", attr: raw_text }
  outer: { selector: "#x", attr: html }
  inner: { selector: "#x", attr: inner_html }
  ld: { selector: "script[type='application/ld+json']" }
"##,
            "http://site.test/",
            body,
        );
        assert_eq!(
            got,
            json!({
                "title": "The Title",
                "h1": "Hello bigworld",
                "missing": null,
                "description": "About us",
                "items": ["one", "two\u{a0}2", "three"],
                "keys": ["3"],
                "first_key": "3",
                "none": [],
                "raw": "a  b",
                "outer": "<p id=\"x\">a  <i>b</i></p>",
                "inner": "a  <i>b</i>",
                "ld": "{\"@type\": \"Thing\"}"
            })
        );
        // Fields come out in the order written.
        let keys: Vec<String> = got.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys[..3], ["title", "h1", "missing"]);
    }

    #[test]
    fn links_are_resolved_without_fragments_and_only_http() {
        let body = r##"
            <a href="page2.html">relative</a>
            <a href="../up.html?q=1#frag">dot-dot with query and fragment</a>
            <a href="/root">root-relative</a>
            <a href="https://other.test/x#y">absolute</a>
            <a href="//cdn.test/lib.js">protocol-relative</a>
            <a href="  spaced.html  ">whitespace</a>
            <a href="#top">fragment only</a>
            <a href="mailto:me@site.test">mail</a>
            <a href="javascript:void(0)">js</a>
            <a href="ftp://files.test/">ftp</a>
            <a href="http://[bad">invalid</a>
            <a>no href</a>
            <img src="img/logo.png">"##;
        let got = extract(
            r##"
extract:
  links: { selector: a, attr: href, all: true }
  first: { selector: "a[href^=mailto], a[href]", attr: href }
  img: { selector: img, attr: src }
  raw: { selector: a, attr: href, resolve: false }
"##,
            "https://site.test/dir/index.html?x=1#here",
            body,
        );
        assert_eq!(
            got["links"],
            json!([
                "https://site.test/dir/page2.html",
                "https://site.test/up.html?q=1",
                "https://site.test/root",
                "https://other.test/x",
                "https://cdn.test/lib.js",
                "https://site.test/dir/spaced.html",
                "https://site.test/dir/index.html?x=1",
            ])
        );
        assert_eq!(got["first"], json!("https://site.test/dir/page2.html"));
        assert_eq!(got["img"], json!("https://site.test/dir/img/logo.png"));
        assert_eq!(got["raw"], json!("page2.html"));
    }

    #[test]
    fn base_href_takes_precedence_and_unique_dedupes() {
        let got = extract(
            r##"
extract:
  links: { selector: "a[href]", attr: href, all: true, unique: true }
"##,
            "http://site.test/a/b",
            r##"<head><base href="/docs/"></head><a href=x>1</a><a href=x#2>2</a><a href=y>3</a>"##,
        );
        assert_eq!(
            got["links"],
            json!(["http://site.test/docs/x", "http://site.test/docs/y"])
        );
    }

    #[test]
    fn bad_input_is_dead_lettered_with_html_input() {
        let p = build("extract:\n  t: title\n");
        let e = run(&p, &record(json!({"id": 1}))).unwrap_err();
        assert_eq!(e.reason, "html_input");
        assert!(e.detail.contains("`response.body`"), "{e}");
        let e = run(&p, &record(json!({"response": {"body": {"a": 1}}}))).unwrap_err();
        assert_eq!(e.reason, "html_input");
        assert!(e.detail.contains("an object"), "{e}");
        // A null body is the http processor's empty answer: an empty page.
        let out = run(&p, &record(json!({"response": {"body": null}}))).unwrap();
        assert_eq!(out["html"], json!({"t": null}));
        // No page URL is needed until a link is resolved.
        let out = run(
            &p,
            &record(json!({"response": {"body": "<title>x</title>"}})),
        )
        .unwrap();
        assert_eq!(out["html"], json!({"t": "x"}));

        let p =
            build("html: page\nbase_url: .meta.url\nextract:\n  l: { selector: a, attr: href }\n");
        let e = run(&p, &record(json!({"page": 3}))).unwrap_err();
        assert_eq!(e.reason, "html_input");
        assert!(
            e.detail.contains("`page`") && e.detail.contains("a number"),
            "{e}"
        );
        let e = run(&p, &record(json!({"page": "<a href=x>"}))).unwrap_err();
        assert_eq!(e.reason, "html_input");
        assert!(e.detail.contains("`meta.url`"), "{e}");
        let e = run(
            &p,
            &record(json!({"page": "<a href=x>", "meta": {"url": "not a url"}})),
        )
        .unwrap_err();
        assert_eq!(e.reason, "html_input");
        assert!(e.detail.contains("not a URL"), "{e}");
        let out = run(
            &p,
            &record(json!({"page": "<a href=x>", "meta": {"url": "http://h.test/"}})),
        )
        .unwrap();
        assert_eq!(out["html"], json!({"l": "http://h.test/x"}));

        // `into` through a field that is not an object.
        let p = build("into: id.x\nextract:\n  t: title\n");
        let e = run(&p, &page("http://h.test/", "")).unwrap_err();
        assert_eq!(e.reason, "html_into");
    }

    #[test]
    fn keep_html_false_removes_the_page_and_into_nests() {
        let p = build("into: out.page\nkeep_html: false\nextract:\n  t: title\n");
        let out = run(&p, &page("http://h.test/", "<title>T</title>")).unwrap();
        assert_eq!(
            out,
            json!({
                "id": 1,
                "response": {"status": 200, "url": "http://h.test/"},
                "out": {"page": {"t": "T"}}
            })
        );
        let p = build("into: out\nextract:\n  t: title\n");
        let out = run(&p, &page("http://h.test/", "<title>T</title>")).unwrap();
        assert_eq!(out["response"]["body"], json!("<title>T</title>"));
    }

    #[test]
    fn config_errors_point_at_the_yaml() {
        let e = build_err("extract:\n  a: h1\n  b: { selector: \"a[=x]\" }\n");
        assert_eq!(e.at, Some((3, 18)), "{e}");
        assert!(e.message.contains("extract 'b'"), "{e}");
        let e = build_err("extract:\n  a: \"h1 >>> !\"\n");
        assert_eq!(e.at, Some((2, 6)), "{e}");
        assert!(e.message.contains("not a CSS selector"), "{e}");
        let e = build_err("extract:\n  a: \"  \"\n");
        assert!(e.message.contains("empty"), "{e}");
        let e = build_err("extract: {}\n");
        assert!(e.message.contains("at least one"), "{e}");
        let e = build_err("max_values: 0\nextract:\n  a: h1\n");
        assert!(e.message.contains("max_values"), "{e}");
        let e = build_err("max_nesting: 0\nextract:\n  a: h1\n");
        assert!(e.message.contains("max_nesting"), "{e}");
        let e = build_err("into: a..b\nextract:\n  a: h1\n");
        assert_eq!(e.at, Some((1, 7)), "{e}");
        let e = build_err("extract:\n  a: { selector: a, attr: \"\" }\n");
        assert!(e.message.contains("attr"), "{e}");
        // Parse errors: unknown keys, duplicates, wrong shapes.
        for bad in [
            "extract:\n  a: { selector: a, atr: href }\n",
            "extract:\n  a: h1\n  a: h2\n",
            "extract:\n  a: [h1]\n",
            "extract:\n  a: h1\nkeep: true\n",
            "html: response.body\n",
        ] {
            assert!(
                serde_saphyr::from_str::<HtmlConfig>(bad).is_err(),
                "should not parse: {bad}"
            );
        }
    }

    #[test]
    fn attribute_floods_and_oversized_extractions_are_dead_letters() {
        let attrs: String = (0..2000).map(|i| format!(" a{i}")).collect();
        assert_eq!(
            attributes_over(&format!("<p{attrs}>x</p>"), MAX_ATTRIBUTES),
            Some(1001)
        );
        assert_eq!(
            attributes_over("<a href='x y z' class=\"p q\" id=k>t</a> a b c", 3),
            None
        );
        assert_eq!(attributes_over("1 < 2 and 3 > 2", 0), None, "not a tag");
        // Nested divs with text: each div's text is the whole rest.
        let page = format!(
            "{}{}{}",
            "<div>".repeat(200),
            "x".repeat(10_000),
            "</div>".repeat(200)
        );
        let cfg: HtmlConfig = serde_saphyr::from_str(
            "html: b\nmax_bytes: 100000\nextract:\n  t: { selector: div, all: true }\n",
        )
        .unwrap();
        let p = cfg.build(&ProcessorContext::default()).unwrap();
        let pos = std::sync::Arc::new(crate::record::Position {
            input: "i".into(),
            file: None,
            line: 1,
        });
        let rec = Record::from_json(&serde_json::json!({ "b": page }), pos.clone());
        let err = p.process(&rec, &mut Vec::new()).unwrap_err();
        assert_eq!(err.reason, "html_too_large", "{err}");
        let flood = Record::from_json(&serde_json::json!({ "b": format!("<p{attrs}>x</p>") }), pos);
        let err = p.process(&flood, &mut Vec::new()).unwrap_err();
        assert_eq!(err.reason, "html_too_many_attributes", "{err}");
    }

    #[test]
    fn max_values_bounds_each_list() {
        let body: String = (0..500).map(|i| format!("<a href=/p{i}>{i}</a>")).collect();
        let got = extract(
            "max_values: 100\nextract:\n  links: { selector: a, attr: href, all: true }\n  texts: { selector: a, all: true }\n",
            "http://h.test/",
            &body,
        );
        let links = got["links"].as_array().unwrap();
        assert_eq!(links.len(), 100);
        assert_eq!(links[99], json!("http://h.test/p99"));
        assert_eq!(got["texts"].as_array().unwrap().len(), 100);
    }

    #[test]
    fn malformed_html_still_extracts() {
        let got = extract(
            r##"
extract:
  title: title
  links: { selector: a, attr: href, all: true }
  cells: { selector: td, all: true }
  p: { selector: p, all: true }
"##,
            "http://h.test/",
            "<title>Broken<div><a href=one>x<a href='two'>y</b></i><table><td>1<td>2</tr>\
             <p>unclosed<p>second <a href=\"three",
        );
        assert_eq!(
            got["title"],
            json!(
                "Broken<div><a href=one>x<a href='two'>y</b></i><table><td>1<td>2</tr><p>unclosed<p>second <a href=\"three"
            )
        );
        let got = extract(
            r##"
extract:
  links: { selector: a, attr: href, all: true }
  cells: { selector: td, all: true }
  p: { selector: p, all: true }
"##,
            "http://h.test/",
            "<div><a href=one>x<a href='two'>y</b></i><table><td>1<td>2</tr></div>\
             <p>unclosed<p>second <a href=three>z",
        );
        assert_eq!(
            got["links"],
            json!([
                "http://h.test/one",
                "http://h.test/two",
                "http://h.test/three"
            ])
        );
        assert_eq!(got["cells"], json!(["1", "2"]));
        assert_eq!(got["p"], json!(["unclosed", "second z"]));
    }

    /// Runs `f` on a thread with a worker's ordinary 2 MiB stack, failing
    /// the test after `limit`.
    fn on_small_stack<T: Send + 'static>(
        limit: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let _ = tx.send(f());
            })
            .unwrap();
        rx.recv_timeout(limit)
            .expect("finished in time without overflowing its stack")
    }

    fn nested(tag: &str, depth: usize) -> String {
        let mut body = String::with_capacity(depth * (tag.len() + 2) + 32);
        for _ in 0..depth {
            body.push('<');
            body.push_str(tag);
            body.push('>');
        }
        body.push_str("<a href=deep>bottom</a>");
        body
    }

    /// 100,000 nested elements (a 500 KB page whose parse alone would take
    /// minutes) are refused within a chunk of going over `max_nesting`.
    #[test]
    fn a_page_nested_too_deep_is_dead_lettered_quickly() {
        let errors = on_small_stack(Duration::from_secs(60), || {
            let p = build("extract:\n  t: title\n");
            // Block elements, formatting elements (also kept in the list
            // of active formatting elements), distinct ones (no Noah's Ark
            // clause), and tables (which nest only through a cell).
            ["div", "b", "b class=x", "table><tr><td"].map(|tag| {
                run(&p, &page("http://h.test/", &nested(tag, 100_000)))
                    .map(|_| format!("<{tag}> accepted"))
                    .unwrap_or_else(|e| e.to_string())
            })
        });
        for e in errors {
            assert!(e.starts_with("html_too_deep: "), "{e}");
            assert!(e.contains("max_nesting"), "{e}");
        }
        // At the bound itself: accepted.
        let p = build("max_nesting: 1000\nextract:\n  l: { selector: a, attr: href }\n");
        let ok = run(&p, &page("http://h.test/", &nested("div", 990))).unwrap();
        assert_eq!(ok["html"]["l"], json!("http://h.test/deep"));
    }

    /// With the bound raised, a deep document is parsed, selected,
    /// serialized and dropped by loops: a worker's ordinary 2 MiB stack is
    /// enough.
    #[test]
    fn a_deep_page_within_the_bound_does_not_overflow_the_stack() {
        const DEPTH: usize = 3000;
        let out = on_small_stack(Duration::from_secs(120), || {
            let p = build(
                r##"
max_nesting: 4000
max_values: 100
extract:
  link: { selector: "div > a", attr: href }
  text: body
  html: { selector: a, attr: html }
  inner: { selector: "body > div", attr: inner_html }
  divs: { selector: "div div", all: true }
"##,
            );
            let out = run(&p, &page("http://h.test/", &nested("div", DEPTH))).unwrap();
            let h = &out["html"];
            (
                h["link"].clone(),
                h["text"].clone(),
                h["html"].clone(),
                h["inner"].as_str().map(str::len),
                h["divs"].as_array().map(Vec::len),
            )
        });
        assert_eq!(out.0, json!("http://h.test/deep"));
        assert_eq!(out.1, json!("bottom"));
        assert_eq!(out.2, json!("<a href=\"deep\">bottom</a>"));
        assert!(out.3.unwrap() > DEPTH * 5);
        assert_eq!(out.4, Some(100));
    }

    /// Feeding the parser in chunks (cut inside tags and inside multi-byte
    /// characters) builds the same document as parsing it whole.
    #[test]
    fn chunked_parsing_matches_parsing_whole() {
        let mut body = String::from("<title>é</title>");
        for i in 0..2000 {
            body.push_str(&format!(
                "<p class='c{i}'>ünïcödé {i} — <a href=\"/x{i}\">l</a></p>"
            ));
        }
        assert!(body.len() > 10 * CHUNK);
        let chunked = parse_document(&body, DEFAULT_MAX_NESTING).unwrap();
        assert_eq!(chunked.html(), Html::parse_document(&body).html());
    }
}
