//! Pinned state left by another build of gatekeeper may not fit this build's program: before the
//! pinned maps are reused (by the daemon or the CLI), their kernel-side shape is compared with the
//! map definitions of the embedded eBPF object.

use std::{path::Path, sync::OnceLock};

use anyhow::{Context as _, bail};
use aya::maps::MapData;

use gatekeeper_common::map_names;

use crate::object::{PINNED_MAPS, PROGRAM_OBJECT};

/// Maps whose capacity the loader sets from the config rather than taking from the object.
const SIZED_AT_LOAD: [&str; 11] = [
    map_names::DIR24,
    map_names::DIR24_LONG,
    map_names::ENTRY,
    map_names::SUMMARY_V4,
    map_names::BANS_V4,
    map_names::BANS_V6,
    map_names::BAN_SLOTS_V4,
    map_names::BAN_SLOTS_V6,
    map_names::BLOCKED_REFS,
    map_names::RATE_V4,
    map_names::RATE_V6,
];

/// The shape of one map: what must match for pinned state to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// The shapes this binary's eBPF object defines, by map name.
fn expected() -> anyhow::Result<&'static [(String, MapShape)]> {
    static SHAPES: OnceLock<Result<Vec<(String, MapShape)>, String>> = OnceLock::new();
    let shapes = SHAPES.get_or_init(|| {
        let object = aya_obj::Object::parse(PROGRAM_OBJECT).map_err(|e| e.to_string())?;
        Ok(object
            .maps
            .iter()
            .map(|(name, map)| {
                (
                    name.clone(),
                    MapShape {
                        map_type: map.map_type(),
                        key_size: map.key_size(),
                        value_size: map.value_size(),
                        max_entries: map.max_entries(),
                    },
                )
            })
            .collect())
    });
    match shapes {
        Ok(shapes) => Ok(shapes),
        Err(e) => bail!("parsing the embedded eBPF object failed: {e}"),
    }
}

/// The shape the kernel reports for an open map.
pub fn shape_of(map: &MapData) -> anyhow::Result<MapShape> {
    let info = map.info().context("reading the map's kernel info")?;
    let map_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
    Ok(MapShape {
        map_type,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    })
}

/// Fails with a clear message if the pinned map `name` (opened from `dir`) does not have the shape
/// this binary's program expects.
pub fn check_map(dir: &Path, name: &str, map: &MapData) -> anyhow::Result<()> {
    let Some((_, want)) = expected()?.iter().find(|(n, _)| n == name) else {
        bail!("this build's eBPF object has no map {name}");
    };
    let got = shape_of(map)?;
    let mut want = *want;
    if SIZED_AT_LOAD.contains(&name) {
        // Chosen by the config (ipv4_lookup, ipv4_dir24_blocks), not by the object.
        want.max_entries = got.max_entries;
    }
    if let Some(problem) = difference(&got, &want) {
        bail!(
            "pinned state in {} is from an incompatible version of gatekeeper: map {name} {problem}; \
             run `gatekeeper detach --config FILE` (it removes the old program and its pins) and start again",
            dir.display()
        );
    }
    Ok(())
}

/// Checks every map pinned under `dir` (missing pins are not an error: the loader creates them).
pub fn check_pin_dir(dir: &Path) -> anyhow::Result<()> {
    for name in PINNED_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let map = MapData::from_pin(&path)
            .with_context(|| format!("opening the pinned map {}", path.display()))?;
        check_map(dir, name, &map)?;
    }
    Ok(())
}

/// What differs between a pinned map and the expected shape, in words.
pub fn difference(got: &MapShape, want: &MapShape) -> Option<String> {
    let fields = [
        ("type", got.map_type, want.map_type),
        ("key size", got.key_size, want.key_size),
        ("value size", got.value_size, want.value_size),
        ("max entries", got.max_entries, want.max_entries),
    ];
    let problems: Vec<String> = fields
        .iter()
        .filter(|(_, g, w)| g != w)
        .map(|(what, g, w)| format!("has {what} {g}, this gatekeeper expects {w}"))
        .collect();
    (!problems.is_empty()).then(|| problems.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_object_defines_every_pinned_map() {
        let shapes = expected().expect("object parses");
        for name in PINNED_MAPS {
            assert!(shapes.iter().any(|(n, _)| n == name), "{name}");
        }
    }

    #[test]
    fn differences_are_named() {
        let want = MapShape {
            map_type: 11,
            key_size: 8,
            value_size: 8,
            max_entries: 1024,
        };
        assert_eq!(difference(&want, &want), None);
        let got = MapShape {
            value_size: 16,
            max_entries: 512,
            ..want
        };
        assert_eq!(
            difference(&got, &want).as_deref(),
            Some(
                "has value size 16, this gatekeeper expects 8, has max entries 512, this gatekeeper expects 1024"
            )
        );
    }
}
