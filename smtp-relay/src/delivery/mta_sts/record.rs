//! The `_mta-sts.<domain>` TXT record (RFC 8461 3.1): `v=STSv1; id=<1-32 alphanumerics>;`.
//! Only the id matters to a sender: a new id means a new policy to fetch.

/// The policy id of the record, `None` when it is not a valid STSv1 record.
pub fn policy_id(txt: &str) -> Option<String> {
    let mut fields = txt.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next()? != "v=STSv1" {
        return None;
    }
    let mut id = None;
    for field in fields {
        if let Some(value) = field.strip_prefix("id=") {
            let ok = !value.is_empty()
                && value.len() <= 32
                && value.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok {
                return None;
            }
            id.get_or_insert_with(|| value.to_owned());
        }
    }
    id
}

/// The id from the TXT strings of `_mta-sts.<domain>`: records not starting with `v=STSv1` are
/// ignored; more than one STSv1 record, or none valid, means no policy (RFC 8461 3.1).
pub fn id_from_records<'a>(records: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let sts: Vec<&str> = records
        .into_iter()
        .filter(|r| r.starts_with("v=STSv1"))
        .collect();
    match sts.as_slice() {
        [one] => policy_id(one),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(
            policy_id("v=STSv1; id=20160831085700Z;").as_deref(),
            Some("20160831085700Z")
        );
        assert_eq!(policy_id("v=STSv1;id=abc").as_deref(), Some("abc"));
        assert_eq!(policy_id("v=STSv1; id=a-b;"), None);
        assert_eq!(policy_id("v=STSv2; id=abc;"), None);
        assert_eq!(policy_id("v=STSv1;"), None);
        assert_eq!(
            id_from_records(["v=spf1 -all", "v=STSv1; id=x1;"]).as_deref(),
            Some("x1")
        );
        assert_eq!(
            id_from_records(["v=STSv1; id=x1;", "v=STSv1; id=x2;"]),
            None
        );
    }
}
