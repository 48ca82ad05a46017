//! The pipeline file's graph: names, `from` references, defaults, cycles.
//! Checked before any component is built, reporting every problem.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::config::PipelineFile;
use crate::diag::Diagnostic;

/// What a name in the file refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Input,
    Stage,
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
}

pub fn check(file: &PipelineFile) -> Result<Wiring, Vec<Diagnostic>> {
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
        declare(&s.value.name, NodeKind::Stage, &mut diags);
    }
    for o in &file.outputs {
        declare(&o.value.name, NodeKind::Output, &mut diags);
    }

    let inputs: Vec<String> = file
        .inputs
        .iter()
        .map(|i| i.value.name.value.clone())
        .collect();
    let mut w = Wiring::default();
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
                        Some(_) if n == who => {
                            diags.push(Diagnostic::at(format!("'{who}' reads from itself"), f))
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
    let mut previous: Option<String> = None;
    for s in &file.stages {
        let name = s.value.name.value.clone();
        let default = previous
            .clone()
            .map(|p| vec![p])
            .unwrap_or_else(|| inputs.clone());
        let from = refs(&name, &s.value.from, default, &mut diags);
        w.from.insert(name.clone(), from);
        previous = Some(name);
    }
    for o in &file.outputs {
        let name = o.value.name.value.clone();
        let default = previous
            .clone()
            .map(|p| vec![p])
            .unwrap_or_else(|| inputs.clone());
        let from = refs(&name, &o.value.from, default, &mut diags);
        w.from.insert(name, from);
    }
    for from in w.from.values() {
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
    for s in &file.stages {
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

    // Order stages so each comes after its upstream stages (Kahn); what is
    // left over is on a cycle.
    let index: HashMap<&str, usize> = file
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.value.name.value.as_str(), i))
        .collect();
    let mut pending: Vec<usize> = file
        .stages
        .iter()
        .map(|s| {
            w.from.get(&s.value.name.value).map_or(0, |f| {
                f.iter().filter(|n| index.contains_key(n.as_str())).count()
            })
        })
        .collect();
    let mut ready: VecDeque<usize> = (0..file.stages.len())
        .filter(|&i| pending[i] == 0)
        .collect();
    while let Some(i) = ready.pop_front() {
        w.stage_order.push(i);
        let name = &file.stages[i].value.name.value;
        for (j, s) in file.stages.iter().enumerate() {
            if w.from
                .get(&s.value.name.value)
                .is_some_and(|f| f.contains(name))
            {
                pending[j] -= 1;
                if pending[j] == 0 {
                    ready.push_back(j);
                }
            }
        }
    }
    if w.stage_order.len() < file.stages.len() {
        let placed: HashSet<usize> = w.stage_order.iter().copied().collect();
        let cycle: Vec<&str> = (0..file.stages.len())
            .filter(|i| !placed.contains(i))
            .map(|i| file.stages[i].value.name.value.as_str())
            .collect();
        let first = (0..file.stages.len())
            .find(|i| !placed.contains(i))
            .expect("a stage is left");
        diags.push(Diagnostic::at(
            format!(
                "stages {} read from each other in a cycle",
                cycle
                    .iter()
                    .map(|c| format!("'{c}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &file.stages[first].value.name,
        ));
    }
    if diags.is_empty() { Ok(w) } else { Err(diags) }
}
