//! Parses one SMTP command line (CRLF already removed) into a [`Command`].
//! Pure and bounded: the caller limits the line length.

use crate::address::{self, AddressError, Path};

/// An ESMTP parameter on MAIL or RCPT (`SIZE=1000`, `BODY=8BITMIME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Uppercased keyword.
    pub key: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        path: Path,
        params: Vec<Param>,
    },
    Rcpt {
        path: Path,
        params: Vec<Param>,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// Known verbs we deliberately do not implement (502).
    NotImplemented(String),
}

/// Why a line is not a usable command; the session maps each to a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unrecognized command")]
    Unknown,
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    #[error("bad address: {0}")]
    Address(#[from] AddressError),
    /// Longer than 512 octets; the reader dropped it.
    #[error("line too long")]
    LineTooLong,
}

/// Parses a command line without its line ending.
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let (verb, arg) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    if !verb.is_ascii() {
        return Err(CommandError::Unknown);
    }
    let verb = String::from_utf8_lossy(verb).to_ascii_uppercase();
    let is_path_cmd = verb == "MAIL" || verb == "RCPT";
    let arg = match std::str::from_utf8(arg) {
        Ok(a) if a.is_ascii() => a,
        // Non-ASCII in an address means SMTPUTF8, which we do not offer.
        _ if is_path_cmd => return Err(AddressError::NonAscii.into()),
        _ => return Err(CommandError::Syntax("non-ASCII argument")),
    };
    if arg.bytes().any(|b| b.is_ascii_control()) {
        return Err(CommandError::Syntax("control character in argument"));
    }
    let arg_trimmed = arg.trim_matches(' ');
    let no_args = |cmd: Command| {
        if arg_trimmed.is_empty() {
            Ok(cmd)
        } else {
            Err(CommandError::Syntax("no parameters allowed"))
        }
    };
    match verb.as_str() {
        "EHLO" => Ok(Command::Ehlo(domain_arg(arg_trimmed)?)),
        "HELO" => Ok(Command::Helo(domain_arg(arg_trimmed)?)),
        "MAIL" => {
            let (path, params) = path_arg(arg, "FROM:")?;
            Ok(Command::Mail { path, params })
        }
        "RCPT" => {
            let (path, params) = path_arg(arg, "TO:")?;
            Ok(Command::Rcpt { path, params })
        }
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        "STARTTLS" => no_args(Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" if arg_trimmed.is_empty() => Err(CommandError::Syntax("VRFY needs an argument")),
        "VRFY" => Ok(Command::Vrfy),
        "AUTH" => {
            let mut words = arg_trimmed.split(' ').filter(|w| !w.is_empty());
            let mechanism = words
                .next()
                .ok_or(CommandError::Syntax("AUTH needs a mechanism"))?
                .to_ascii_uppercase();
            let initial = words.next().map(str::to_owned);
            if words.next().is_some() {
                return Err(CommandError::Syntax("too many AUTH arguments"));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        "EXPN" | "TURN" | "ETRN" | "BDAT" | "SEND" | "SOML" | "SAML" | "ATRN" => {
            Ok(Command::NotImplemented(verb))
        }
        _ => Err(CommandError::Unknown),
    }
}

/// The EHLO/HELO argument: a host name or an address literal. Checked
/// strictly because it ends up in the Received header.
fn domain_arg(arg: &str) -> Result<String, CommandError> {
    if arg.is_empty() {
        return Err(CommandError::Syntax("hostname required"));
    }
    let literal_ok = arg.starts_with('[')
        && arg.ends_with(']')
        && arg.len() > 2
        && arg[1..arg.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b':');
    let name = arg.strip_suffix('.').unwrap_or(arg);
    let name_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if literal_ok || name_ok {
        Ok(arg.to_owned())
    } else {
        Err(CommandError::Syntax("invalid hostname"))
    }
}

/// `FROM:<path> params` / `TO:<path> params`.
fn path_arg(arg: &str, keyword: &str) -> Result<(Path, Vec<Param>), CommandError> {
    let head = arg.get(..keyword.len()).unwrap_or("");
    if !head.eq_ignore_ascii_case(keyword) {
        return Err(CommandError::Syntax(
            "expected FROM:<address> or TO:<address>",
        ));
    }
    // Tolerate `FROM: <a@b>`: common client behaviour, harmless.
    let rest = arg[keyword.len()..].trim_start_matches(' ');
    let (path, rest) = address::parse_path(rest)?;
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(CommandError::Syntax("garbage after address"));
    }
    let params = rest
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let (key, value) = match w.split_once('=') {
                Some((k, v)) => (k, Some(v.to_owned())),
                None => (w, None),
            };
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(CommandError::Syntax("bad parameter"));
            }
            Ok(Param {
                key: key.to_ascii_uppercase(),
                value,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((path, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, CommandError> {
        parse(s.as_bytes())
    }

    #[test]
    fn simple_verbs_case_insensitive() {
        assert_eq!(
            p("ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(
            p("HELO [192.0.2.1]"),
            Ok(Command::Helo("[192.0.2.1]".into()))
        );
        assert_eq!(p("data"), Ok(Command::Data));
        assert_eq!(p("RSET"), Ok(Command::Rset));
        assert_eq!(p("QuIt"), Ok(Command::Quit));
        assert_eq!(p("NOOP anything"), Ok(Command::Noop));
        assert_eq!(p("HELP MAIL"), Ok(Command::Help));
        assert_eq!(p("VRFY alice"), Ok(Command::Vrfy));
        assert_eq!(p("STARTTLS"), Ok(Command::StartTls));
        assert_eq!(p("EXPN list"), Ok(Command::NotImplemented("EXPN".into())));
        assert_eq!(
            p("BDAT 10 LAST"),
            Ok(Command::NotImplemented("BDAT".into()))
        );
    }

    #[test]
    fn errors() {
        assert_eq!(p("FOO"), Err(CommandError::Unknown));
        assert_eq!(p(""), Err(CommandError::Unknown));
        assert!(matches!(p("EHLO"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("EHLO bad(name)"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("DATA now"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("STARTTLS x"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("VRFY"), Err(CommandError::Syntax(_))));
        assert!(matches!(
            p("MAIL <a@b.example>"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<a@b.example>x"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            p("MAIL FROM:a@b.example"),
            Err(CommandError::Address(_))
        ));
        assert!(matches!(p("AUTH"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("NOOP \x01"), Err(CommandError::Syntax(_))));
        assert_eq!(
            parse("RCPT TO:<j\u{f6}rg@example.org>".as_bytes()),
            Err(CommandError::Address(AddressError::NonAscii))
        );
        assert_eq!(
            parse(b"RCPT TO:<\xff@example.org>"),
            Err(CommandError::Address(AddressError::NonAscii))
        );
    }

    #[test]
    fn mail_and_rcpt_with_params() {
        let Ok(Command::Mail { path, params }) =
            p("MAIL FROM:<a@b.example> SIZE=1000 body=8BITMIME")
        else {
            panic!("MAIL did not parse");
        };
        assert_eq!(path.address("x"), "a@b.example");
        assert_eq!(
            params,
            vec![
                Param {
                    key: "SIZE".into(),
                    value: Some("1000".into())
                },
                Param {
                    key: "BODY".into(),
                    value: Some("8BITMIME".into())
                },
            ]
        );
        assert!(matches!(
            p("mail from: <>"),
            Ok(Command::Mail {
                path: Path::Null,
                ..
            })
        ));
        assert!(matches!(
            p("RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt {
                path: Path::Postmaster,
                ..
            })
        ));
        assert!(matches!(
            p("MAIL FROM:<> SMTPUTF8"),
            Ok(Command::Mail { .. })
        ));
    }

    #[test]
    fn auth_forms() {
        assert_eq!(
            p("AUTH plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            })
        );
        assert_eq!(
            p("AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
        assert!(matches!(p("AUTH PLAIN a b"), Err(CommandError::Syntax(_))));
    }
}
