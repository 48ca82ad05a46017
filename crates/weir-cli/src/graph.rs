//! The pipeline file's graph: names, `from` references, defaults, cycles,
//! and the files its inputs read and its outputs write (none may be both).
//! Checked before any component is built, reporting every problem.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

use serde_saphyr::Spanned;
use weir_connectors::sources::file::same_file;

use weir_connectors::registry::Scope;

use crate::config::PipelineFile;
use crate::diag::Diagnostic;

/// What a name in the file refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Input,
    Stage,
    /// A `switch` stage: read through its branches, `<name>/<branch>`.
    Switch,
    Output,
}

/// The checked graph: for every stage and output, the names it reads from;
/// for every producer, how many readers it has; stages in an order where
/// every stage comes after what it reads.
#[derive(Debug, Default)]
pub struct Wiring {
    pub from: HashMap<String, Vec<String>>,
    pub readers: HashMap<String, usize>,
    pub stage_order: Vec<usize>,
    /// Per loop entry (a stage with `loop:`), the producers downstream of
    /// it that it reads: what is fed back. Not in its `from` above, which
    /// keeps what enters the loop from outside.
    pub loops: HashMap<String, Vec<String>>,
    /// Edges leaving a loop's cycle, as (reader, producer), with the loop
    /// entry: their records stop counting as inside the loop there.
    pub exits: HashMap<(String, String), String>,
}

/// An entry without `from` reads the entry above it, which must not be a
/// switch (a switch is read through its branches).
fn switch_above(
    kinds: &HashMap<String, NodeKind>,
    who: &str,
    default: &[String],
    at: &serde_saphyr::Spanned<String>,
    diags: &mut Vec<Diagnostic>,
) {
    for n in default {
        if kinds.get(n) == Some(&NodeKind::Switch) {
            diags.push(Diagnostic::at(
                format!("'{who}' has no `from` and the entry above it is switch '{n}': name a branch, as `from: {n}/<branch>`"),
                at,
            ));
        }
    }
}

/// Checks the graph; `base_dir` is where the file's relative paths start.
pub fn check(
    file: &PipelineFile,
    base_dir: &Path,
    pipeline: &Path,
) -> Result<Wiring, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut kinds: HashMap<String, NodeKind> = HashMap::new();
    let mut declare =
        |name: &serde_saphyr::Spanned<String>, kind: NodeKind, diags: &mut Vec<Diagnostic>| {
            let n = name.value.as_str();
            if n.is_empty() {
                diags.push(Diagnostic::at("a name must not be empty", name));
            } else if n.contains('/') {
                diags.push(Diagnostic::at(
                    format!("name '{n}' must not contain '/'"),
                    name,
                ));
            } else if n == weir::DEAD_LETTER_STAGE {
                diags.push(Diagnostic::at(format!("name '{n}' is reserved"), name));
            } else if kinds.insert(n.to_string(), kind).is_some() {
                diags.push(Diagnostic::at(
                    format!("the name '{n}' is used twice"),
                    name,
                ));
            }
        };
    if file.inputs.is_empty() {
        diags.push(Diagnostic::new("the pipeline has no inputs", None));
    }
    if file.outputs.is_empty() {
        diags.push(Diagnostic::new("the pipeline has no outputs", None));
    }
    for i in &file.inputs {
        declare(&i.value.name, NodeKind::Input, &mut diags);
    }
    for s in &file.stages {
        let kind = if !s.value.branches().is_empty() {
            NodeKind::Switch
        } else {
            NodeKind::Stage
        };
        declare(&s.value.name, kind, &mut diags);
    }
    for o in &file.outputs {
        declare(&o.value.name, NodeKind::Output, &mut diags);
    }
    // A switch's branches are readable names of their own.
    let mut branches: Vec<(usize, String)> = Vec::new();
    for (i, s) in file.stages.iter().enumerate() {
        for b in s.value.branches() {
            let full = format!("{}/{b}", s.value.name.value);
            kinds.entry(full.clone()).or_insert(NodeKind::Stage);
            branches.push((i, full));
        }
    }

    let inputs: Vec<String> = file
        .inputs
        .iter()
        .map(|i| i.value.name.value.clone())
        .collect();
    let mut w = Wiring::default();
    let loop_entries: HashSet<&str> = file
        .stages
        .iter()
        .filter(|s| s.value.feedback.is_some())
        .map(|s| s.value.name.value.as_str())
        .collect();
    let refs = |who: &str,
                from: &Option<serde_saphyr::Spanned<crate::config::From>>,
                default: Vec<String>,
                diags: &mut Vec<Diagnostic>|
     -> Vec<String> {
        match from {
            None => default,
            Some(f) => {
                let names = f.value.names();
                if names.is_empty() {
                    diags.push(Diagnostic::at(format!("'{who}': `from` is empty"), f));
                }
                for n in &names {
                    match kinds.get(n) {
                        None => diags.push(Diagnostic::at(
                            format!("'{who}' reads from '{n}', which is not an input or a stage"),
                            f,
                        )),
                        Some(NodeKind::Output) => diags.push(Diagnostic::at(
                            format!("'{who}' reads from '{n}', which is an output"),
                            f,
                        )),
                        Some(NodeKind::Switch) => diags.push(Diagnostic::at(
                            format!("'{who}' reads from switch '{n}': read one of its branches, as '{n}/<branch>'"),
                            f,
                        )),
                        Some(_) if n == who && !loop_entries.contains(who) => {
                            diags.push(Diagnostic::at(format!("'{who}' reads from itself (a stage that feeds its own records back needs `loop:`)"), f))
                        }
                        Some(_) => {}
                    }
                }
                let unique: HashSet<&String> = names.iter().collect();
                if unique.len() != names.len() {
                    diags.push(Diagnostic::at(
                        format!("'{who}' names the same upstream twice"),
                        f,
                    ));
                }
                names
            }
        }
    };
    // What each stage and output reads, by position in the file: with a
    // name used twice, a map by name would mix the two entries up.
    let mut previous: Option<String> = None;
    let mut stage_from: Vec<Vec<String>> = Vec::with_capacity(file.stages.len());
    for s in &file.stages {
        let name = s.value.name.value.clone();
        let default = previous
            .clone()
            .map(|p| vec![p])
            .unwrap_or_else(|| inputs.clone());
        if s.value.from.is_none() {
            switch_above(&kinds, &name, &default, &s.value.name, &mut diags);
        }
        stage_from.push(refs(&name, &s.value.from, default, &mut diags));
        previous = Some(name);
    }
    let mut output_from: Vec<Vec<String>> = Vec::with_capacity(file.outputs.len());
    for o in &file.outputs {
        let name = o.value.name.value.clone();
        let default = previous
            .clone()
            .map(|p| vec![p])
            .unwrap_or_else(|| inputs.clone());
        if o.value.from.is_none() {
            switch_above(&kinds, &name, &default, &o.value.name, &mut diags);
        }
        output_from.push(refs(&name, &o.value.from, default, &mut diags));
    }
    for from in stage_from.iter().chain(&output_from) {
        for f in from {
            *w.readers.entry(f.clone()).or_default() += 1;
        }
    }
    // Every input and stage must be read by something, or its records
    // would have nowhere to go.
    for i in &file.inputs {
        if !w.readers.contains_key(&i.value.name.value) {
            diags.push(Diagnostic::at(
                format!(
                    "input '{}' is not read by any stage or output",
                    i.value.name.value
                ),
                &i.value.name,
            ));
        }
    }
    for (_, b) in &branches {
        if !w.readers.contains_key(b) {
            let (i, _) = branches.iter().find(|(_, x)| x == b).expect("listed");
            diags.push(Diagnostic::at(
                format!("the records of branch '{b}' go nowhere: no stage or output reads from it"),
                &file.stages[*i].value.name,
            ));
        }
    }
    for s in &file.stages {
        if !s.value.branches().is_empty() {
            continue;
        }
        if !w.readers.contains_key(&s.value.name.value) {
            diags.push(Diagnostic::at(
                format!(
                    "the records of stage '{}' go nowhere: no stage or output reads from it",
                    s.value.name.value
                ),
                &s.value.name,
            ));
        }
    }

    // Order stages so each comes after its upstream stages (Kahn). A name
    // refers to the first stage of that name (a second one is reported
    // above). A self-reference is reported above too, so it is left out.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, s) in file.stages.iter().enumerate() {
        index.entry(s.value.name.value.as_str()).or_insert(i);
    }
    for (i, b) in &branches {
        index.entry(b.as_str()).or_insert(*i);
    }
    let ups = |stage_from: &[Vec<String>]| -> Vec<Vec<usize>> {
        stage_from
            .iter()
            .enumerate()
            .map(|(i, from)| {
                let mut up: Vec<usize> = from
                    .iter()
                    .filter_map(|n| index.get(n.as_str()).copied())
                    .filter(|&j| j != i)
                    .collect();
                up.sort_unstable();
                up.dedup();
                up
            })
            .collect()
    };
    let downs = |upstream: &[Vec<usize>]| -> Vec<Vec<usize>> {
        let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); upstream.len()];
        for (i, up) in upstream.iter().enumerate() {
            for &j in up {
                downstream[j].push(i);
            }
        }
        downstream
    };
    // A loop entry's references to itself or to stages after it in the
    // file are what is fed back: they leave its `from` (and the ordering)
    // for `loops`. Then each loop's cycle (the stages on a path from the
    // entry to what it reads back) is checked, and every edge leaving it
    // is recorded as an exit.
    let mut loops: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, s) in file.stages.iter().enumerate() {
        if s.value.feedback.is_none() {
            continue;
        }
        let (back, outside): (Vec<String>, Vec<String>) = stage_from[i]
            .iter()
            .cloned()
            .partition(|n| index.get(n.as_str()).is_some_and(|&j| j >= i));
        stage_from[i] = outside;
        loops.push((i, back));
    }
    {
        let upstream = ups(&stage_from);
        let downstream = downs(&upstream);
        let reach = |from: &[usize], edges: &[Vec<usize>]| -> HashSet<usize> {
            let mut seen: HashSet<usize> = from.iter().copied().collect();
            let mut todo = from.to_vec();
            while let Some(k) = todo.pop() {
                for &n in &edges[k] {
                    if seen.insert(n) {
                        todo.push(n);
                    }
                }
            }
            seen
        };
        let mut member: HashMap<usize, usize> = HashMap::new();
        for (i, back) in &loops {
            let i = *i;
            let s = &file.stages[i].value;
            let name = &s.name.value;
            let l = s.feedback.as_ref().expect("a loop entry");
            if back.is_empty() {
                diags.push(Diagnostic::at(
                    format!("stage '{name}' has `loop` but its `from` names no stage after it (or itself): nothing can be fed back into it"),
                    l,
                ));
                continue;
            }
            if stage_from[i].is_empty() {
                diags.push(Diagnostic::at(
                    format!("stage '{name}' reads only records fed back ({}): its `from` must also name an input or a stage above the loop, where records first come from", back.join(", ")),
                    l,
                ));
            }
            let below = reach(&[i], &downstream);
            let ends: Vec<usize> = back
                .iter()
                .filter_map(|b| index.get(b.as_str()).copied())
                .collect();
            for (b, &j) in back.iter().zip(&ends) {
                if !below.contains(&j) {
                    diags.push(Diagnostic::at(
                        format!("stage '{name}' reads '{b}', which comes after it but is not downstream of it: only records from further down a loop can be fed back"),
                        l,
                    ));
                }
            }
            let cycle: HashSet<usize> = below
                .intersection(&reach(&ends, &upstream))
                .copied()
                .collect();
            for &k in &cycle {
                let ks = &file.stages[k].value;
                if let Some(&other) = member.get(&k) {
                    diags.push(Diagnostic::at(
                        format!(
                            "stage '{}' is in the loops of '{}' and '{name}': loops may not share stages (nested loops are not supported yet)",
                            ks.name.value, file.stages[other].value.name.value
                        ),
                        l,
                    ));
                    continue;
                }
                member.insert(k, i);
                if ks.processor().is_some_and(|p| p.scope() == Scope::Windowed) {
                    diags.push(Diagnostic::at(
                        format!(
                            "stage '{}' ({}) is inside the loop of '{name}': it waits for the end of its input, which a loop reaches only once nothing is inside it; put it after the loop",
                            ks.name.value,
                            ks.component_name()
                        ),
                        &ks.name,
                    ));
                }
                if k == i {
                    continue;
                }
                for r in &stage_from[k] {
                    if !index.get(r.as_str()).is_some_and(|j| cycle.contains(j)) {
                        diags.push(Diagnostic::at(
                            format!(
                                "stage '{}' is inside the loop of '{name}' and also reads '{r}' from outside it: records enter a loop only through its entry ('{name}')",
                                ks.name.value
                            ),
                            &ks.name,
                        ));
                    }
                }
            }
            w.loops.insert(name.clone(), back.clone());
            // Every edge from the cycle to a stage or output outside it.
            let readers = file
                .stages
                .iter()
                .enumerate()
                .filter(|(k, _)| !cycle.contains(k))
                .map(|(k, st)| (&st.value.name.value, &stage_from[k]))
                .chain(
                    file.outputs
                        .iter()
                        .zip(&output_from)
                        .map(|(o, f)| (&o.value.name.value, f)),
                );
            for (reader, from) in readers {
                for f in from {
                    if index.get(f.as_str()).is_some_and(|j| cycle.contains(j)) {
                        w.exits.insert((reader.clone(), f.clone()), name.clone());
                    }
                }
            }
        }
    }
    let upstream = ups(&stage_from);
    let downstream = downs(&upstream);
    let mut pending: Vec<usize> = upstream.iter().map(Vec::len).collect();
    let mut ready: VecDeque<usize> = (0..file.stages.len())
        .filter(|&i| pending[i] == 0)
        .collect();
    while let Some(i) = ready.pop_front() {
        w.stage_order.push(i);
        for &j in &downstream[i] {
            pending[j] -= 1;
            if pending[j] == 0 {
                ready.push_back(j);
            }
        }
    }
    // What is left is on a cycle or downstream of one: report each cycle
    // (a strongly connected group of two or more stages) once, naming only
    // its stages.
    if w.stage_order.len() < file.stages.len() {
        let placed: HashSet<usize> = w.stage_order.iter().copied().collect();
        let left: Vec<usize> = (0..file.stages.len())
            .filter(|i| !placed.contains(i))
            .collect();
        let reach = |from: usize, edges: &[Vec<usize>]| -> HashSet<usize> {
            let mut seen = HashSet::from([from]);
            let mut todo = vec![from];
            while let Some(k) = todo.pop() {
                for &n in &edges[k] {
                    if !placed.contains(&n) && seen.insert(n) {
                        todo.push(n);
                    }
                }
            }
            seen
        };
        let mut reported: HashSet<usize> = HashSet::new();
        for &i in &left {
            if reported.contains(&i) {
                continue;
            }
            let down = reach(i, &downstream);
            let up = reach(i, &upstream);
            let mut cycle: Vec<usize> = down.intersection(&up).copied().collect();
            if cycle.len() < 2 {
                continue;
            }
            cycle.sort_unstable();
            reported.extend(&cycle);
            diags.push(Diagnostic::at(
                format!(
                    "stages {} read from each other in a cycle (to feed records back on purpose, give the stage where they re-enter `loop: {{ max_depth: N }}`)",
                    cycle
                        .iter()
                        .map(|&c| format!("'{}'", file.stages[c].value.name.value))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                &file.stages[cycle[0]].value.name,
            ));
        }
    }
    for (s, from) in file.stages.iter().zip(stage_from) {
        w.from.entry(s.value.name.value.clone()).or_insert(from);
    }
    for (o, from) in file.outputs.iter().zip(output_from) {
        w.from.entry(o.value.name.value.clone()).or_insert(from);
    }
    diags.extend(same_files(file, base_dir, pipeline));
    if diags.is_empty() { Ok(w) } else { Err(diags) }
}

/// A file the pipeline writes: an output's, or the dead-letter file.
struct Written<'a> {
    /// "output 'db'", "the dead-letter file".
    who: String,
    /// The path as written, and where; `None` for the default dead-letter
    /// file, which the pipeline file does not name.
    span: Option<&'a Spanned<String>>,
    path: &'a str,
    /// Writers with the same tag may share the file (sqlite outputs: one
    /// table each).
    shared: Option<&'static str>,
}

/// The default dead-letter file, beside the pipeline file.
const DEFAULT_DEAD_LETTERS: &str = "dead-letters.jsonl";

/// Outputs that would write over an input, and files written twice: the
/// run would truncate its own input (or interleave two writers, or write
/// over the pipeline file) before
/// reading a line, so the file is refused before anything is opened. Paths
/// are compared after resolving them against `base_dir`, links and globs
/// (a glob also matches files that do not exist yet: the next run would
/// read them).
fn same_files(file: &PipelineFile, base_dir: &Path, pipeline: &Path) -> Vec<Diagnostic> {
    let mut written: Vec<Written> = Vec::new();
    for o in &file.outputs {
        let e = &o.value;
        let who = format!("output '{}'", e.name.value);
        if let Some(w) = e.sink().and_then(|s| s.writes()) {
            written.push(Written {
                who,
                span: Some(w.path),
                path: &w.path.value,
                shared: w.shared,
            });
        }
    }
    written.push(match &file.dead_letter {
        Some(d) => Written {
            who: "the dead-letter file".into(),
            span: Some(&d.path),
            path: &d.path.value,
            shared: None,
        },
        None => Written {
            who: "the dead-letter file".into(),
            span: None,
            path: DEFAULT_DEAD_LETTERS,
            shared: None,
        },
    });
    written.retain(|w| !w.path.is_empty());

    let mut diags = Vec::new();
    for w in &written {
        if same_file(&base_dir.join(w.path), pipeline) {
            let what = format!("{} would write over the pipeline file itself", w.who);
            diags.push(match w.span {
                Some(span) => Diagnostic::at(what, span),
                None => Diagnostic::new(what, None),
            });
        }
        for i in &file.inputs {
            let Some(src) = i.value.source().and_then(|s| s.files()) else {
                continue;
            };
            if !src.reads(base_dir, Path::new(w.path)) {
                continue;
            }
            let input = &i.value.name.value;
            let glob = src.path.value.contains(['*', '?', '[']);
            let how = if glob {
                format!(
                    "input '{input}' reads it here (it matches '{}')",
                    src.path.value
                )
            } else {
                format!("input '{input}' reads it here")
            };
            diags.push(match w.span {
                Some(span) => Diagnostic::at(
                    format!(
                        "{} would write over {}, which input '{input}' reads",
                        w.who, w.path
                    ),
                    span,
                )
                .note(how, &src.path),
                None => Diagnostic::at(
                    format!(
                        "input '{input}' would read {DEFAULT_DEAD_LETTERS}, where dead letters go by default: set `dead_letter: {{ path: ... }}` to another file"
                    ),
                    &src.path,
                ),
            });
        }
    }
    for (k, b) in written.iter().enumerate() {
        for a in &written[..k] {
            if (a.shared.is_some() && a.shared == b.shared)
                || !same_file(&base_dir.join(a.path), &base_dir.join(b.path))
            {
                continue;
            }
            // `b` comes after `a`, so only the default dead-letter file can
            // lack a span here; then the output is the one to point at.
            diags.push(match (a.span, b.span) {
                (Some(sa), Some(sb)) => Diagnostic::at(
                    format!("{} would write over {}, which {} writes too", b.who, b.path, a.who),
                    sb,
                )
                .note(format!("{} writes it here", a.who), sa),
                (Some(sa), None) => Diagnostic::at(
                    format!(
                        "{} writes {DEFAULT_DEAD_LETTERS}, where dead letters go by default: set `dead_letter: {{ path: ... }}` to another file",
                        a.who
                    ),
                    sa,
                ),
                _ => continue,
            });
        }
    }
    diags
}
