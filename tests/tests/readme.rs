//! Every command README.md shows is exercised: a test that fails when the README shows a command
//! nobody runs.
//!
//! Each line of the README's ```sh blocks is split into commands and classified by program with
//! the tables below. `gatekeeper` and `smtp-relay` lines run verbatim, in README order, in a
//! sandbox: two network namespaces joined by a veth whose host end is `eth0` (the interface
//! examples/gatekeeper.toml names), the example configs installed under a temporary root, a pin
//! directory of the test's own, and PATH starting with the freshly built binaries. `cargo xtask`
//! lines are covered by CI or parsed by the real xtask CLI; system tools are named with the reason
//! they are not ours and what is checked about their lines. A program, subcommand or placeholder
//! the tables do not know fails the test, naming the README line.
//!
//! `GATEKEEPER_README=path` points both tests at another copy of the README (to see a mutated one
//! fail).

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{OnceLock, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use gatekeeper_tests::{
    addresses::HOST_V4,
    kernel_tests_enabled,
    netns::Link,
    process::{Daemon, PinDir, TempDir},
    unique_name, workspace_binary,
};

// ------------------------------------------------------------------------------------------------
// How each kind of command is covered.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coverage {
    /// Ours: run verbatim in the sandbox, in README order, its output checked.
    Run,
    /// Run by CI itself: `.ci/run` is `cargo xtask test`, which ends with the demo (both claims
    /// are read from `.ci/run` and xtask/src/test.rs, see `check_ci_runs`).
    Ci,
    /// Too long to run here (a release build, minutes of benchmarks): parsed, not run. The real
    /// xtask CLI must accept the line's arguments (`xtask ARGS --help` exits 0).
    Parsed,
    /// A system tool, not ours: never run on its own; what is checked is in its reason.
    NotOurs,
}

/// Every program a README command may start with, how it is covered and why. A program missing
/// here fails the test.
const PROGRAMS: &[(&str, Coverage, &str)] = &[
    (
        "gatekeeper",
        Coverage::Run,
        "ours: the subcommands in SUBCOMMANDS run in the sandbox",
    ),
    (
        "smtp-relay",
        Coverage::Run,
        "ours: the subcommands in SUBCOMMANDS run in the sandbox",
    ),
    (
        "cargo",
        Coverage::NotOurs,
        "the Rust toolchain; `cargo xtask ...` is ours and covered as XTASK says",
    ),
    (
        "install",
        Coverage::NotOurs,
        "coreutils; each source must be a file under examples/ or target/release/NAME with NAME a \
         binary of ours (the sandbox links those into its /usr/local/sbin and installs the example \
         configs itself)",
    ),
    (
        "useradd",
        Coverage::NotOurs,
        "creates a system user; the name must be the User= of a unit in examples/",
    ),
    (
        "systemctl",
        Coverage::NotOurs,
        "systemd; each unit must exist as examples/NAME.service; `enable --now`, `start` and \
         `restart` are played in the sandbox by running the unit's ExecStartPre=/ExecStart= \
         commands of ours (paths rewritten), `stop` by stopping that daemon",
    ),
    (
        "journalctl",
        Coverage::NotOurs,
        "the systemd journal; each -u NAME must be a unit in examples/",
    ),
    (
        "tee",
        Coverage::NotOurs,
        "coreutils; runs inside the pipeline of ours that feeds it, writing into the sandbox root",
    ),
    (
        "echo",
        Coverage::NotOurs,
        "shell builtin; runs inside the pipeline of ours it feeds",
    ),
    (
        "man",
        Coverage::NotOurs,
        "man-db; in the sandbox a stand-in on PATH captures what is piped to it (the page is \
         checked to be roff), so the test needs no man-db",
    ),
    (
        "openssl",
        Coverage::NotOurs,
        "makes certificates; the sandbox makes its own with it",
    ),
    ("python3", Coverage::NotOurs, "the demo's SMTP client"),
    (
        "qemu-system-x86_64",
        Coverage::NotOurs,
        "boots one kernel of the matrix by hand; `cargo xtask kernels` runs the same command",
    ),
];

/// The subcommands of ours that the sandbox runs; any other fails the test.
const SUBCOMMANDS: &[(&str, &[&str])] = &[
    (
        "gatekeeper",
        &[
            "run",
            "check",
            "status",
            "stats",
            "allow",
            "deny",
            "ban",
            "detach",
            "completions",
            "man",
        ],
    ),
    (
        "smtp-relay",
        &[
            "run",
            "check",
            "hash-password",
            "queue",
            "completions",
            "man",
        ],
    ),
];

/// `cargo xtask` subcommands and how they are covered; any other fails the test.
const XTASK: &[(&str, Coverage)] = &[
    ("test", Coverage::Ci),
    ("demo", Coverage::Ci),
    ("build", Coverage::Parsed),
    ("bench", Coverage::Parsed),
    ("kernels", Coverage::Parsed),
    ("package", Coverage::Parsed),
];

/// Uppercase placeholders lines of ours may use, and what the sandbox puts in their place.
const PLACEHOLDERS: &[(&str, &str)] = &[
    (
        "ID",
        "the id of a message really queued in the sandbox relay's spool",
    ),
    ("IF", "eth0, the sandbox's host interface"),
    (
        "FILE",
        "the program's config file under /etc (then rewritten like every path)",
    ),
];

/// Absolute paths in README lines, unit files and the example configs that the sandbox moves
/// under its temporary root, so nothing of the host's /etc, /var or /usr/local/sbin is read or
/// written.
const REWRITTEN: &[&str] = &["/etc/", "/var/", "/usr/local/sbin/"];

/// Files the admin brings (not in the repository): the certificate chain and key from their
/// ACME client or CA. The sandbox makes stand-ins with openssl.
const ADMIN_FILES: &[&str] = &["fullchain.pem", "privkey.pem"];

const HOST_IF: &str = "eth0";
/// The example allowlist's "backup MX": the peer the sandbox's SMTP client speaks from.
const PEER_V4: &str = "203.0.113.25";
/// A recipient in the example's local domains whose route (198.51.100.10) the sandbox cannot
/// reach, so the message stays queued.
const RECIPIENT: &str = "bob@example.org";
const PASSWORD: &str = "readme-test-password";
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------------------------
// Reading the README.

/// One command line of a ```sh block.
#[derive(Clone, Debug)]
struct Line {
    /// README line where it starts (1-based).
    number: usize,
    /// As written, continuations joined and the trailing comment dropped.
    text: String,
    segments: Vec<Segment>,
    /// Between consecutive segments: `|`, `||`, `&&` or `;`.
    separators: Vec<&'static str>,
}

/// One command of a line: a pipeline stage or a `&&`/`;` part, without a leading `sudo` or
/// `runuser -u USER --`.
#[derive(Clone, Debug)]
struct Segment {
    text: String,
    words: Vec<String>,
    /// The service user a `runuser -u USER --` prefix named; the sandbox runs it as root.
    run_as: Option<String>,
}

impl Line {
    fn parse(number: usize, text: &str) -> anyhow::Result<Line> {
        let (parts, separators) = split_segments(text)?;
        let segments = parts
            .iter()
            .map(|part| {
                let (text, run_as) = strip_privilege(part);
                ensure!(!text.is_empty(), "an empty command");
                Ok(Segment {
                    words: words(text)?,
                    text: text.to_string(),
                    run_as,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Line {
            number,
            text: text.to_string(),
            segments,
            separators,
        })
    }

    /// What the sandbox hands to bash: the segments without `sudo`, joined by their separators.
    fn shell_text(&self) -> String {
        let mut text = String::new();
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                text.push_str(&format!(" {} ", self.separators[i - 1]));
            }
            text.push_str(&segment.text);
        }
        text
    }

    fn location(&self) -> String {
        format!("README.md:{}: {}", self.number, self.text)
    }
}

/// The command lines of every ```sh block: `\` continuations joined, blank and comment lines
/// dropped, trailing `# comments` outside quotes stripped.
fn parse_readme(markdown: &str) -> anyhow::Result<Vec<Line>> {
    let mut lines = Vec::new();
    let mut block: Option<bool> = None;
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in markdown.lines().enumerate() {
        let number = index + 1;
        if let Some(info) = raw.trim_start().strip_prefix("```") {
            if block.is_some() {
                if let Some((start, _)) = pending.take() {
                    bail!("README.md:{start}: a `\\` continuation runs into the end of its block");
                }
                block = None;
            } else {
                block = Some(matches!(info.trim(), "sh" | "bash" | "shell"));
            }
            continue;
        }
        if block != Some(true) {
            continue;
        }
        let code = strip_comment(raw).trim_end();
        let (start, mut joined) = pending.take().unwrap_or((number, String::new()));
        if let Some(body) = code.strip_suffix('\\') {
            joined.push_str(body.trim());
            joined.push(' ');
            pending = Some((start, joined));
            continue;
        }
        joined.push_str(code.trim());
        let text = joined.trim();
        if text.is_empty() {
            continue;
        }
        lines.push(Line::parse(start, text).with_context(|| format!("README.md:{start}: {text}"))?);
    }
    ensure!(block.is_none(), "README.md: a ``` block is never closed");
    Ok(lines)
}

/// Quote state while scanning shell text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// Walks `text` calling `f(byte index, char, quote state before the char)`, skipping characters
/// escaped by a backslash outside single quotes.
fn scan(text: &str, mut f: impl FnMut(usize, char, Quote)) -> Quote {
    let mut quote = Quote::None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        f(i, c, quote);
        match (quote, c) {
            (Quote::Single, '\'') | (Quote::Double, '"') => quote = Quote::None,
            (Quote::None, '\'') => quote = Quote::Single,
            (Quote::None, '"') => quote = Quote::Double,
            (Quote::None | Quote::Double, '\\') => escaped = true,
            _ => {}
        }
    }
    quote
}

/// `text` without a trailing `# comment` (a `#` starting a word outside quotes).
fn strip_comment(text: &str) -> &str {
    let mut cut = None;
    let mut previous = ' ';
    scan(text, |i, c, quote| {
        if cut.is_none() && quote == Quote::None && c == '#' && previous.is_whitespace() {
            cut = Some(i);
        }
        previous = c;
    });
    cut.map_or(text, |i| &text[..i])
}

/// Splits on `|`, `||`, `&&` and `;` outside quotes (a lone `&`, as in `2>&1`, stays).
fn split_segments(text: &str) -> anyhow::Result<(Vec<String>, Vec<&'static str>)> {
    let mut cuts: Vec<(usize, usize, &'static str)> = Vec::new();
    let bytes = text.as_bytes();
    let mut skip_until = 0;
    let quote = scan(text, |i, c, quote| {
        if i < skip_until || quote != Quote::None {
            return;
        }
        let next = bytes.get(i + 1).copied();
        let cut = match (c, next) {
            ('|', Some(b'|')) => Some((2, "||")),
            ('|', _) => Some((1, "|")),
            ('&', Some(b'&')) => Some((2, "&&")),
            (';', _) => Some((1, ";")),
            _ => None,
        };
        if let Some((len, separator)) = cut {
            cuts.push((i, i + len, separator));
            skip_until = i + len;
        }
    });
    ensure!(quote == Quote::None, "an unclosed quote");
    let mut parts = Vec::new();
    let mut separators = Vec::new();
    let mut start = 0;
    for (from, to, separator) in cuts {
        parts.push(text[start..from].trim().to_string());
        separators.push(separator);
        start = to;
    }
    parts.push(text[start..].trim().to_string());
    Ok((parts, separators))
}

/// The command without a leading `sudo`, `sudo -E` or `runuser -u USER --` (and USER): the
/// sandbox already runs as root; the user must be a shipped unit's `User=` (checked statically).
fn strip_privilege(mut text: &str) -> (&str, Option<String>) {
    let mut run_as = None;
    loop {
        text = text.trim();
        if let Some(rest) = text.strip_prefix("sudo -E ") {
            text = rest;
        } else if let Some(rest) = text.strip_prefix("sudo ") {
            text = rest;
        } else if let Some((user, rest)) = text
            .strip_prefix("runuser -u ")
            .and_then(|rest| rest.split_once(" -- "))
        {
            run_as = Some(user.trim().to_string());
            text = rest;
        } else {
            return (text, run_as);
        }
    }
}

/// Shell words, quotes removed.
fn words(text: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = Quote::None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Quote::None, c) if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            (Quote::None, '\'') => {
                quote = Quote::Single;
                word.get_or_insert_with(String::new);
            }
            (Quote::None, '"') => {
                quote = Quote::Double;
                word.get_or_insert_with(String::new);
            }
            (Quote::Single, '\'') | (Quote::Double, '"') => quote = Quote::None,
            (Quote::None | Quote::Double, '\\') => {
                let escaped = chars.next().context("a trailing backslash")?;
                word.get_or_insert_with(String::new).push(escaped);
            }
            (_, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    ensure!(quote == Quote::None, "an unclosed quote");
    words.extend(word);
    Ok(words)
}

// ------------------------------------------------------------------------------------------------
// Classifying.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// `gatekeeper SUB ...` or `smtp-relay SUB ...`: run in the sandbox.
    Ours {
        program: &'static str,
        subcommand: String,
    },
    /// `cargo xtask SUB ...`.
    Xtask {
        subcommand: String,
        coverage: Coverage,
    },
    /// A system tool from PROGRAMS.
    Tool { program: &'static str },
}

fn classify(segment: &Segment) -> anyhow::Result<Kind> {
    let program = segment.words[0].as_str();
    let Some(&(name, coverage, _)) = PROGRAMS.iter().find(|(name, ..)| *name == program) else {
        bail!(
            "`{program}` is not in the PROGRAMS table of tests/tests/readme.rs: say how it is covered"
        );
    };
    if coverage == Coverage::Run {
        let subcommand = segment.words.get(1).context("no subcommand")?;
        let known = SUBCOMMANDS
            .iter()
            .find(|(p, _)| *p == name)
            .map_or(&[][..], |(_, subs)| subs);
        ensure!(
            known.contains(&subcommand.as_str()),
            "`{name} {subcommand}` is not a subcommand the sandbox runs (SUBCOMMANDS in tests/tests/readme.rs)"
        );
        return Ok(Kind::Ours {
            program: name,
            subcommand: subcommand.clone(),
        });
    }
    if name == "cargo" && segment.words.get(1).is_some_and(|w| w == "xtask") {
        let subcommand = segment
            .words
            .get(2)
            .context("`cargo xtask` without a subcommand")?;
        let Some(&(_, coverage)) = XTASK.iter().find(|(s, _)| s == subcommand) else {
            bail!("`cargo xtask {subcommand}` is not covered (XTASK in tests/tests/readme.rs)");
        };
        return Ok(Kind::Xtask {
            subcommand: subcommand.clone(),
            coverage,
        });
    }
    Ok(Kind::Tool { program: name })
}

/// A README line and how each of its segments is covered.
struct Planned {
    line: Line,
    kinds: Vec<Kind>,
}

impl Planned {
    /// The segment of ours, if any.
    fn ours(&self) -> Option<(&'static str, &str, &Segment)> {
        self.kinds
            .iter()
            .zip(&self.line.segments)
            .find_map(|(kind, segment)| match kind {
                Kind::Ours {
                    program,
                    subcommand,
                } => Some((*program, subcommand.as_str(), segment)),
                _ => None,
            })
    }
}

/// Classifies every command of the README; every line the tables do not cover is reported.
fn plan(markdown: &str) -> anyhow::Result<Vec<Planned>> {
    let mut planned = Vec::new();
    let mut errors = Vec::new();
    for line in parse_readme(markdown)? {
        let result = line
            .segments
            .iter()
            .map(classify)
            .collect::<anyhow::Result<Vec<Kind>>>()
            .and_then(|kinds| {
                let ours = kinds
                    .iter()
                    .filter(|k| matches!(k, Kind::Ours { .. }))
                    .count();
                ensure!(
                    ours <= 1,
                    "more than one command of ours on a line; the checks expect one"
                );
                if ours == 1 {
                    // Unknown placeholders are refused here, before anything runs.
                    substitute(&line.shell_text(), |name| Ok(name.to_string()))?;
                }
                Ok(kinds)
            });
        match result {
            Ok(kinds) => planned.push(Planned { line, kinds }),
            Err(err) => errors.push(format!("{}\n    {err:#}", line.location())),
        }
    }
    ensure!(
        errors.is_empty(),
        "README commands nobody runs:\n{}",
        errors.join("\n")
    );
    Ok(planned)
}

/// The line without and with its optional `[...]` parts (just the line when it has none).
fn variants(text: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut open = None;
    let mut previous = ' ';
    scan(text, |i, c, quote| {
        if quote == Quote::None {
            if c == '[' && previous.is_whitespace() && open.is_none() {
                open = Some(i);
            } else if c == ']'
                && let Some(start) = open.take()
            {
                spans.push((start, i));
            }
        }
        previous = c;
    });
    if spans.is_empty() {
        return vec![text.to_string()];
    }
    let (mut without, mut with) = (String::new(), String::new());
    let mut at = 0;
    for (start, end) in spans {
        without.push_str(&text[at..start]);
        with.push_str(&text[at..start]);
        with.push_str(&text[start + 1..end]);
        at = end + 1;
    }
    without.push_str(&text[at..]);
    with.push_str(&text[at..]);
    let tidy = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
    vec![tidy(without), tidy(with)]
}

/// Replaces each placeholder word outside quotes (`ID`, `IF`, ...: two or more capitals, not an
/// environment assignment) with `value(name)`; a name missing from PLACEHOLDERS is an error.
fn substitute(
    text: &str,
    mut value: impl FnMut(&str) -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    // A trailing None flushes the last word.
    for c in text.chars().map(Some).chain([None]) {
        if let Some(c) = c
            && quote.is_none()
            && (c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            word.push(c);
            continue;
        }
        let placeholder = word.len() >= 2
            && word.chars().all(|w| w.is_ascii_uppercase() || w == '_')
            && c != Some('=');
        if placeholder {
            ensure!(
                PLACEHOLDERS.iter().any(|(name, _)| *name == word),
                "`{word}` looks like a placeholder but is not in PLACEHOLDERS of tests/tests/readme.rs"
            );
            out.push_str(&value(&word)?);
        } else {
            out.push_str(&word);
        }
        word.clear();
        let Some(c) = c else { break };
        match quote {
            None if matches!(c, '\'' | '"') => quote = Some(c),
            Some(q) if q == c => quote = None,
            _ => {}
        }
        out.push(c);
    }
    Ok(out)
}

/// `text` with every absolute path under REWRITTEN moved under `root`.
fn rewrite_paths(text: &str, root: &Path) -> String {
    let root = root.display().to_string();
    let mut out = String::with_capacity(text.len());
    let mut previous = ' ';
    for (i, c) in text.char_indices() {
        let boundary = previous.is_whitespace() || matches!(previous, '"' | '\'' | '=' | ':');
        if boundary && REWRITTEN.iter().any(|p| text[i..].starts_with(p)) {
            out.push_str(&root);
        }
        out.push(c);
        previous = c;
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Checks that need no sandbox.

fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn readme() -> anyhow::Result<String> {
    let path = std::env::var_os("GATEKEEPER_README")
        .map_or_else(|| repo_root().join("README.md"), PathBuf::from);
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Builds the binaries the lines use (a no-op when up to date; `cargo xtask test` built them).
fn build_binaries() -> anyhow::Result<()> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let out = Command::new(cargo)
                .current_dir(repo_root())
                .args([
                    "build",
                    "--package",
                    "gatekeeper",
                    "--package",
                    "smtp-relay",
                ])
                .args(["--package", "xtask", "--bins"])
                .output()
                .map_err(|err| format!("running cargo: {err}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cargo build failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(())
        })
        .clone()
        .map_err(|err| anyhow::anyhow!(err))
}

/// The example unit `name` (with or without `.service`; a `.timer`; an instance `a@b` of the
/// template `a@`), which must exist in examples/ or examples/systemd/.
fn unit_file(name: &str) -> anyhow::Result<String> {
    let (name, kind) = match name.strip_suffix(".timer") {
        Some(timer) => (timer, "timer"),
        None => (name.strip_suffix(".service").unwrap_or(name), "service"),
    };
    let template = match name.split_once('@') {
        Some((base, _instance)) => format!("{base}@"),
        None => name.to_string(),
    };
    let file = format!("{template}.{kind}");
    let shipped = [
        repo_root().join("examples"),
        repo_root().join("examples/systemd"),
    ]
    .into_iter()
    .map(|dir| dir.join(&file))
    .find(|path| path.is_file())
    .with_context(|| {
        format!(
            "the unit {name}.{kind} is not shipped: no examples/{file} or examples/systemd/{file}"
        )
    })?;
    Ok(fs::read_to_string(&shipped)?)
}

/// What `systemctl` is asked to do, and to which units.
fn systemctl_args(words: &[String]) -> (String, bool, Vec<String>) {
    let mut action = String::new();
    let mut now = false;
    let mut units = Vec::new();
    for word in &words[1..] {
        if word.starts_with('-') {
            now |= word == "--now";
        } else if action.is_empty() {
            action = word.clone();
        } else {
            units.push(word.clone());
        }
    }
    (action, now, units)
}

/// Checks a line of a system tool as PROGRAMS says.
fn check_tool(program: &str, words: &[String]) -> anyhow::Result<()> {
    match program {
        "install" => {
            let mut operands = Vec::new();
            let mut directories = false;
            let mut args = words[1..].iter();
            while let Some(word) = args.next() {
                if matches!(word.as_str(), "-m" | "-g" | "-o") {
                    args.next();
                } else if word == "-d" {
                    directories = true;
                } else if !word.starts_with('-') {
                    operands.push(word);
                }
            }
            if directories {
                // `install -d`: every operand is a directory to create, nothing of ours to find.
                ensure!(!operands.is_empty(), "install -d without a directory");
                return Ok(());
            }
            ensure!(operands.len() >= 2, "install needs a source and a target");
            for source in &operands[..operands.len() - 1] {
                if ADMIN_FILES.contains(&source.as_str()) {
                    continue;
                } else if let Some(name) = source.strip_prefix("target/release/") {
                    let ours = PROGRAMS
                        .iter()
                        .any(|(p, coverage, _)| *p == name && *coverage == Coverage::Run);
                    ensure!(ours, "{source} is not a binary of ours");
                    ensure!(
                        workspace_binary(name).is_file(),
                        "{source}: `cargo build` made no {name}"
                    );
                } else {
                    ensure!(
                        source.starts_with("examples/") && repo_root().join(source).is_file(),
                        "{source} is not a file in examples/ of this repository"
                    );
                }
            }
            Ok(())
        }
        "systemctl" => {
            let (action, _, units) = systemctl_args(words);
            ensure!(!action.is_empty(), "systemctl without an action");
            for unit in units {
                unit_file(&unit)?;
            }
            Ok(())
        }
        "journalctl" => {
            for pair in words.windows(2) {
                if pair[0] == "-u" {
                    unit_file(&pair[1])?;
                }
            }
            Ok(())
        }
        "useradd" => unit_runs_as(words.last().context("useradd without a name")?),
        _ => Ok(()),
    }
}

/// A user named in the README must be the one a shipped unit runs as.
fn unit_runs_as(user: &str) -> anyhow::Result<()> {
    let shipped = fs::read_dir(repo_root().join("examples"))?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "service"))
        .any(|e| {
            fs::read_to_string(e.path())
                .is_ok_and(|t| t.lines().any(|l| l.trim() == format!("User={user}")))
        });
    ensure!(shipped, "no unit in examples/ runs as User={user}");
    Ok(())
}

/// `.ci/run` runs `cargo xtask test`, and (for the demo) xtask/src/test.rs runs the demo.
fn check_ci_runs(subcommand: &str) -> anyhow::Result<()> {
    let ci = fs::read_to_string(repo_root().join(".ci/run")).context("reading .ci/run")?;
    ensure!(
        ci.lines().any(|l| l.trim() == "cargo xtask test"),
        ".ci/run no longer runs `cargo xtask test`:\n{ci}"
    );
    if subcommand == "demo" {
        let test = fs::read_to_string(repo_root().join("xtask/src/test.rs"))
            .context("reading xtask/src/test.rs")?;
        ensure!(
            test.lines().any(|l| {
                let l = l.trim();
                !l.starts_with("//") && l.contains("crate::demo::run(")
            }),
            "xtask/src/test.rs no longer runs the demo, so CI does not cover `cargo xtask demo`"
        );
    }
    Ok(())
}

/// The real xtask CLI accepts the arguments: `xtask ARGS --help` exits 0 (clap parses what comes
/// before `--help`, so an unknown subcommand, flag or value fails).
fn check_xtask_parses(words: &[String]) -> anyhow::Result<()> {
    let out = Command::new(workspace_binary("xtask"))
        .args(&words[2..])
        .arg("--help")
        .output()
        .context("running the xtask binary")?;
    ensure!(
        out.status.success(),
        "`xtask {} --help` failed: {}",
        words[2..].join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Every line that is not ours, checked as its table entry says.
fn check_static(planned: &[Planned]) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for p in planned {
        for (kind, segment) in p.kinds.iter().zip(&p.line.segments) {
            let result = match (&segment.run_as, kind) {
                (Some(user), _) => unit_runs_as(user),
                _ => Ok(()),
            }
            .and_then(|()| match kind {
                Kind::Ours { .. } => Ok(()),
                Kind::Xtask {
                    subcommand,
                    coverage: Coverage::Ci,
                } => check_ci_runs(subcommand).and_then(|()| check_xtask_parses(&segment.words)),
                Kind::Xtask { .. } => check_xtask_parses(&segment.words),
                Kind::Tool { program } => check_tool(program, &segment.words),
            });
            if let Err(err) = result {
                errors.push(format!("{}\n    {err:#}", p.line.location()));
            }
        }
    }
    ensure!(
        errors.is_empty(),
        "README commands that do not hold:\n{}",
        errors.join("\n")
    );
    Ok(())
}

fn coverage_label(kinds: &[Kind]) -> &'static str {
    if kinds.iter().any(|k| matches!(k, Kind::Ours { .. })) {
        "run"
    } else if let Some(Kind::Xtask { coverage, .. }) = kinds.first() {
        match coverage {
            Coverage::Ci => "CI",
            _ => "parsed",
        }
    } else {
        "not ours"
    }
}

// ------------------------------------------------------------------------------------------------
// The sandbox.

/// Where the README lines of ours run. Fields drop in order: daemons first, then the namespaces,
/// the pins and the temporary root.
struct Sandbox {
    gatekeeper: Option<Daemon>,
    relay: Option<Daemon>,
    link: Link,
    pins: PinDir,
    root: TempDir,
    bin_dir: PathBuf,
    /// The command that last started the gatekeeper, to bring the filter back for a `detach`.
    gatekeeper_start: Option<String>,
    /// A message queued in the relay's spool, for `ID`.
    queued: Option<String>,
    runs: usize,
}

impl Sandbox {
    fn new() -> anyhow::Result<Sandbox> {
        let gatekeeper = workspace_binary("gatekeeper");
        let relay = workspace_binary("smtp-relay");
        let bin_dir = gatekeeper
            .parent()
            .context("the gatekeeper binary's directory")?
            .to_path_buf();
        ensure!(
            relay.parent() == Some(bin_dir.as_path()),
            "gatekeeper and smtp-relay must sit in one directory for PATH ({} vs {})",
            gatekeeper.display(),
            relay.display()
        );
        // Interface names are per namespace: the host end can be the example config's eth0.
        let peer_if = unique_name("gkrv");
        let link = Link::create(
            &unique_name("gkr-h"),
            HOST_IF,
            &unique_name("gkr-p"),
            &peer_if,
        )?;
        link.left.add_addr(HOST_IF, &format!("{HOST_V4}/24"))?;
        link.left
            .exec(&["ip", "route", "add", "203.0.113.0/24", "dev", HOST_IF])?;
        link.right.add_addr(&peer_if, &format!("{PEER_V4}/24"))?;
        link.right
            .exec(&["ip", "route", "add", "192.0.2.0/24", "dev", &peer_if])?;
        let pins = PinDir::new("gkr");
        let root = TempDir::new("readme")?;
        let r = root.path();
        ensure!(
            !r.display().to_string().contains(char::is_whitespace),
            "the temporary root must not contain spaces"
        );
        for dir in [
            "etc/gatekeeper",
            "etc/smtp-relay",
            "etc/bash_completion.d",
            "var/spool",
            "usr/local/sbin",
            "stand-ins",
            "logs",
        ] {
            fs::create_dir_all(r.join(dir))?;
        }
        // What `install ... target/release/X /usr/local/sbin/` does, with the debug build.
        symlink(&gatekeeper, r.join("usr/local/sbin/gatekeeper"))?;
        symlink(&relay, r.join("usr/local/sbin/smtp-relay"))?;

        let examples = repo_root().join("examples");
        let gatekeeper_toml = fs::read_to_string(examples.join("gatekeeper.toml"))?;
        fs::write(
            r.join("etc/gatekeeper/gatekeeper.toml"),
            format!(
                "# tests/tests/readme.rs: a pin_dir and ban state of the test's own, never the real ones.\npin_dir = \"{}\"\nban_state = \"{}\"\n\n{}",
                pins.path().display(),
                r.join("var/lib/gatekeeper/bans.json").display(),
                rewrite_paths(&gatekeeper_toml, r)
            ),
        )?;
        let relay_toml = rewrite_paths(&fs::read_to_string(examples.join("smtp-relay.toml"))?, r);
        fs::write(r.join("etc/smtp-relay/smtp-relay.toml"), &relay_toml)?;
        // The certificate and key where the example config names them.
        let parsed: toml::Table = relay_toml.parse().context("parsing the relay example")?;
        let tls = |key: &str| {
            parsed
                .get("tls")
                .and_then(|t| t.get(key))
                .and_then(|v| v.as_str())
                .map(PathBuf::from)
                .with_context(|| format!("the relay example has no [tls] {key}"))
        };
        let (cert, key) = (tls("cert")?, tls("key")?);
        ensure!(
            cert.starts_with(r) && key.starts_with(r),
            "the example's certificate paths were not moved under the sandbox root"
        );
        for path in [&cert, &key] {
            fs::create_dir_all(path.parent().context("certificate directory")?)?;
        }
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=mx.example.org", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl")?;
        ensure!(
            out.status.success(),
            "openssl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let man = r.join("stand-ins/man");
        fs::write(
            &man,
            "#!/bin/sh\n# Stand-in for man(1): keeps the page piped to `man -l -` for the test.\n\
             [ \"$1 $2\" = \"-l -\" ] || { echo \"man stand-in: expected -l -, got $*\" >&2; exit 2; }\n\
             cat > \"$README_TEST_MAN_CAPTURE\"\n",
        )?;
        fs::set_permissions(&man, fs::Permissions::from_mode(0o755))?;
        Ok(Sandbox {
            gatekeeper: None,
            relay: None,
            link,
            pins,
            root,
            bin_dir,
            gatekeeper_start: None,
            queued: None,
            runs: 0,
        })
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn gatekeeper_config(&self) -> PathBuf {
        self.root().join("etc/gatekeeper/gatekeeper.toml")
    }

    fn relay_config(&self) -> anyhow::Result<toml::Table> {
        let path = self.root().join("etc/smtp-relay/smtp-relay.toml");
        fs::read_to_string(&path)?
            .parse()
            .with_context(|| format!("parsing {}", path.display()))
    }

    fn man_capture(&self) -> PathBuf {
        self.root().join("man-capture.roff")
    }

    /// A command run in the host namespace (nsenter keeps /sys/fs/bpf, which `ip netns exec`
    /// would hide) with the sandbox's environment.
    fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = self.link.left.nsenter();
        cmd.args(argv)
            .current_dir(repo_root())
            .env(
                "PATH",
                format!(
                    "{}:{}:{}",
                    self.bin_dir.display(),
                    self.root().join("stand-ins").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            // Lines without --config use the default /etc/gatekeeper/gatekeeper.toml; its
            // documented override moves that default under the root like every /etc path.
            .env("GATEKEEPER_CONFIG", self.gatekeeper_config())
            .env("README_TEST_MAN_CAPTURE", self.man_capture())
            .env("SHELL", "/bin/sh")
            .env_remove("RUST_LOG");
        cmd
    }

    fn log_path(&mut self, name: &str) -> PathBuf {
        self.runs += 1;
        self.root()
            .join("logs")
            .join(format!("{:03}-{name}", self.runs))
    }

    /// Runs `text` with bash (pipefail) and fails unless it exits 0; its stdout.
    fn exec(&mut self, text: &str) -> anyhow::Result<String> {
        let (out_path, err_path) = (self.log_path("out"), self.log_path("err"));
        let mut cmd = self.command(&["bash", "-o", "pipefail", "-c", text]);
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&out_path)?)
            .stderr(fs::File::create(&err_path)?);
        let mut child = cmd.spawn().context("starting bash")?;
        let status = wait(&mut child, COMMAND_TIMEOUT)?;
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        ensure!(
            status.success(),
            "`{text}` exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        Ok(stdout)
    }

    fn daemon_slot(&mut self, program: &str) -> anyhow::Result<&mut Option<Daemon>> {
        match program {
            "gatekeeper" => Ok(&mut self.gatekeeper),
            "smtp-relay" => Ok(&mut self.relay),
            _ => bail!("{program} is not a daemon of ours"),
        }
    }

    /// Stops `program`'s daemon, if one runs; it must exit cleanly.
    fn stop(&mut self, program: &str) -> anyhow::Result<()> {
        if let Some(mut daemon) = self.daemon_slot(program)?.take() {
            let clean = daemon.stop_with(libc::SIGTERM, Duration::from_secs(40))?;
            ensure!(clean, "{program} did not exit cleanly:\n{}", daemon.log());
            eprintln!("    stopped {program}");
        }
        Ok(())
    }

    /// Starts a foreground daemon from `text` (a `run` line or a unit's ExecStart) and waits until
    /// it serves. A daemon of the same program already running (say, the one a unit started) is
    /// stopped first: a second one on the same pins or spool would be refused.
    fn start_daemon(&mut self, program: &str, text: &str) -> anyhow::Result<()> {
        self.stop(program)?;
        let log = self.log_path(&format!("{program}.log"));
        let cmd = self.command(&["bash", "-c", &format!("exec {text}")]);
        let mut daemon = Daemon::start(program, cmd, &log)?;
        match program {
            "gatekeeper" => {
                daemon.wait_for_log("enforcing", Duration::from_secs(20))?;
                self.gatekeeper_start = Some(text.to_string());
            }
            _ => {
                let listeners = self
                    .relay_config()?
                    .get("listener")
                    .and_then(|l| l.as_array())
                    .map_or(0, Vec::len);
                let deadline = Instant::now() + Duration::from_secs(20);
                daemon.wait_for_log("event=\"listening\"", Duration::from_secs(20))?;
                while daemon.log().matches("event=\"listening\"").count() < listeners {
                    ensure!(
                        Instant::now() < deadline,
                        "smtp-relay did not log all {listeners} listeners:\n{}",
                        daemon.log()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        eprintln!("    started {program}: {text}");
        *self.daemon_slot(program)? = Some(daemon);
        Ok(())
    }

    /// Plays what a system tool's line does to the host, where later lines depend on it.
    fn play_tool(&mut self, program: &str, words: &[String]) -> anyhow::Result<()> {
        if program != "systemctl" {
            return Ok(());
        }
        let (action, now, units) = systemctl_args(words);
        // Timers start units that fetch from the Internet (deny feeds): checked to be shipped
        // (`check_tool`), never played in the sandbox.
        for unit in units.into_iter().filter(|u| !u.ends_with(".timer")) {
            match action.as_str() {
                "start" | "restart" => self.start_unit(&unit)?,
                "enable" if now => self.start_unit(&unit)?,
                "stop" => self.stop(&self.unit_program(&unit)?)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// The program of ours a unit's ExecStart= runs.
    fn unit_program(&self, unit: &str) -> anyhow::Result<String> {
        let text = unit_file(unit)?;
        let start = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("ExecStart="))
            .with_context(|| format!("{unit}.service has no ExecStart="))?;
        let argv = words(start.trim_start_matches(['+', '-', '!', '@', ':']))?;
        let program = argv.first().context("an empty ExecStart=")?;
        Ok(program.rsplit('/').next().unwrap_or(program).to_string())
    }

    /// Runs the unit's ExecStartPre= commands of ours, then starts its ExecStart= as a daemon.
    fn start_unit(&mut self, unit: &str) -> anyhow::Result<()> {
        let text = unit_file(unit)?;
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once('=') else {
                continue;
            };
            if key != "ExecStartPre" && key != "ExecStart" {
                continue;
            }
            let command = value.trim_start_matches(['+', '-', '!', '@', ':']);
            let argv = words(command)?;
            let program = argv.first().context("an empty Exec line")?;
            let program = program.rsplit('/').next().unwrap_or(program);
            let ours = SUBCOMMANDS.iter().any(|(p, _)| *p == program);
            let text = rewrite_paths(command, self.root());
            match (key, ours) {
                ("ExecStart", true) => self.start_daemon(program, &text)?,
                ("ExecStart", false) => bail!("{unit}.service starts {program}, not ours"),
                ("ExecStartPre", true) => {
                    eprintln!("    {unit}.service: $ {text}");
                    self.exec(&text)
                        .with_context(|| format!("{unit}.service: {line}"))?;
                }
                // E.g. the relay's `install -d` of its spool for its user: the relay, running as
                // root here, creates the spool itself.
                _ => eprintln!("    {unit}.service: {line}: not ours, not played"),
            }
        }
        Ok(())
    }

    /// Whether the filter's link on eth0 is pinned.
    fn link_pinned(&self) -> bool {
        self.pins.path().join(format!("link-{HOST_IF}")).exists()
    }

    /// `gatekeeper detach` needs the daemon stopped (the README says so) and something to
    /// detach: stop the daemon (the example's keep_attached_on_exit leaves the filter pinned), or
    /// bring the filter back with the command that last started it.
    fn before_detach(&mut self) -> anyhow::Result<()> {
        if self.gatekeeper.is_none() && !self.link_pinned() {
            let start = self
                .gatekeeper_start
                .clone()
                .context("the README detaches a filter it never started")?;
            self.start_daemon("gatekeeper", &start)?;
        }
        self.stop("gatekeeper")?;
        ensure!(
            self.link_pinned(),
            "the stopped daemon left no pinned link (keep_attached_on_exit = true in the example)"
        );
        Ok(())
    }

    /// The value of a placeholder for a line of `program`.
    fn placeholder(&mut self, name: &str, program: &str) -> anyhow::Result<String> {
        match (name, program) {
            ("ID", _) => self.queued_id(),
            ("IF", _) => Ok(HOST_IF.to_string()),
            ("FILE", "gatekeeper") => Ok("/etc/gatekeeper/gatekeeper.toml".to_string()),
            ("FILE", _) => Ok("/etc/smtp-relay/smtp-relay.toml".to_string()),
            _ => bail!("no value for the placeholder {name}"),
        }
    }

    /// The id of a message waiting in the relay's queue; sends one first if there is none.
    fn queued_id(&mut self) -> anyhow::Result<String> {
        if let Some(id) = &self.queued {
            return Ok(id.clone());
        }
        ensure!(
            self.relay.is_some(),
            "a line needs a queued message, but no relay runs to queue one"
        );
        let id = self.link.right.run(send_message)??;
        eprintln!("    queued message {id} (from {PEER_V4}, for {RECIPIENT})");
        self.queued = Some(id.clone());
        Ok(id)
    }

    fn spool_dir(&self) -> anyhow::Result<PathBuf> {
        self.relay_config()?
            .get("spool_dir")
            .and_then(|v| v.as_str())
            .map(PathBuf::from)
            .context("the relay config has no spool_dir")
    }

    /// Runs one README line of ours, each variant, and checks what it did.
    fn run_line(&mut self, planned: &Planned) -> anyhow::Result<()> {
        let Some((program, subcommand, _)) = planned.ours() else {
            return Ok(());
        };
        for variant in variants(&planned.line.shell_text()) {
            if planned.line.segments.iter().any(|s| s.words[0] == "man") {
                let _ = fs::remove_file(self.man_capture());
            }
            if subcommand == "queue" {
                // `queue list` should show something: a message is queued before the first one.
                self.queued_id()?;
            }
            if subcommand == "detach" {
                self.before_detach()?;
            }
            let text = substitute(&variant, |name| self.placeholder(name, program))?;
            let text = rewrite_paths(&text, self.root());
            eprintln!("    $ {text}");
            let line = Line::parse(planned.line.number, &text)?;
            let ours = line
                .segments
                .iter()
                .find(|s| s.words[0] == program)
                .context("the line lost its command")?
                .words
                .clone();
            let stdout = match subcommand {
                "run" => {
                    self.start_daemon(program, &text)?;
                    continue;
                }
                "hash-password" if !ours.iter().any(|w| w == "--stdin") => {
                    ensure!(
                        line.segments.len() == 1,
                        "a prompting command in a pipeline"
                    );
                    self.on_a_terminal(&text)?
                }
                _ => self.exec(&text)?,
            };
            self.check(program, &ours, &line, &stdout)
                .with_context(|| format!("checking `{text}`; stdout:\n{stdout}"))?;
        }
        Ok(())
    }

    /// Light checks of what a line of ours printed or changed.
    fn check(
        &mut self,
        program: &str,
        ours: &[String],
        line: &Line,
        stdout: &str,
    ) -> anyhow::Result<()> {
        let json = ours.iter().any(|w| w == "--json");
        let arg = |after: &str| {
            ours.iter()
                .skip_while(|w| *w != after)
                .nth(1)
                .cloned()
                .with_context(|| format!("no argument after {after}"))
        };
        let parse_json = |text: &str| -> anyhow::Result<serde_json::Value> {
            serde_json::from_str(text).context("--json printed no JSON")
        };
        let produced = |tool: &str| -> anyhow::Result<Option<String>> {
            let Some(segment) = line.segments.iter().find(|s| s.words[0] == tool) else {
                return Ok(None);
            };
            let path = match tool {
                "man" => self.man_capture(),
                // tee's file: its first operand, before any redirection.
                _ => segment.words[1..]
                    .iter()
                    .take_while(|w| !w.contains('>'))
                    .find(|w| !w.starts_with('-'))
                    .map(PathBuf::from)
                    .context("tee without a file")?,
            };
            Ok(Some(fs::read_to_string(&path).with_context(|| {
                format!("{tool} wrote nothing to {}", path.display())
            })?))
        };
        match (program, ours[1].as_str()) {
            (_, "check") => {}
            (_, "completions") => {
                let script = produced("tee")?.unwrap_or_else(|| stdout.to_string());
                ensure!(
                    script.len() > 200 && script.contains(program),
                    "no completion script for {program}:\n{script}"
                );
            }
            (_, "man") => {
                let page = produced("man")?.unwrap_or_else(|| stdout.to_string());
                ensure!(page.contains(".TH "), "not a roff man page:\n{page}");
            }
            ("gatekeeper", "status") => {
                // Attached exactly when the filter's link is pinned (daemon running or kept).
                let attached = if json {
                    let status = parse_json(stdout)?;
                    let interfaces = status["interfaces"].as_array().context("no interfaces")?;
                    interfaces
                        .iter()
                        .find(|i| i["name"] == HOST_IF)
                        .with_context(|| format!("{HOST_IF} is not in the status"))?["attached"]
                        == true
                } else {
                    ensure!(stdout.contains(HOST_IF), "{HOST_IF} is not in the status");
                    stdout.contains("attached, ") && !stdout.contains("NOT attached")
                };
                ensure!(
                    attached == self.link_pinned(),
                    "status says attached={attached}, the pins say {}",
                    self.link_pinned()
                );
            }
            ("gatekeeper", "stats") => {
                if json {
                    parse_json(stdout)?;
                }
                ensure!(stdout.contains(HOST_IF), "no counters for {HOST_IF}");
            }
            ("gatekeeper", "allow") => {
                let config = fs::read_to_string(self.gatekeeper_config())?;
                match ours[2].as_str() {
                    "add" => {
                        let cidr = arg("add")?;
                        ensure!(
                            config.contains(&format!("\"{cidr}\"")),
                            "{cidr} is not in the config:\n{config}"
                        );
                        if self.gatekeeper.is_some() {
                            ensure!(stdout.contains("live filter"), "not added live");
                        }
                    }
                    "remove" => {
                        let cidr = arg("remove")?;
                        ensure!(
                            !config.contains(&format!("\"{cidr}\"")),
                            "{cidr} is still in the config:\n{config}"
                        );
                    }
                    "list" => {
                        let table: toml::Table = config.parse()?;
                        let cidrs: Vec<&str> = table
                            .get("allow")
                            .and_then(|a| a.as_array())
                            .context("the config has no [[allow]]")?
                            .iter()
                            .filter_map(|e| e.get("cidr").and_then(|c| c.as_str()))
                            .collect();
                        if json {
                            let entries = parse_json(stdout)?;
                            let n = entries["entries"].as_array().map_or(0, Vec::len);
                            ensure!(n == cidrs.len(), "{n} entries listed, {cidrs:?} configured");
                        }
                        for cidr in cidrs {
                            ensure!(stdout.contains(cidr), "{cidr} is not listed");
                        }
                    }
                    other => bail!("no check for `gatekeeper allow {other}`"),
                }
            }
            ("gatekeeper", "deny") => {
                // Parsed: the example config shows a [[deny]] entry in a comment.
                let table: toml::Table = fs::read_to_string(self.gatekeeper_config())?.parse()?;
                let cidrs: Vec<&str> = table
                    .get("deny")
                    .and_then(|a| a.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.get("cidr").and_then(|c| c.as_str()))
                    .collect();
                match ours[2].as_str() {
                    "add" => {
                        let cidr = arg("add")?;
                        ensure!(
                            cidrs.contains(&cidr.as_str()),
                            "{cidr} is not in the config's [[deny]]: {cidrs:?}"
                        );
                    }
                    "remove" => {
                        let cidr = arg("remove")?;
                        ensure!(
                            !cidrs.contains(&cidr.as_str()),
                            "{cidr} is still in the config's [[deny]]"
                        );
                    }
                    "list" => {
                        if json {
                            let listed = parse_json(stdout)?;
                            // Live-only rows (a removal the daemon has not synced yet) aside.
                            let n = listed["entries"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter(|e| e["in_config"] == true)
                                .count();
                            ensure!(n == cidrs.len(), "{n} entries listed, {cidrs:?} configured");
                        } else {
                            ensure!(stdout.contains("CIDR"), "no table");
                        }
                        for cidr in cidrs {
                            ensure!(stdout.contains(cidr), "{cidr} is not listed");
                        }
                    }
                    other => bail!("no check for `gatekeeper deny {other}`"),
                }
            }
            ("gatekeeper", "ban") => match ours[2].as_str() {
                "add" => {
                    let addr = arg("add")?;
                    ensure!(
                        stdout.starts_with("banned ") && stdout.contains(&addr),
                        "not banned"
                    );
                    let state = self.root().join("var/lib/gatekeeper/bans.json");
                    let file = fs::read_to_string(&state)
                        .with_context(|| format!("no ban state file {}", state.display()))?;
                    ensure!(file.contains(&addr), "{addr} is not in {}", state.display());
                }
                "remove" => {
                    ensure!(stdout.starts_with("lifted the ban of "), "not lifted");
                }
                "list" => {
                    if json {
                        let listed = parse_json(stdout)?;
                        ensure!(listed["bans"].is_array(), "no bans array");
                    } else {
                        ensure!(stdout.contains("SOURCE"), "no table");
                    }
                }
                other => bail!("no check for `gatekeeper ban {other}`"),
            },
            ("gatekeeper", "detach") => {
                ensure!(
                    stdout.contains(&format!("detached from {HOST_IF}")),
                    "nothing detached"
                );
                ensure!(!self.link_pinned(), "the link on {HOST_IF} is still pinned");
            }
            ("smtp-relay", "hash-password") => {
                ensure!(
                    stdout.lines().any(|l| l.trim().starts_with("$argon2id$")),
                    "no argon2id hash"
                );
            }
            ("smtp-relay", "queue") => {
                let id = self.queued.clone().context("no queued message")?;
                let action = ours
                    .iter()
                    .find(|w| matches!(w.as_str(), "list" | "show" | "flush" | "remove"))
                    .context("a queue command the test does not know")?;
                match action.as_str() {
                    "list" => {
                        if json {
                            parse_json(stdout)?;
                        }
                        ensure!(stdout.contains(&id), "{id} is not listed");
                    }
                    "show" => ensure!(stdout.contains(RECIPIENT), "{RECIPIENT} is not shown"),
                    "flush" => {}
                    _ => {
                        let envelope = self.spool_dir()?.join(format!("{id}.env"));
                        ensure!(!envelope.exists(), "{id} is still in the spool");
                        self.queued = None;
                    }
                }
            }
            (program, subcommand) => bail!("no check for `{program} {subcommand}`"),
        }
        Ok(())
    }

    /// Runs a line that prompts on the terminal (`smtp-relay hash-password`) under a
    /// pseudo-terminal (`script` from util-linux), typing the password at each prompt; its output.
    fn on_a_terminal(&mut self, text: &str) -> anyhow::Result<String> {
        let mut cmd = self.command(&["script", "-qec", text, "/dev/null"]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().context("starting script(1)")?;
        let mut stdin = child.stdin.take().context("script's stdin")?;
        let mut stdout = child.stdout.take().context("script's stdout")?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut seen = String::new();
        let result = (|| -> anyhow::Result<()> {
            for prompt in ["Password: ", "Again: "] {
                while !seen.contains(prompt) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                        Err(_) => bail!("no prompt {prompt:?}; the terminal showed:\n{seen}"),
                    }
                }
                // rpassword turns echo off just after printing the prompt; typing at once
                // could be echoed (harmless, but it clutters the output).
                std::thread::sleep(Duration::from_millis(100));
                stdin.write_all(format!("{PASSWORD}\n").as_bytes())?;
            }
            while let Ok(bytes) =
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                seen.push_str(&String::from_utf8_lossy(&bytes));
            }
            Ok(())
        })();
        drop(stdin);
        let status = wait(&mut child, Duration::from_secs(5));
        result?;
        let status = status?;
        ensure!(status.success(), "`{text}` exited with {status}:\n{seen}");
        Ok(seen)
    }
}

/// Waits for `child`, killing it after `timeout`.
fn wait(child: &mut Child, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tiny SMTP client, run inside the peer namespace: queues one message from the example
/// allowlist's backup MX for a local recipient; returns the relay's queue id.
fn send_message() -> anyhow::Result<String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let source: IpAddr = PEER_V4.parse()?;
    let dest = SocketAddr::new(IpAddr::V4(HOST_V4), 25);
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket
        .connect_timeout(&dest.into(), Duration::from_secs(5))
        .with_context(|| format!("connecting to the relay on {dest}"))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut reply = |expect: &str| -> anyhow::Result<String> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            ensure!(reader.read_line(&mut line)? > 0, "the relay closed: {text}");
            text.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                break;
            }
        }
        ensure!(text.starts_with(expect), "expected {expect}, got {text}");
        Ok(text)
    };
    reply("220")?;
    for (command, expect) in [
        ("EHLO backup-mx.example.net", "250"),
        ("MAIL FROM:<sender@example.com>", "250"),
        (&format!("RCPT TO:<{RECIPIENT}>")[..], "250"),
        ("DATA", "354"),
    ] {
        writer.write_all(format!("{command}\r\n").as_bytes())?;
        reply(expect).with_context(|| command.to_string())?;
    }
    writer.write_all(
        format!(
            "From: sender@example.com\r\nTo: {RECIPIENT}\r\nSubject: README test\r\n\r\n\
             Stays queued: its route is unreachable from the sandbox.\r\n.\r\n"
        )
        .as_bytes(),
    )?;
    let queued = reply("250")?;
    let id = queued
        .split("queued as ")
        .nth(1)
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .with_context(|| format!("no queue id in {queued:?}"))?
        .to_string();
    writer.write_all(b"QUIT\r\n")?;
    Ok(id)
}

// ------------------------------------------------------------------------------------------------
// The tests.

/// Every README command is classified, and every line that is not ours holds (files and units
/// exist, CI runs what it claims, the xtask CLI accepts the arguments). Needs no root.
#[test]
fn every_readme_command_is_accounted_for() {
    let planned = plan(&readme().expect("read the README")).expect("classify every README line");
    build_binaries().expect("build the binaries");
    check_static(&planned).expect("the lines that are not ours hold");
    for p in &planned {
        eprintln!("{:<8} {}", coverage_label(&p.kinds), p.line.location());
    }
}

/// The lines of ours run verbatim, in README order, in the sandbox.
#[test]
fn readme_commands_run_in_a_sandbox() {
    // Unknown commands fail even where the sandbox cannot run.
    let planned = plan(&readme().expect("read the README")).expect("classify every README line");
    if !kernel_tests_enabled("readme_commands_run_in_a_sandbox") {
        return;
    }
    build_binaries().expect("build the binaries");
    let mut sandbox = Sandbox::new().expect("set up the sandbox");
    let mut ran = 0;
    for p in &planned {
        let result = if p.ours().is_some() {
            ran += 1;
            eprintln!("{}", p.line.location());
            sandbox.run_line(p)
        } else {
            p.kinds
                .iter()
                .zip(&p.line.segments)
                .try_for_each(|(kind, segment)| match kind {
                    Kind::Tool { program } => sandbox.play_tool(program, &segment.words),
                    _ => Ok(()),
                })
        };
        if let Err(err) = result {
            panic!("{}: {err:#}", p.line.location());
        }
    }
    assert!(ran > 0, "the README shows no command of ours?");
    sandbox.stop("smtp-relay").expect("stop smtp-relay");
    sandbox.stop("gatekeeper").expect("stop gatekeeper");
}

#[cfg(test)]
mod parsing {
    use super::*;

    fn lines(markdown: &str) -> Vec<Line> {
        parse_readme(markdown).expect("parses")
    }

    #[test]
    fn continuations_comments_sudo_and_segments() {
        let md = "text\n```sh\n# a comment\n\nsudo -E cargo xtask demo   # the demo\n\
                  gatekeeper allow add 192.0.2.0/24 \\\n  --comment \"a # b | c\"\n\
                  gatekeeper man | sudo tee /etc/x > /dev/null && echo 'a;b'; true\n```\n\
                  ```\nnot a command\n```\n";
        let got = lines(md);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].number, 5);
        assert_eq!(got[0].segments[0].words, ["cargo", "xtask", "demo"]);
        assert_eq!(got[1].number, 6);
        assert_eq!(
            got[1].segments[0].words,
            [
                "gatekeeper",
                "allow",
                "add",
                "192.0.2.0/24",
                "--comment",
                "a # b | c"
            ]
        );
        let texts: Vec<&str> = got[2].segments.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "gatekeeper man",
                "tee /etc/x > /dev/null",
                "echo 'a;b'",
                "true"
            ]
        );
        assert_eq!(got[2].separators, ["|", "&&", ";"]);
        assert_eq!(
            got[2].shell_text(),
            "gatekeeper man | tee /etc/x > /dev/null && echo 'a;b' ; true"
        );
    }

    #[test]
    fn optional_parts_placeholders_and_paths() {
        assert_eq!(
            variants("gatekeeper detach [--iface IF]"),
            ["gatekeeper detach", "gatekeeper detach --iface IF"]
        );
        assert_eq!(
            variants("x list [--json]  # y"),
            ["x list # y", "x list --json # y"]
        );
        let text = substitute("q --config FILE show ID --comment 'NOT ID'", |n| {
            Ok(format!("<{n}>"))
        })
        .expect("known placeholders");
        assert_eq!(text, "q --config <FILE> show <ID> --comment 'NOT ID'");
        assert!(substitute("smtp-relay completions SHELL", |n| Ok(n.into())).is_err());
        assert_eq!(
            rewrite_paths(
                "x --config /etc/a.toml spool_dir = \"/var/spool\" /usr/local/sbin/g /tmp/etc/",
                Path::new("/r")
            ),
            "x --config /r/etc/a.toml spool_dir = \"/r/var/spool\" /r/usr/local/sbin/g /tmp/etc/"
        );
    }

    fn plan_error(block: &str) -> String {
        let markdown = readme().expect("README.md") + &format!("\n```sh\n{block}\n```\n");
        match plan(&markdown) {
            Ok(_) => panic!("`{block}` was accepted"),
            Err(err) => format!("{err:#}"),
        }
    }

    #[test]
    fn a_command_nobody_runs_fails() {
        for (block, why) in [
            ("gatekeeper frobnicate", "not a subcommand the sandbox runs"),
            ("sudo frobctl --now", "not in the PROGRAMS table"),
            ("cargo xtask fuzz", "is not covered"),
            (
                "smtp-relay queue --config /etc/x show MSGID",
                "looks like a placeholder",
            ),
            (
                "echo x | gatekeeper reboot",
                "not a subcommand the sandbox runs",
            ),
        ] {
            let err = plan_error(block);
            assert!(err.contains(why), "{block}: {err}");
            assert!(err.contains(&format!(": {block}\n")), "{block}: {err}");
        }
    }

    #[test]
    fn the_readme_parses() {
        let planned = plan(&readme().expect("README.md")).expect("every command classified");
        assert!(planned.iter().any(|p| p.ours().is_some()));
    }
}
