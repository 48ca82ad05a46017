//! The engine's main job until the CLI lands: orders from two regions are
//! ingested, parsed, validated, enriched and aggregated per customer, with
//! malformed records sent to the dead-letter output and every count
//! accounted for.
//!
//! Run: `cargo run --release -p weir --example orders`
#![allow(clippy::print_stdout)]

use std::time::Duration;

use weir::{ErrorPolicy, Flow, Pipeline, Retry, Window, collect, from_iter};

/// One order line as it arrives: `id,customer,amount_cents,country`.
/// About 1% are malformed (a missing field or a non-numeric amount).
fn region(name: &'static str, seed: u64, lines: u64) -> impl Iterator<Item = String> + Send {
    let mut state = seed;
    (0..lines).map(move |i| {
        // splitmix64: deterministic data on every machine.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let customer = z % 500;
        let amount = (z >> 20) % 100_000;
        match z % 100 {
            0 => format!("{name}-{i},c{customer}"),
            1 => format!("{name}-{i},c{customer},12x4,SE"),
            _ => format!(
                "{name}-{i},c{customer},{amount},{}",
                ["SE", "NO", "DK", "FI"][(z % 4) as usize]
            ),
        }
    })
}

#[derive(Debug, Clone)]
struct Order {
    id: String,
    customer: String,
    cents: u64,
    country: String,
}

fn parse(line: &str) -> Result<Order, String> {
    let f: Vec<&str> = line.split(',').collect();
    let [id, customer, amount, country] = f[..] else {
        return Err(format!("expected 4 fields, found {}", f.len()));
    };
    let cents = amount
        .parse()
        .map_err(|_| format!("field amount: '{amount}' is not a whole number of cents"))?;
    Ok(Order {
        id: id.to_string(),
        customer: customer.to_string(),
        cents,
        country: country.to_string(),
    })
}

#[derive(Debug, Default, Clone)]
struct Totals {
    orders: u64,
    cents: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let p = Pipeline::new();
        // Fan-in: two sources merged into one flow.
        let north = p.source("north", from_iter(region("north", 1, 200_000)));
        let south = p.source("south", from_iter(region("south", 2, 200_000)));
        let orders = Flow::merge([north, south])
            // A worker pool: parsing is CPU work, spread over two threads.
            .try_map("parse", |line: &String| parse(line))
            .workers(2)
            .on_error(ErrorPolicy::DeadLetter)
            // Validation: bad records go to the dead-letter output with the reason.
            .try_filter("validate", |o: &Order| {
                if o.cents == 0 {
                    Err(format!("order {}: amount must be positive", o.id))
                } else {
                    Ok(true)
                }
            })
            .on_error(ErrorPolicy::DeadLetter)
            // Formatting: normalise the customer id.
            .map("format", |mut o: Order| {
                o.customer = o.customer.to_uppercase();
                o
            })
            // Enrichment from a (simulated) remote service answering in about
            // 1 ms, 512 calls in flight, retried with backoff if it fails.
            .try_map_async("enrich", |o: Order| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let vat = match o.country.as_str() {
                    "SE" | "DK" => 25,
                    "NO" => 25,
                    _ => 24,
                };
                Ok::<_, String>((o, vat))
            })
            .workers(512)
            .on_error(ErrorPolicy::Retry(Retry::attempts(3)));
        // Fan-out by key, aggregate per customer in parallel, fan back in.
        let per_customer: Vec<_> = orders
            .partition(2, |(o, _): &(Order, u64)| o.customer.clone())
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                f.aggregate(
                    &format!("totals-{i}"),
                    |(o, _): &(Order, u64)| o.customer.clone(),
                    |_| Totals::default(),
                    |t, (o, _)| {
                        t.orders += 1;
                        t.cents += o.cents;
                    },
                    Window::All,
                )
            })
            .collect();
        let totals = Flow::merge(per_customer).sink("store", collect());

        let report = p.run().await?;
        println!("{report}\n");

        let mut totals = totals.take().expect("the sink finished");
        totals.sort_by_key(|(_, t)| std::cmp::Reverse(t.cents));
        println!("top customers:");
        for (c, t) in totals.iter().take(5) {
            println!(
                "  {c:<6} {:>6} orders {:>12.2} total",
                t.orders,
                t.cents as f64 / 100.0
            );
        }
        println!("\nfirst dead letters:");
        for d in report.dead_letters.iter().take(3) {
            let line = d.item::<String>().map(String::as_str).unwrap_or("?");
            println!("  [{}] {}  <- {line}", d.stage, d.error);
        }
        let produced: u64 = ["north", "south"]
            .iter()
            .map(|s| report.stage(s).unwrap().emitted)
            .sum();
        let stored: u64 = totals.iter().map(|(_, t)| t.orders).sum();
        let dead = report.dead_lettered();
        println!("\nin = out + dead-lettered: {produced} = {stored} + {dead}");
        assert_eq!(produced, stored + dead, "counts must add up");
        Ok(())
    })
}
