//! The DATA decoder: finds the end of the message, undoes dot-stuffing,
//! refuses bare CR and bare LF, and enforces the size limit while reading.
//!
//! The only end of data is `CRLF . CRLF` (or `. CRLF` right after the 354).
//! `LF . LF`, `LF . CRLF` and the like are *not* ends: treating them as ends
//! is what makes SMTP smuggling possible. A message with a bare CR or LF is
//! read to its real end and then refused as a whole.
//!
//! A fake end (a lone `.` between line breaks that are not both CRLF) is also noted: it is the
//! signature of a smuggling attempt, which a bare LF alone is not ([`Decoder::smuggling_attempt`]).
//!
//! The decoder is incremental and I/O-free: feed it whatever arrived, it
//! appends decoded bytes to `out` and says how much input it used, so bytes
//! after the end (pipelined commands) stay with the caller.

/// How the message ended, once the terminating line was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Clean message of `size` decoded octets.
    Complete { size: u64 },
    /// More than the limit; decoding stopped emitting at the limit.
    TooBig,
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareLineEnding,
    /// A line longer than the text line limit (CRLF included).
    LineTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the very beginning).
    LineStart,
    /// Inside a line.
    Middle,
    /// Saw CR inside content; LF would complete the line.
    Cr,
    /// Line started with `.`.
    Dot,
    /// Saw `.` CR at line start; LF ends the data.
    DotCr,
}

#[derive(Debug)]
pub struct Decoder {
    state: State,
    limit: u64,
    size: u64,
    too_big: bool,
    bare: bool,
    max_line: usize,
    line_len: usize,
    line_too_long: bool,
    /// The two raw bytes before the current one (CRLF before the first).
    last: [u8; 2],
    fake_end: bool,
}

fn is_break(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

impl Decoder {
    /// `limit` is the largest accepted decoded size in octets.
    /// Lines may be of any length.
    pub fn new(limit: u64) -> Self {
        Self::with_line_limit(limit, usize::MAX)
    }

    /// `max_line` is the longest accepted line as sent, CRLF included
    /// (RFC 5321 4.5.3.1.6: 1000).
    pub fn with_line_limit(limit: u64, max_line: usize) -> Self {
        Decoder {
            state: State::LineStart,
            limit,
            size: 0,
            too_big: false,
            bare: false,
            max_line,
            line_len: 0,
            line_too_long: false,
            last: *b"\r\n",
            fake_end: false,
        }
    }

    /// Whether the data held a fake end of data: `.` alone between CR or LF line breaks other
    /// than `CRLF . CRLF` (`LF . LF`, `CR . CR`, `CRLF . LF`, ...). Such a message is refused
    /// as a bare line ending like any other; this tells the sender meant to smuggle.
    pub fn smuggling_attempt(&self) -> bool {
        self.fake_end
    }

    /// Notes a fake end at byte `b`. `State::Dot` means the `.` came right after a CRLF (or at
    /// the start), so a CR there may still begin the real end; the `DotCr` arms catch what
    /// follows it.
    fn watch(&mut self, b: u8) {
        if is_break(b)
            && self.last[1] == b'.'
            && is_break(self.last[0])
            && !(self.state == State::Dot && b == b'\r')
        {
            self.fake_end = true;
        }
        self.last = [self.last[1], b];
    }

    /// Decodes from `input`, appending message bytes to `out`. Returns the
    /// number of input bytes consumed and, when the end was reached, the
    /// outcome. Once the outcome is known the decoder must not be fed again.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Option<Outcome>) {
        for (i, &b) in input.iter().enumerate() {
            self.line_len += 1;
            if self.line_len > self.max_line {
                self.line_too_long = true;
            }
            self.watch(b);
            match (self.state, b) {
                (State::LineStart, b'.') => self.state = State::Dot,
                (State::LineStart | State::Middle, b'\r') => self.state = State::Cr,
                (State::Cr, b'\n') => {
                    self.emit(b"\r\n", out);
                    self.state = State::LineStart;
                    self.line_len = 0;
                }
                (State::Cr, b'\r') => {
                    // The first CR was bare; this one may still start a CRLF.
                    self.bare = true;
                }
                (State::Cr, other) => {
                    self.bare = true;
                    self.emit(&[other], out);
                    self.state = State::Middle;
                }
                (State::Dot, b'\r') => self.state = State::DotCr,
                (State::DotCr, b'\n') => return (i + 1, Some(self.outcome())),
                (State::DotCr, b'\r') => {
                    self.bare = true;
                    self.fake_end = true;
                    self.state = State::Cr;
                }
                (State::Dot | State::LineStart | State::Middle, b'\n') => {
                    // Bare LF: never a line end, so `LF.LF` can't end data.
                    self.bare = true;
                    self.state = State::Middle;
                }
                (State::DotCr, other) => {
                    self.bare = true;
                    self.fake_end = true;
                    self.emit(&[other], out);
                    self.state = State::Middle;
                }
                // Dot-stuffing: the leading dot is dropped, the rest kept.
                (State::Dot | State::LineStart | State::Middle, other) => {
                    self.emit(&[other], out);
                    self.state = State::Middle;
                }
            }
        }
        (input.len(), None)
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.too_big || self.bare || self.line_too_long {
            // The message will be refused; stop storing, keep scanning.
            return;
        }
        self.size += bytes.len() as u64;
        if self.size > self.limit {
            self.too_big = true;
            return;
        }
        out.extend_from_slice(bytes);
    }

    fn outcome(&self) -> Outcome {
        if self.bare {
            Outcome::BareLineEnding
        } else if self.too_big {
            Outcome::TooBig
        } else if self.line_too_long {
            Outcome::LineTooLong
        } else {
            Outcome::Complete { size: self.size }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_line_limit_counts_crlf_and_stuffing_dot() {
        let feed = |input: &[u8]| {
            let mut d = Decoder::with_line_limit(1_000_000, 10);
            let mut out = Vec::new();
            d.feed(input, &mut out).1
        };
        assert_eq!(
            feed(b"12345678\r\n.\r\n"),
            Some(Outcome::Complete { size: 10 })
        );
        assert_eq!(feed(b"123456789\r\n.\r\n"), Some(Outcome::LineTooLong));
        assert_eq!(feed(b"..2345678\r\n.\r\n"), Some(Outcome::LineTooLong));
        // Bare line endings win over the line limit.
        assert_eq!(
            feed(b"123456789012\n\r\n.\r\n"),
            Some(Outcome::BareLineEnding)
        );
    }

    /// Feeds `input` in chunks of `chunk` bytes; returns decoded bytes,
    /// outcome and the number of bytes consumed.
    fn run(input: &[u8], limit: u64, chunk: usize) -> (Vec<u8>, Option<Outcome>, usize) {
        let mut d = Decoder::new(limit);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + chunk).min(input.len());
            let (used, outcome) = d.feed(&input[pos..end], &mut out);
            pos += used;
            if outcome.is_some() {
                return (out, outcome, pos);
            }
        }
        (out, None, pos)
    }

    fn all_chunkings(input: &[u8], limit: u64) -> (Vec<u8>, Option<Outcome>, usize) {
        let first = run(input, limit, input.len().max(1));
        for chunk in 1..8 {
            assert_eq!(run(input, limit, chunk), first, "chunk size {chunk}");
        }
        first
    }

    #[test]
    fn plain_message_and_leftover() {
        let input = b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
        let (out, outcome, used) = all_chunkings(input, 1000);
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(outcome, Some(Outcome::Complete { size: 21 }));
        assert_eq!(&input[used..], b"QUIT\r\n");
    }

    #[test]
    fn empty_message() {
        let (out, outcome, used) = all_chunkings(b".\r\n", 1000);
        assert!(out.is_empty());
        assert_eq!(outcome, Some(Outcome::Complete { size: 0 }));
        assert_eq!(used, 3);
    }

    #[test]
    fn dot_unstuffing() {
        let input = b"..leading\r\n...\r\n.x\r\nmid.dle\r\n..\r\n.\r\n";
        let (out, outcome, _) = all_chunkings(input, 1000);
        assert_eq!(out, b".leading\r\n..\r\nx\r\nmid.dle\r\n.\r\n");
        assert!(matches!(outcome, Some(Outcome::Complete { .. })));
    }

    #[test]
    fn smuggling_sequences_do_not_end_data() {
        for fake_end in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r",
            b"\r\n.\r\r\n",
            b"\r.\r\n",
        ] {
            let mut input = b"Subject: a\r\n\r\nbody".to_vec();
            input.extend_from_slice(fake_end);
            input.extend_from_slice(b"MAIL FROM:<x@evil.example>\r\n");
            let (_, outcome, _) = all_chunkings(&input, 1000);
            // Not ended yet: everything is still message data.
            assert_eq!(outcome, None, "{fake_end:?} ended data");
            input.extend_from_slice(b"\r\n.\r\n");
            let (out, outcome, used) = all_chunkings(&input, 1000);
            assert_eq!(outcome, Some(Outcome::BareLineEnding), "{fake_end:?}");
            assert_eq!(used, input.len());
            assert!(out.len() <= input.len());
        }
    }

    /// The variants of tests/smuggling.rs, each followed by a command as a smuggler would.
    const FAKE_ENDS: &[&[u8]] = &[
        b"\n.\n",
        b"\r.\r",
        b"\r\n.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\n.\r",
        b"\r.\r\n",
        b"\r.\n",
        b"\n.\n\r",
        b"\r\n.\r\r\n",
        b"\r\n.\n\r\n",
        b"\n\r.\r\n",
        b"\r\n\n.\r\n",
    ];

    fn smuggling(input: &[u8]) -> bool {
        let mut d = Decoder::new(1000);
        d.feed(input, &mut Vec::new());
        d.smuggling_attempt()
    }

    #[test]
    fn fake_ends_are_told_apart_from_bare_line_endings() {
        for fake in FAKE_ENDS {
            let mut input = b"Subject: a\r\n\r\nbody".to_vec();
            input.extend_from_slice(fake);
            input.extend_from_slice(b"MAIL FROM:<x@evil.example>\r\n\r\n.\r\n");
            assert!(smuggling(&input), "{fake:?} not seen");
        }
        for honest in [
            &b"a\nb\r\n.\r\n"[..],
            b"a\rb\r\n.\r\n",
            b"..\r\n...\r\n.\r\n",
            b"\r\r\n.\r\n",
            b".\r\n",
            b"x.\ny\r\n.\r\n",
            b"a\n.b\r\n.\r\n",
        ] {
            assert!(!smuggling(honest), "{honest:?} taken for smuggling");
        }
    }

    #[test]
    fn bare_lf_and_bare_cr_refused() {
        let (_, o, _) = all_chunkings(b"a\nb\r\n.\r\n", 1000);
        assert_eq!(o, Some(Outcome::BareLineEnding));
        let (_, o, _) = all_chunkings(b"a\rb\r\n.\r\n", 1000);
        assert_eq!(o, Some(Outcome::BareLineEnding));
        let (_, o, _) = all_chunkings(b"\n.\r\n", 1000);
        assert_eq!(o, None);
    }

    #[test]
    fn size_limit_enforced_while_reading() {
        let mut input = Vec::new();
        for _ in 0..100 {
            input.extend_from_slice(b"0123456789\r\n");
        }
        input.extend_from_slice(b".\r\n");
        let (out, o, used) = all_chunkings(&input, 100);
        assert_eq!(o, Some(Outcome::TooBig));
        assert!(out.len() <= 100, "buffered {} bytes", out.len());
        assert_eq!(used, input.len());
        // Exactly at the limit is fine.
        let (_, o, _) = all_chunkings(b"12345678\r\n.\r\n", 10);
        assert_eq!(o, Some(Outcome::Complete { size: 10 }));
        let (_, o, _) = all_chunkings(b"123456789\r\n.\r\n", 10);
        assert_eq!(o, Some(Outcome::TooBig));
    }

    #[test]
    fn eight_bit_and_nul_pass_through() {
        let (out, o, _) = all_chunkings(b"\xc3\xa4\x00\xff\r\n.\r\n", 1000);
        assert_eq!(out, b"\xc3\xa4\x00\xff\r\n");
        assert!(matches!(o, Some(Outcome::Complete { size: 6 })));
    }

    /// xorshift64*: deterministic pseudo-random bytes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn pick(&mut self, from: &[u8]) -> u8 {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    /// Where data must end: the first CRLF.CRLF (or .CRLF at the start).
    fn reference_end(input: &[u8]) -> Option<usize> {
        if input.starts_with(b".\r\n") {
            return Some(3);
        }
        input
            .windows(5)
            .position(|w| w == b"\r\n.\r\n")
            .map(|p| p + 5)
    }

    #[test]
    fn random_inputs_end_exactly_at_crlf_dot_crlf() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            let len = (rng.next() % 40) as usize;
            let input: Vec<u8> = (0..len).map(|_| rng.pick(b".\r\na")).collect();
            let (out, outcome, used) = all_chunkings(&input, 1000);
            match reference_end(&input) {
                Some(end) => {
                    assert_eq!(used, end, "{input:?}");
                    let body = &input[..end];
                    let bare = body.windows(2).enumerate().any(|(i, w)| {
                        (w[0] == b'\r' && w[1] != b'\n')
                            || (w[1] == b'\n' && w[0] != b'\r')
                            || (i == 0 && w[0] == b'\n')
                    });
                    if bare {
                        assert_eq!(outcome, Some(Outcome::BareLineEnding), "{input:?}");
                    } else {
                        // Only a bare line break can make a fake end.
                        assert!(!smuggling(&input), "{input:?}");
                        assert!(
                            matches!(outcome, Some(Outcome::Complete { .. })),
                            "{input:?}"
                        );
                        assert!(out.len() < end);
                    }
                }
                None => assert_eq!((outcome, used), (None, input.len()), "{input:?}"),
            }
        }
    }

    #[test]
    fn random_messages_round_trip_through_dot_stuffing() {
        let mut rng = Rng(42);
        for _ in 0..500 {
            let mut message = Vec::new();
            for _ in 0..(rng.next() % 8) {
                for _ in 0..(rng.next() % 6) {
                    message.push(rng.pick(b"..ab \xff"));
                }
                message.extend_from_slice(b"\r\n");
            }
            let mut wire = Vec::new();
            for line in message.split_inclusive(|&b| b == b'\n') {
                if line.starts_with(b".") {
                    wire.push(b'.');
                }
                wire.extend_from_slice(line);
            }
            wire.extend_from_slice(b".\r\n");
            let (out, outcome, used) = all_chunkings(&wire, 1000);
            assert_eq!(out, message);
            assert_eq!(
                outcome,
                Some(Outcome::Complete {
                    size: message.len() as u64
                })
            );
            assert_eq!(used, wire.len());
        }
    }
}
