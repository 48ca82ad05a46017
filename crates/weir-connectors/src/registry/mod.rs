//! The component registry: every source, processor and sink of pipeline
//! files, in one list.
//!
//! A component is a configuration type (it parses its options from YAML
//! and documents them through its JSON schema) that implements the trait
//! of its kind: [`SourceComponent`], [`ProcessorComponent`] or
//! [`SinkComponent`], plus [`Documented`] for its example. The list below
//! is the only place that names them all: parsing a pipeline entry looks
//! its component key up here ([`parse`]), and `weir list`, `explain`,
//! `check`, placement in distributed mode and building read what the
//! traits say. Adding a component is its module plus one line in
//! [`registry!`]'s invocation.

mod component;
mod stage;

pub use component::{
    Documented, ProcessorComponent, Resume, Scope, SinkComponent, SourceComponent, Written,
};
pub use stage::{RecordFn, Stage, StageOptions};

use serde::de::MapAccess;

use crate::processors::{
    aggregate, batch, dedupe, filter, html, http as http_call, jq, scatter, switch, validate,
};
use crate::sinks::{file as file_sink, http, nats as nats_sink, postgres, sqlite, stdout};
use crate::sources::{file, generate, http_server, nats as nats_source, schedule, sql, stdin};

/// The three kinds of component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Where records come from (`inputs:`).
    Source,
    /// What happens to them (`stages:`).
    Processor,
    /// Where they go (`outputs:`).
    Sink,
}

impl Kind {
    /// `source`, `processor`, `sink`: as `weir list` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Processor => "processor",
            Kind::Sink => "sink",
        }
    }
}

/// What the registry knows of a component before any of it is parsed.
pub struct Info {
    /// Its key in pipeline files.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// The JSON schema of its options (descriptions are the docs).
    pub schema: fn() -> schemars::Schema,
    /// A minimal example of its options, as YAML.
    pub example: &'static str,
    /// Parses a YAML text as its options, for tests (fuzzing every
    /// registered type); the error as text.
    pub parse_yaml: fn(&str) -> Result<(), String>,
}

/// A component's options, parsed: the trait object of its kind.
#[derive(Debug)]
pub enum Parsed {
    /// A source's options.
    Source(Box<dyn SourceComponent>),
    /// A processor's options.
    Processor(Box<dyn ProcessorComponent>),
    /// A sink's options.
    Sink(Box<dyn SinkComponent>),
}

/// Generates [`COMPONENTS`] and [`parse`] from one list, so that the two
/// cannot disagree.
macro_rules! registry {
    ($($kind:ident $name:literal => $ty:ty,)*) => {
        /// Every component, in the order `weir list` shows them.
        pub static COMPONENTS: &[Info] = &[$(
            Info {
                name: $name,
                kind: Kind::$kind,
                schema: || schemars::schema_for!($ty),
                example: <$ty as Documented>::EXAMPLE,
                parse_yaml: |text| {
                    serde_saphyr::from_str::<$ty>(text)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                },
            },
        )*];

        /// Parses the options of the component of `kind` named `key` from
        /// the map's next value: `None` (and nothing consumed) when no
        /// component of that kind has that name; `Some(None)` when the
        /// value is null (`stdout: ~`), which counts as the key being
        /// absent, as for any optional key.
        ///
        /// # Errors
        /// The options' own parse error, at their YAML location.
        pub fn parse<'de, A: MapAccess<'de>>(
            kind: Kind,
            key: &str,
            map: &mut A,
        ) -> Result<Option<Option<Parsed>>, A::Error> {
            $(
                if kind == Kind::$kind && key == $name {
                    let options: Option<$ty> = map.next_value()?;
                    return Ok(Some(options.map(|o| Parsed::$kind(Box::new(o)))));
                }
            )*
            Ok(None)
        }
    };
}

registry! {
    Source "file" => file::FileSource,
    Source "stdin" => stdin::StdinSource,
    Source "generate" => generate::GenerateSource,
    Source "http_server" => http_server::HttpServerSource,
    Source "schedule" => schedule::ScheduleSource,
    Source "nats" => nats_source::NatsSource,
    Source "sql" => sql::SqlSource,
    Processor "jq" => jq::JqConfig,
    Processor "filter" => filter::FilterConfig,
    Processor "validate" => validate::ValidateConfig,
    Processor "dedupe" => dedupe::DedupeConfig,
    Processor "aggregate" => aggregate::AggregateConfig,
    Processor "batch" => batch::BatchConfig,
    Processor "switch" => switch::SwitchConfig,
    Processor "http" => http_call::HttpConfig,
    Processor "scatter" => scatter::ScatterConfig,
    Processor "html" => html::HtmlConfig,
    Sink "sqlite" => sqlite::SqliteSink,
    Sink "postgres" => postgres::PostgresSink,
    Sink "file" => file_sink::FileSink,
    Sink "stdout" => stdout::StdoutSink,
    Sink "http" => http::HttpSink,
    Sink "nats" => nats_sink::NatsSink,
}

/// The names of the components of `kind`, in registry order.
pub fn names(kind: Kind) -> Vec<&'static str> {
    COMPONENTS
        .iter()
        .filter(|c| c.kind == kind)
        .map(|c| c.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_within_a_kind() {
        for kind in [Kind::Source, Kind::Processor, Kind::Sink] {
            let mut n = names(kind);
            let all = n.len();
            n.sort_unstable();
            n.dedup();
            assert_eq!(n.len(), all, "a {} name is registered twice", kind.as_str());
        }
    }

    /// Every example parses as its component's options, through the
    /// registry, the way a pipeline file's entry is parsed.
    #[test]
    fn every_example_parses_through_the_registry() {
        for c in COMPONENTS {
            let yaml = format!("{}:\n{}", c.name, indent(c.example));
            let got = match c.kind {
                Kind::Source => serde_saphyr::from_str::<Probe<0>>(&yaml).map(|p| p.0),
                Kind::Processor => serde_saphyr::from_str::<Probe<1>>(&yaml).map(|p| p.0),
                Kind::Sink => serde_saphyr::from_str::<Probe<2>>(&yaml).map(|p| p.0),
            };
            let got = got.unwrap_or_else(|e| panic!("{} example: {e}\n{yaml}", c.name));
            assert_eq!(got, Some(c.kind), "{}", c.name);
        }
    }

    fn indent(s: &str) -> String {
        s.lines().map(|l| format!("  {l}\n")).collect()
    }

    /// A one-key map parsed through [`parse`] as a component of kind `K`
    /// (0 source, 1 processor, 2 sink).
    struct Probe<const K: u8>(Option<Kind>);

    impl<'de, const K: u8> serde::Deserialize<'de> for Probe<K> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<const K: u8>;
            impl<'de, const K: u8> serde::de::Visitor<'de> for V<K> {
                type Value = Probe<K>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a component")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe<K>, A::Error> {
                    let key: String = map.next_key()?.expect("one key");
                    let kind = [Kind::Source, Kind::Processor, Kind::Sink][usize::from(K)];
                    Ok(Probe(parse(kind, &key, &mut map)?.flatten().map(
                        |p| match p {
                            Parsed::Source(_) => Kind::Source,
                            Parsed::Processor(_) => Kind::Processor,
                            Parsed::Sink(_) => Kind::Sink,
                        },
                    )))
                }
            }
            d.deserialize_map(V::<K>)
        }
    }
}
