//! The B4 benchmark data: a deterministic stream of JSON event lines, about
//! 1% of them bad (truncated, missing a field, or with a negative amount).
//!
//! The algorithm is fixed: the same `(seed, lines, users)` gives the same
//! bytes on every machine, so benchmark inputs can be checked by checksum
//! (seed 42, 1,000,000 lines, 10,000 users: 100,168,501 bytes, sha256
//! `7d65043f016fb52940070302f02dcb2668696246ab9439d6e73358e4eef3ff17`).
//!
//! Each line is drawn in this order: `r` (the line's fate), the user, the
//! timestamp jitter, the kind, the amount, the tag count, the tags, then the
//! missing field (if `4 <= r < 7`) or the truncation point (if `r < 4`);
//! `7 <= r < 10` makes the amount negative.

use std::fmt::Write as _;
use std::io;

/// The splitmix64 generator: tiny, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting at `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)` (53 random bits).
    pub fn next_unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const KINDS: [&str; 5] = ["Click", "VIEW", "purchase", "Refund", "SignUp"];
const TAGS: [&str; 8] = [
    "red", "green", "blue", "mobile", "web", "promo", "beta", "vip",
];
const MISSING: [&str; 4] = ["user", "ts", "kind", "amount"];

/// The event lines, without their newlines.
pub fn events(seed: u64, lines: u64, users: u64) -> impl Iterator<Item = String> + Send {
    let mut rng = SplitMix64::new(seed);
    // A zero user count would divide by zero; one user is the least.
    let users = users.max(1);
    (0..lines).map(move |i| event(&mut rng, i, users))
}

/// One event line.
fn event(rng: &mut SplitMix64, i: u64, users: u64) -> String {
    let r = rng.next() % 1000;
    let user = rng.next() % users;
    let ts = 1_700_000_000_000u64
        .wrapping_add(i.wrapping_mul(250))
        .wrapping_add(rng.next() % 250);
    let kind = KINDS[(rng.next() % 5) as usize];
    let mut m = rng.next() % 1_000_000;
    let ntags = rng.next() % 4;
    let mut tags = [""; 3];
    for t in tags.iter_mut().take(ntags as usize) {
        *t = TAGS[(rng.next() % 8) as usize];
    }
    let negative = (7..10).contains(&r);
    if negative && m == 0 {
        m = 1;
    }
    let missing = if (4..7).contains(&r) {
        Some(MISSING[(rng.next() % 4) as usize])
    } else {
        None
    };

    let mut line = String::with_capacity(128);
    // Writing to a String cannot fail.
    let _ = write!(line, "{{\"id\":{i}");
    if missing != Some("user") {
        let _ = write!(line, ",\"user\":\"u{user}\"");
    }
    if missing != Some("ts") {
        let _ = write!(line, ",\"ts\":{ts}");
    }
    if missing != Some("kind") {
        let _ = write!(line, ",\"kind\":\"{kind}\"");
    }
    if missing != Some("amount") {
        let sign = if negative { "-" } else { "" };
        let _ = write!(line, ",\"amount\":{sign}{}.{:03}", m / 1000, m % 1000);
    }
    line.push_str(",\"tags\":[");
    for (k, t) in tags.iter().take(ntags as usize).enumerate() {
        if k > 0 {
            line.push(',');
        }
        line.push('"');
        line.push_str(t);
        line.push('"');
    }
    line.push_str("]}");
    if r < 4 {
        let keep = 1 + (rng.next() % (line.len() as u64 - 1)) as usize;
        line.truncate(keep);
    }
    line
}

/// Writes the event lines, each followed by `\n`, to `out`; returns the
/// bytes written. Buffer `out` (a `BufWriter`) when it is a file.
///
/// # Errors
/// Whatever writing to `out` fails with.
pub fn write_events(
    seed: u64,
    lines: u64,
    users: u64,
    out: &mut impl io::Write,
) -> io::Result<u64> {
    let mut bytes = 0u64;
    for mut line in events(seed, lines, users) {
        line.push('\n');
        out.write_all(line.as_bytes())?;
        bytes += line.len() as u64;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference() {
        // Reference values of splitmix64 from seed 0.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn shapes() {
        let lines: Vec<String> = events(42, 2000, 10).collect();
        assert_eq!(lines.len(), 2000);
        assert!(lines[0].starts_with("{\"id\":0"));
        let valid = lines
            .iter()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
            .count();
        assert!(valid > 1980 && valid < 2000, "{valid}");
    }
}
