//! What a job's workers run, as a [`Fingerprint`]: computed the same way by
//! the coordinator (stored in the job's state) and by every worker (which
//! refuses to join a job whose fingerprint differs from its own).
//!
//! A stage's part hashes its entry in the pipeline file as data (so
//! formatting, comments and key order do not count), without the keys that
//! cannot change what it outputs (`workers`, `ordered`, `remote`), together
//! with the inboxes each of its output ports publishes into; and, per file
//! the stage reads (a `validate` schema and the local files its `$ref`s
//! name), a hash of the file's content. The coordinator's copy also covers
//! the whole file and the input files ([`of_job`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};
use weir_nats::job::{Fingerprint, StagePrint};

use super::placement::Placement;
use crate::Loaded;

/// Keys of a stage entry that do not change what the stage outputs.
const IGNORED: &[&str] = &["workers", "ordered", "remote"];

/// The fingerprint of the remote stages of `l` (all of them, or those in
/// `only`).
pub fn of(l: &Loaded, placement: &Placement, only: Option<&[String]>) -> Fingerprint {
    // The file parsed and checked already: as plain data it parses too.
    let doc: Value = serde_saphyr::from_str(&l.source).unwrap_or(Value::Null);
    let entries = doc["stages"].as_array().cloned().unwrap_or_default();
    let mut stages = BTreeMap::new();
    for name in placement.pool_stages() {
        if only.is_some_and(|o| !o.iter().any(|x| x == name)) {
            continue;
        }
        let Some(entry) = entries.iter().find(|e| e["name"] == name) else {
            continue;
        };
        let mut entry = entry.clone();
        if let Some(m) = entry.as_object_mut() {
            for k in IGNORED {
                m.remove(*k);
            }
        }
        let ports = ports(l, placement, name);
        let config = hash(
            format!(
                "{}\n{}",
                canonical(&entry),
                serde_json::to_string(&ports).expect("ports serialize")
            )
            .as_bytes(),
        );
        let mut files = BTreeMap::new();
        if let Some(schema) = entry["validate"]["schema"].as_str() {
            read_with_refs(&l.base_dir, schema, &mut files);
        }
        stages.insert(name.to_string(), StagePrint { config, files });
    }
    Fingerprint {
        stages,
        ..Fingerprint::default()
    }
}

/// The fingerprint a coordinator records in the job: [`of`] all remote
/// stages, plus what else decides the messages a resumed run sends again:
/// the whole pipeline file as data (stage keys that cannot change results
/// left out) with the broker's `max_payload` (it decides where messages
/// are cut), and in `inputs` what each input file is now, the files any
/// stage reads (schemas), and a hash of each environment variable a stage
/// lists for jq (`env: [...]`; the value itself is never stored).
pub fn of_job(l: &Loaded, placement: &Placement, max_payload: usize) -> Fingerprint {
    let mut print = of(l, placement, None);
    let mut doc: Value = serde_saphyr::from_str(&l.source).unwrap_or(Value::Null);
    let mut env = std::collections::BTreeSet::new();
    if let Some(stages) = doc["stages"].as_array_mut() {
        for entry in stages.iter_mut().filter_map(Value::as_object_mut) {
            for k in IGNORED {
                entry.remove(*k);
            }
            let stage = entry.get("name").and_then(Value::as_str).unwrap_or("");
            for options in entry.values() {
                if let Some(schema) = options["schema"].as_str() {
                    let mut files = BTreeMap::new();
                    read_with_refs(&l.base_dir, schema, &mut files);
                    for (path, h) in files {
                        print
                            .inputs
                            .insert(format!("file {path} (read by stage '{stage}')"), h);
                    }
                }
                env.extend(
                    options["env"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_string),
                );
            }
        }
    }
    print.pipeline = hash(format!("{}\nmax_payload {max_payload}", canonical(&doc)).as_bytes());
    for name in env {
        let value = std::env::var_os(&name).map(|v| v.into_encoded_bytes());
        let shown = match value {
            None => "unset".to_string(),
            Some(v) => format!("set, hash {}", &hash(&v)[..16]),
        };
        print
            .inputs
            .insert(format!("environment variable {name}"), shown);
    }
    for input in &l.file.inputs {
        let Some(src) = input.value.source().and_then(|s| s.files()) else {
            continue;
        };
        // A path that matches nothing readable: the build says why.
        for (path, id) in src.identities(&l.base_dir).unwrap_or_default() {
            let sample: String = id.sample.iter().map(|b| format!("{b:02x}")).collect();
            print.inputs.insert(
                format!("input file {path}"),
                format!("{} bytes, sample {}", id.size, &sample[..16]),
            );
        }
    }
    print
}

/// Where each output port of stage `name` publishes (for a switch, per
/// branch in order).
pub(super) fn ports(l: &Loaded, placement: &Placement, name: &str) -> Vec<Vec<String>> {
    let branches = l
        .file
        .stages
        .iter()
        .find(|s| s.value.name.value == name)
        .map(|s| s.value.branches())
        .unwrap_or_default();
    if branches.is_empty() {
        return vec![placement.remote_readers(name)];
    }
    branches
        .iter()
        .map(|b| placement.remote_readers(&format!("{name}/{b}")))
        .collect()
}

/// JSON with object keys sorted at every level: equal data, equal text.
fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

fn hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Hashes `path` (relative to `base`) and, for a JSON or YAML schema, the
/// local files its `$ref`s name, recursively. A file that cannot be read
/// hashes as "unreadable" (the stage itself reports why).
fn read_with_refs(base: &Path, path: &str, files: &mut BTreeMap<String, String>) {
    if files.contains_key(path) {
        return;
    }
    let full = base.join(path);
    let Ok(bytes) = std::fs::read(&full) else {
        files.insert(path.to_string(), "unreadable".to_string());
        return;
    };
    files.insert(path.to_string(), hash(&bytes));
    let text = String::from_utf8_lossy(&bytes);
    let doc: Value = serde_json::from_str(&text)
        .or_else(|_| serde_saphyr::from_str(&text))
        .unwrap_or(Value::Null);
    let dir = Path::new(path).parent().unwrap_or(Path::new(""));
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    for r in refs {
        let file = r.split('#').next().unwrap_or("");
        if file.is_empty() || file.contains("://") {
            continue;
        }
        let rel = dir.join(file).display().to_string();
        read_with_refs(base, &rel, files);
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
