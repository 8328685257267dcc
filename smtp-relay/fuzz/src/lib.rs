//! A bounded, seeded mutation fuzzer for the parsers that read peer
//! input: the command parser, the address parser and the DATA decoder.
//! It runs on stable Rust in-process (no sanitizer runtime), so CI can run
//! it: `cargo test` runs a few thousand cases per target, `cargo xtask
//! fuzz` runs the `smtp-relay-fuzz` binary for a bounded time. It lives
//! apart from the relay and uses only the relay's public parser API.
//!
//! Besides "does not panic", each target checks properties:
//! - command: parsing is deterministic; a parsed MAIL/RCPT path re-parses.
//! - address: `plain_form` of a parsed mailbox parses again to the same
//!   plain form, and classification does not depend on case.
//! - DATA decoder: the result does not depend on how the input is split
//!   into chunks; a complete message has only CRLF line endings and the
//!   consumed input ends with `CRLF . CRLF` (or is `. CRLF` at the start).
//! - strip (`sender_auth::strip`, the removal of forged
//!   `Authentication-Results:` of our authserv-id): the result does not depend
//!   on chunking, stripping twice changes nothing, the body is untouched, no
//!   header field claiming our id is left, and nothing is added.
//!
//! Any failure found becomes a regression case in [`REGRESSIONS`].

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use smtp_relay::data::{Decoder, Outcome};
use smtp_relay::sender_auth::strip::{Stripper, authserv_id, strip_authserv};

/// SplitMix64: small, fast, good enough to drive mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to SMTP parsers.
const INTERESTING: &[u8] = b"\r\n.<>@\":,[]\\ %!=+\0\x7f\xff\xc3\t-_";

/// Which parser to fuzz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Command,
    Address,
    Data,
    Strip,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::Command,
        Target::Address,
        Target::Data,
        Target::Strip,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Command => "command",
            Target::Address => "address",
            Target::Data => "data",
            Target::Strip => "strip",
        }
    }

    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    fn seeds(self) -> &'static [&'static [u8]] {
        match self {
            Target::Command => &[
                b"EHLO client.example",
                b"HELO x",
                b"MAIL FROM:<alice@example.org> SIZE=1000 BODY=8BITMIME",
                b"MAIL FROM:<>",
                b"RCPT TO:<\"a b\"@example.org>",
                b"RCPT TO:<@a.example,@b.example:user@c.example>",
                b"RCPT TO:<Postmaster>",
                b"AUTH PLAIN AGFsaWNlAHNlY3JldA==",
                b"AUTH LOGIN",
                b"DATA",
                b"RSET",
                b"VRFY bob",
                b"NOOP hello",
                b"STARTTLS",
                b"QUIT",
                b"RCPT TO:<user@[IPv6:2001:db8::1]>",
            ],
            Target::Address => &[
                b"<alice@example.org>",
                b"<>",
                b"<\"quoted local\"@example.org>",
                b"<user%other.example@example.org>",
                b"<other!user@example.org>",
                b"<@a,@b:user@c>",
                b"<user@[192.0.2.1]>",
                b"<user@[IPv6:::1]>",
                b"<User@EXAMPLE.ORG.>",
                b"<a.b-c+d@sub.example.net> SIZE=5",
                b"<Postmaster>",
            ],
            Target::Data => &[
                b"Subject: x\r\n\r\nbody\r\n.\r\n",
                b".\r\n",
                b"..dot\r\n.\r\n",
                b"a\n.\nb\r\n.\r\n",
                b"a\r.\rb\r\n.\r\n",
                b"a\r\n.\rb\r\n.\r\nMAIL FROM:<x>\r\n",
                b"line\r\n..\r\n.\r\n",
                b"\r\n.\r\n",
            ],
            Target::Strip => &[
                b"Authentication-Results: mx.example.org; dkim=pass\r\nSubject: s\r\n\r\nbody\r\n",
                b"Authentication-Results:\r\n\t(c (n) \\) mx.EXAMPLE.org.;\r\n\tspf=pass\r\n\r\n",
                b"authentication-results : \"mx.example.org\" 1; none\r\nX: y\r\n",
                b"Authentication-Results: other.example; spf=fail\r\n\r\nAuthentication-Results: mx.example.org\r\n",
                b"From: a@b\r\n\tfolded\r\nAuthentication-Results: mx.example.org",
            ],
        }
    }
}

/// Regression inputs, replayed by the unit tests and used as extra seeds:
/// hand-picked edge cases, and every failure the fuzzer finds (add it here
/// with the fix).
pub const REGRESSIONS: &[(Target, &[u8])] = &[
    (Target::Data, b"\r\r\n.\r\n"),
    (Target::Data, b"\r\n.\r\r\n.\r\n"),
    (Target::Address, b"<\"\\\"@x>"),
    (Target::Command, b"MAIL FROM:<\xff@x>"),
    // An A-R field name alone on its line, the colon on a continuation line.
    (
        Target::Strip,
        b"authentication-results\n : \"mx.example.org\" 1y\r\n; none\r\nX: y\r\n",
    ),
];

/// One mutation of `input`, using `other` for splices.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                v.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next_u64() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(8));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                let chunk: Vec<u8> = v[i..i + n].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, chunk);
            }
            5 if !other.is_empty() => {
                let i = rng.below(other.len());
                let n = 1 + rng.below((other.len() - i).min(32));
                let at = rng.below(len + 1);
                v.splice(at..at, other[i..i + n].iter().copied());
            }
            6 if len > 0 => v.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                let pick = [&b"\r\n"[..], b"\n", b"\r", b".", b"\r\n.\r\n", b"<>", b"@"];
                let p = pick[rng.below(pick.len())];
                v.splice(i..i, p.iter().copied());
            }
        }
    }
    v.truncate(4096);
    v
}

/// Checks one input against a target's properties. `Err` describes the
/// violated property; a panic is caught by the caller.
pub fn check(target: Target, input: &[u8], rng: &mut Rng) -> Result<(), String> {
    match target {
        Target::Command => check_command(input),
        Target::Address => check_address(input),
        Target::Data => check_data(input, rng),
        Target::Strip => check_strip(input, rng),
    }
}

const AUTHSERV_ID: &str = "mx.example.org";

fn strip_in_chunks(input: &[u8], chunks: &[usize]) -> Vec<u8> {
    let mut s = Stripper::new(AUTHSERV_ID);
    let mut out = Vec::new();
    let mut sizes = chunks.iter().cycle();
    let mut pos = 0;
    while pos < input.len() {
        let n = (*sizes.next().unwrap_or(&1)).max(1).min(input.len() - pos);
        s.feed(&input[pos..pos + n], &mut out);
        pos += n;
    }
    s.finish(&mut out);
    out
}

/// Where the body starts: after the first empty line, if any.
fn body_start(msg: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    while line_start < msg.len() {
        let rest = &msg[line_start..];
        if rest.starts_with(b"\r\n") {
            return Some(line_start + 2);
        }
        if rest.starts_with(b"\n") {
            return Some(line_start + 1);
        }
        line_start += rest.iter().position(|&b| b == b'\n')? + 1;
    }
    None
}

/// The header fields (folded lines joined) of `msg`'s header block.
fn header_fields(msg: &[u8]) -> Vec<Vec<u8>> {
    let header = &msg[..body_start(msg).unwrap_or(msg.len())];
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in header.split_inclusive(|&b| b == b'\n') {
        match (line.first(), fields.last_mut()) {
            (Some(b' ' | b'\t'), Some(last)) => last.extend_from_slice(line),
            _ => fields.push(line.to_vec()),
        }
    }
    fields
}

fn check_strip(input: &[u8], rng: &mut Rng) -> Result<(), String> {
    let whole = strip_authserv(input, AUTHSERV_ID).into_owned();
    let chunks: Vec<usize> = (0..4).map(|_| 1 + rng.below(16)).collect();
    if strip_in_chunks(input, &chunks) != whole {
        return Err(format!("chunking {chunks:?} changes the result"));
    }
    if strip_authserv(&whole, AUTHSERV_ID).as_ref() != whole.as_slice() {
        return Err("stripping twice removes more".into());
    }
    if whole.len() > input.len() {
        return Err("stripping added bytes".into());
    }
    if let Some(start) = body_start(input)
        && !whole.ends_with(&input[start..])
    {
        return Err("the body changed".into());
    }
    for field in header_fields(&whole) {
        let name_end = field.iter().position(|&b| b == b':').unwrap_or(0);
        if field[..name_end]
            .trim_ascii_end()
            .eq_ignore_ascii_case(b"authentication-results")
            && authserv_id(&field).is_some_and(|id| {
                id.strip_suffix(b".")
                    .unwrap_or(id)
                    .eq_ignore_ascii_case(AUTHSERV_ID.as_bytes())
            })
        {
            return Err(format!(
                "a field of ours is left: {:?}",
                String::from_utf8_lossy(&field)
            ));
        }
    }
    Ok(())
}

fn check_command(input: &[u8]) -> Result<(), String> {
    let a = smtp_relay::command::parse(input);
    let b = smtp_relay::command::parse(input);
    if format!("{a:?}") != format!("{b:?}") {
        return Err("command parsing is not deterministic".into());
    }
    Ok(())
}

fn check_address(input: &[u8]) -> Result<(), String> {
    let s = String::from_utf8_lossy(input);
    let locals = ["example.org".to_owned()];
    if let Ok((path, _)) = smtp_relay::address::parse_path(&s) {
        let class = path.classify(&locals);
        if let Ok((upper, _)) = smtp_relay::address::parse_path(&s.to_ascii_uppercase())
            && upper.classify(&locals) != class
        {
            return Err(format!("classification depends on case: {s:?}"));
        }
    }
    let inner = s.trim_start_matches('<').trim_end_matches('>');
    if let Ok(m) = smtp_relay::address::parse_mailbox(inner)
        && let Some(plain) = m.plain_form()
    {
        let again = smtp_relay::address::parse_mailbox(&plain)
            .map_err(|e| format!("plain form {plain:?} of {s:?} does not parse: {e}"))?;
        if again.plain_form().as_deref() != Some(plain.as_str()) {
            return Err(format!("plain form of {s:?} is not stable"));
        }
    }
    Ok(())
}

fn decode(input: &[u8], chunks: &[usize]) -> (Vec<u8>, Option<Outcome>, usize) {
    let mut d = Decoder::with_line_limit(2048, 1000);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut sizes = chunks.iter().cycle();
    while pos < input.len() {
        let n = (*sizes.next().unwrap_or(&1)).max(1).min(input.len() - pos);
        let (used, outcome) = d.feed(&input[pos..pos + n], &mut out);
        pos += used;
        if outcome.is_some() {
            return (out, outcome, pos);
        }
        if used < n {
            return (out, None, pos);
        }
    }
    (out, None, pos)
}

fn check_data(input: &[u8], rng: &mut Rng) -> Result<(), String> {
    let whole = decode(input, &[input.len().max(1)]);
    let chunks: Vec<usize> = (0..4).map(|_| 1 + rng.below(16)).collect();
    let split = decode(input, &chunks);
    if whole != split {
        return Err(format!("chunking {chunks:?} changes the result"));
    }
    let (out, outcome, used) = whole;
    if used > input.len() {
        return Err("consumed more than the input".into());
    }
    if let Some(Outcome::Complete { size }) = outcome {
        if size != out.len() as u64 {
            return Err("size does not match the output".into());
        }
        let consumed = &input[..used];
        if !(consumed == b".\r\n" || consumed.ends_with(b"\r\n.\r\n")) {
            return Err("ended without CRLF . CRLF".into());
        }
        for (i, &b) in out.iter().enumerate() {
            let bare_lf = b == b'\n' && (i == 0 || out[i - 1] != b'\r');
            let bare_cr = b == b'\r' && out.get(i + 1) != Some(&b'\n');
            if bare_lf || bare_cr {
                return Err("a complete message contains a bare CR or LF".into());
            }
        }
    }
    Ok(())
}

/// A failure: the target, the input and what went wrong.
#[derive(Debug)]
pub struct Failure {
    pub target: Target,
    pub input: Vec<u8>,
    pub problem: String,
}

/// Counts of a run.
#[derive(Debug, Default)]
pub struct Stats {
    pub cases: u64,
}

/// Runs `target` from `seed` until `cases` inputs were checked or
/// `budget` has passed, whichever comes first.
pub fn run(target: Target, seed: u64, cases: u64, budget: Duration) -> Result<Stats, Failure> {
    let mut rng = Rng::new(seed ^ (target as u64).wrapping_mul(0x1000_0000_01B3));
    let seeds = target.seeds();
    let mut corpus: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    corpus.extend(
        REGRESSIONS
            .iter()
            .filter(|(t, _)| *t == target)
            .map(|(_, i)| i.to_vec()),
    );
    let started = Instant::now();
    let mut stats = Stats::default();
    while stats.cases < cases && started.elapsed() < budget {
        let base = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, base, other);
        let mut check_rng = Rng::new(rng.next_u64());
        let result = catch_unwind(AssertUnwindSafe(|| check(target, &input, &mut check_rng)));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(problem)) => {
                return Err(Failure {
                    target,
                    input,
                    problem,
                });
            }
            Err(_) => {
                return Err(Failure {
                    target,
                    input,
                    problem: "panic".into(),
                });
            }
        }
        // Keep some mutants as new bases, bounded.
        if rng.below(16) == 0 {
            if corpus.len() < 512 {
                corpus.push(input);
            } else {
                let i = seeds.len() + rng.below(corpus.len() - seeds.len());
                corpus[i] = input;
            }
        }
        stats.cases += 1;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regressions_hold() {
        let mut rng = Rng::new(1);
        for (target, input) in REGRESSIONS {
            check(*target, input, &mut rng).unwrap_or_else(|e| panic!("{target:?} {input:?}: {e}"));
        }
    }

    #[test]
    fn bounded_fuzz_run_per_target() {
        for target in Target::ALL {
            if let Err(f) = run(target, 0x5EED, 3000, Duration::from_secs(20)) {
                panic!(
                    "{}: {} on input {:?}",
                    f.target.name(),
                    f.problem,
                    String::from_utf8_lossy(&f.input)
                );
            }
        }
    }

    #[test]
    fn the_checks_can_fail() {
        // A decoder result that ended early would be caught: feed a
        // message and compare with a wrong expectation by hand.
        let mut rng = Rng::new(2);
        assert!(check_data(b"a\r\n.\r\n", &mut rng).is_ok());
        let (out, outcome, used) = decode(b"a\r\n.\r\nrest", &[3]);
        assert_eq!((out.as_slice(), used), (&b"a\r\n"[..], 6));
        assert_eq!(outcome, Some(Outcome::Complete { size: 3 }));
    }
}
