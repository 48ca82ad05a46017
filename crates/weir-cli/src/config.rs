//! The pipeline file: what users write, as serde types.
//!
//! A pipeline has `inputs`, `stages` and `outputs`, each a list of named
//! entries; an entry names its component by a key (`file:`, `jq:`,
//! `sqlite:` ...) holding that component's options. `from` wires the graph;
//! it defaults to the entry just above (for the first stage: every input;
//! for an output: the last stage), so a straight pipeline needs none.
//!
//! ```yaml
//! inputs:
//!   - name: orders
//!     file: { path: data/orders.jsonl }
//! stages:
//!   - name: clean
//!     jq: { program: '.amount |= tonumber' }
//!     workers: 2
//! outputs:
//!   - name: db
//!     sqlite: { path: out/orders.db, table: orders, columns: { id: integer, amount: real }, key: [id] }
//! ```
//!
//! Component options are the connector crates' own config types, so their
//! docs and defaults live in one place; an entry finds its component's
//! type through the registry ([`weir_connectors::registry`]), so this file
//! names no component.

use std::sync::OnceLock;

use serde::Deserialize;
use serde::de::MapAccess;
use serde_saphyr::Spanned;
use weir_connectors::registry::{
    self, Kind, Parsed, ProcessorComponent, SinkComponent, SourceComponent,
};

use crate::diag::Diagnostic;

/// A whole pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// What the pipeline does, for people.
    #[serde(default)]
    pub description: Option<String>,
    /// Where records come from; several inputs feeding one stage are merged.
    pub inputs: Vec<Spanned<InputEntry>>,
    /// Processing steps, in order.
    #[serde(default)]
    pub stages: Vec<Spanned<StageEntry>>,
    /// Where records go.
    pub outputs: Vec<Spanned<OutputEntry>>,
    /// Where rejected records go (default: `dead-letters.jsonl` beside the
    /// pipeline file).
    #[serde(default)]
    pub dead_letter: Option<DeadLetterEntry>,
    /// Engine settings.
    #[serde(default)]
    pub settings: Settings,
    /// Distributed mode: which edges run over the broker and how.
    #[serde(default)]
    pub broker: Option<BrokerEntry>,
}

/// `from: a` or `from: [a, b]`.
#[derive(Debug, Clone)]
pub enum From {
    One(String),
    Many(Vec<String>),
}

/// By hand rather than `#[serde(untagged)]`, whose error ("data did not
/// match any variant of untagged enum From") names a Rust type.
impl<'de> Deserialize<'de> for From {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = From;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a name or a list of names")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<From, E> {
                Ok(From::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<From, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    names.push(n);
                }
                Ok(From::Many(names))
            }
        }
        d.deserialize_any(V)
    }
}

impl From {
    pub fn names(&self) -> Vec<String> {
        match self {
            From::One(s) => vec![s.clone()],
            From::Many(v) => v.clone(),
        }
    }
}

/// What a stage does with a record its component rejects: `dead_letter`,
/// `fail`, or `{retry: {attempts: N, initial_ms: M}}`.
#[derive(Debug, Clone)]
pub enum OnError {
    /// Send it to the dead-letter output (the default).
    DeadLetter,
    /// Stop the whole run.
    Fail,
    /// Try again with backoff, then dead-letter.
    Retry {
        /// Attempts in all.
        attempts: u32,
        /// First delay in milliseconds (default 10).
        initial_ms: u64,
    },
}

/// The options of `retry`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryOptions {
    attempts: u32,
    #[serde(default = "default_initial_ms")]
    initial_ms: u64,
}

/// A custom error rather than `unknown_variant`, which the parser places
/// at the key instead of the value.
fn unknown_policy(name: &str) -> String {
    format!("unknown policy `{name}`, expected dead_letter, fail or {{retry: {{attempts: N}}}}")
}

/// By hand rather than derived: the derived form reports `on_error: retry`
/// (options missing) as "expected mapping start" at the next line.
impl<'de> Deserialize<'de> for OnError {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OnError;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("dead_letter, fail or {retry: {attempts: N}}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OnError, E> {
                match v {
                    "dead_letter" => Ok(OnError::DeadLetter),
                    "fail" => Ok(OnError::Fail),
                    "retry" => Err(E::custom(
                        "`retry` needs its number of attempts: `on_error: {retry: {attempts: 3}}`",
                    )),
                    other => Err(E::custom(unknown_policy(other))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OnError, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(A::Error::custom(
                        "expected dead_letter, fail or {retry: {attempts: N}}",
                    ));
                };
                let policy = match key.as_str() {
                    "retry" => {
                        let o: RetryOptions = map.next_value()?;
                        OnError::Retry {
                            attempts: o.attempts,
                            initial_ms: o.initial_ms,
                        }
                    }
                    "dead_letter" | "fail" => {
                        return Err(A::Error::custom(format!(
                            "`{key}` takes no options: write `on_error: {key}`"
                        )));
                    }
                    other => return Err(A::Error::custom(unknown_policy(other))),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(A::Error::custom("on_error takes one policy"));
                }
                Ok(policy)
            }
        }
        d.deserialize_any(V)
    }
}

fn default_initial_ms() -> u64 {
    10
}

impl OnError {
    pub fn policy(&self) -> weir::ErrorPolicy {
        match self {
            OnError::DeadLetter => weir::ErrorPolicy::DeadLetter,
            OnError::Fail => weir::ErrorPolicy::Fail,
            OnError::Retry {
                attempts,
                initial_ms,
            } => weir::ErrorPolicy::Retry(
                weir::Retry::attempts(*attempts)
                    .initial(std::time::Duration::from_millis(*initial_ms)),
            ),
        }
    }
}

/// One input.
#[derive(Debug)]
pub struct InputEntry {
    /// Unique name; stages refer to it in `from`.
    pub name: Spanned<String>,
    /// Workers decoding this input's lines (default: 2; 1 for stdin, which
    /// keeps the input's order).
    pub decode_workers: Option<Spanned<usize>>,
    /// The source keys of the entry (`file:`, `stdin:` ...), parsed through
    /// the registry; exactly one is valid.
    pub components: Vec<(String, Box<dyn SourceComponent>)>,
}

/// One processing stage.
#[derive(Debug)]
pub struct StageEntry {
    /// Unique name.
    pub name: Spanned<String>,
    /// Upstream inputs or stages (default: the entry above).
    pub from: Option<Spanned<From>>,
    /// Workers running this stage in parallel (for an aggregate: its
    /// per-record part). Default: for a stage that sees one record at a
    /// time (jq, filter, validate, switch; or an aggregate), keeps no order
    /// and is the only reader of one input or one such stage (not a switch
    /// branch), as many as that producer has (the two then run as one
    /// pool); otherwise 1.
    pub workers: Option<Spanned<usize>>,
    /// Keep input order across workers.
    pub ordered: bool,
    /// Distributed mode (`weir run --broker`): carry this stage's input
    /// over the broker, so that its workers can be `weir worker` processes
    /// on any machine. For stages that see one record at a time (jq,
    /// filter, validate, switch). Ignored without `--broker`.
    pub remote: Option<Spanned<bool>>,
    /// What to do with rejected records (default: dead_letter).
    pub on_error: Option<OnError>,
    /// `loop:` this stage is where records fed back from further down
    /// re-enter: its `from` may name stages downstream of it.
    pub feedback: Option<Spanned<LoopEntry>>,
    /// The processor keys of the entry (`jq:`, `filter:` ...), parsed
    /// through the registry; exactly one is valid.
    pub components: Vec<(String, Box<dyn ProcessorComponent>)>,
}

/// `loop:` on a stage that reads records fed back from further down the
/// pipeline (a crawler's fetch stage reading the links its own pages
/// gave). The run ends by itself once nothing is left in the loop.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoopEntry {
    /// Times a record may go round: one fed back more often is filtered
    /// (counted). A loop without it ends only when its own stages stop
    /// feeding back (a dedupe of what was seen).
    #[serde(default)]
    pub max_depth: Option<u32>,
    /// Records fed back and waiting to go round again, at most (default
    /// 100000): more are dead-lettered with reason "loop full", never
    /// dropped. What a loop holds in memory is this many records plus
    /// its stages' bounded queues.
    #[serde(default)]
    pub max_pending: Option<usize>,
}

/// One output.
#[derive(Debug)]
pub struct OutputEntry {
    /// Unique name.
    pub name: Spanned<String>,
    /// Upstream stages (default: the last stage).
    pub from: Option<Spanned<From>>,
    /// What to do with a batch the sink fails to write (default: fail).
    pub on_error: Option<OnError>,
    /// The sink keys of the entry (`sqlite:`, `file:` ...), parsed through
    /// the registry; exactly one is valid.
    pub components: Vec<(String, Box<dyn SinkComponent>)>,
}

impl InputEntry {
    /// The source, when the entry names exactly one.
    pub fn source(&self) -> Option<&dyn SourceComponent> {
        one(&self.components)
    }
}

impl StageEntry {
    /// The processor, when the entry names exactly one.
    pub fn processor(&self) -> Option<&dyn ProcessorComponent> {
        one(&self.components)
    }

    /// The component's key in the file (`jq`, `dedupe` ...), for messages.
    pub fn component_name(&self) -> &str {
        self.components.first().map_or("stage", |(k, _)| k.as_str())
    }

    /// Its named outputs (a switch's branches); empty when it has one
    /// output under its own name. Read from whichever of its components
    /// has some, so that an entry with a switch and another component
    /// still wires its branches and gets the one-component error from the
    /// build, not graph errors about its branches.
    pub fn branches(&self) -> Vec<String> {
        self.components
            .iter()
            .map(|(_, c)| c.branches())
            .find(|b| !b.is_empty())
            .unwrap_or_default()
    }
}

impl OutputEntry {
    /// The sink, when the entry names exactly one.
    pub fn sink(&self) -> Option<&dyn SinkComponent> {
        one(&self.components)
    }
}

fn one<T: ?Sized>(components: &[(String, Box<T>)]) -> Option<&T> {
    match components {
        [(_, c)] => Some(&**c),
        _ => None,
    }
}

/// "stage 's' must have exactly one of `jq`, `filter`, ... (found 2)", or
/// `None` when it has one.
pub fn component_count_error<T: ?Sized>(
    what: &str,
    name: &str,
    kind: Kind,
    components: &[(String, Box<T>)],
) -> Option<String> {
    (components.len() != 1).then(|| {
        let names: Vec<String> = registry::names(kind)
            .into_iter()
            .map(|n| format!("`{n}`"))
            .collect();
        format!(
            "{what} '{name}' must have exactly one of {} (found {})",
            names.join(", "),
            components.len()
        )
    })
}

/// Reads one entry's map: the entry's own keys through `own` (whose names
/// are `fields`), every other key as a component of `kind` through the
/// registry. An unknown key is serde's unknown-field error (located at the
/// key), listing the entry's keys and then the components, kept in
/// `expected` (serde wants the list `'static`).
fn entry_map<'de, A: MapAccess<'de>>(
    map: &mut A,
    kind: Kind,
    fields: &'static [&'static str],
    expected: &'static OnceLock<Vec<&'static str>>,
    mut own: impl FnMut(&'static str, &mut A) -> Result<(), A::Error>,
) -> Result<Vec<(String, Parsed)>, A::Error> {
    use serde::de::Error as _;
    let mut components = Vec::new();
    while let Some(key) = map.next_key::<String>()? {
        if let Some(field) = fields.iter().find(|f| **f == key) {
            own(field, map)?;
        } else if let Some(parsed) = registry::parse(kind, &key, map)? {
            components.extend(parsed.map(|p| (key, p)));
        } else {
            let expected = expected.get_or_init(|| {
                let mut all = fields.to_vec();
                all.extend(registry::names(kind));
                all
            });
            return Err(A::Error::unknown_field(&key, expected));
        }
    }
    Ok(components)
}

/// Sets a field read once; a second occurrence is serde's duplicate error.
fn once<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    slot: &mut Option<T>,
    field: &'static str,
    map: &mut A,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(serde::de::Error::duplicate_field(field));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

/// An entry field's key: its name, or the one given with `as` (for a key
/// that is a Rust keyword, such as `loop`).
macro_rules! entry_key {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident, $key:literal) => {
        $key
    };
}

/// Implements `Deserialize` for an entry type through [`entry_map`]: its
/// `name`, its own keys (`field: Type = default`: a key left out, for
/// `Option` types also a null, takes the default) and then its components
/// of `$kind`.
macro_rules! entry {
    ($entry:ident, $kind:ident, $expecting:literal, { $($field:ident $(as $key:literal)? : $ty:ty),* $(,)? }) => {
        impl<'de> Deserialize<'de> for $entry {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $entry;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$entry, A::Error> {
                        let mut name: Option<Spanned<String>> = None;
                        $(let mut $field: Option<$ty> = None;)*
                        static EXPECTED: OnceLock<Vec<&'static str>> = OnceLock::new();
                        let parsed = entry_map(
                            &mut map,
                            Kind::$kind,
                            &["name" $(, entry_key!($field $(, $key)?))*],
                            &EXPECTED,
                            |key, map| match key {
                                "name" => once(&mut name, "name", map),
                                $(entry_key!($field $(, $key)?) => once(&mut $field, entry_key!($field $(, $key)?), map),)*
                                _ => unreachable!("only listed fields are passed"),
                            },
                        )?;
                        let name = name.ok_or_else(|| serde::de::Error::missing_field("name"))?;
                        let components = parsed
                            .into_iter()
                            .map(|(k, p)| match p {
                                Parsed::$kind(c) => (k, c),
                                _ => unreachable!("the registry parses the kind asked for"),
                            })
                            .collect();
                        Ok($entry {
                            name,
                            $($field: $field.unwrap_or_default(),)*
                            components,
                        })
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

entry!(InputEntry, Source, "an input: a name and one source", {
    decode_workers: Option<Spanned<usize>>,
});
entry!(StageEntry, Processor, "a stage: a name and one processor", {
    from: Option<Spanned<From>>,
    workers: Option<Spanned<usize>>,
    ordered: bool,
    remote: Option<Spanned<bool>>,
    on_error: Option<OnError>,
    feedback as "loop": Option<Spanned<LoopEntry>>,
});
entry!(OutputEntry, Sink, "an output: a name and one sink", {
    from: Option<Spanned<From>>,
    on_error: Option<OnError>,
});

/// The dead-letter output.
/// How the pipeline runs on a broker (`weir run --broker`, `weir worker`).
/// Every field has a default; see the README's "Distributed mode".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerEntry {
    /// `all`: every stage that sees one record at a time (jq, filter,
    /// validate, switch) runs in a worker pool across machines, unless it
    /// says `remote: false`. `none` (default): only stages with
    /// `remote: true`.
    #[serde(default)]
    pub remote: Option<Spanned<String>>,
    /// Records per broker message (default 256). 1 turns batching off.
    #[serde(default)]
    pub records_per_message: Option<Spanned<usize>>,
    /// Messages an edge holds before its producers are slowed down
    /// (default 10000; an edge also holds at most 256 MiB).
    #[serde(default)]
    pub edge_capacity: Option<Spanned<i64>>,
    /// Seconds a worker has to finish a message before it goes to another
    /// worker (default 30; workers extend it for long tasks).
    #[serde(default)]
    pub ack_wait_secs: Option<Spanned<u64>>,
    /// Deliveries of a message before its failing records are
    /// dead-lettered (default 5).
    #[serde(default)]
    pub max_deliver: Option<Spanned<i64>>,
    /// Messages in flight per remote stage, over all its workers
    /// (default 256).
    #[serde(default)]
    pub max_ack_pending: Option<Spanned<i64>>,
    /// Seconds the broker remembers message ids to drop duplicates
    /// (default 3600).
    #[serde(default)]
    pub duplicate_window_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterEntry {
    /// A JSON-lines file, one rejected record per line with its reason.
    pub path: Spanned<String>,
}

/// Engine settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Items per batch between stages.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Bound of each edge, in batches.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// Milliseconds a source reading slowly holds a partial batch before
    /// sending it on (default 5). 0 sends each record on its own (much
    /// slower: only for a trickle that must not wait at all). Sources that
    /// wait for input (stdin) send what they have at once anyway.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
}

fn default_linger_ms() -> u64 {
    weir::DEFAULT_LINGER.as_millis() as u64
}

fn default_batch() -> usize {
    weir::DEFAULT_BATCH_SIZE
}

fn default_buffer() -> usize {
    weir::DEFAULT_BUFFER
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_size: default_batch(),
            buffer: default_buffer(),
            linger_ms: default_linger_ms(),
        }
    }
}

/// Parses a pipeline file. YAML and type errors stop at the first one (the
/// parser cannot resume); everything after parsing reports all problems.
pub fn parse(source: &str) -> Result<PipelineFile, Diagnostic> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 64,
            max_nodes: 200_000,
            max_aliases: 1_000,
            max_total_scalar_bytes: 16 << 20,
        },
        alias_limits: serde_saphyr::alias_limits! { max_total_replayed_events: 100_000 },
        // YAML 1.2 booleans only: with YAML 1.1's `y`, `n`, `yes`, `no`,
        // `on` and `off`, `required: [id, n]` in an inline schema would hold
        // `false`.
        strict_booleans: true,
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options::<PipelineFile>(source, options).map_err(|e| {
        let at = e.location().map(|l| (l.line(), l.column()));
        let message = match &e {
            serde_saphyr::Error::InvalidScalar { ty, .. } => invalid_scalar(source, at, ty),
            serde_saphyr::Error::InvalidBooleanStrict { .. } => invalid_scalar(source, at, "bool"),
            _ => None,
        };
        Diagnostic::new(
            message.unwrap_or_else(|| strip_location(&e.to_string())),
            at,
        )
    })
}

/// "invalid value `many`: expected a whole number" for the parser's terse
/// "invalid u64", quoting the scalar at `at`.
fn invalid_scalar(source: &str, at: Option<(u64, u64)>, ty: &str) -> Option<String> {
    let expected = match ty {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "bool" => "true or false",
        "char" => "one character",
        _ => return None,
    };
    let (line, col) = at?;
    let text = source
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let rest: String = text
        .chars()
        .skip(usize::try_from(col).ok()?.saturating_sub(1))
        .collect();
    let value = match rest.chars().next() {
        Some(q @ ('\'' | '"')) => rest[1..].split(q).next().unwrap_or(""),
        _ => rest
            .split([',', '}', ']', '#'])
            .next()
            .unwrap_or("")
            .trim_end(),
    };
    Some(format!("invalid value `{value}`: expected {expected}"))
}

/// The parser appends " at line L, column C" to its messages; the
/// diagnostic shows the location itself.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}
