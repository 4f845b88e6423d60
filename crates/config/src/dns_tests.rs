//! Validation of the DNS data (`[dns]`, `[service.dns]`) and the change guard.

use crate::dns::*;
use crate::*;

/// A valid fleet document with DNS data: two POPs, two regions, one service.
const FLEET: &str = r#"[[service]]
name = "demo"
hosts = ["demo.example"]
[service.origin]
servers = [{ addr = "127.0.0.1:9000" }]
[service.dns]
fallback_cname = "demo.backup-cdn.example"

[dns]
zone = "cdn.example."
default_region = "eu"

[[dns.ns]]
name = "ns1.cdn.example"
addrs = ["192.0.2.53"]

[[dns.ns]]
name = "ns.other-provider.example"

[[dns.pop]]
name = "ams"
answers = ["192.0.2.10", "2001:db8::10"]
checks = ["http://192.0.2.10:9080/healthz"]

[[dns.pop]]
name = "nyc"
answers = ["192.0.2.20"]
weight = 2

[[dns.region]]
name = "eu"
prefixes = ["198.51.100.0/24", "2001:db8:100::/48"]
countries = ["NL", "DE"]
continents = ["EU"]
pops = ["ams", "nyc"]

[[dns.region]]
name = "us"
prefixes = ["203.0.113.0/24"]
pops = [["nyc", "ams"]]
"#;

fn parse(text: &str) -> Result<ValidConfig, ConfigRejected> {
    parse_managed_str("fleet.toml", text)
}

fn with(from: &str, to: &str) -> String {
    assert!(FLEET.contains(from), "{from}");
    FLEET.replacen(from, to, 1)
}

/// Asserts that `text` is refused with an error on `field` located where `needle` starts
/// (its last occurrence: the changed text; or where `^` in it is) whose message contains
/// `message`.
#[track_caller]
fn refused_at(text: &str, field: &str, needle: &str, message: &str) {
    let e = match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    };
    let mark = needle.find('^').unwrap_or(0);
    let needle = needle.replacen('^', "", 1);
    let offset = mark
        + text
            .rfind(&needle)
            .unwrap_or_else(|| panic!("`{needle}` not in text"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    let found = e.errors.iter().find(|err| err.field == field);
    let Some(err) = found else {
        panic!("no error on {field}: {e}");
    };
    assert!(err.message.contains(message), "{err}");
    assert_eq!((err.line, err.column), (line, column), "{err}");
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("fleet.toml:{line}:{column}: {field}: ")),
        "{shown}"
    );
}

#[test]
fn the_example_dns_data_is_valid() {
    let c = parse(FLEET).unwrap();
    let dns = c.dns.as_ref().unwrap();
    assert_eq!(dns.pops.len(), 2);
    assert_eq!(dns.ttl_s, 30);
    assert_eq!(dns.regions[1].pops[0].pops(), ["nyc", "ams"]);
}

#[test]
fn a_zone_that_is_not_a_dns_name_is_refused() {
    refused_at(
        &with("zone = \"cdn.example.\"", "zone = \"cdn..example\""),
        "dns.zone",
        "\"cdn..example\"",
        "empty label",
    );
    let long = format!("zone = \"{}.example\"", "a".repeat(64));
    refused_at(
        &with("zone = \"cdn.example.\"", &long),
        "dns.zone",
        "\"aaaa",
        "longer than 63",
    );
    let too_long = format!("zone = \"{}example\"", "abcdefghi.".repeat(25));
    refused_at(
        &with("zone = \"cdn.example.\"", &too_long),
        "dns.zone",
        "\"abcdefghi.",
        "at most 253",
    );
    refused_at(
        &with("zone = \"cdn.example.\"", "zone = \"cdn_x.example\""),
        "dns.zone",
        "\"cdn_x",
        "not a DNS name",
    );
    refused_at(
        &with("zone = \"cdn.example.\"", "zone = \"-cdn.example\""),
        "dns.zone",
        "\"-cdn",
        "start or end",
    );
}

#[test]
fn a_default_region_that_is_not_a_region_is_refused() {
    refused_at(
        &with("default_region = \"eu\"", "default_region = \"asia\""),
        "dns.default_region",
        "\"asia\"",
        "not a region",
    );
}

#[test]
fn ttls_out_of_range_are_refused() {
    refused_at(
        &with("default_region", "ttl_s = 0\ndefault_region"),
        "dns.ttl_s",
        "0\ndefault",
        "between 1 and 86400",
    );
    refused_at(
        &with("default_region", "negative_ttl_s = 86401\ndefault_region"),
        "dns.negative_ttl_s",
        "86401",
        "between 1 and 86400",
    );
    refused_at(
        &with("default_region", "zone_ttl_s = 604801\ndefault_region"),
        "dns.zone_ttl_s",
        "604801",
        "between 1 and 604800",
    );
    let ok = with("default_region", "zone_ttl_s = 604800\ndefault_region");
    assert!(parse(&ok).is_ok());
}

#[test]
fn a_removed_share_outside_zero_to_one_is_refused() {
    refused_at(
        &with("default_region", "max_removed_share = 1.5\ndefault_region"),
        "dns.max_removed_share",
        "1.5",
        "between 0.0 and 1.0",
    );
    refused_at(
        &with("default_region", "max_removed_share = nan\ndefault_region"),
        "dns.max_removed_share",
        "nan",
        "between 0.0 and 1.0",
    );
}

#[test]
fn check_timings_and_thresholds_out_of_range_are_refused() {
    let checks = |body: &str| {
        with(
            "\n[[dns.ns]]",
            &format!("\n[dns.checks]\n{body}\n\n[[dns.ns]]"),
        )
    };
    refused_at(
        &checks("interval_ms = 99"),
        "dns.checks.interval_ms",
        "interval_ms = ^99",
        "between 100 and 600000",
    );
    refused_at(
        &checks("interval_ms = 600001"),
        "dns.checks.interval_ms",
        "600001",
        "between 100 and 600000",
    );
    refused_at(
        &checks("timeout_ms = 50"),
        "dns.checks.timeout_ms",
        "timeout_ms = ^50",
        "between 100 and 600000",
    );
    refused_at(
        &checks("interval_ms = 1000\ntimeout_ms = 1000"),
        "dns.checks.timeout_ms",
        "timeout_ms = ^1000",
        "shorter than interval_ms",
    );
    refused_at(
        &checks("unhealthy_after = 0"),
        "dns.checks.unhealthy_after",
        "unhealthy_after = ^0",
        "between 1 and 100",
    );
    refused_at(
        &checks("healthy_after = 101"),
        "dns.checks.healthy_after",
        "101",
        "between 1 and 100",
    );
    assert!(parse(&checks("interval_ms = 100\ntimeout_ms = 99")).is_err());
    assert!(parse(&checks("interval_ms = 200\ntimeout_ms = 100")).is_ok());
}

#[test]
fn a_zone_without_name_servers_is_refused() {
    let text = FLEET
        .replace(
            "[[dns.ns]]\nname = \"ns1.cdn.example\"\naddrs = [\"192.0.2.53\"]\n\n",
            "",
        )
        .replace("[[dns.ns]]\nname = \"ns.other-provider.example\"\n\n", "");
    refused_at(&text, "dns", "[dns]", "at least one [[dns.ns]]");
}

#[test]
fn name_servers_must_be_unique_valid_and_in_zone_ones_need_glue() {
    refused_at(
        &with(
            "name = \"ns.other-provider.example\"",
            "name = \"NS1.cdn.example.\"",
        ),
        "dns.ns[1].name",
        "\"NS1",
        "already dns.ns[0]",
    );
    refused_at(
        &with("name = \"ns.other-provider.example\"", "name = \"ns 2\""),
        "dns.ns[1].name",
        "\"ns 2\"",
        "not a DNS name",
    );
    refused_at(
        &with("addrs = [\"192.0.2.53\"]", "addrs = []"),
        "dns.ns[0].addrs",
        "[]",
        "needs addrs (glue)",
    );
    refused_at(
        &with(
            "name = \"ns.other-provider.example\"",
            "name = \"ns.other-provider.example\"\naddrs = [\"192.0.2.54\"]",
        ),
        "dns.ns[1].addrs",
        "[\"192.0.2.54\"]",
        "outside the zone",
    );
    refused_at(
        &with("name = \"ns1.cdn.example\"", "name = \"cdn.example\""),
        "dns.ns[0].name",
        "\"cdn.example\"",
        "apex",
    );
    refused_at(
        &with(
            "addrs = [\"192.0.2.53\"]",
            "addrs = [\"192.0.2.53\", \"192.0.2.53\"]",
        ),
        "dns.ns[0].addrs[1]",
        "\"192.0.2.53\"]",
        "listed twice",
    );
}

#[test]
fn a_pop_with_no_addresses_is_refused() {
    refused_at(
        &with("answers = [\"192.0.2.20\"]", "answers = []"),
        "dns.pop[1].answers",
        "[]",
        "a POP with no addresses",
    );
}

#[test]
fn pops_must_have_unique_valid_names_unique_answers_and_bounded_weights() {
    refused_at(
        &with("name = \"nyc\"", "name = \"ams\""),
        "dns.pop[1].name",
        "\"ams\"\nanswers = [\"192.0.2.20\"]",
        "already dns.pop[0]",
    );
    refused_at(
        &with("name = \"nyc\"", "name = \"New York\""),
        "dns.pop[1].name",
        "\"New York\"",
        "not a valid POP name",
    );
    refused_at(
        &with(
            "answers = [\"192.0.2.20\"]",
            "answers = [\"192.0.2.20\", \"192.0.2.20\"]",
        ),
        "dns.pop[1].answers[1]",
        "\"192.0.2.20\"]",
        "listed twice",
    );
    refused_at(
        &with("weight = 2", "weight = 0"),
        "dns.pop[1].weight",
        "0\n",
        "between 1 and 1000",
    );
    refused_at(
        &with("weight = 2", "weight = 1001"),
        "dns.pop[1].weight",
        "1001",
        "between 1 and 1000",
    );
    let many: Vec<String> = (1..=17).map(|i| format!("\"192.0.2.{i}\"")).collect();
    refused_at(
        &with(
            "answers = [\"192.0.2.20\"]",
            &format!("answers = [{}]", many.join(", ")),
        ),
        "dns.pop[1].answers",
        "[\"192.0.2.1\",",
        "at most 16",
    );
}

#[test]
fn check_urls_must_be_http_with_host_and_port() {
    for (url, message) in [
        (
            "https://192.0.2.10:9443/healthz",
            "https checks are not supported yet",
        ),
        ("http://192.0.2.10/healthz", "explicit port"),
        ("http://192.0.2.10:0/healthz", "explicit port"),
        ("ftp://192.0.2.10:21/x", "must start with http://"),
        ("/healthz", "must start with http://"),
        ("http://user@192.0.2.10:80/", "user info"),
        ("http://bad_host:80/", "not an IP address or host name"),
        ("not a url", "not a URL"),
    ] {
        refused_at(
            &with(
                "checks = [\"http://192.0.2.10:9080/healthz\"]",
                &format!("checks = [\"{url}\"]"),
            ),
            "dns.pop[0].checks[0]",
            &format!("\"{url}\""),
            message,
        );
    }
    for ok in ["http://[2001:db8::10]:80/", "http://edge.ams.example:9080"] {
        let text = with(
            "checks = [\"http://192.0.2.10:9080/healthz\"]",
            &format!("checks = [\"{ok}\"]"),
        );
        assert!(parse(&text).is_ok(), "{ok}: {}", parse(&text).unwrap_err());
    }
    let nine: Vec<String> = (1..=9)
        .map(|i| format!("\"http://192.0.2.{i}:80/\""))
        .collect();
    refused_at(
        &with(
            "checks = [\"http://192.0.2.10:9080/healthz\"]",
            &format!("checks = [{}]", nine.join(", ")),
        ),
        "dns.pop[0].checks",
        "[\"http://192.0.2.1:80/\"",
        "at most 8",
    );
}

#[test]
fn a_region_with_no_pops_is_refused() {
    refused_at(
        &with("pops = [[\"nyc\", \"ams\"]]", "pops = []"),
        "dns.region[1].pops",
        "[]",
        "a region with no POPs",
    );
    refused_at(
        &with("pops = [[\"nyc\", \"ams\"]]", "pops = [\"nyc\", []]"),
        "dns.region[1].pops[1]",
        "[]]",
        "an empty tier",
    );
}

#[test]
fn regions_naming_unknown_or_repeated_pops_are_refused() {
    refused_at(
        &with("pops = [[\"nyc\", \"ams\"]]", "pops = [[\"nyc\", \"fra\"]]"),
        "dns.region[1].pops[0][1]",
        "\"fra\"",
        "unknown POP `fra`",
    );
    refused_at(
        &with(
            "pops = [[\"nyc\", \"ams\"]]",
            "pops = [\"nyc\", [\"ams\", \"nyc\"]]",
        ),
        "dns.region[1].pops[1][1]",
        "\"nyc\"]]",
        "listed twice in this region",
    );
    refused_at(
        &with("pops = [\"ams\", \"nyc\"]", "pops = [\"ams\", \"ams\"]"),
        "dns.region[0].pops[1]",
        "pops = [\"ams\", ^\"ams\"]",
        "listed twice in this region",
    );
}

#[test]
fn region_names_must_be_unique_and_valid() {
    refused_at(
        &with("name = \"us\"", "name = \"eu\""),
        "dns.region[1].name",
        "\"eu\"\nprefixes = [\"203",
        "already dns.region[0]",
    );
    refused_at(
        &with("name = \"us\"", "name = \"U S\""),
        "dns.region[1].name",
        "\"U S\"",
        "not a valid region name",
    );
}

#[test]
fn bad_cidrs_are_refused() {
    for (prefix, message) in [
        ("203.0.113.0", "not a CIDR prefix"),
        ("203.0.113.0/33", "prefix length must be 0 to 32"),
        ("2001:db8::/129", "prefix length must be 0 to 128"),
        ("203.0.113.300/24", "not an IP address"),
        ("203.0.113.1/24", "host bits set"),
        ("2001:db8::1/64", "host bits set"),
    ] {
        refused_at(
            &with(
                "prefixes = [\"203.0.113.0/24\"]",
                &format!("prefixes = [\"{prefix}\"]"),
            ),
            "dns.region[1].prefixes[0]",
            &format!("\"{prefix}\""),
            message,
        );
    }
}

#[test]
fn the_same_prefix_in_two_regions_is_an_overlap() {
    refused_at(
        &with(
            "prefixes = [\"203.0.113.0/24\"]",
            "prefixes = [\"198.51.100.0/24\"]",
        ),
        "dns.region[1].prefixes[0]",
        "\"198.51.100.0/24\"",
        "overlaps region `eu`",
    );
}

#[test]
fn the_same_prefix_twice_in_one_region_is_an_overlap() {
    refused_at(
        &with(
            "prefixes = [\"203.0.113.0/24\"]",
            "prefixes = [\"203.0.113.0/24\", \"203.0.113.0/24\"]",
        ),
        "dns.region[1].prefixes[1]",
        "\"203.0.113.0/24\"]",
        "listed twice",
    );
}

#[test]
fn a_prefix_inside_another_of_the_same_region_is_an_overlap() {
    // Listed after its container and before it: both orders are found.
    refused_at(
        &with(
            "prefixes = [\"203.0.113.0/24\"]",
            "prefixes = [\"203.0.0.0/16\", \"10.0.0.0/8\", \"203.0.113.128/25\"]",
        ),
        "dns.region[1].prefixes[2]",
        "\"203.0.113.128/25\"",
        "overlaps `203.0.0.0/16`",
    );
    refused_at(
        &with(
            "prefixes = [\"203.0.113.0/24\"]",
            "prefixes = [\"203.0.113.0/25\", \"203.0.112.0/23\"]",
        ),
        "dns.region[1].prefixes[0]",
        "\"203.0.113.0/25\"",
        "overlaps `203.0.112.0/23`",
    );
    refused_at(
        &with(
            "prefixes = [\"203.0.113.0/24\"]",
            "prefixes = [\"::/0\", \"2001:db8:200::/48\"]",
        ),
        "dns.region[1].prefixes[1]",
        "\"2001:db8:200::/48\"",
        "overlaps `::/0`",
    );
}

#[test]
fn a_more_specific_prefix_in_another_region_is_a_carve_out() {
    // eu holds 198.51.100.0/24; us takes its upper half and a /64 of eu's IPv6 block,
    // and adjacent prefixes in one region do not overlap.
    let text = with(
        "prefixes = [\"203.0.113.0/24\"]",
        "prefixes = [\"198.51.100.128/25\", \"2001:db8:100:1::/64\", \"203.0.113.0/25\", \"203.0.113.128/25\", \"0.0.0.0/0\"]",
    );
    // 0.0.0.0/0 contains nothing else of us... but it does contain 203.0.113.0/25: refused.
    assert!(parse(&text).is_err());
    let text = text.replace(", \"0.0.0.0/0\"", "");
    let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.dns.as_ref().unwrap().regions[1].prefixes.len(), 4);
}

#[test]
fn too_many_prefixes_in_all_are_refused() {
    let eu: Vec<String> = (0..50_001u32)
        .map(|i| format!("\"10.{}.{}.0/24\"", i >> 8 & 255, i & 255))
        .collect();
    let text = with(
        "prefixes = [\"198.51.100.0/24\", \"2001:db8:100::/48\"]",
        &format!("prefixes = [{}]", eu.join(",")),
    );
    let text = text.replacen(
        "prefixes = [\"203.0.113.0/24\"]",
        &format!("prefixes = [{}]", eu.join(",").replace("\"10.", "\"11.")),
        1,
    );
    // Over the file size limit long before the count limit: both bound the table.
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("limit is 1048576"), "{e}");
    // The count itself, without the file limit.
    let mut config = parse(FLEET).unwrap().get().clone();
    let dns = config.dns.as_mut().unwrap();
    for i in 0..=MAX_DNS_PREFIXES as u32 {
        dns.regions[0].prefixes.push(format!(
            "10.{}.{}.{}/32",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255
        ));
    }
    let problems = crate::validate::validate(&config, Mode::Managed);
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("at most 100000 prefixes")),
        "{:?}",
        problems.iter().map(|p| &p.message).collect::<Vec<_>>()
    );
}

#[test]
fn country_and_continent_codes_are_checked_and_placed_once() {
    refused_at(
        &with(
            "countries = [\"NL\", \"DE\"]",
            "countries = [\"NL\", \"de\"]",
        ),
        "dns.region[0].countries[1]",
        "\"de\"",
        "two upper-case letters",
    );
    refused_at(
        &with("countries = [\"NL\", \"DE\"]", "countries = [\"NLD\"]"),
        "dns.region[0].countries[0]",
        "\"NLD\"",
        "two upper-case letters",
    );
    refused_at(
        &with("continents = [\"EU\"]", "continents = [\"EUR\"]"),
        "dns.region[0].continents[0]",
        "\"EUR\"",
        "AF AN AS EU NA OC SA",
    );
    refused_at(
        &with(
            "pops = [[\"nyc\", \"ams\"]]",
            "countries = [\"DE\"]\ncontinents = [\"NA\", \"EU\"]\npops = [[\"nyc\", \"ams\"]]",
        ),
        "dns.region[1].countries[0]",
        "\"DE\"]\ncontinents",
        "already placed in region `eu`",
    );
    refused_at(
        &with(
            "pops = [[\"nyc\", \"ams\"]]",
            "continents = [\"NA\", \"EU\"]\npops = [[\"nyc\", \"ams\"]]",
        ),
        "dns.region[1].continents[1]",
        "\"EU\"]\npops",
        "already placed in region `eu`",
    );
}

#[test]
fn service_dns_without_a_dns_table_is_refused() {
    let start = FLEET.find("\n[dns]").unwrap();
    let text = &FLEET[..start];
    refused_at(
        text,
        "service[0].dns",
        "[service.dns]",
        "needs a [dns] table",
    );
}

#[test]
fn service_dns_names_must_be_unique_valid_and_not_a_name_server() {
    let second = "[[service]]\nname = \"other\"\nhosts = [\"other.example\"]\n[service.origin]\nservers = [{ addr = \"127.0.0.1:9000\" }]\n[service.dns]\n";
    let text = format!("{second}name = \"DEMO\"\n{FLEET}");
    // The second service (in file order the first) claims `demo` first.
    refused_at(
        &text,
        "service[1].dns",
        "[service.dns]",
        "already service[0]'s",
    );
    let text = format!("{FLEET}{second}name = \"ns1\"\n");
    refused_at(
        &text,
        "service[1].dns.name",
        "\"ns1\"",
        "name server dns.ns[0]",
    );
    let text = format!("{FLEET}{second}name = \"a..b\"\n");
    refused_at(&text, "service[1].dns.name", "\"a..b\"", "empty label");
    let text = format!("{FLEET}{second}name = \"other.\"\n");
    refused_at(
        &text,
        "service[1].dns.name",
        "\"other.\"",
        "without a trailing dot",
    );
    let text = format!(
        "{FLEET}{second}name = \"{}\"\n",
        "abcdefghi.".repeat(24) + "abc"
    );
    refused_at(&text, "service[1].dns.name", "\"abcdefghi", "at most 253");
    // The default name is the service name, which may hold '_' (not a DNS label).
    let text = format!(
        "{FLEET}{}",
        second.replace("name = \"other\"", "name = \"my_svc\"")
    );
    refused_at(
        &text,
        "service[1].dns",
        "[service.dns]",
        "set [service.dns] name",
    );
    // Two-label names are fine.
    let text = format!("{FLEET}{second}name = \"other.eu\"\n");
    assert!(parse(&text).is_ok(), "{}", parse(&text).unwrap_err());
}

#[test]
fn service_pops_must_be_known_and_listed_once() {
    refused_at(
        &with(
            "[service.dns]\n",
            "[service.dns]\npops = [\"ams\", \"fra\"]\n",
        ),
        "service[0].dns.pops[1]",
        "\"fra\"",
        "unknown POP `fra`",
    );
    refused_at(
        &with(
            "[service.dns]\n",
            "[service.dns]\npops = [\"ams\", \"ams\"]\n",
        ),
        "service[0].dns.pops[1]",
        "pops = [\"ams\", ^\"ams\"]",
        "listed twice",
    );
}

#[test]
fn a_service_with_no_pop_is_refused() {
    // `sin` is a POP, but no region sends clients to it.
    let text = with(
        "[[dns.region]]\nname = \"eu\"",
        "[[dns.pop]]\nname = \"sin\"\nanswers = [\"192.0.2.30\"]\n\n[[dns.region]]\nname = \"eu\"",
    )
    .replace("[service.dns]\n", "[service.dns]\npops = [\"sin\"]\n");
    refused_at(
        &text,
        "service[0].dns.pops",
        "[\"sin\"]",
        "a service with no POP",
    );
}

#[test]
fn a_region_without_any_of_a_services_pops_is_accepted_and_steered_to_the_services_pops() {
    let text = with("pops = [[\"nyc\", \"ams\"]]", "pops = [\"nyc\"]")
        .replace("[service.dns]\n", "[service.dns]\npops = [\"ams\"]\n");
    crate::parse_managed_str("fleet.toml", &text).unwrap();
}

#[test]
fn fallbacks_are_one_kind_and_lead_out_of_the_zone() {
    refused_at(
        &with(
            "fallback_cname = \"demo.backup-cdn.example\"",
            "fallback_cname = \"demo.backup-cdn.example\"\nfallback_addrs = [\"198.51.100.1\"]",
        ),
        "service[0].dns",
        "[service.dns]",
        "not both",
    );
    refused_at(
        &with(
            "fallback_cname = \"demo.backup-cdn.example\"",
            "fallback_cname = \"demo backup\"",
        ),
        "service[0].dns.fallback_cname",
        "\"demo backup\"",
        "not a DNS name",
    );
    refused_at(
        &with(
            "fallback_cname = \"demo.backup-cdn.example\"",
            "fallback_cname = \"other.cdn.example\"",
        ),
        "service[0].dns.fallback_cname",
        "\"other.cdn.example\"",
        "inside the zone",
    );
    refused_at(
        &with(
            "fallback_cname = \"demo.backup-cdn.example\"",
            "fallback_addrs = [\"198.51.100.1\", \"198.51.100.1\"]",
        ),
        "service[0].dns.fallback_addrs[1]",
        "\"198.51.100.1\"]",
        "listed twice",
    );
    let ok = with(
        "fallback_cname = \"demo.backup-cdn.example\"",
        "fallback_addrs = [\"198.51.100.1\", \"2001:db8::1\"]",
    );
    assert!(parse(&ok).is_ok());
    // Neither: the last healthy answer is kept.
    let ok = with("fallback_cname = \"demo.backup-cdn.example\"\n", "");
    assert!(parse(&ok).is_ok());
}

#[test]
fn geoip_file_is_accepted_in_a_fleet_document() {
    let text = with(
        "default_region",
        "geoip_file = \"geo.mmdb\"\ndefault_region",
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.dns.as_ref().unwrap().geoip_file.as_deref(),
        Some("geo.mmdb")
    );
    refused_at(
        &with("default_region", "geoip_file = \"\"\ndefault_region"),
        "dns.geoip_file",
        "\"\"",
        "must be a file path",
    );
}

// The change guard.

fn dns_of(text: &str) -> DnsConfig {
    parse(text).unwrap().get().dns.clone().unwrap()
}

fn pop(name: &str, answers: &[&str]) -> PopConfig {
    PopConfig {
        name: name.into(),
        answers: answers.iter().map(|a| a.parse().unwrap()).collect(),
        weight: 1,
        checks: Vec::new(),
    }
}

#[test]
fn a_version_keeping_everything_passes_the_guard() {
    let d = dns_of(FLEET);
    assert_eq!(removal_check(&d, &d), Ok(()));
    // Adding is always fine.
    let mut more = d.clone();
    more.pops.push(pop("fra", &["192.0.2.40"]));
    assert_eq!(removal_check(&d, &more), Ok(()));
    // From nothing (the first version) to something.
    let mut none = d.clone();
    none.pops.clear();
    assert_eq!(removal_check(&none, &d), Ok(()));
}

#[test]
fn removing_more_than_the_share_of_pops_is_refused_with_the_reason() {
    let mut old = dns_of(FLEET);
    old.pops = vec![
        pop("ams", &["192.0.2.10"]),
        pop("fra", &["192.0.2.11"]),
        pop("nyc", &["192.0.2.12"]),
        pop("sin", &["192.0.2.13"]),
    ];
    let mut new = old.clone();
    new.max_removed_share = 0.5;
    new.pops.retain(|p| p.name == "ams" || p.name == "fra");
    assert_eq!(
        removal_check(&old, &new),
        Ok(()),
        "exactly the share is allowed"
    );
    new.pops.retain(|p| p.name == "ams");
    let e = removal_check(&old, &new).unwrap_err();
    assert!(e.contains("removes 3 of 4 POPs (fra, nyc, sin)"), "{e}");
    assert!(e.contains("0.75"), "{e}");
    assert!(e.contains("limit of 0.50"), "{e}");
    // The limit is the new version's: lowering it makes the guard stricter.
    let mut strict = old.clone();
    strict.max_removed_share = 0.0;
    strict.pops.retain(|p| p.name != "sin");
    assert!(removal_check(&old, &strict).unwrap_err().contains("(sin)"));
}

#[test]
fn removing_more_than_the_share_of_answers_is_refused_with_the_reason() {
    let mut old = dns_of(FLEET);
    old.pops = vec![
        pop("ams", &["192.0.2.10", "192.0.2.11", "192.0.2.12"]),
        pop("nyc", &["192.0.2.20"]),
    ];
    let mut new = old.clone();
    new.max_removed_share = 0.5;
    // Same POPs, three of four addresses gone.
    new.pops[0].answers = vec!["192.0.2.10".parse().unwrap()];
    new.pops[1].answers = vec!["192.0.2.21".parse().unwrap()];
    let e = removal_check(&old, &new).unwrap_err();
    assert!(e.contains("removes 3 of 4 answer addresses"), "{e}");
    assert!(e.contains("limit of 0.50"), "{e}");
    // An address moving from one POP to another is not removed.
    let mut moved = old.clone();
    moved.pops[1].answers = vec!["192.0.2.12".parse().unwrap(), "192.0.2.20".parse().unwrap()];
    moved.pops[0].answers.pop();
    assert_eq!(removal_check(&old, &moved), Ok(()));
}

#[test]
fn an_empty_version_is_always_refused() {
    let old = dns_of(FLEET);
    let mut new = old.clone();
    new.max_removed_share = 1.0;
    new.pops.clear();
    assert!(removal_check(&old, &new).unwrap_err().contains("no POP"));
    let mut none = old.clone();
    none.pops.clear();
    assert!(removal_check(&none, &new).is_err());
    // POPs without any address (possible only outside validation) are empty too.
    new.pops = vec![pop("ams", &[])];
    assert!(removal_check(&old, &new).is_err());
}
