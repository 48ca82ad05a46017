//! The main job's data, at any scale: `weir gen orders --scale N -o DIR`
//! writes `orders-eu.jsonl`, `orders-us.jsonl.gz` and `customers.csv` (the
//! files of `examples/pipelines/data`, same names, formats and shapes) with
//! `N` times as many records, and says what `examples/pipelines/
//! orders.yaml` must make of them ([`Expected`]).
//!
//! The recipe is the one of `examples/pipelines/data/generate.py`, on
//! weir's own deterministic generator ([`SplitMix64`]): per region
//! `8000 × N` orders, messy on purpose (15% amounts as text with a decimal
//! comma, 15% customer ids as text, statuses in mixed case and padded),
//! 0.4% truncated lines, 0.3% without a customer, 0.3% with a negative
//! amount, 2% delivered twice; `1500 × N` customers, every 250th with a
//! year that is not a number. The same `(seed, scale)` gives the same
//! bytes everywhere (the `.gz` too: no timestamp in its header).

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use super::events::SplitMix64;

/// What `orders.yaml` makes of the generated files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Expected {
    /// Lines in the two order files (duplicates included).
    pub order_lines: u64,
    /// Rows of table `orders`: distinct valid orders.
    pub orders: u64,
    /// Rows of table `customer_totals`: distinct customers of those.
    pub customer_totals: u64,
    /// Their item count, summed (`customer_totals.items`).
    pub items: u64,
    /// Rows of table `customers`.
    pub customers: u64,
    /// Duplicate deliveries of valid orders (filtered by `unique`).
    pub duplicates: u64,
    /// Order lines that do not parse (`parse_error`, duplicates included).
    pub truncated: u64,
    /// Orders the schema rejects (`valid`, duplicates included).
    pub invalid: u64,
    /// Customer rows that do not fit the columns (`parse_error`).
    pub bad_customers: u64,
    /// All dead letters: `truncated + invalid + bad_customers`.
    pub dead_letters: u64,
}

const STATUSES: [&str; 6] = ["paid", "PAID", " Paid ", "shipped", "Shipped", "refunded"];
const SKUS: [&str; 5] = ["A-100", "A-200", "B-300", "C-400", "D-500"];
const COUNTRIES: [&str; 6] = ["SE", "DE", "FR", "US", "CA", "NL"];
const ORDERS_PER_REGION: u64 = 8_000;
const CUSTOMERS: u64 = 1_500;

fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    rng.next() % n
}

/// Writes the three files into `dir` (created if needed); returns what the
/// main job must make of them.
///
/// # Errors
/// Creating or writing the files.
pub fn write_orders(seed: u64, scale: u64, dir: &Path) -> io::Result<Expected> {
    std::fs::create_dir_all(dir)?;
    let mut rng = SplitMix64::new(seed);
    let customers = CUSTOMERS * scale.max(1);
    let mut e = Expected::default();
    let mut buyers = std::collections::HashSet::new();

    let eu = std::fs::File::create(dir.join("orders-eu.jsonl"))?;
    let mut eu = io::BufWriter::with_capacity(1 << 20, eu);
    region(
        &mut rng,
        "EU",
        scale,
        customers,
        &mut eu,
        &mut e,
        &mut buyers,
    )?;
    eu.flush()?;

    let us = std::fs::File::create(dir.join("orders-us.jsonl.gz"))?;
    let gz = flate2::GzBuilder::new().mtime(0).write(
        io::BufWriter::with_capacity(1 << 20, us),
        flate2::Compression::fast(),
    );
    let mut us = io::BufWriter::with_capacity(1 << 20, gz);
    region(
        &mut rng,
        "US",
        scale,
        customers,
        &mut us,
        &mut e,
        &mut buyers,
    )?;
    us.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .finish()?
        .flush()?;

    let csv = std::fs::File::create(dir.join("customers.csv"))?;
    let mut csv = io::BufWriter::with_capacity(1 << 20, csv);
    writeln!(csv, "id,name,country,since")?;
    for i in 1..=customers {
        let country = COUNTRIES[below(&mut rng, 6) as usize];
        if i % 250 == 0 {
            writeln!(csv, "{i},Customer {i},{country},not-a-year")?;
            e.bad_customers += 1;
        } else {
            writeln!(
                csv,
                "{i},Customer {i},{country},{}",
                2010 + below(&mut rng, 16)
            )?;
            e.customers += 1;
        }
    }
    csv.flush()?;
    e.customer_totals = buyers.len() as u64;
    e.dead_letters = e.truncated + e.invalid + e.bad_customers;
    Ok(e)
}

fn region(
    rng: &mut SplitMix64,
    name: &str,
    scale: u64,
    customers: u64,
    out: &mut impl Write,
    e: &mut Expected,
    buyers: &mut std::collections::HashSet<u64>,
) -> io::Result<()> {
    let mut line = String::with_capacity(256);
    for i in 1..=ORDERS_PER_REGION * scale.max(1) {
        line.clear();
        let cents = 200 + below(rng, 39_801);
        let customer = 1 + below(rng, customers);
        let status = STATUSES[below(rng, 6) as usize];
        let (day, hour, minute) = (1 + below(rng, 28), below(rng, 24), below(rng, 60));
        let n_items = 1 + below(rng, 3);
        let mut items = String::new();
        let mut item_count = 0;
        for k in 0..n_items {
            let sku = SKUS[below(rng, 5) as usize];
            let qty = 1 + below(rng, 4);
            item_count += qty;
            let sep = if k > 0 { "," } else { "" };
            let _ = write!(items, "{sep}{{\"sku\":\"{sku}\",\"qty\":{qty}}}");
        }
        let messy = below(rng, 100);
        let fate = below(rng, 1000);
        let amount = if (7..10).contains(&fate) {
            format!("-{}.{:02}", cents / 100, cents % 100)
        } else if messy < 15 {
            format!("\"{},{:02}\"", cents / 100, cents % 100)
        } else {
            format!("{}.{:02}", cents / 100, cents % 100)
        };
        let customer_field = if (4..7).contains(&fate) {
            String::new()
        } else if (15..30).contains(&messy) {
            format!("\"customer_id\":\"{customer}\",")
        } else {
            format!("\"customer_id\":{customer},")
        };
        let currency = if name == "EU" { "EUR" } else { "USD" };
        let _ = write!(
            line,
            "{{\"order_id\":\"{name}-{i:06}\",{customer_field}\"amount\":{amount},\"currency\":\"{currency}\",\"status\":\"{status}\",\"ts\":\"2026-11-{day:02}T{hour:02}:{minute:02}:00Z\",\"items\":[{items}]}}"
        );
        if fate < 4 {
            let keep = 5 + below(rng, line.len() as u64 - 10) as usize;
            line.truncate(keep);
        }
        let copies = if below(rng, 100) < 2 { 2 } else { 1 };
        for _ in 0..copies {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
        }
        e.order_lines += copies;
        match fate {
            0..4 => e.truncated += copies,
            4..10 => e.invalid += copies,
            _ => {
                e.orders += 1;
                e.duplicates += copies - 1;
                e.items += item_count;
                buyers.insert(customer);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_determinism() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let e = write_orders(7, 1, a.path()).unwrap();
        assert_eq!(e, write_orders(7, 1, b.path()).unwrap());
        for f in ["orders-eu.jsonl", "orders-us.jsonl.gz", "customers.csv"] {
            assert_eq!(
                std::fs::read(a.path().join(f)).unwrap(),
                std::fs::read(b.path().join(f)).unwrap(),
                "{f}"
            );
        }
        assert!((16_200..16_500).contains(&e.order_lines), "{e:?}");
        assert!((40..90).contains(&e.truncated), "{e:?}");
        assert!((70..130).contains(&e.invalid), "{e:?}");
        assert!((250..400).contains(&e.duplicates), "{e:?}");
        assert_eq!((e.customers, e.bad_customers), (1_494, 6));
        assert_eq!(e.dead_letters, e.truncated + e.invalid + 6);
        let eu = std::fs::read_to_string(a.path().join("orders-eu.jsonl")).unwrap();
        let mut us = String::new();
        let gz = std::fs::File::open(a.path().join("orders-us.jsonl.gz")).unwrap();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut us).unwrap();
        assert_eq!(
            (eu.lines().count() + us.lines().count()) as u64,
            e.order_lines
        );
        let parsed = eu
            .lines()
            .chain(us.lines())
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
            .count() as u64;
        assert_eq!(parsed, e.order_lines - e.truncated);
    }
}
