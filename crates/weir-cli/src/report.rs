//! The run report as JSON (`weir run --report json`), for scripts and CI.

use serde_json::{Value, json};

pub fn json(report: &weir::Report, error: Option<&weir::Error>) -> Value {
    let stages: Vec<Value> = report
        .stages
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "kind": s.kind,
                "workers": s.workers,
                "runs_in": s.runs_in,
                "in": s.received,
                "ok": s.ok,
                "out": s.emitted,
                "filtered": s.filtered,
                "dead_lettered": s.dead_lettered,
                "dropped": s.dropped,
                "retries": s.retries,
                "busy_ms": s.busy.as_secs_f64() * 1e3,
                "waiting_for_input_ms": s.waiting_for_input.as_secs_f64() * 1e3,
                "waiting_for_output_ms": s.waiting_for_output.as_secs_f64() * 1e3,
                "mean_queue_fill": s.mean_queue_fill,
                "queue_capacity": s.queue_capacity,
            })
        })
        .collect();
    json!({
        "ok": error.is_none(),
        "error": error.map(ToString::to_string),
        "elapsed_ms": report.elapsed.as_secs_f64() * 1e3,
        "cancelled": report.cancelled,
        "dead_lettered": report.dead_lettered(),
        "stages": stages,
    })
}
