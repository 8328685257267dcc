//! The rows `allow list` and `deny list` print: the config's entries in file order with their live
//! hit counters, then the live entries nothing wanted (left by an earlier config until the
//! daemon's next sync). File and live state are matched through one sorted copy of the live
//! entries (a binary search per file entry), and rows are written as they are made.

use std::{
    io::{self, Write},
    path::Path,
};

use gatekeeper::sync::sorted_difference;
use ipnet::IpNet;

/// One printed entry.
pub struct Row<'a> {
    pub net: IpNet,
    pub comment: Option<&'a str>,
    /// Where the entry comes from: `file`, a DNS-derived entry's source (`spf:partner.example`,
    /// `mx:NAME`, `a:NAME`), `fleet`; `-` for a live entry nothing wanted.
    pub source: &'a str,
    pub in_config: bool,
    /// `None` when the filter is not loaded; `Some(None)` when loaded but the entry is not live.
    pub hits: Option<Option<u64>>,
}

/// The live entries of a list (`None`: the filter is not loaded), sorted by network.
pub struct Live(Option<Vec<(IpNet, u64)>>);

impl Live {
    pub fn new(entries: Option<Vec<(IpNet, u64)>>) -> Live {
        Live(entries.map(|mut entries| {
            entries.sort_unstable_by_key(|(net, _)| *net);
            entries
        }))
    }

    pub fn is_loaded(&self) -> bool {
        self.0.is_some()
    }

    fn hits_of(&self, net: IpNet) -> Option<Option<u64>> {
        self.0.as_ref().map(|live| {
            live.binary_search_by_key(&net, |(n, _)| *n)
                .ok()
                .map(|at| live[at].1)
        })
    }

    /// The rows: `entries` (the config's, in file order), then live entries not in `wanted`
    /// (sorted: what the daemon would keep live).
    pub fn rows<'a>(
        &'a self,
        entries: impl Iterator<Item = (IpNet, Option<&'a str>, &'a str)> + 'a,
        wanted: &'a [IpNet],
        live_nets: &'a [IpNet],
    ) -> impl Iterator<Item = Row<'a>> + 'a {
        let in_file = entries.map(|(net, comment, source)| Row {
            net,
            comment,
            source,
            in_config: true,
            hits: self.hits_of(net),
        });
        let live_only = sorted_difference(live_nets, wanted).map(|net| Row {
            net,
            comment: None,
            source: "-",
            in_config: false,
            hits: self.hits_of(net),
        });
        in_file.chain(live_only)
    }

    /// The live networks, sorted (for [`Live::rows`]).
    pub fn nets(&self) -> Vec<IpNet> {
        self.0.iter().flatten().map(|(net, _)| *net).collect()
    }
}

/// `entries` with their source.
pub fn tagged<'a>(
    entries: impl Iterator<Item = (IpNet, Option<&'a str>)> + 'a,
    source: &'a str,
) -> impl Iterator<Item = (IpNet, Option<&'a str>, &'a str)> + 'a {
    entries.map(move |(net, comment)| (net, comment, source))
}

/// The start of a list's JSON object, up to the opening bracket of its `entries` array.
pub fn write_json_head(out: &mut impl Write, config: &Path, loaded: bool) -> io::Result<()> {
    write!(
        out,
        "{{\"config\":{},\"loaded\":{loaded},\"entries\":[",
        serde_json::to_string(&config.display().to_string())?,
    )
}

/// `rows` as the elements of a JSON array, one a line (the brackets are the caller's).
pub fn write_json<'a>(out: &mut impl Write, rows: impl Iterator<Item = Row<'a>>) -> io::Result<()> {
    for (i, row) in rows.enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(
            &mut *out,
            &serde_json::json!({
                "cidr": row.net.to_string(),
                "comment": row.comment,
                "source": row.source,
                "in_config": row.in_config,
                "live": row.hits.map(|h| h.is_some()),
                "hits": row.hits.flatten(),
            }),
        )?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// `rows` as a table; `live_only` is the comment of a live entry nothing wanted.
pub fn write_table<'a>(
    out: &mut impl Write,
    rows: impl Iterator<Item = Row<'a>>,
    live_only: &str,
) -> io::Result<()> {
    writeln!(
        out,
        "{:<44} {:>12}  {:<24} COMMENT",
        "CIDR", "HITS", "SOURCE"
    )?;
    for row in rows {
        let hits = match row.hits {
            Some(Some(n)) => n.to_string(),
            Some(None) => "NOT LIVE".into(),
            None => "-".into(),
        };
        let comment = if row.in_config {
            row.comment.unwrap_or("")
        } else {
            live_only
        };
        writeln!(
            out,
            "{:<44} {hits:>12}  {:<24} {comment}",
            row.net.to_string(),
            row.source
        )?;
    }
    Ok(())
}
