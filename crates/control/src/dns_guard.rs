//! The DNS change guard at push: a version whose `[dns]` data removes more than
//! `dns.max_removed_share` of the POPs or answer addresses of the latest stored version, or
//! removes the `[dns]` table altogether, is refused unless the push is forced
//! ([`firebreak_config::dns::removal_check`]; AWS, October 2025: automation published an
//! empty DNS record). A forced push is stored and audited with the reason it overrode.
//!
//! What is judged against what:
//! - every push through the API (`POST /v1/versions`, `firebreak config push`): against the
//!   latest stored version, whether or not the fleet ever ran it — each step is judged, so
//!   emptying DNS takes either a forced push or many visible ones;
//! - a kill switch (`firebreak switch`) is not judged: it flips one switch in the running
//!   version's document, whose `[dns]` it keeps unchanged;
//! - a rollback creates no version: it returns the fleet to a version it already ran (and
//!   whose push was judged), and an operator rolling back in an incident must not be stopped.

use firebreak_config::dns::{removal_check, DnsConfig};
use serde::Deserialize;

/// The `[dns]` table of a fleet document, read into the very type a push validates
/// ([`DnsConfig`], with its defaults); the rest of the document is not looked at, so a
/// version stored under older validation rules is still read.
pub(crate) fn dns_of_fleet(fleet: &str) -> Result<Option<DnsConfig>, String> {
    #[derive(Deserialize)]
    struct FleetDns {
        #[serde(default)]
        dns: Option<DnsConfig>,
    }
    toml::from_str::<FleetDns>(fleet)
        .map(|f| f.dns)
        .map_err(|e| e.message().trim().to_owned())
}

/// Judges the `[dns]` data `new` of a push against `old`, that of version `from`: `Err` with
/// the reason when it removes too much. No `[dns]` before: nothing to compare. The same data
/// again: nothing removed (even data that would not pass on its own, so that one bad version
/// does not block every later push).
pub(crate) fn judge(
    from: u64,
    old: Option<&DnsConfig>,
    new: Option<&DnsConfig>,
) -> Result<(), String> {
    match (old, new) {
        (None, _) => Ok(()),
        (Some(old), Some(new)) if old == new => Ok(()),
        (Some(old), None) => Err(format!(
            "it removes the whole [dns] table of version {from} ({} POPs): the DNS servers would have no data",
            old.pops.len()
        )),
        (Some(old), Some(new)) => {
            removal_check(old, new).map_err(|why| format!("compared with version {from}, its DNS data {why}"))
        }
    }
}

/// The error answered when the guard refuses a push that is not forced.
pub(crate) fn refusal(why: &str) -> String {
    format!(
        "DNS change refused: {why}; nothing was stored. To store it anyway, push with force (`firebreak config push --force`, \"force\": true in the request); the audit log records it"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fleet(pops: &[&str]) -> String {
        let mut doc = String::from(
            "[cache]\nmax_bytes = 1\n[dns]\nzone = \"cdn.example\"\ndefault_region = \"eu\"\n",
        );
        for (i, p) in pops.iter().enumerate() {
            doc.push_str(&format!(
                "[[dns.pop]]\nname = \"{p}\"\nanswers = [\"192.0.2.{}\"]\n",
                i + 1
            ));
        }
        doc
    }

    #[test]
    fn reads_only_the_dns_table_of_a_fleet_document() {
        let d = dns_of_fleet(&fleet(&["ams", "fra"])).unwrap().unwrap();
        assert_eq!(d.pops.len(), 2);
        assert_eq!(d.max_removed_share, 0.5, "the default applies");
        assert_eq!(dns_of_fleet("[cache]\nmax_bytes = 1\n").unwrap(), None);
        assert!(dns_of_fleet("[dns]\nzone = 7\n").is_err());
    }

    #[test]
    fn judges_removals_against_the_previous_version() {
        let three = dns_of_fleet(&fleet(&["ams", "fra", "sin"])).unwrap();
        let one = dns_of_fleet(&fleet(&["ams"])).unwrap();
        let two = dns_of_fleet(&fleet(&["ams", "fra"])).unwrap();
        assert_eq!(judge(1, None, one.as_ref()), Ok(()), "nothing to compare");
        assert_eq!(judge(1, three.as_ref(), two.as_ref()), Ok(()));
        let e = judge(4, three.as_ref(), one.as_ref()).unwrap_err();
        assert!(e.contains("version 4"), "{e}");
        assert!(e.contains("removes 2 of 3 POPs (fra, sin)"), "{e}");
        let e = judge(4, three.as_ref(), None).unwrap_err();
        assert!(e.contains("whole [dns] table"), "{e}");
        // The same data again passes, even data the guard would refuse on its own.
        let mut empty = three.clone().unwrap();
        empty.pops.clear();
        assert_eq!(judge(1, Some(&empty), Some(&empty)), Ok(()));
        assert!(refusal("x").contains("--force"));
    }
}
